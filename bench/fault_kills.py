"""Kill, crowd and starve the long jobs: the kill sweep, concurrent writers and full disks of
``python -m bench.faults``.

Every job runs as a user would run it, as a command in its own process group. A kill is SIGKILL to
the whole group (a power cut, not a polite stop) at a random moment between 30 % and 98 % of an
uninterrupted run's duration (before that the interpreter is mostly still starting); then the same command runs again and must finish with exactly what the uninterrupted run
made: the same dataset bytes, bit-identical weights, the same picks and no score counted twice, one
dataset version with the same tables and no litter, the same loop report.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from data_engine.labels.versions import MANIFEST

ROOT = Path(__file__).resolve().parents[1]
W, H = 352, 198  # the worlds of the sweep: small, so a kill lands anywhere in a run of seconds
ENGINE = [sys.executable, "-m", "data_engine.cli"]
PERCEPTION = [sys.executable, "-m", "perception.cli"]


@dataclass
class Outcome:
    """One command's run: exit code, seconds, output, and whether a traceback reached the user."""

    code: int
    seconds: float
    stdout: str
    stderr: str

    @property
    def traceback(self) -> bool:
        return "Traceback (most recent call last)" in self.stderr or "Traceback" in self.stdout


@dataclass
class Tally:
    """What one part of the sweep saw: trials, survivals, tracebacks and losses, with the reasons."""

    trials: int = 0
    landed: int = 0  # kills that struck a running job (the others came after it had ended)
    survived: int = 0
    tracebacks: int = 0
    data_lost: int = 0
    problems: list[str] = field(default_factory=list)

    def check(self, ok: bool, problem: str, lost: bool = False) -> bool:
        if not ok:
            self.problems.append(problem)
            self.data_lost += int(lost)
        return ok

    def count(self, *outcomes: Outcome) -> None:
        for o in outcomes:
            if o.traceback:
                self.tracebacks += 1
                self.problems.append("traceback: " + o.stderr.strip().splitlines()[-1][:200])


def run(cmd: list[str], kill_after: float | None = None, timeout: float = 1800) -> tuple[Outcome, bool]:
    """Run ``cmd`` to the end, or SIGKILL its process group after ``kill_after`` s; returns the
    outcome and whether it was killed (False when it ended first)."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    start = time.perf_counter()
    with open(os.devnull, "rb") as stdin:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True, start_new_session=True)
    killed = False
    try:
        out, err = proc.communicate(timeout=kill_after if kill_after is not None else timeout)
    except subprocess.TimeoutExpired:
        killed = kill_after is not None
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    return Outcome(proc.returncode, time.perf_counter() - start, out, err), killed


def tree_digest(root: Path, skip: Callable[[Path], bool] = lambda p: False) -> str:
    """SHA-256 over every file's relative path and bytes (symlinks by target)."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if skip(p):
            continue
        rel = p.relative_to(root).as_posix()
        if p.is_symlink():
            h.update(f"{rel} -> {os.readlink(p)}\n".encode())
        elif p.is_file():
            h.update(rel.encode() + b"\n" + hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


# -- the workspace every part starts from ------------------------------------------------------------------
@dataclass
class Workspace:
    root: Path
    labeled: Path
    pool: Path
    model: Path  # an exported fp32 .onnx of a briefly trained tiny model
    catalog_dir: Path  # catalog.db indexing labeled and pool, nothing mined
    mined_dir: Path  # catalog.db with run "r" mined and its picks labeled into labels.json


def train_args(data: Path, out: Path, name: str, steps: int) -> list[str]:
    return [*PERCEPTION, "train", "preset=tiny", f"train.data={data}", f"train.out_root={out}", f"train.name={name}",
            "train.deterministic=true", "train.num_workers=0", f"train.steps={steps}", "train.ckpt_every=2",
            "train.warmup_steps=1", "train.log_every=1", "augment.enabled=false", "train.val_split=null",
            "train.vis_every=0"]


def synth_args(out: Path, scenes: int, frames: int, seed: int, *extra: str) -> list[str]:
    return [*ENGINE, "synth", "--out", str(out), "--scenes", str(scenes), "--frames", str(frames), "--seed", str(seed),
            "--width", str(W), "--height", str(H), "--workers", "1", *extra]


def mine_args(model: Path, catalog: Path, run_name: str, strategy: str = "det_entropy,random", budget: int = 4) -> list[str]:
    return [*ENGINE, "mine", "--model", str(model), "--catalog", str(catalog), "--strategy", strategy,
            "--budget", str(budget), "--run", run_name]


def must(cmd: list[str]) -> Outcome:
    out, _ = run(cmd)
    if out.code != 0:
        raise RuntimeError(f"{' '.join(cmd[2:])} failed:\n{out.stderr[-3000:]}")
    return out


def prepare(root: Path, log: Callable[[str], None]) -> Workspace:
    """Render the worlds, train and export a model, index a catalog, mine and label it (once)."""
    root.mkdir(parents=True, exist_ok=True)
    ws = Workspace(root, root / "labeled", root / "pool", root / "export" / "model.fp32.onnx", root / "catalog",
                   root / "mined")
    if (root / "ready").is_file():
        return ws
    log("workspace: render a labeled world and an unlabeled pool, train and export a model, mine and label")
    must(synth_args(ws.labeled, 2, 3, 21))
    must(synth_args(ws.pool, 6, 5, 22, "--unlabeled", "--first-scene", "2"))
    if not (root / "runs" / "model" / "last.pt").is_file():
        must(train_args(ws.labeled, root / "runs", "model", 2))
    must([*PERCEPTION, "export", "--checkpoint", str(root / "runs" / "model" / "last.pt"), "--out", str(root / "export"),
          "--precision", "fp32", "--no-eval"])
    shutil.rmtree(ws.catalog_dir, ignore_errors=True)
    must([*ENGINE, "index", str(ws.labeled), "--catalog", str(ws.catalog_dir / "catalog.db")])
    must([*ENGINE, "index", str(ws.pool), "--unlabeled", "--catalog", str(ws.catalog_dir / "catalog.db")])
    shutil.rmtree(ws.mined_dir, ignore_errors=True)
    shutil.copytree(ws.catalog_dir, ws.mined_dir)
    db = ws.mined_dir / "catalog.db"
    must(mine_args(ws.model, db, "r", budget=4))
    must([*ENGINE, "label", "--catalog", str(db), "--oracle", "sim", "--run", "r", "--out",
          str(ws.mined_dir / "labels.json")])
    (root / "ready").write_text("ok\n")
    return ws


# -- one kill target each --------------------------------------------------------------------------------
@dataclass
class Target:
    """A command to kill: how to set up a fresh trial, the command, the re-run, and what it must make."""

    name: str
    setup: Callable[[Path], None]  # make a fresh trial directory
    command: Callable[[Path], list[str]]
    rerun: Callable[[Path], list[str]]
    result: Callable[[Path], object]  # what the finished job made, comparable between trials
    may_refuse: Callable[[Path, Outcome], bool] = lambda d, o: False  # a re-run that rightly refuses (job was done)


def _catalog_rows(db: Path, sql: str) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


def targets(ws: Workspace, loop_steps: int) -> list[Target]:
    def synth_result(d: Path) -> object:
        return tree_digest(d / "ds", skip=lambda p: p.parent.name == ".synth" and p.name == "lock")

    def train_result(d: Path) -> object:
        import torch

        ckpt = torch.load(d / "runs" / "t" / "last.pt", map_location="cpu", weights_only=True)
        weights = hashlib.sha256()
        for part in ("model", "ema"):
            for k, v in sorted((ckpt.get(part) or {}).items()):
                weights.update(k.encode() + v.numpy().tobytes())
        steps = [line.split(",")[0] for line in (d / "runs" / "t" / "metrics.csv").read_text().splitlines()[1:]]
        return ckpt["step"], weights.hexdigest(), steps

    def copy_catalog(src: Path) -> Callable[[Path], None]:
        def setup(d: Path) -> None:
            shutil.copytree(src, d / "cat")
        return setup

    def mine_result(d: Path) -> object:
        db = d / "cat" / "catalog.db"
        picks = _catalog_rows(db, "SELECT f.sample_token, s.rank FROM selections s JOIN frames f ON f.id = s.frame_id "
                                  "ORDER BY s.rank")
        scores = _catalog_rows(db, "SELECT COUNT(*), COUNT(DISTINCT frame_id || '/' || strategy) FROM scores")[0]
        status = _catalog_rows(db, "SELECT status FROM mining_runs")
        return picks, scores[0] == scores[1], scores[0], status

    def ingest_result(d: Path) -> object:
        db = d / "cat" / "catalog.db"
        versions = sorted(p.name for p in (d / "cat" / "versions").iterdir()) if (d / "cat" / "versions").is_dir() else []
        tables = tree_digest(d / "cat" / "versions" / "v1", skip=lambda p: p.name == MANIFEST) \
            if "v1" in versions else None
        states = _catalog_rows(db, "SELECT label_state, COUNT(*) FROM frames GROUP BY label_state ORDER BY 1")
        batches = _catalog_rows(db, "SELECT COUNT(*) FROM label_batches")
        return versions, tables, states, batches

    def ingest_done(d: Path, o: Outcome) -> bool:
        """The killed ingest had committed: the re-run rightly refuses, in one line."""
        names = [r[0] for r in _catalog_rows(d / "cat" / "catalog.db", "SELECT name FROM dataset_versions")]
        return "v1" in names and o.code == 1 and not o.traceback and o.stderr.startswith("error: ")

    def loop_setup(d: Path) -> None:
        (d / "loop.yaml").write_text("\n".join([
            f"seed_data: {ws.labeled}", f"pool: {ws.pool}", f"out: {d / 'out'}", "train_config: configs/tiny_loop.yaml",
            "train_overrides: ['train.num_workers=0', 'train.deterministic=true', 'train.warmup_steps=1']",
            f"steps: {loop_steps}", "rounds: 1", "budget: 2", "precision: fp32", "device: cpu",
            "arms:", "  - {name: mined, strategies: [det_entropy]}"]) + "\n")

    def loop_result(d: Path) -> object:
        report = json.loads((d / "out" / "loop_report.json").read_text())
        return [{k: v for k, v in r.items()} for r in report["rows"]]

    loop_cmd = lambda d: [*ENGINE, "loop", "--config", str(d / "loop.yaml")]  # noqa: E731
    ingest_cmd = lambda d: [*ENGINE, "ingest", str(ws.mined_dir / "labels.json"), "--catalog",  # noqa: E731
                            str(d / "cat" / "catalog.db"), "--name", "v1"]
    mine_cmd = lambda d: mine_args(ws.model, d / "cat" / "catalog.db", "r")  # noqa: E731
    return [
        Target("synth", lambda d: None, lambda d: synth_args(d / "ds", 2, 3, 9), lambda d: synth_args(d / "ds", 2, 3, 9),
               synth_result),
        Target("train", lambda d: None, lambda d: train_args(ws.labeled, d / "runs", "t", 6),
               lambda d: train_args(ws.labeled, d / "runs", "t", 6)
               + (["--resume"] if (d / "runs" / "t" / "last.pt").is_file() else []), train_result),
        Target("mine", copy_catalog(ws.catalog_dir), mine_cmd, mine_cmd, mine_result),
        Target("ingest", copy_catalog(ws.mined_dir), ingest_cmd, ingest_cmd, ingest_result, ingest_done),
        Target("loop", loop_setup, loop_cmd, loop_cmd, loop_result),
    ]


def sweep_target(t: Target, work: Path, kills: int, rng: random.Random, log: Callable[[str], None]) -> Tally:
    """One uninterrupted reference run, then ``kills`` trials: kill at a random moment, run again."""
    tally = Tally()
    ref_dir = work / t.name / "reference"
    shutil.rmtree(ref_dir, ignore_errors=True)
    ref_dir.mkdir(parents=True)
    t.setup(ref_dir)
    ref, _ = run(t.command(ref_dir))
    tally.count(ref)
    if ref.code != 0:
        tally.problems.append(f"{t.name}: the uninterrupted run failed: {ref.stderr.strip()[-300:]}")
        return tally
    expected = t.result(ref_dir)
    for i in range(kills):
        d = work / t.name / f"kill{i}"
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
        t.setup(d)
        at = rng.uniform(0.3, 0.98) * ref.seconds  # the first third is mostly the interpreter starting
        first, killed = run(t.command(d), kill_after=at)
        again, _ = run(t.rerun(d))
        tally.trials += 1
        tally.landed += int(killed)
        tally.count(first, again)
        ok = again.code == 0 or t.may_refuse(d, again)
        tally.check(ok, f"{t.name} kill {i} at {at:.1f} s: the re-run failed: {again.stderr.strip()[-300:]}")
        try:
            same = t.result(d) == expected
        except Exception as exc:  # an artifact missing or unreadable after the re-run
            same = False
            tally.problems.append(f"{t.name} kill {i}: {type(exc).__name__}: {exc}")
        ok = tally.check(same, f"{t.name} kill {i} at {at:.1f} s ({'killed' if killed else 'ended first'}): the "
                               "re-run's result differs from the uninterrupted run's", lost=True) and ok
        tally.survived += int(ok)
        log(f"  {t.name} kill {i + 1}/{kills} at {at:.1f} s of {ref.seconds:.1f}: {'ok' if ok else 'FAILED'}")
    return tally
