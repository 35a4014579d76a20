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
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

from perception.data.nuscenes import NuScenesDataset, load_dataset
from perception.data.schema import parse_conditions

__all__ = ["LABEL_STATES", "MIGRATIONS", "SCHEMA_VERSION", "Catalog", "CatalogError", "FrameRow"]

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
)
SCHEMA_VERSION = len(MIGRATIONS)


class CatalogError(ValueError):
    """A catalog that cannot be used, or a request it cannot satisfy; the message names the file or frame."""


@dataclass(frozen=True)
class FrameRow:
    """One catalogued multi-camera frame."""

    id: int
    dataset_root: str
    sample_token: str
    scene_name: str
    frame_index: int
    timestamp: int  # microseconds
    conditions: tuple[str, ...]
    cameras: dict[str, str]  # camera -> image path relative to dataset_root
    label_state: str


class Catalog:
    """An open catalog. Use :meth:`open`; close it (or use it as a context manager) when done."""

    def __init__(self, path: Path, conn: sqlite3.Connection) -> None:
        self.path = path
        self.conn = conn

    # -- opening and migrating ---------------------------------------------------------------------
    @classmethod
    def open(cls, path: str | Path, create: bool = True) -> Catalog:
        """Open (or create) the catalog at ``path`` in WAL mode and migrate it to :data:`SCHEMA_VERSION`."""
        path = Path(path)
        if not create and not path.exists():
            raise CatalogError(f"{path}: no catalog here (create one with `data-engine index`)")
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{path}: not a catalog ({exc})") from None
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        cat = cls(path, conn)
        cat._migrate()
        return cat

    def _migrate(self) -> None:
        try:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise CatalogError(f"{self.path}: not a catalog ({exc})") from None
        if version > SCHEMA_VERSION:
            raise CatalogError(f"{self.path}: catalog schema version {version} is newer than this program's "
                               f"{SCHEMA_VERSION}; upgrade bevstack")
        for v in range(version, SCHEMA_VERSION):
            with self.transaction() as c:
                for statement in _statements(MIGRATIONS[v]):
                    c.execute(statement)
                c.execute(f"PRAGMA user_version = {v + 1}")

    @property
    def schema_version(self) -> int:
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    # -- registering datasets ------------------------------------------------------------------------
    def index_dataset(self, root: str | Path | NuScenesDataset, unlabeled: bool = False) -> dict[str, int]:
        """Register every sample of a dataset as a frame (idempotent: known frames are left as they are).

        A labeled dataset's frames are ``labeled`` with their classes counted; ``unlabeled`` registers
        them as ``unlabeled`` (a pool; annotations, if any, are ignored). Returns counts.
        """
        reader = root if isinstance(root, NuScenesDataset) else load_dataset(root)
        droot = str(Path(reader.root).resolve())
        added = 0
        with self.transaction() as c:
            row = c.execute("SELECT id, labeled FROM datasets WHERE root = ?", (droot,)).fetchone()
            if row is None:
                cur = c.execute("INSERT INTO datasets (root, version, labeled, registered_at) VALUES (?, ?, ?, ?)",
                                (droot, reader.version, 0 if unlabeled else 1, time.time()))
                dataset_id = cur.lastrowid
            else:
                dataset_id = row[0]
                if bool(row[1]) == unlabeled:
                    kind = "labeled" if row[1] else "unlabeled"
                    raise CatalogError(f"{droot}: already registered as {kind}; index it the same way")
            known = {t for (t,) in c.execute("SELECT sample_token FROM frames WHERE dataset_id = ?", (dataset_id,))}
            for scene in reader.scenes:
                conditions = ",".join(parse_conditions(scene.description))
                for sample in reader.scene_samples(scene):
                    if sample.token in known:
                        continue
                    cameras = {n: cam.filename for n, cam in sample.cameras.items()}
                    cur = c.execute(
                        "INSERT INTO frames (dataset_id, sample_token, scene_token, scene_name, frame_index, timestamp,"
                        " conditions, cameras, label_state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (dataset_id, sample.token, scene.token, scene.name, sample.scene_index, sample.timestamp,
                         conditions, json.dumps(cameras), "unlabeled" if unlabeled else "labeled"))
                    added += 1
                    if not unlabeled:
                        counts: dict[str, int] = {}
                        for box in reader.boxes(sample):  # the category and its detection class, both
                            for name in {box.category, box.detection_class} - {None}:
                                counts[name] = counts.get(name, 0) + 1
                        c.executemany("INSERT INTO frame_classes (frame_id, class, count) VALUES (?, ?, ?)",
                                      [(cur.lastrowid, k, v) for k, v in sorted(counts.items())])
        total = self.conn.execute("SELECT COUNT(*) FROM frames WHERE dataset_id = ?", (dataset_id,)).fetchone()[0]
        return {"dataset_id": int(dataset_id), "added": added, "frames": int(total)}

    # -- reading ---------------------------------------------------------------------------------------
    def status(self) -> dict[str, Any]:
        """Counts of frames per label state and dataset, mining runs, label batches and dataset versions."""
        c = self.conn
        states = dict.fromkeys(LABEL_STATES, 0)
        states.update({s: n for s, n in c.execute("SELECT label_state, COUNT(*) FROM frames GROUP BY label_state")})
        datasets = [
            {"root": root, "labeled": bool(lab), "frames": n,
             "states": {s: k for s, k in c.execute(
                 "SELECT label_state, COUNT(*) FROM frames WHERE dataset_id = ? GROUP BY label_state", (did,))}}
            for did, root, lab, n in c.execute(
                "SELECT d.id, d.root, d.labeled, COUNT(f.id) FROM datasets d LEFT JOIN frames f ON f.dataset_id = d.id "
                "GROUP BY d.id ORDER BY d.id")]
        runs = [
            {"name": name, "status": status, "strategies": json.loads(strategies), "budget": budget,
             "scored": scored, "failed": failed, "selected": selected}
            for name, status, strategies, budget, scored, failed, selected in c.execute(
                "SELECT r.name, r.status, r.strategies, r.budget,"
                " (SELECT COUNT(*) FROM frame_results x WHERE x.run_id = r.id AND x.status = 'scored'),"
                " (SELECT COUNT(*) FROM frame_results x WHERE x.run_id = r.id AND x.status = 'failed'),"
                " (SELECT COUNT(*) FROM selections s WHERE s.run_id = r.id) FROM mining_runs r ORDER BY r.id")]
        versions = [{"name": n, "root": r, "frames": f, "annotations": a}
                    for n, r, f, a in c.execute("SELECT name, root, frames, annotations FROM dataset_versions ORDER BY id")]
        batches = c.execute("SELECT COUNT(*) FROM label_batches").fetchone()[0]
        return {"catalog": str(self.path), "schema_version": self.schema_version, "frames": sum(states.values()),
                "label_states": states, "datasets": datasets, "mining_runs": runs, "label_batches": batches,
                "dataset_versions": versions}

    def query(self, *, label_state: str | None = None, condition: str | None = None, has_class: str | None = None,
              scene: str | None = None, dataset: str | None = None, run: str | None = None,
              strategy: str | None = None, min_score: float | None = None,
              limit: int | None = None) -> list[FrameRow]:
        """Frames matching every filter given, in dataset, scene and time order.

        condition: a scene condition ("night"); has_class: a labeled object class (an exact nuScenes
        category, or a prefix ending in "." such as "vehicle."); run/strategy/min_score: frames whose
        score in that mining run (and strategy, if given) is at least ``min_score``.
        """
        if label_state is not None and label_state not in LABEL_STATES:
            raise CatalogError(f"unknown label state {label_state!r}; expected one of {', '.join(LABEL_STATES)}")
        where, args = [], []
        if label_state is not None:
            where.append("f.label_state = ?")
            args.append(label_state)
        if condition is not None:
            where.append("(',' || f.conditions || ',') LIKE ?")
            args.append(f"%,{condition},%")
        if has_class is not None:
            op = "LIKE" if has_class.endswith(".") else "="
            where.append(f"EXISTS (SELECT 1 FROM frame_classes k WHERE k.frame_id = f.id AND k.class {op} ?)")
            args.append(has_class + "%" if op == "LIKE" else has_class)
        if scene is not None:
            where.append("(f.scene_name = ? OR f.scene_token = ?)")
            args += [scene, scene]
        if dataset is not None:
            where.append("d.root = ?")
            args.append(str(Path(dataset).resolve()))
        if run is not None or strategy is not None or min_score is not None:
            if run is None:
                raise CatalogError("filtering by strategy or score needs the mining run (--run)")
            run_id = self.run_id(run)
            sub = "SELECT 1 FROM scores s WHERE s.frame_id = f.id AND s.run_id = ?"
            args_sub: list[Any] = [run_id]
            if strategy is not None:
                sub += " AND s.strategy = ?"
                args_sub.append(strategy)
            if min_score is not None:
                sub += " AND s.score >= ?"
                args_sub.append(min_score)
            where.append(f"EXISTS ({sub})")
            args += args_sub
        sql = ("SELECT f.id, d.root, f.sample_token, f.scene_name, f.frame_index, f.timestamp, f.conditions, f.cameras,"
               " f.label_state FROM frames f JOIN datasets d ON d.id = f.dataset_id")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY d.id, f.scene_name, f.frame_index"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [FrameRow(i, r, t, s, k, ts, tuple(x for x in cond.split(",") if x), json.loads(cams), st)
                for i, r, t, s, k, ts, cond, cams, st in self.conn.execute(sql, args)]

    def run_id(self, name: str) -> int:
        row = self.conn.execute("SELECT id FROM mining_runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [n for (n,) in self.conn.execute("SELECT name FROM mining_runs ORDER BY id")]
            raise CatalogError(f"{self.path}: no mining run {name!r} (runs: {', '.join(known) or 'none'})")
        return int(row[0])

    # -- label state -----------------------------------------------------------------------------------
    def set_label_state(self, frame_ids: Sequence[int], state: str, expect: Sequence[str] | None = None) -> int:
        """Move frames to ``state`` in one transaction; with ``expect``, every frame must be in one of those
        states first (else nothing changes and the first offending frame is named)."""
        if state not in LABEL_STATES:
            raise CatalogError(f"unknown label state {state!r}")
        with self.transaction() as c:
            if expect is not None:
                for fid in frame_ids:
                    row = c.execute("SELECT label_state, sample_token FROM frames WHERE id = ?", (fid,)).fetchone()
                    if row is None:
                        raise CatalogError(f"{self.path}: no frame with id {fid}")
                    if row[0] not in expect:
                        raise CatalogError(f"frame {row[1]} is {row[0]}, expected {' or '.join(expect)}")
            c.executemany("UPDATE frames SET label_state = ? WHERE id = ?", [(state, int(f)) for f in frame_ids])
        return len(frame_ids)


def _statements(script: str) -> list[str]:
    """The statements of a migration script (no statement holds a ';' inside a string)."""
    lines = [ln.split("--", 1)[0] for ln in script.splitlines()]
    return [s.strip() for s in "\n".join(lines).split(";") if s.strip()]
