"""The frame catalog: the data engine's source of truth, one SQLite file in WAL mode.

It records which multi-camera frames exist (scene, time, camera image paths, conditions), their label
state (``unlabeled`` -> ``queued`` -> ``labeled``), the object classes their labels hold, every mining
run with its per-frame scores and selections, every ingested label batch and every dataset version.
Every state change is one transaction: a crash leaves the catalog as it was before the change or
after it, never between. The schema carries a version; :data:`MIGRATIONS` bring an older catalog up
to date when it is opened.

    with Catalog.open("engine.db") as cat:
        cat.index_dataset("data/synth")                  # labeled frames
        cat.index_dataset("data/pool", unlabeled=True)   # the fleet's unlabeled pool
        cat.status()                                     # counts per state, run and version
        cat.query(condition="night", label_state="unlabeled", has_class="trailer")

- :mod:`.schema` the migrations, the schema version, the label states, :class:`CatalogError`;
- :mod:`.records` the rows it hands out and takes in (:class:`FrameRow`, :class:`FrameResult`,
  :class:`Selection`);
- :mod:`.store` the :class:`Catalog`: connection, migration, transactions, frames and label states;
- :mod:`.mining_runs` its mining tables (runs, frame results, scores, selections);
- :mod:`.lineage` its label batches, dataset versions and loop rounds.
"""

from __future__ import annotations

from .records import PREDICTION_KEYS, FrameResult, FrameRow, Selection
from .schema import LABEL_STATES, MIGRATIONS, SCHEMA_VERSION, CatalogError, _statements
from .store import Catalog

__all__ = ["LABEL_STATES", "MIGRATIONS", "PREDICTION_KEYS", "SCHEMA_VERSION", "Catalog", "CatalogError", "FrameResult",
           "FrameRow", "Selection",
           "_statements"]  # private, for the tests that run a migration script statement by statement
