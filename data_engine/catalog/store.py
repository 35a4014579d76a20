"""The :class:`Catalog`: opening and migrating the file, transactions, registering datasets, reading
frames and moving their label state. The mining tables come from :class:`.mining_runs.MiningRunTables`,
the label batches, dataset versions and loop rounds from :class:`.lineage.LineageTables`."""

from __future__ import annotations

import errno
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

from perception.data.nuscenes import NuScenesDataset, load_dataset
from perception.schema import parse_conditions

from .lineage import LineageTables
from .mining_runs import MiningRunTables
from .records import _FRAME_COLUMNS, FrameRow, _frame_row
from .schema import (_SQLITE_FULL, LABEL_STATES, MIGRATIONS, SCHEMA_VERSION, CatalogError, _open_failure, _schema,
                     _statements, _table_columns)


class Catalog(MiningRunTables, LineageTables):
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
    def labeled_classes(self, frame_ids: Sequence[int]) -> list[frozenset[str]]:
        """The categories and detection classes labeled in each frame (``frame_classes``, kept by indexing
        and by ingest), in the order of ``frame_ids``; empty for a frame without labeled objects."""
        found: dict[int, set[str]] = {}
        ids = [int(i) for i in frame_ids]
        for start in range(0, len(ids), 500):  # SQLite bounds the number of parameters
            part = ids[start:start + 500]
            for frame_id, name in self.conn.execute(
                    f"SELECT frame_id, class FROM frame_classes WHERE frame_id IN ({','.join('?' * len(part))})", part):
                found.setdefault(int(frame_id), set()).add(str(name))
        return [frozenset(found.get(i, ())) for i in ids]

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
