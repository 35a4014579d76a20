"""Faults of the data engine: a tampered catalog schema, mining failures (corrupt images, a plugin that
raises, a full disk), a loop configured wrong, a killed ingest's leftovers, concurrent ingests, and label
files with duplicate boxes or too large to read."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from data_engine.labels import ingest as ingest_module
from data_engine.labels import records as labels_module
from data_engine.catalog import SCHEMA_VERSION, Catalog, CatalogError
from data_engine.cli import app
from data_engine.labels.autolabel import oracle_labels
from data_engine.labels.ingest import ingest
from data_engine.labels.records import LabelsError, write_json
from data_engine.loop import Arm, LoopConfig, LoopError, run_loop
from perception.data.nuscenes import load_dataset

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


def one_error_line(res) -> str:
    """A command that failed as the command lines fail: exit 1, no traceback, one ``error: ...`` line."""
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), (res.output, res.exception)
    assert len(errors) == 1 and "Traceback" not in res.output, res.output
    return errors[0]


# -- a catalog whose schema version was changed --------------------------------------------------------------
@pytest.mark.parametrize("recorded", [0, 1, SCHEMA_VERSION - 1, -1])
def test_a_tampered_schema_version_is_refused_naming_the_file_and_versions(tmp_path, recorded) -> None:
    db = tmp_path / "cat.db"
    Catalog.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {recorded}")
    conn.close()
    tables = sorted(n for (n,) in sqlite3.connect(db).execute("SELECT name FROM sqlite_master"))
    with pytest.raises(CatalogError) as info:
        Catalog.open(db)
    message = str(info.value)
    assert str(db) in message and f"version {recorded} is recorded" in message
    assert f"version {SCHEMA_VERSION}" in message
    conn = sqlite3.connect(db)  # nothing was migrated over the catalog
    assert conn.execute("PRAGMA user_version").fetchone()[0] == recorded
    assert sorted(n for (n,) in conn.execute("SELECT name FROM sqlite_master")) == tables
    conn.close()
    res = runner.invoke(app, ["status", "--catalog", str(db)])
    assert str(db) in one_error_line(res)


def test_a_catalog_of_no_known_schema_is_refused(tmp_path) -> None:
    db = tmp_path / "cat.db"
    Catalog.open(db).close()
    conn = sqlite3.connect(db)
    conn.execute("ALTER TABLE frames ADD COLUMN extra TEXT")
    conn.close()
    with pytest.raises(CatalogError, match=f"version {SCHEMA_VERSION} is recorded, but its tables match no schema"):
        Catalog.open(db)


# -- small worlds, catalogs and labels for the ingest tests ---------------------------------------------------
@pytest.fixture(scope="module")
def worlds(synth_world, synth_pool):
    """The shared labeled world and pool (tests/conftest.py): 2 scenes of 3 frames each."""
    return {"labeled": synth_world, "pool": synth_pool}


def queued_catalog(tmp_path: Path, worlds, batches: int = 1) -> tuple[Path, list[Path]]:
    """A catalog of both worlds with ``batches`` disjoint pairs of pool frames queued, and a labels file
    of each pair written by the sim oracle."""
    db = tmp_path / "cat.db"
    files = []
    with Catalog.open(db) as cat:
        cat.index_dataset(worlds["labeled"])
        cat.index_dataset(worlds["pool"], unlabeled=True)
        pool = cat.query(label_state="unlabeled")
        for k in range(batches):
            frames = pool[2 * k:2 * k + 2]
            cat.set_label_state([f.id for f in frames], "queued")
            out = tmp_path / f"labels{k}.json"
            write_json(out, oracle_labels(frames).to_json())
            files.append(out)
    return db, files


def catalog_state(db: Path) -> tuple[dict, list[str]]:
    with Catalog.open(db) as cat:
        versions = db.parent / "versions"
        return cat.status(), sorted(os.listdir(versions)) if versions.exists() else []


def run_ingest(db: Path, path: Path):
    with Catalog.open(db) as cat:
        return ingest(cat, path)


# -- label files: exact duplicate boxes, and a size limit ---------------------------------------------------------
def test_exact_duplicate_boxes_are_refused_naming_file_frame_and_box(worlds, tmp_path) -> None:
    db, (path,) = queued_catalog(tmp_path, worlds)
    labels = json.loads(path.read_text())
    anns = labels["sample_annotation"]
    assert len(anns) >= 2
    dup = dict(anns[1], token="f" * 32)  # the same box under another token
    anns.append(dup)
    path.write_text(json.dumps(labels))
    before = catalog_state(db)
    with Catalog.open(db) as cat, pytest.raises(LabelsError) as info:
        ingest(cat, path)
    message = str(info.value)
    last = len(anns) - 1
    assert str(path) in message and f"sample_annotation[{last}]" in message
    assert f"frame {dup['sample_token']!r}" in message and f"box {last} is an exact duplicate of box 1" in message
    assert catalog_state(db) == before
    # The same box in another frame is no duplicate.
    other = next(a for a in anns if a["sample_token"] != dup["sample_token"])
    anns[-1] = dict(dup, sample_token=other["sample_token"])
    assert labels_module.parse_labels(labels, str(path)).annotations[-1]["sample_token"] == other["sample_token"]


def test_a_labels_file_over_the_size_limit_is_refused_before_parsing(worlds, tmp_path, monkeypatch) -> None:
    db, (path,) = queued_catalog(tmp_path, worlds)
    size = path.stat().st_size
    assert labels_module.read_labels_file(path, max_bytes=size)["frames"]  # at the limit: read
    with pytest.raises(LabelsError, match="larger than the limit"):
        labels_module.read_labels_file(path, max_bytes=size - 1)
    monkeypatch.setattr(labels_module, "MAX_LABELS_FILE_BYTES", 4096)
    assert size > 4096
    before = catalog_state(db)
    res = runner.invoke(app, ["ingest", str(path), "--catalog", str(db)])
    line = one_error_line(res)
    assert str(path) in line and "0.00390625 MiB" in line and "MAX_LABELS_FILE_BYTES" in line
    assert catalog_state(db) == before
    fifo = tmp_path / "labels.fifo"  # no size to stat: the read itself is bounded
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            fifo.write_bytes(b" " * 10_000 + b"{}")
        except BrokenPipeError:
            pass  # the reader stopped at the limit

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    with pytest.raises(LabelsError, match="larger than the limit"):
        labels_module.read_labels_file(fifo)
    writer.join(30)


# -- a killed ingest's leftovers, and ingests at the same time -------------------------------------------------------
KILLED_INGEST = """
import os, signal, sys
import data_engine.labels.ingest as v
from data_engine.catalog import Catalog

def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)

setattr(v.Catalog if sys.argv[3] == "apply_label_batch" else v, sys.argv[3], die)
with Catalog.open(sys.argv[1]) as cat:
    v.ingest(cat, sys.argv[2])
"""


def killed_ingest(db: Path, labels: Path, at: str) -> None:
    """Run an ingest in a process that SIGKILLs itself when it calls ``at``."""
    proc = subprocess.run([sys.executable, "-c", KILLED_INGEST, str(db), str(labels), at], cwd=REPO,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def test_a_killed_ingest_leaves_nothing_the_next_one_keeps(worlds, tmp_path) -> None:
    db, (path,) = queued_catalog(tmp_path, worlds)
    versions = tmp_path / "versions"
    # Killed while the version is written: its temporary directory stays behind.
    killed_ingest(db, path, "load_dataset")
    assert [p.name for p in versions.iterdir() if p.name.startswith(".v0001.tmp-")]
    # Killed after the version is renamed into place, before the catalog records it: an orphan v0001.
    killed_ingest(db, path, "apply_label_batch")
    assert (versions / "v0001" / "version.json").is_file()
    with Catalog.open(db) as cat:
        assert cat.dataset_version() is None and len(cat.query(label_state="queued")) == 2
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
    try:  # a live writer's temporary directory is not touched
        (versions / f".v0007.tmp-{live.pid}").mkdir()
        summary = run_ingest(db, path)
        assert summary.version == "v0001" and any(p.endswith("v0001") for p in summary.litter)
        assert sorted(os.listdir(versions)) == [f".v0007.tmp-{live.pid}", "v0001"]
    finally:
        live.kill()
        live.wait()
    with Catalog.open(db) as cat:
        assert cat.dataset_version()["name"] == "v0001" and not cat.query(label_state="queued")
    assert {s.token for s in load_dataset(versions / "v0001").samples} >= set(json.loads(path.read_text())["frames"])


def test_two_ingests_at_once_both_land_one_after_the_other(worlds, tmp_path, monkeypatch) -> None:
    db, (first, second) = queued_catalog(tmp_path, worlds, batches=2)
    inside, go_on = threading.Event(), threading.Event()
    write = ingest_module._write_version

    def paused_write(*args, **kwargs):
        if threading.current_thread().name == "first":
            inside.set()
            assert go_on.wait(60)
        return write(*args, **kwargs)

    monkeypatch.setattr(ingest_module, "_write_version", paused_write)
    results: dict[str, object] = {}

    def work(path: Path) -> None:
        try:
            results[threading.current_thread().name] = run_ingest(db, path)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertions below
            results[threading.current_thread().name] = exc

    a = threading.Thread(target=work, args=(first,), name="first")
    b = threading.Thread(target=work, args=(second,), name="second")
    a.start()
    assert inside.wait(120)  # the first ingest is writing its version
    b.start()
    time.sleep(1.0)
    assert "second" not in results, results  # it waits for the first to finish
    go_on.set()
    a.join(120)
    b.join(120)
    ra, rb = results["first"], results["second"]
    assert not isinstance(ra, BaseException) and not isinstance(rb, BaseException), results
    assert (ra.version, rb.version) == ("v0001", "v0002") and rb.parent == "v0001"
    labeled = {t for p in (first, second) for t in json.loads(p.read_text())["frames"]}
    assert {s.token for s in load_dataset(rb.root).samples} >= labeled
    assert sorted(os.listdir(tmp_path / "versions")) == ["v0001", "v0002"]


# -- the loop checks its configuration before any work ---------------------------------------------------------------
def test_the_loop_refuses_a_bad_strategy_before_training(tmp_path, monkeypatch) -> None:
    def no_training(*args, **kwargs):
        raise AssertionError("the loop trained before checking its strategies")

    monkeypatch.setattr("data_engine.loop.train_round", no_training)
    for d in ("seed", "pool"):
        (tmp_path / d).mkdir()
    base = {"seed_data": str(tmp_path / "seed"), "pool": str(tmp_path / "pool"), "out": str(tmp_path / "out"),
            "train_config": str(REPO / "configs" / "tiny_cpu.yaml")}
    cfg = LoopConfig(**base, arms=[Arm("mined", ["det_entropy", "nope:3"]), Arm("random", ["random"])])
    with pytest.raises(LoopError) as info:
        run_loop(cfg, log=lambda _: None)
    message = str(info.value)
    assert "arms: mined: unknown strategy 'nope'" in message and "det_entropy" in message and "novelty" in message
    assert not (tmp_path / "out").exists()
    bad = {"plugins": ([str(tmp_path / "missing.py")], "strategy plugin file missing"),
           "arms": ([Arm("qa", ["disagreement"])], "ranks labeled frames"),
           "diversity": (2.0, "diversity must be in [0, 1]"), "engine": ("spark", "engine: expected one of local, ray"),
           "budget": ("3x", "budget: expected an integer >= 1")}
    for key, (value, expected) in bad.items():
        with pytest.raises(LoopError, match=expected.replace("[", r"\[").replace("]", r"\]")):
            run_loop(LoopConfig(**{**base, key: value}), log=lambda _: None)
    assert not (tmp_path / "out").exists()
    config = tmp_path / "loop.yaml"
    config.write_text("\n".join(f"{k}: {v}" for k, v in base.items())
                      + "\narms:\n  - {name: mined, strategies: [det_entropy, flickr]}\n")
    res = runner.invoke(app, ["loop", "--config", str(config)])
    assert "unknown strategy 'flickr'" in one_error_line(res)
    assert not (tmp_path / "out").exists()


# -- mining with a real exported model ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mining_world(tmp_path_factory, synth_world, synth_pool):
    """The shared labeled world and pool (6 frames), and the tiny model at its random initialization, exported."""
    from model_inputs import random_tiny_checkpoint

    from export.exporter import export_checkpoint

    root = tmp_path_factory.mktemp("faults_mining")
    ckpt, _ = random_tiny_checkpoint(root / "run" / "best.pt")
    export_checkpoint(ckpt, root / "export", ["fp32"], evaluate=False, log=lambda _: None)
    return {"labeled": synth_world, "pool": synth_pool, "model": root / "export" / "model.fp32.onnx"}


def mining_catalog(world, db: Path, pool: Path | None = None) -> Path:
    with Catalog.open(db) as cat:
        cat.index_dataset(world["labeled"])
        cat.index_dataset(pool or world["pool"], unlabeled=True)
    return db


def mine(world, db: Path, *extra: str):
    return runner.invoke(app, ["mine", "--model", str(world["model"]), "--catalog", str(db), "--budget", "2",
                               "--diversity", "0", *extra])


@pytest.mark.slow
def test_a_corrupt_image_fails_its_frame_naming_the_file(mining_world, tmp_path) -> None:
    pool = tmp_path / "pool"
    shutil.copytree(mining_world["pool"], pool, symlinks=True)
    db = mining_catalog(mining_world, tmp_path / "cat.db", pool)
    with Catalog.open(db) as cat:
        frame = cat.query(dataset=str(pool))[1]
    broken = pool / frame.cameras["CAM_FRONT_LEFT"]
    broken.write_bytes(b"\xff\xd8 not a jpeg")
    res = mine(mining_world, db, "--strategy", "det_entropy", "--run", "corrupt")
    assert res.exit_code == 0, res.output
    with Catalog.open(db) as cat:
        status, reason = cat.conn.execute("SELECT status, reason FROM frame_results WHERE run_id = ? AND frame_id = ?",
                                          (cat.run_id("corrupt"), frame.id)).fetchone()
    assert status == "failed" and "CAM_FRONT_LEFT" in reason and str(broken.resolve()) in reason, reason


@pytest.mark.slow
def test_a_plugin_that_raises_fails_the_run_with_one_line(mining_world, tmp_path) -> None:
    db = mining_catalog(mining_world, tmp_path / "cat.db")
    plugin = tmp_path / "exploding.py"
    plugin.write_text(textwrap.dedent("""
        from data_engine.mining.strategies import Strategy, register

        @register("exploding")
        def exploding(arg):
            class Exploding(Strategy):
                def score(self, out, prev):
                    raise ZeroDivisionError("the plugin divided by zero")
            return Exploding("exploding")
    """))
    res = mine(mining_world, db, "--strategy", "det_entropy,exploding", "--plugin", str(plugin), "--run", "boom")
    line = one_error_line(res)
    assert "strategy exploding" in line and str(plugin.resolve()) in line
    assert "ZeroDivisionError: the plugin divided by zero" in line and "on frame" in line
    with Catalog.open(db) as cat:  # failed, and still resumable under its name
        info = cat.run_info("boom")
        assert info["status"] == "failed"
        assert cat.start_run("boom", info["model"], info["model_sha256"], info["strategies"], 2, "local", {})[1]


@pytest.fixture()
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only), unmounted afterwards."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(disk: Path, leave: int) -> Path:
    """Fill the disk, then free ``leave`` bytes; returns the filler file."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        while True:
            os.write(fd, b"\0" * (1 << 16))
    except OSError:  # full
        pass
    finally:
        os.close(fd)
    os.truncate(filler, max(0, filler.stat().st_size - leave))
    return filler


@pytest.mark.slow
def test_mining_onto_a_full_disk_ends_in_one_line_and_resumes(mining_world, small_disk) -> None:
    db = mining_catalog(mining_world, small_disk / "cat.db")
    filler = fill(small_disk, 96 * 1024)
    res = mine(mining_world, db, "--strategy", "det_entropy", "--run", "full")
    line = one_error_line(res)
    assert "no space left on device" in line and str(db) in line
    filler.unlink()
    with Catalog.open(db) as cat:
        assert cat.run_info("full")["status"] == "failed"
    res = mine(mining_world, db, "--strategy", "det_entropy", "--run", "full")
    assert res.exit_code == 0 and "resumed" in res.output, res.output
    with Catalog.open(db) as cat:
        rid = cat.run_id("full")
        n = cat.conn.execute("SELECT COUNT(*), COUNT(DISTINCT frame_id) FROM frame_results WHERE run_id = ?",
                             (rid,)).fetchone()
        assert n == (6, 6) and cat.run_info("full")["status"] == "selected"
