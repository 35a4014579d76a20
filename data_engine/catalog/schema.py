"""The catalog's schema: its migrations and version, the label states, the check that a file's tables
are those of the version it records, and the errors of a catalog that cannot be opened."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

from perception.errors import BevStackError

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

LABEL_STATES: tuple[str, ...] = ("unlabeled", "queued", "labeled")

# Schema migrations: MIGRATIONS[v] takes a catalog from version v to v + 1. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    # 0 -> 1: frames, classes, runs, scores, selections, label batches, dataset versions.
    """
    CREATE TABLE datasets (
        id INTEGER PRIMARY KEY,
        root TEXT NOT NULL UNIQUE,           -- absolute path of the nuScenes-format directory
        version TEXT NOT NULL,               -- its v1.0-* table directory
        labeled INTEGER NOT NULL,            -- 1: registered as labeled, 0: an unlabeled pool
        registered_at REAL NOT NULL
    );
    CREATE TABLE frames (
        id INTEGER PRIMARY KEY,
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        sample_token TEXT NOT NULL,
        scene_token TEXT NOT NULL,
        scene_name TEXT NOT NULL,
        frame_index INTEGER NOT NULL,        -- position in its scene, 0 first
        timestamp INTEGER NOT NULL,          -- microseconds
        conditions TEXT NOT NULL,            -- comma-separated, from the scene description ("night,rain")
        cameras TEXT NOT NULL,               -- JSON: camera name -> image path relative to the dataset root
        label_state TEXT NOT NULL CHECK (label_state IN ('unlabeled', 'queued', 'labeled')),
        UNIQUE (dataset_id, sample_token)
    );
    CREATE INDEX frames_scene ON frames (scene_token, frame_index);
    CREATE INDEX frames_state ON frames (label_state);
    CREATE TABLE frame_classes (             -- labeled objects per frame: per category and per detection class
        frame_id INTEGER NOT NULL REFERENCES frames(id),
        class TEXT NOT NULL,
        count INTEGER NOT NULL,
        PRIMARY KEY (frame_id, class)
    );
    CREATE TABLE mining_runs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        model TEXT NOT NULL,                 -- the .onnx path
        model_sha256 TEXT NOT NULL,
        strategies TEXT NOT NULL,            -- JSON list
        budget INTEGER NOT NULL,
        engine TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('running', 'scored', 'selected', 'failed')),
        config TEXT NOT NULL,                -- JSON of the run's settings
        created_at REAL NOT NULL,
        finished_at REAL
    );
    CREATE TABLE frame_results (             -- a frame's outcome in a run: scored, or failed with a reason
        run_id INTEGER NOT NULL REFERENCES mining_runs(id),
        frame_id INTEGER NOT NULL REFERENCES frames(id),
        status TEXT NOT NULL CHECK (status IN ('scored', 'failed')),
        reason TEXT,
        embedding BLOB,                      -- float32 frame embedding
        PRIMARY KEY (run_id, frame_id)
    );
    CREATE TABLE scores (
        run_id INTEGER NOT NULL REFERENCES mining_runs(id),
        frame_id INTEGER NOT NULL REFERENCES frames(id),
        strategy TEXT NOT NULL,
        score REAL NOT NULL,
        details TEXT,                        -- JSON
        PRIMARY KEY (run_id, frame_id, strategy)
    );
    CREATE INDEX scores_strategy ON scores (run_id, strategy, score);
    CREATE TABLE selections (
        run_id INTEGER NOT NULL REFERENCES mining_runs(id),
        frame_id INTEGER NOT NULL REFERENCES frames(id),
        rank INTEGER NOT NULL,
        score REAL NOT NULL,
        reasons TEXT NOT NULL,               -- JSON list of why it was picked
        PRIMARY KEY (run_id, frame_id)
    );
    CREATE TABLE label_batches (
        id INTEGER PRIMARY KEY,
        source TEXT NOT NULL,                -- the labels' file or directory
        format TEXT NOT NULL,                -- "nuscenes" or "label-studio"
        frames INTEGER NOT NULL,
        annotations INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE dataset_versions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        root TEXT NOT NULL,
        parent_id INTEGER REFERENCES dataset_versions(id),
        label_batch_id INTEGER REFERENCES label_batches(id),
        frames INTEGER NOT NULL,
        annotations INTEGER NOT NULL,
        created_at REAL NOT NULL
    );
    """,
    # 1 -> 2: a scored frame keeps the model's boxes (for the relabel queue); mining progress per scene;
    # what each label batch did to each frame.
    """
    ALTER TABLE frame_results ADD COLUMN predictions TEXT;  -- JSON list of boxes in the ego frame (PREDICTION_KEYS)
    CREATE TABLE run_scenes (                -- a scene whose every frame's result is written, in one transaction
        run_id INTEGER NOT NULL REFERENCES mining_runs(id),
        dataset_id INTEGER NOT NULL REFERENCES datasets(id),
        scene_token TEXT NOT NULL,
        frames INTEGER NOT NULL,
        finished_at REAL NOT NULL,
        PRIMARY KEY (run_id, dataset_id, scene_token)
    );
    ALTER TABLE label_batches ADD COLUMN details TEXT;     -- JSON summary (boxes accepted, rejected, reclassed, ...)
    CREATE TABLE label_batch_frames (
        batch_id INTEGER NOT NULL REFERENCES label_batches(id),
        frame_id INTEGER NOT NULL REFERENCES frames(id),
        outcome TEXT NOT NULL CHECK (outcome IN ('labeled', 'full_labeling')),
        annotations INTEGER NOT NULL,
        PRIMARY KEY (batch_id, frame_id)
    );
    """,
    # 2 -> 3: the closed loop's rounds and their metrics.
    """
    CREATE TABLE loop_rounds (
        loop TEXT NOT NULL,                  -- the loop's name (its output directory)
        arm TEXT NOT NULL,                   -- the selection strategy arm, or "random"
        seed INTEGER NOT NULL,
        round INTEGER NOT NULL,              -- 0: the seed set
        labeled_frames INTEGER NOT NULL,     -- frames the round's model trained on
        version TEXT NOT NULL,               -- the dataset version it trained on ("seed" for round 0)
        metrics TEXT NOT NULL,               -- JSON: the val metrics
        created_at REAL NOT NULL,
        PRIMARY KEY (loop, arm, seed, round)
    );
    """,
)
SCHEMA_VERSION = len(MIGRATIONS)
_SQLITE_FULL = 13  # SQLite's result code for a full disk (the primary code, low byte of an extended one)
_SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_READONLY, _SQLITE_PERM = 10, 14, 8, 3  # disk and permission failures
_SCHEMAS: dict[int, dict[str, tuple[str, ...]]] = {}


def _schema(version: int) -> dict[str, tuple[str, ...]]:
    """Table name -> column names of a catalog at schema ``version`` (the migrations run in memory, once)."""
    if version not in _SCHEMAS:
        conn = sqlite3.connect(":memory:")
        try:
            for v in range(version):
                for statement in _statements(MIGRATIONS[v]):
                    conn.execute(statement)
            _SCHEMAS[version] = _table_columns(conn)
        finally:
            conn.close()
    return _SCHEMAS[version]


def _table_columns(conn: sqlite3.Connection) -> dict[str, tuple[str, ...]]:
    """Table name -> its column names, for every table of a database but SQLite's own."""
    names = [str(n) for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: tuple(str(r[1]) for r in conn.execute('PRAGMA table_info("' + n.replace('"', '""') + '")'))
            for n in names if not n.startswith("sqlite_")}


class CatalogError(BevStackError):
    """A catalog that cannot be used, or a request it cannot satisfy; the message names the file or frame."""


def _statements(script: str) -> list[str]:
    """The statements of a migration script (no statement holds a ';' inside a string)."""
    lines = [ln.split("--", 1)[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]


def _open_failure(path: Path, exc: sqlite3.DatabaseError) -> Exception:
    """Why SQLite could not open ``path``: a full disk (its WAL and index files need room), a disk
    or permission problem, or a file that is not a catalog."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = 0
    if code == _SQLITE_FULL or (code == _SQLITE_IOERR and free < 1 << 20):
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    if code in (_SQLITE_IOERR, _SQLITE_CANTOPEN, _SQLITE_READONLY, _SQLITE_PERM):
        return CatalogError(f"{path}: cannot open the catalog ({exc}): check the disk and the file's permissions")
    return CatalogError(f"{path}: not a catalog ({exc})")


class TableGroup:
    """The part of :class:`.store.Catalog` a table group's mixin relies on: ``conn`` (the open
    connection), ``path`` (named in errors) and ``transaction()`` (one write transaction)."""

    path: Path
    conn: sqlite3.Connection

    if TYPE_CHECKING:
        def transaction(self) -> AbstractContextManager[sqlite3.Connection]: ...
