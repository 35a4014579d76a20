"""The mining tables of the catalog: runs, each frame's result in a run, scores, selections."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from .records import _FRAME_COLUMNS, FrameResult, Selection, _frame_row
from .schema import CatalogError, TableGroup


class MiningRunTables(TableGroup):
    """The catalog's mining runs: it owns the tables ``mining_runs``, ``frame_results``, ``scores``,
    ``selections`` and ``run_scenes`` (and moves picked frames to ``queued``).

    A mixin of :class:`.store.Catalog` (see :class:`.schema.TableGroup`).
    """

    def run_id(self, name: str) -> int:
        row = self.conn.execute("SELECT id FROM mining_runs WHERE name = ?", (name,)).fetchone()
        if row is None:
            known = [n for (n,) in self.conn.execute("SELECT name FROM mining_runs ORDER BY id")]
            raise CatalogError(f"{self.path}: no mining run {name!r} (runs: {', '.join(known) or 'none'})")
        return int(row[0])

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
