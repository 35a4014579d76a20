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

import errno
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import numpy as np

from perception.data.nuscenes import NuScenesDataset, load_dataset
from perception.schema import parse_conditions
from perception.errors import BevStackError

__all__ = ["LABEL_STATES", "MIGRATIONS", "PREDICTION_KEYS", "SCHEMA_VERSION", "Catalog", "CatalogError", "FrameResult",
           "FrameRow", "Selection"]

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

# One predicted box as the catalog stores it (frame_results.predictions): ego frame of the frame's sample,
# metres, radians, m/s; "class" a detection class name, "score" in [0, 1].
PREDICTION_KEYS: tuple[str, ...] = ("class", "score", "center", "size", "yaw", "velocity")


class CatalogError(BevStackError):
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


@dataclass
class FrameResult:
    """One frame's outcome in a mining run: its scores per strategy, or why it failed."""

    frame_id: int
    status: str = "scored"  # "scored" or "failed"
    reason: str | None = None  # why it failed
    embedding: np.ndarray | None = None  # float32 [E]
    predictions: list[dict[str, Any]] = field(default_factory=list)  # boxes, PREDICTION_KEYS
    scores: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # strategy -> (score, details)


@dataclass(frozen=True)
class Selection:
    """A frame picked by a mining run, with why."""

    frame: FrameRow
    rank: int  # 0 first
    score: float  # the combined score it was picked with
    reasons: list[str]
    scores: dict[str, float]  # strategy -> raw score
    predictions: list[dict[str, Any]]  # the model's boxes (PREDICTION_KEYS), ego frame


_FRAME_COLUMNS = ("f.id, d.root, f.sample_token, f.scene_name, f.frame_index, f.timestamp, f.conditions, f.cameras,"
                  " f.label_state")


def _frame_row(row: Sequence[Any]) -> FrameRow:
    i, r, t, s, k, ts, cond, cams, st = row
    return FrameRow(i, r, t, s, k, ts, tuple(x for x in cond.split(",") if x), json.loads(cams), st)


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
            raise _open_failure(path, exc) from None
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute("PRAGMA synchronous=NORMAL")
        cat = cls(path, conn)
        cat._migrate()
        return cat

    def _migrate(self) -> None:
        """Bring the catalog to :data:`SCHEMA_VERSION` in one transaction, after checking that its tables are
        those of the version it records (a version record changed by hand is refused, not migrated over)."""
        try:
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                self._check_schema(version)
                return
        except sqlite3.DatabaseError as exc:
            raise _open_failure(self.path, exc) from None
        with self.transaction() as c:  # the version and the tables read together, as another process may migrate
            version = c.execute("PRAGMA user_version").fetchone()[0]
            self._check_schema(version)
            for v in range(version, SCHEMA_VERSION):
                for statement in _statements(MIGRATIONS[v]):
                    c.execute(statement)
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_schema(self, version: int) -> None:
        """Refuse a catalog whose recorded schema version is not one this program can open or migrate, or
        whose tables are not those of the version it records."""
        if version > SCHEMA_VERSION:  # a newer program's catalog (its tables cannot be known here)
            raise CatalogError(f"{self.path}: catalog schema version {version} is newer than this program's "
                               f"{SCHEMA_VERSION}; upgrade bevstack")
        ours = set().union(*(_schema(v) for v in range(SCHEMA_VERSION + 1)))
        mine = {n: cols for n, cols in _table_columns(self.conn).items() if n in ours}
        matches = [v for v in range(SCHEMA_VERSION + 1) if mine == _schema(v)]
        if version in matches:
            return
        if matches:
            raise CatalogError(f"{self.path}: catalog schema version {version} is recorded, but its tables are those "
                               f"of version {matches[-1]} (this program's is {SCHEMA_VERSION}); the version record "
                               f"was changed by hand: set it back with `PRAGMA user_version = {matches[-1]}`, or "
                               "restore the catalog from a backup")
        raise CatalogError(f"{self.path}: catalog schema version {version} is recorded, but its tables match no "
                           f"schema version this program knows (it expects version {SCHEMA_VERSION}); the catalog "
                           "is damaged or was changed by hand; restore it from a backup")

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
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
                self.conn.execute("COMMIT")
            except BaseException:
                if self.conn.in_transaction:  # a failed COMMIT (a full disk) can leave the transaction open
                    self.conn.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF == _SQLITE_FULL:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path)) from exc
            raise

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
        sql = f"SELECT {_FRAME_COLUMNS} FROM frames f JOIN datasets d ON d.id = f.dataset_id"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY d.id, f.scene_name, f.frame_index"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_frame_row(row) for row in self.conn.execute(sql, args)]

    def frame(self, ref: int | str) -> FrameRow:
        """A frame by catalog id or sample token (a token known in several datasets is refused)."""
        base = f"SELECT {_FRAME_COLUMNS} FROM frames f JOIN datasets d ON d.id = f.dataset_id"
        if isinstance(ref, int) or (isinstance(ref, str) and ref.isdigit()):
            rows = self.conn.execute(base + " WHERE f.id = ?", (int(ref),)).fetchall()
        else:
            rows = self.conn.execute(base + " WHERE f.sample_token = ?", (ref,)).fetchall()
        if not rows:
            raise CatalogError(f"{self.path}: no frame {ref!r} (give a sample token or a catalog frame id)")
        if len(rows) > 1:
            raise CatalogError(f"{self.path}: sample token {ref!r} is in {len(rows)} datasets; give the frame id")
        return _frame_row(rows[0])

    def run_id(self, name: str) -> int:
        row = self.conn.execute("SELECT id FROM mining_runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [n for (n,) in self.conn.execute("SELECT name FROM mining_runs ORDER BY id")]
            raise CatalogError(f"{self.path}: no mining run {name!r} (runs: {', '.join(known) or 'none'})")
        return int(row[0])

    # -- mining runs -------------------------------------------------------------------------------------
    def start_run(self, name: str, model: str, model_sha256: str, strategies: Sequence[str], budget: int,
                  engine: str, config: dict[str, Any]) -> tuple[int, bool]:
        """Create mining run ``name``, or resume it. Returns (run id, resumed).

        A run is resumed only with the same model file contents and the same strategies; a run that
        already selected its frames is finished and refused.
        """
        with self.transaction() as c:
            row = c.execute("SELECT id, model_sha256, strategies, status FROM mining_runs WHERE name = ?",
                            (name,)).fetchone()
            if row is not None:
                run_id, sha, strats, status = row
                if sha != model_sha256:
                    raise CatalogError(f"{self.path}: mining run {name!r} was made with another model "
                                       f"(sha256 {sha[:12]}, this one {model_sha256[:12]}); name a new run")
                if json.loads(strats) != list(strategies):
                    raise CatalogError(f"{self.path}: mining run {name!r} scores {json.loads(strats)}, not "
                                       f"{list(strategies)}; name a new run")
                if status == "selected":
                    raise CatalogError(f"{self.path}: mining run {name!r} is finished (its frames are selected); "
                                       "name a new run")
                c.execute("UPDATE mining_runs SET status = 'running', engine = ? WHERE id = ?", (engine, run_id))
                return int(run_id), True
            cur = c.execute(
                "INSERT INTO mining_runs (name, model, model_sha256, strategies, budget, engine, status, config,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, 'running', ?, ?)",
                (name, model, model_sha256, json.dumps(list(strategies)), int(budget), engine,
                 json.dumps(config, sort_keys=True), time.time()))
            return int(cur.lastrowid or 0), False

    def run_info(self, name: str) -> dict[str, Any]:
        """A mining run's row: name, model, strategies, budget, engine, status, config, times."""
        row = self.conn.execute("SELECT id, name, model, model_sha256, strategies, budget, engine, status, config,"
                                " created_at, finished_at FROM mining_runs WHERE id = ?", (self.run_id(name),)).fetchone()
        keys = ("id", "name", "model", "model_sha256", "strategies", "budget", "engine", "status", "config",
                "created_at", "finished_at")
        info = dict(zip(keys, row))
        info["strategies"], info["config"] = json.loads(info["strategies"]), json.loads(info["config"])
        return info

    def latest_run(self) -> str:
        row = self.conn.execute("SELECT name FROM mining_runs ORDER BY id DESC LIMIT 1").fetchone()
        if row is None:
            raise CatalogError(f"{self.path}: no mining runs yet (run `data-engine mine`)")
        return str(row[0])

    def set_run_status(self, run_id: int, status: str) -> None:
        with self.transaction() as c:
            c.execute("UPDATE mining_runs SET status = ?, finished_at = ? WHERE id = ?", (status, time.time(), run_id))

    def done_scenes(self, run_id: int) -> set[tuple[int, str]]:
        """(dataset id, scene token) of every scene whose results this run has written."""
        return {(int(d), str(s)) for d, s in self.conn.execute(
            "SELECT dataset_id, scene_token FROM run_scenes WHERE run_id = ?", (run_id,))}

    def scene_frames(self, label_states: Sequence[str],
                     whole_scenes: bool = False) -> list[tuple[int, str, list[FrameRow]]]:
        """Frames in the given label states grouped by scene: (dataset id, scene token, frames in time order).

        With ``whole_scenes``, every frame of each scene that holds at least one such frame."""
        marks = ",".join("?" * len(label_states))
        where = (f"f.label_state IN ({marks})" if not whole_scenes else
                 f"EXISTS (SELECT 1 FROM frames g WHERE g.dataset_id = f.dataset_id AND g.scene_token = f.scene_token"
                 f" AND g.label_state IN ({marks}))")
        rows = self.conn.execute(
            f"SELECT f.dataset_id, f.scene_token, {_FRAME_COLUMNS} FROM frames f JOIN datasets d ON d.id = f.dataset_id"
            f" WHERE {where} ORDER BY f.dataset_id, f.scene_token, f.frame_index",
            list(label_states)).fetchall()
        out: list[tuple[int, str, list[FrameRow]]] = []
        for row in rows:
            key = (int(row[0]), str(row[1]))
            if not out or (out[-1][0], out[-1][1]) != key:
                out.append((key[0], key[1], []))
            out[-1][2].append(_frame_row(row[2:]))
        return out

    def write_scene(self, run_id: int, dataset_id: int, scene_token: str, results: Sequence[FrameResult]) -> int:
        """Write one scene's frame results and mark the scene done, in one transaction.

        Idempotent: a frame this run already holds a result for is left as it is (so a scene scored
        twice, by a resumed run or a retried worker, is counted once). Returns the frames written.
        """
        written = 0
        with self.transaction() as c:
            if c.execute("SELECT 1 FROM run_scenes WHERE run_id = ? AND dataset_id = ? AND scene_token = ?",
                         (run_id, dataset_id, scene_token)).fetchone():
                return 0
            for r in results:
                if r.status not in ("scored", "failed"):
                    raise CatalogError(f"frame {r.frame_id}: result status {r.status!r}, expected scored or failed")
                emb = None if r.embedding is None else np.asarray(r.embedding, np.float32).tobytes()
                cur = c.execute(
                    "INSERT OR IGNORE INTO frame_results (run_id, frame_id, status, reason, embedding, predictions)"
                    " VALUES (?, ?, ?, ?, ?, ?)",
                    (run_id, r.frame_id, r.status, r.reason, emb, json.dumps(r.predictions) if r.status == "scored" else None))
                if cur.rowcount == 0:
                    continue
                written += 1
                c.executemany("INSERT OR IGNORE INTO scores (run_id, frame_id, strategy, score, details)"
                              " VALUES (?, ?, ?, ?, ?)",
                              [(run_id, r.frame_id, k, float(v), json.dumps(d)) for k, (v, d) in r.scores.items()])
            c.execute("INSERT INTO run_scenes (run_id, dataset_id, scene_token, frames, finished_at) VALUES (?, ?, ?, ?, ?)",
                      (run_id, dataset_id, scene_token, len(results), time.time()))
        return written

    def add_scores(self, run_id: int, strategy: str, scores: dict[int, tuple[float, dict[str, Any]]]) -> None:
        """Scores computed over the whole run (novelty needs every embedding), in one transaction (replacing)."""
        with self.transaction() as c:
            c.executemany("INSERT OR REPLACE INTO scores (run_id, frame_id, strategy, score, details) VALUES (?, ?, ?, ?, ?)",
                          [(run_id, f, strategy, float(v), json.dumps(d)) for f, (v, d) in scores.items()])

    def run_embeddings(self, run_id: int, label_states: Sequence[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(frame ids [N], embeddings [N, E] float32) of the frames this run scored, in frame id order."""
        sql = ("SELECT r.frame_id, r.embedding FROM frame_results r JOIN frames f ON f.id = r.frame_id"
               " WHERE r.run_id = ? AND r.status = 'scored' AND r.embedding IS NOT NULL")
        args: list[Any] = [run_id]
        if label_states is not None:
            sql += f" AND f.label_state IN ({','.join('?' * len(label_states))})"
            args += list(label_states)
        rows = self.conn.execute(sql + " ORDER BY r.frame_id", args).fetchall()
        if not rows:
            return np.zeros(0, np.int64), np.zeros((0, 0), np.float32)
        ids = np.array([r[0] for r in rows], np.int64)
        return ids, np.stack([np.frombuffer(r[1], np.float32) for r in rows])

    def run_scores(self, run_id: int) -> dict[str, dict[int, float]]:
        """strategy -> frame id -> score, for every score of the run."""
        out: dict[str, dict[int, float]] = {}
        for frame_id, strategy, score in self.conn.execute(
                "SELECT frame_id, strategy, score FROM scores WHERE run_id = ?", (run_id,)):
            out.setdefault(strategy, {})[int(frame_id)] = float(score)
        return out

    def frame_predictions(self, run_id: int, frame_id: int) -> list[dict[str, Any]]:
        row = self.conn.execute("SELECT predictions FROM frame_results WHERE run_id = ? AND frame_id = ?",
                                (run_id, frame_id)).fetchone()
        return json.loads(row[0]) if row is not None and row[0] else []

    def write_selection(self, run_id: int, picks: Sequence[tuple[int, float, list[str]]], queue: bool = True) -> None:
        """Record a run's picks (frame id, combined score, reasons) in rank order and, with ``queue``, move
        the picked unlabeled frames to ``queued``; one transaction, replacing an earlier selection."""
        with self.transaction() as c:
            c.execute("DELETE FROM selections WHERE run_id = ?", (run_id,))
            c.executemany("INSERT INTO selections (run_id, frame_id, rank, score, reasons) VALUES (?, ?, ?, ?, ?)",
                          [(run_id, f, k, float(s), json.dumps(r)) for k, (f, s, r) in enumerate(picks)])
            if queue:
                c.executemany("UPDATE frames SET label_state = 'queued' WHERE id = ? AND label_state = 'unlabeled'",
                              [(f,) for f, _, _ in picks])
            c.execute("UPDATE mining_runs SET status = 'selected', finished_at = ? WHERE id = ?", (time.time(), run_id))

    def selections(self, run: str) -> list[Selection]:
        """A run's picks in rank order, with their frames, reasons, raw scores and predicted boxes."""
        run_id = self.run_id(run)
        rows = self.conn.execute(
            f"SELECT s.rank, s.score, s.reasons, r.predictions, {_FRAME_COLUMNS} FROM selections s"
            " JOIN frames f ON f.id = s.frame_id JOIN datasets d ON d.id = f.dataset_id"
            " LEFT JOIN frame_results r ON r.run_id = s.run_id AND r.frame_id = s.frame_id"
            " WHERE s.run_id = ? ORDER BY s.rank", (run_id,)).fetchall()
        out = []
        for rank, score, reasons, preds, *frame in rows:
            fr = _frame_row(frame)
            raw = {k: float(v) for k, v in self.conn.execute(
                "SELECT strategy, score FROM scores WHERE run_id = ? AND frame_id = ?", (run_id, fr.id))}
            out.append(Selection(fr, int(rank), float(score), json.loads(reasons), raw, json.loads(preds) if preds else []))
        return out

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

    # -- label batches and dataset versions --------------------------------------------------------------
    def frames_by_token(self, sample_tokens: Iterable[str]) -> dict[str, list[FrameRow]]:
        """sample token -> its frames (one per dataset holding the token); tokens of no frame are absent."""
        tokens = list(dict.fromkeys(sample_tokens))
        out: dict[str, list[FrameRow]] = {}
        for i in range(0, len(tokens), 500):  # SQLite limits the number of bound parameters
            chunk = tokens[i:i + 500]
            for row in self.conn.execute(
                    f"SELECT {_FRAME_COLUMNS} FROM frames f JOIN datasets d ON d.id = f.dataset_id"
                    f" WHERE f.sample_token IN ({','.join('?' * len(chunk))}) ORDER BY f.id", chunk):
                fr = _frame_row(row)
                out.setdefault(fr.sample_token, []).append(fr)
        return out

    def labeled_dataset_roots(self) -> list[str]:
        """Roots of the datasets registered as labeled, in registration order."""
        return [str(r) for (r,) in self.conn.execute("SELECT root FROM datasets WHERE labeled = 1 ORDER BY id")]

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
