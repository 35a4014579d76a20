"""`data-engine mine` and `similar` with a real exported model, a real catalog, worker processes and a
local Ray instance: resume after a kill, failed frames, plugins, batching and engines agree."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from model_inputs import random_tiny_checkpoint
from typer.testing import CliRunner

from data_engine.catalog import Catalog
from data_engine.cli import app
from data_engine.sim.synth import SynthConfig, synthesize
from export.exporter import export_checkpoint

pytestmark = pytest.mark.slow

W, H = 352, 198


@pytest.fixture(scope="module")
def world(tmp_path_factory, synth_world):
    """The shared labeled world (2 scenes of 3 frames, W x H), a pool of 4 scenes of 5 frames, and the tiny
    model at its random initialization, exported."""
    root = tmp_path_factory.mktemp("mining")
    labeled, pool = synth_world, root / "pool"
    synthesize(SynthConfig(out=pool, scenes=4, frames=5, seed=22, width=W, height=H, unlabeled=True), progress=False)
    ckpt, _ = random_tiny_checkpoint(root / "run" / "best.pt")
    export_checkpoint(ckpt, root / "export", ["fp32"], evaluate=False, log=lambda _: None)
    return {"root": root, "labeled": labeled, "pool": pool, "model": root / "export" / "model.fp32.onnx"}


def _catalog(world, path: Path, pool: Path | None = None) -> Path:
    with Catalog.open(path) as cat:
        cat.index_dataset(world["labeled"])
        cat.index_dataset(pool or world["pool"], unlabeled=True)
    return path


def _mine(world, db: Path, *extra: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["mine", "--model", str(world["model"]), "--catalog", str(db), *extra])
    return res.exit_code, res.output


def _scores(db: Path, run: str) -> dict[tuple[str, str], float]:
    with Catalog.open(db) as cat:
        rid = cat.run_id(run)
        return {(tok, s): v for tok, s, v in cat.conn.execute(
            "SELECT f.sample_token, s.strategy, s.score FROM scores s JOIN frames f ON f.id = s.frame_id"
            " WHERE s.run_id = ?", (rid,))}


STRATS = "det_entropy,det_margin,seg_entropy,flicker,rare:trailer@0.2,novelty,random"


def test_mine_scores_every_pool_frame_and_selects_with_reasons(world, tmp_path) -> None:
    db = _catalog(world, tmp_path / "cat.db")
    code, out = _mine(world, db, "--strategy", STRATS, "--budget", "4", "--run", "r1", "--batch", "2")
    assert code == 0, out
    with Catalog.open(db) as cat:
        st = cat.status()
        run = next(r for r in st["mining_runs"] if r["name"] == "r1")
        # 20 pool frames ranked, plus the 6 labeled ones embedded as novelty's reference.
        assert run["scored"] == 26 and run["failed"] == 0 and run["status"] == "selected"
        picks = cat.selections("r1")
        assert 1 <= len(picks) <= 4 and st["label_states"]["queued"] == len(picks)
        assert all(p.frame.label_state == "queued" and p.reasons for p in picks)
        assert [p.rank for p in picks] == list(range(len(picks)))
        for a in picks:  # temporal suppression: 2 s between picks of one scene
            for b in picks:
                if a is not b and a.frame.scene_name == b.frame.scene_name:
                    assert abs(a.frame.timestamp - b.frame.timestamp) >= 2e6
        scores = _scores(db, "r1")
        pool_tokens = {f.sample_token for f in cat.query(dataset=str(world["pool"]))}
    for strategy in STRATS.split(","):
        assert {t for t, s in scores if s == strategy} >= pool_tokens, strategy
    # The first frame of a scene has nothing to flicker against.
    with Catalog.open(db) as cat:
        firsts = {f.sample_token for f in cat.query(dataset=str(world["pool"])) if f.frame_index == 0}
    assert all(scores[(t, "flicker")] == 0.0 for t in firsts)
    # The same command again (after a kill just after the selection, say) changes nothing and says so;
    # other settings under a finished run's name are refused. Status and query see the run.
    with Catalog.open(db) as cat:
        picked = [(p.frame.sample_token, p.rank) for p in cat.selections("r1")]
    code, out = _mine(world, db, "--strategy", STRATS, "--budget", "4", "--run", "r1")
    assert code == 0 and f"is finished: its {len(picked)} picks stand" in out, out
    with Catalog.open(db) as cat:
        assert [(p.frame.sample_token, p.rank) for p in cat.selections("r1")] == picked
    assert _scores(db, "r1") == scores
    code, out = _mine(world, db, "--strategy", STRATS, "--budget", "5", "--run", "r1")
    assert code == 1 and "is finished" in out
    res = CliRunner().invoke(app, ["query", "--catalog", str(db), "--run", "r1", "--strategy", "random",
                                   "--min-score", "0.5", "--json"])
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert rows and all(scores[(r["sample_token"], "random")] >= 0.5 for r in rows)


def test_batching_workers_and_ray_score_alike(world, tmp_path) -> None:
    strategies = "det_entropy,seg_entropy,flicker"
    runs = {"one": ("--batch", "1", "--workers", "1"), "batched": ("--batch", "3", "--workers", "1"),
            "procs": ("--batch", "1", "--workers", "2"), "ray": ("--engine", "ray", "--workers", "2")}
    got = {}
    for name, extra in runs.items():
        db = _catalog(world, tmp_path / f"{name}.db")
        code, out = _mine(world, db, "--strategy", strategies, "--budget", "3", "--run", name, *extra)
        assert code == 0, f"{name}: {out}"
        got[name] = _scores(db, name)
    ref = got["one"]
    assert len(ref) == (20 + 6) * 3  # the pool, and the labeled frames as diversity's reference
    for name, scores in got.items():
        assert scores.keys() == ref.keys(), name
        diff = max(abs(scores[k] - ref[k]) for k in ref)
        assert diff < 1e-3, f"{name} differs from one-at-a-time scoring by {diff}"


def test_a_killed_run_resumes_without_scoring_twice(world, tmp_path) -> None:
    db = _catalog(world, tmp_path / "cat.db")
    cmd = [sys.executable, "-m", "data_engine.cli", "mine", "--model", str(world["model"]), "--catalog", str(db),
           "--strategy", "det_entropy,flicker", "--budget", "3", "--run", "resume", "--threads", "1", "--diversity", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    done = 0
    while time.time() < deadline and proc.poll() is None:
        try:
            with sqlite3.connect(db, timeout=5) as c:
                done = c.execute("SELECT COUNT(*) FROM run_scenes").fetchone()[0]
        except sqlite3.OperationalError:
            done = 0
        if done >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed; make the pool bigger"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    with Catalog.open(db) as cat:
        rid = cat.run_id("resume")
        before = cat.done_scenes(rid)
        assert 1 <= len(before) < 4
        written = {f for (f,) in cat.conn.execute("SELECT frame_id FROM frame_results WHERE run_id = ?", (rid,))}
        assert len(written) == 5 * len(before)  # whole scenes only
    code, out = _mine(world, db, "--strategy", "det_entropy,flicker", "--budget", "3", "--run", "resume",
                      "--diversity", "0")
    assert code == 0, out
    assert "resumed" in out and f"{4 - len(before)} scenes to score, {len(before)} already scored" in out
    with Catalog.open(db) as cat:
        rid = cat.run_id("resume")
        n = cat.conn.execute("SELECT COUNT(*), COUNT(DISTINCT frame_id) FROM frame_results WHERE run_id = ?",
                             (rid,)).fetchone()
        assert n == (20, 20)
        assert cat.conn.execute("SELECT COUNT(*) FROM scores WHERE run_id = ?", (rid,)).fetchone()[0] == 40


def test_unreadable_frames_fail_with_a_reason_and_plugins_score(world, tmp_path) -> None:
    import shutil

    pool = tmp_path / "pool"
    shutil.copytree(world["pool"], pool, symlinks=True)
    db = _catalog(world, tmp_path / "cat.db", pool)
    with Catalog.open(db) as cat:
        frame = cat.query(dataset=str(pool), scene="scene-0001")[2]
    broken = pool / frame.cameras["CAM_BACK"]
    broken.write_bytes(b"not a jpeg")
    (pool / frame.cameras["CAM_FRONT"]).unlink()
    plugin = tmp_path / "plugin.py"
    plugin.write_text(textwrap.dedent("""
        from data_engine.mining.strategies import Strategy, register

        @register("box_count")
        def box_count(arg):
            class Count(Strategy):
                def score(self, out, prev):
                    return float(len(out.boxes)), {"boxes": len(out.boxes)}
            return Count("box_count")
    """))
    code, out = _mine(world, db, "--strategy", "box_count,flicker", "--budget", "2", "--run", "p",
                      "--plugin", str(plugin), "--workers", "2", "--weights", "box_count=2,flicker=0.5", "--diversity", "0")
    assert code == 0, out
    assert "19 frames scored, 1 failed" in out
    with Catalog.open(db) as cat:
        rid = cat.run_id("p")
        status, reason = cat.conn.execute("SELECT status, reason FROM frame_results WHERE run_id = ? AND frame_id = ?",
                                          (rid, frame.id)).fetchone()
        assert status == "failed" and "CAM_FRONT" in reason and "CAM_BACK" in reason
        assert cat.conn.execute("SELECT COUNT(*) FROM scores WHERE run_id = ? AND strategy = 'box_count'",
                                (rid,)).fetchone()[0] == 19
        assert frame.id not in {p.frame.id for p in cat.selections("p")}
    code, out = _mine(world, db, "--strategy", "nope", "--budget", "2")
    assert code == 1 and "unknown strategy 'nope'" in out
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    res = CliRunner().invoke(app, ["mine", "--model", str(junk), "--catalog", str(db), "--strategy", "det_entropy",
                                   "--budget", "2", "--workers", "2"])
    assert res.exit_code == 1 and "junk.onnx: not a usable exported model" in res.output
    nan = tmp_path / "nan_plugin.py"
    nan.write_text(textwrap.dedent("""
        from data_engine.mining.strategies import Strategy, register

        @register("broken_nan")
        def broken_nan(arg):
            class NaN(Strategy):
                def score(self, out, prev):
                    return float("nan"), {}
            return NaN("broken_nan")
    """))
    code, out = _mine(world, db, "--strategy", "broken_nan", "--budget", "2", "--plugin", str(nan), "--run", "nan")
    assert code == 1 and "strategy broken_nan on frame" in out and "must be finite" in out
    with Catalog.open(db) as cat:
        assert cat.run_info("nan")["status"] == "failed"
    code, out = _mine(world, db, "--strategy", "det_entropy,disagreement", "--budget", "2")
    assert code == 1 and "separate runs" in out
    code, out = _mine(world, db, "--strategy", "det_entropy", "--budget", "2", "--weights", "flicker=1")
    assert code == 1 and "--weights names ['flicker']" in out


def test_strategies_fitted_to_the_labeled_frames(world, tmp_path) -> None:
    """rare@fire calibrates on the labeled frames' scores, query reads their labels (motorcycles: the
    first two frames of the labeled world), typical clusters them with the pool."""
    db = _catalog(world, tmp_path / "cat.db")
    rare, strats = "rare:trailer@fire=0.5", "rare:trailer@fire=0.5,query:motorcycle,typical"
    code, out = _mine(world, db, "--strategy", strats, "--budget", "3", "--run", "fit", "--diversity", "0",
                      "--weights", f"{rare}=5")
    assert code == 0, out
    scores = _scores(db, "fit")
    with Catalog.open(db) as cat:
        picks = cat.selections("fit")
        labeled = {f.sample_token for f in cat.query(label_state="labeled")}
        pool = {f.sample_token for f in cat.query(dataset=str(world["pool"]))}
    assert len(labeled) == 6 and len(picks) == 3
    threshold = float(np.quantile([scores[(t, rare)] for t in labeled], 0.5))
    fired = [r for p in picks for r in p.reasons if r.startswith(f"{rare} fired")]
    assert fired and all(r.endswith(f" >= {threshold:.3f})") for r in fired), (threshold, fired)
    assert {t for t, s in scores if s == "query:motorcycle"} == pool  # the run strategies rank the pool
    assert all(scores[(t, "query:motorcycle")] > 0 for t in pool)
    assert 1 <= sum(scores[(t, "typical")] > 0 for t in pool) <= 9  # at most one per cluster (6 labeled + 3)
    code, out = _mine(world, db, "--strategy", "query:trailer", "--budget", "3", "--run", "no_trailer")
    assert code == 1 and "no labeled frame holds 'trailer'" in out and "rare:trailer@fire=R" in out, out
    with Catalog.open(db) as cat:
        assert cat.run_info("no_trailer")["status"] == "failed"


def test_label_qa_run_and_similar(world, tmp_path) -> None:
    db = _catalog(world, tmp_path / "cat.db")
    code, out = _mine(world, db, "--strategy", "disagreement:0.0", "--budget", "3", "--run", "qa")
    assert code == 0, out
    with Catalog.open(db) as cat:
        picks = cat.selections("qa")
        assert picks and all(p.frame.label_state == "labeled" for p in picks)  # label QA does not queue
        assert cat.status()["label_states"]["queued"] == 0
    code, out = _mine(world, db, "--strategy", "det_entropy", "--budget", "2", "--run", "sim")
    assert code == 0, out
    with Catalog.open(db) as cat:
        token = cat.query(dataset=str(world["pool"]))[0].sample_token
    res = CliRunner().invoke(app, ["similar", token, "--k", "3", "--catalog", str(db), "--run", "sim", "--json"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in res.output.splitlines()]
    assert len(rows) == 3 and token not in {r["frame"] for r in rows}
    assert [r["distance"] for r in rows] == sorted(r["distance"] for r in rows)
    res = CliRunner().invoke(app, ["similar", "nope", "--catalog", str(db)])
    assert res.exit_code == 1 and "no frame 'nope'" in res.output
    assert np.isfinite(rows[0]["distance"])
