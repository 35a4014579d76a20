"""Two writers at once and full disks, for ``python -m bench.faults``.

Two mines on one catalog must both finish with every frame scored once per run. Two ingests on one
catalog must both land, and the newest version must hold both batches' frames (a version built from
a stale parent would silently drop the other batch's labels). A disk that fills under a checkpoint,
a dataset version or a catalog must end in one line naming the file, keep what was there, and let
the same command finish once there is room again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from .fault_kills import ENGINE, Outcome, Tally, Workspace, _catalog_rows, mine_args, must, run, train_args


def _one_line_error(o: Outcome) -> bool:
    lines = [line for line in o.stderr.splitlines() if line.strip()]
    return o.code == 1 and not o.traceback and len(lines) >= 1 and lines[-1].startswith("error: ")


def _parallel(*cmds: list[str]) -> list[Outcome]:
    """Start every command, then wait for each."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen(c, cwd=Path(__file__).resolve().parents[1], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=1800)
        outs.append(Outcome(p.returncode, 0.0, out, err))
    return outs


def _fresh_copy(src: Path, dst: Path) -> Path:
    """``dst``, a fresh copy of the directory ``src`` (a catalog and what lies beside it)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(src, dst)
    return dst


def concurrent_mines(ws: Workspace, work: Path) -> Tally:
    tally = Tally(trials=1)
    d = _fresh_copy(ws.catalog_dir, work / "two_mines")
    db = d / "catalog.db"
    a, b = _parallel(mine_args(ws.model, db, "m1", "det_entropy", 2), mine_args(ws.model, db, "m2", "random", 2))
    tally.count(a, b)
    frames = _catalog_rows(db, "SELECT COUNT(*) FROM frames")[0][0]
    ok = tally.check(a.code == 0 and b.code == 0, f"two mines: exit codes {a.code}, {b.code}: "
                                                  f"{(a.stderr + b.stderr).strip()[-300:]}")
    for name in ("m1", "m2"):
        rows = _catalog_rows(db, "SELECT r.status, COUNT(fr.frame_id), COUNT(DISTINCT fr.frame_id) FROM mining_runs r "
                                 f"LEFT JOIN frame_results fr ON fr.run_id = r.id WHERE r.name = '{name}' GROUP BY r.id")
        ok = tally.check(bool(rows) and rows[0] == ("selected", frames, frames),
                         f"two mines: run {name} ended {rows}, expected every one of {frames} frames once", lost=True) and ok
    tally.survived = int(ok)
    return tally


def concurrent_ingests(ws: Workspace, work: Path) -> Tally:
    """Two label batches of disjoint frames ingested at once into one catalog."""
    tally = Tally(trials=1)
    d = _fresh_copy(ws.catalog_dir, work / "two_ingests")
    db = d / "catalog.db"
    for run_name, strategy in (("a", "det_entropy"), ("b", "random")):
        must(mine_args(ws.model, db, run_name, strategy, 2))
        must([*ENGINE, "label", "--catalog", str(db), "--oracle", "sim", "--run", run_name, "--out",
              str(d / f"{run_name}.json")])
    outs = _parallel(*([*ENGINE, "ingest", str(d / f"{n}.json"), "--catalog", str(db), "--name", f"v{n}"]
                       for n in ("a", "b")))
    tally.count(*outs)
    for n, o in zip(("a", "b"), outs):  # a clean refusal ("busy, run again") is allowed once
        if o.code != 0 and _one_line_error(o):
            again, _ = run([*ENGINE, "ingest", str(d / f"{n}.json"), "--catalog", str(db), "--name", f"v{n}"])
            tally.count(again)
            o.code = again.code
    ok = tally.check(all(o.code == 0 for o in outs), "two ingests: " + " | ".join(o.stderr.strip()[-200:] for o in outs))
    picked = {r[0] for r in _catalog_rows(db, "SELECT f.sample_token FROM selections s JOIN frames f ON f.id = s.frame_id")}
    newest = _catalog_rows(db, "SELECT root FROM dataset_versions ORDER BY id DESC LIMIT 1")
    held: set[str] = set()
    if newest:
        tables = next(Path(newest[0][0]).glob("v1.0-*"))
        held = {s["token"] for s in json.loads((tables / "sample.json").read_text())}
    ok = tally.check(bool(picked) and picked <= held, f"two ingests: the newest version lacks "
                                                      f"{len(picked - held)} of the {len(picked)} labeled frames",
                     lost=True) and ok
    tally.survived = int(ok)
    return tally


@contextlib.contextmanager
def tmpfs(path: Path, size: int) -> Iterator[Path]:
    """A tmpfs of ``size`` bytes mounted at ``path`` (needs root)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def grow(path: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True)


def full_disks(ws: Workspace, work: Path) -> dict[str, Tally]:
    """A checkpoint, a dataset version and a catalog written onto a disk that fills up."""
    if os.geteuid() != 0:
        return {}
    import torch

    out: dict[str, Tally] = {}
    ckpt_size = (ws.root / "runs" / "model" / "last.pt").stat().st_size

    t = out.setdefault("train", Tally(trials=1))
    with tmpfs(work / "disk_train", ckpt_size * 3 // 2 + (2 << 20)) as disk:
        full, _ = run(train_args(ws.labeled, disk, "t", 4))
        t.count(full)
        ok = t.check(_one_line_error(full) and "last.pt: cannot write the checkpoint: no space left" in full.stderr,
                     f"train on a full disk: {full.stderr[-300:]}")
        ckpt = torch.load(disk / "t" / "last.pt", weights_only=True) if (disk / "t" / "last.pt").is_file() else None
        ok = t.check(ckpt is not None and ckpt["step"] == 2, "train on a full disk: the previous checkpoint is gone",
                     lost=True) and ok
        ok = t.check(not list((disk / "t").glob(".*.tmp")), "train on a full disk: a temporary file was left") and ok
        grow(disk, ckpt_size * 4)
        again, _ = run(train_args(ws.labeled, disk, "t", 4) + ["--resume"])
        t.count(again)
        t.survived = int(t.check(again.code == 0, f"train after freeing space: {again.stderr[-300:]}") and ok)

    t = out.setdefault("ingest", Tally(trials=1))
    d = _fresh_copy(ws.mined_dir, work / "disk_ingest")
    db = d / "catalog.db"
    before = _catalog_rows(db, "SELECT label_state, COUNT(*) FROM frames GROUP BY 1 ORDER BY 1")
    with tmpfs(d / "disk", 16 << 10) as disk:
        cmd = [*ENGINE, "ingest", str(d / "labels.json"), "--catalog", str(db), "--name", "v1", "--out", str(disk / "v1")]
        full, _ = run(cmd)
        t.count(full)
        ok = t.check(_one_line_error(full) and f"{disk / 'v1'}: cannot write the version: no space left" in full.stderr,
                     f"ingest on a full disk: {full.stderr[-300:]}")
        after = _catalog_rows(db, "SELECT label_state, COUNT(*) FROM frames GROUP BY 1 ORDER BY 1")
        versions = _catalog_rows(db, "SELECT COUNT(*) FROM dataset_versions")[0][0]
        ok = t.check(after == before and versions == 0 and not any(disk.iterdir()),
                     f"ingest on a full disk changed the catalog or left files: {after} vs {before}", lost=True) and ok
        grow(disk, 64 << 20)
        again, _ = run(cmd)
        t.count(again)
        t.survived = int(t.check(again.code == 0, f"ingest after freeing space: {again.stderr[-300:]}") and ok)

    t = out.setdefault("mine", Tally(trials=1))
    d = work / "disk_mine"
    shutil.rmtree(d, ignore_errors=True)
    with tmpfs(d, (ws.catalog_dir / "catalog.db").stat().st_size + (96 << 10)) as disk:  # fills mid-run
        shutil.copy(ws.catalog_dir / "catalog.db", disk / "catalog.db")
        cmd = mine_args(ws.model, disk / "catalog.db", "r")
        full, _ = run(cmd)
        t.count(full)
        ok = t.check(_one_line_error(full) and f"{disk / 'catalog.db'}: no space left" in full.stderr,
                     f"mine on a full disk: {full.code} {full.stderr[-300:]}")
        grow(disk, 64 << 20)  # SQLite rolls a hot journal back only with room to write
        status = _catalog_rows(disk / "catalog.db", "SELECT status FROM mining_runs")
        ok = t.check(status == [("failed",)], f"mine on a full disk left the run marked {status}, expected failed") and ok
        again, _ = run(cmd)
        t.count(again)
        reference = _catalog_rows(ws.mined_dir / "catalog.db", "SELECT f.sample_token FROM selections s "
                                  "JOIN frames f ON f.id = s.frame_id ORDER BY s.rank")
        picks = _catalog_rows(disk / "catalog.db", "SELECT f.sample_token FROM selections s "
                              "JOIN frames f ON f.id = s.frame_id ORDER BY s.rank") if again.code == 0 else []
        t.survived = int(t.check(again.code == 0 and picks == reference,
                                 f"mine after freeing space: {again.stderr[-300:]}; picks equal: {picks == reference}",
                                 lost=again.code == 0) and ok)
    return out
