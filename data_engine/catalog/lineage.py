"""The catalog's lineage tables: ingested label batches, the dataset versions written from them, and
the closed loop's rounds trained on those versions."""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .schema import CatalogError, TableGroup


class LineageTables(TableGroup):
    """Label batches, dataset versions and loop rounds: it owns the tables ``label_batches``,
    ``label_batch_frames``, ``dataset_versions`` and ``loop_rounds`` (and marks ingested frames
    ``labeled`` with their classes).

    A mixin of :class:`.store.Catalog` (see :class:`.schema.TableGroup`).
    """

    def record_loop_round(self, loop: str, arm: str, seed: int, rnd: int, labeled_frames: int, version: str,
                          metrics: dict[str, Any]) -> None:
        """Record (or replace) one round of a closed loop, in one transaction."""
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO loop_rounds (loop, arm, seed, round, labeled_frames, version, metrics,"
                      " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                      (loop, arm, seed, rnd, labeled_frames, version, json.dumps(metrics), time.time()))

    def loop_rounds(self, loop: str | None = None) -> list[dict[str, Any]]:
        """The recorded loop rounds (of one loop, or all), in loop, arm, seed and round order."""
        sql = "SELECT loop, arm, seed, round, labeled_frames, version, metrics FROM loop_rounds"
        rows = self.conn.execute(sql + (" WHERE loop = ?" if loop else "") + " ORDER BY loop, arm, seed, round",
                                 (loop,) if loop else ()).fetchall()
        keys = ("loop", "arm", "seed", "round", "labeled_frames", "version", "metrics")
        return [{**dict(zip(keys, r)), "metrics": json.loads(r[6])} for r in rows]

    def latest_version_root(self) -> str | None:
        """The root of the newest dataset version, or None before the first ingest."""
        row = self.conn.execute("SELECT root FROM dataset_versions ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else str(row[0])

    def dataset_version(self, name: str | None = None) -> dict[str, Any] | None:
        """A dataset version's row by name, or the newest (``name`` None); None when there is no such version.

        Keys: id, name, root, parent_id, label_batch_id, frames, annotations, created_at."""
        keys = ("id", "name", "root", "parent_id", "label_batch_id", "frames", "annotations", "created_at")
        sql = f"SELECT {', '.join(keys)} FROM dataset_versions"
        row = (self.conn.execute(sql + " WHERE name = ?", (name,)) if name is not None
               else self.conn.execute(sql + " ORDER BY id DESC LIMIT 1")).fetchone()
        return None if row is None else dict(zip(keys, row))

    def apply_label_batch(self, *, source: str, fmt: str, labeled: Mapping[int, Mapping[str, int]],
                          annotations: Mapping[int, int], full_labeling: Sequence[int], details: Mapping[str, Any],
                          expect: Sequence[str], version: Mapping[str, Any] | None, parent_id: int | None) -> int:
        """Record an ingested label batch in one transaction; returns its id.

        ``labeled``: frame id -> its category and detection-class counts (the frames become ``labeled``
        and their frame_classes are replaced); ``annotations``: frame id -> annotations written;
        ``full_labeling``: frame ids sent to full 3D labeling (they stay queued). Every frame must be in
        one of the ``expect`` states. ``version`` (name, root, frames, annotations) adds the dataset
        version written from ``parent_id``, which must still be the newest version.
        """
        with self.transaction() as c:
            newest = c.execute("SELECT id FROM dataset_versions ORDER BY id DESC LIMIT 1").fetchone()
            if version is not None and (newest[0] if newest else None) != parent_id:
                raise CatalogError(f"{self.path}: another dataset version was recorded while this one was written; "
                                   "ingest again")
            for fid in [*labeled, *full_labeling]:
                row = c.execute("SELECT label_state, sample_token FROM frames WHERE id = ?", (fid,)).fetchone()
                if row is None:
                    raise CatalogError(f"{self.path}: no frame with id {fid}")
                if row[0] not in expect:
                    raise CatalogError(f"frame {row[1]} is {row[0]}, expected {' or '.join(expect)}")
            cur = c.execute("INSERT INTO label_batches (source, format, frames, annotations, created_at, details)"
                            " VALUES (?, ?, ?, ?, ?, ?)",
                            (source, fmt, len(labeled), sum(annotations.get(f, 0) for f in labeled), time.time(),
                             json.dumps(details, sort_keys=True)))
            batch_id = int(cur.lastrowid or 0)
            c.executemany("INSERT INTO label_batch_frames (batch_id, frame_id, outcome, annotations) VALUES (?, ?, ?, ?)",
                          [(batch_id, f, "labeled", annotations.get(f, 0)) for f in labeled]
                          + [(batch_id, f, "full_labeling", 0) for f in full_labeling])
            c.executemany("UPDATE frames SET label_state = 'labeled' WHERE id = ?", [(f,) for f in labeled])
            c.executemany("DELETE FROM frame_classes WHERE frame_id = ?", [(f,) for f in labeled])
            c.executemany("INSERT INTO frame_classes (frame_id, class, count) VALUES (?, ?, ?)",
                          [(f, k, n) for f, counts in labeled.items() for k, n in sorted(counts.items())])
            if version is not None:
                c.execute("INSERT INTO dataset_versions (name, root, parent_id, label_batch_id, frames, annotations,"
                          " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                          (version["name"], str(version["root"]), parent_id, batch_id, int(version["frames"]),
                           int(version["annotations"]), time.time()))
        return batch_id
