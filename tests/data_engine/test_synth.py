"""The synthetic world written as a nuScenes dataset: format, determinism, resume, refusal, oracle."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.cli import app
from data_engine.sim.oracle import label_samples, render_instance_masks
from data_engine.sim.world import scene_spec
from data_engine.sim.synth import SynthConfig, synthesize
from perception.data.nuscenes import load_dataset, load_lidar_points
from perception.schema import CAMERA_NAMES, TABLES
from perception.box_geometry import box_corners, points_in_boxes
from perception.geometry import invert_rigid, transform_points

SMALL = dict(scenes=2, frames=3, seed=3, width=192, height=108)


def _digest(root: Path) -> dict[str, str]:
    """md5 of every file under root except the resume state."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and ".synth" not in p.parts:
            out[str(p.relative_to(root))] = hashlib.md5(p.read_bytes()).hexdigest()
    return out


@pytest.fixture(scope="module")
def small(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "ds"
    synthesize(SynthConfig(out=root, workers=1, **SMALL), progress=False)
    return root


def test_writes_the_nuscenes_layout(small: Path) -> None:
    version = small / "v1.0-synth"
    for table in TABLES:
        assert (version / f"{table}.json").is_file(), table
    splits = json.loads((version / "splits.json").read_text())
    assert set(splits) == {"synth_train", "synth_val"}
    assert splits["synth_val"] == ["scene-0001"] and splits["synth_train"] == ["scene-0000"]
    sample_data = json.loads((version / "sample_data.json").read_text())
    for sd in sample_data:
        assert (small / sd["filename"]).is_file(), sd["filename"]
    channels = {sd["filename"].split("/")[1] for sd in sample_data}
    assert channels == set(CAMERA_NAMES) | {"LIDAR_TOP"}
    maps = json.loads((version / "map.json").read_text())
    assert len(maps) == 2 and all((small / m["filename"]).is_file() for m in maps)
    # prev/next chains of every sensor are in time order and consistent both ways.
    by_token = {sd["token"]: sd for sd in sample_data}
    for sd in sample_data:
        if sd["next"]:
            nxt = by_token[sd["next"]]
            assert nxt["prev"] == sd["token"] and nxt["timestamp"] > sd["timestamp"]
    anns = json.loads((version / "sample_annotation.json").read_text())
    assert len(anns) > 20
    ann_by_token = {a["token"]: a for a in anns}
    for a in anns:
        if a["next"]:
            assert ann_by_token[a["next"]]["prev"] == a["token"]
            assert ann_by_token[a["next"]]["instance_token"] == a["instance_token"]


def test_lidar_counts_and_boxes_agree(small: Path) -> None:
    """num_lidar_pts is the number of points of the written sweep inside the box (up to range noise)."""
    ds = load_dataset(small)
    checked = 0
    for sample in ds.samples:
        pts = load_lidar_points(sample.lidar.path)[:, :3]
        pts_ego = transform_points(sample.lidar.ego_T_lidar, pts)
        boxes = ds.box_set(sample)
        # The 2 cm range noise moves surface hits in and out of the box: widen it a little, and lift
        # its bottom 4 cm off the ground so that ground hits (vertical noise < 1 cm) do not count.
        centre = boxes.center + [0.0, 0.0, 0.05]
        size = boxes.size + [0.15, 0.15, 0.02]
        inside = points_in_boxes(pts_ego, centre, size, boxes.yaw).sum(axis=1)
        diag = np.linalg.norm(size[:, :2], axis=1) / 2
        gap = np.linalg.norm(centre[:, None, :2] - centre[None, :, :2], axis=-1) - diag[:, None] - diag[None, :]
        np.fill_diagonal(gap, np.inf)
        for i, (n_in, n_ann) in enumerate(zip(inside, boxes.num_lidar_pts)):
            if gap[i].min() < 0:  # people walking past each other: their boxes share points
                continue
            assert abs(int(n_in) - int(n_ann)) <= max(3, 0.15 * n_ann), (boxes.categories[i], n_in, n_ann)
            checked += 1
    assert checked > 20


def test_boxes_sit_on_the_rendered_objects(small: Path) -> None:
    """Each well-visible object's pixels lie inside its projected 3D box, read back through the reader."""
    ds = load_dataset(small)
    sample = ds.samples[1]
    masks = render_instance_masks(small, sample.token)
    boxes = ds.boxes(sample)
    tested = 0
    for box in boxes:
        if box.visibility != "4":
            continue
        for cam in CAMERA_NAMES:
            mask, ids = masks[cam]
            pix = np.argwhere(mask == ids[box.instance_token])
            if len(pix) < 30:
                continue
            frame = sample.cameras[cam]
            corners = box_corners(box.center, box.size, box.yaw)  # ego frame [8, 3]
            cam_pts = transform_points(sample.cam_T_ref(cam), corners)
            if cam_pts[:, 2].min() < 0.5:
                continue
            uv = cam_pts @ frame.K.T
            uv = uv[:, :2] / uv[:, 2:3]
            import cv2

            hull = cv2.convexHull(uv.astype(np.float32))
            inside = [cv2.pointPolygonTest(hull, (float(c) + 0.0, float(r) + 0.0), True) >= -1.5 for r, c in pix]
            assert np.mean(inside) > 0.97, (box.category, cam, np.mean(inside))
            tested += 1
    assert tested >= 3


def test_same_seed_same_bytes_with_any_workers(small: Path, tmp_path: Path) -> None:
    other = tmp_path / "ds2"
    synthesize(SynthConfig(out=other, workers=2, **SMALL), progress=False)
    assert _digest(other) == _digest(small)
    third = tmp_path / "ds3"
    synthesize(SynthConfig(out=third, workers=1, **{**SMALL, "seed": 4}), progress=False)
    assert _digest(third) != _digest(small)


def test_unlabeled_plus_oracle_equals_labeled(small: Path, tmp_path: Path) -> None:
    root = tmp_path / "unlabeled"
    synthesize(SynthConfig(out=root, workers=1, unlabeled=True, **SMALL), progress=False)
    assert json.loads((root / "v1.0-synth" / "sample_annotation.json").read_text()) == []
    # The frames are the same pictures; only the labels are missing.
    assert {k: v for k, v in _digest(root).items() if k.startswith("samples/")} == {
        k: v for k, v in _digest(small).items() if k.startswith("samples/")}
    ds = load_dataset(root)
    rows = label_samples(root, [s.token for s in ds.samples], dataset=ds)
    labeled = json.loads((small / "v1.0-synth" / "sample_annotation.json").read_text())
    key = lambda r: r["token"]  # noqa: E731
    assert sorted(rows["sample_annotation"], key=key) == sorted(labeled, key=key)
    instances = json.loads((small / "v1.0-synth" / "instance.json").read_text())
    assert sorted(rows["instance"], key=key) == sorted(instances, key=key)


def test_resume_after_kill_gives_the_same_dataset(small: Path, tmp_path: Path) -> None:
    root = tmp_path / "killed"
    args = [sys.executable, "-m", "data_engine.cli", "synth", "--out", str(root), "--workers", "1"]
    for k, v in SMALL.items():
        args += [f"--{k}", str(v)]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (root / ".synth" / "scene-0000.json").exists():
        assert proc.poll() is None, "synth ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (root / "v1.0-synth" / "sample.json").exists()
    # Leave a half-written scene behind: a truncated image of scene 1.
    bad = root / "samples" / "CAM_FRONT" / "scene-0001__CAM_FRONT__1700000100000000.jpg"
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_bytes(b"\xff\xd8 truncated")
    result = CliRunner().invoke(app, args[3:])
    assert result.exit_code == 0, result.output
    assert "1 scenes already on disk" in result.output
    assert _digest(root) == _digest(small)


def test_refuses_to_mix(small: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    other = runner.invoke(app, ["synth", "--out", str(small), "--scenes", "3", "--frames", "3", "--seed", "3",
                                "--width", "192", "--height", "108"])
    assert other.exit_code == 1
    assert "scenes" in other.output and "refusing to mix" in other.output
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    res = runner.invoke(app, ["synth", "--out", str(foreign), "--scenes", "1", "--frames", "2"])
    assert res.exit_code == 1 and "not empty" in res.output
    assert (foreign / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--scenes", "0", "--frames", "3"], "--scenes must be >= 1"),
        (["--scenes", "1", "--frames", "1"], "--frames must be >= 2"),
        (["--scenes", "1", "--frames", "3", "--width", "8"], "--width and --height"),
        (["--scenes", "1", "--frames", "3", "--workers", "-1"], "--workers must be >= 1"),
    ],
)
def test_impossible_arguments(tmp_path: Path, argv: list[str], words: str) -> None:
    res = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x")] + argv)
    assert res.exit_code == 1
    assert words in res.output
    assert not (tmp_path / "x").exists()


def test_sweeps_are_12hz_non_key_frames(tmp_path: Path) -> None:
    root = tmp_path / "sweeps"
    synthesize(SynthConfig(out=root, scenes=1, frames=2, seed=5, width=96, height=64, sweeps=True), progress=False)
    sample_data = json.loads((root / "v1.0-synth" / "sample_data.json").read_text())
    front = sorted((sd for sd in sample_data if "/CAM_FRONT/" in sd["filename"]), key=lambda sd: sd["timestamp"])
    assert [sd["is_key_frame"] for sd in front] == [True] + [False] * 5 + [True]
    gaps = np.diff([sd["timestamp"] for sd in front])
    assert np.allclose(gaps, 1e6 / 12, atol=1)
    assert all(sd["filename"].startswith("sweeps/") for sd in front[1:-1])
    lidar = [sd for sd in sample_data if "LIDAR_TOP" in sd["filename"]]
    assert len(lidar) == 2
    # The reader hands the sweeps to the key frame they follow, with their own ego poses.
    ds = load_dataset(root)
    first, last = ds.samples
    assert set(first.sweeps) == set(CAMERA_NAMES) and dict(last.sweeps) == {}
    sweeps = first.sweeps["CAM_FRONT"]
    assert [f.token for f in sweeps] == [sd["token"] for sd in front[1:-1]]
    assert all(f.path.is_file() for f in sweeps)
    moved = [np.linalg.norm(f.global_T_ego[:2, 3] - first.global_T_ego[:2, 3]) for f in sweeps]
    if scene_spec(5, 0, 2).ego_speed > 0:
        assert np.all(np.diff(moved) > 0)


def test_long_tail_at_the_defaults() -> None:
    """Night, fog, construction vehicles and trailers are rare but present over many scenes."""
    specs = [scene_spec(0, i, 40) for i in range(400)]
    share = lambda f: np.mean([f(s) for s in specs])  # noqa: E731
    for name, frac in {
        "night": share(lambda s: s.conditions.time_of_day == "night"),
        "fog": share(lambda s: s.conditions.fog),
        "construction": share(lambda s: s.construction),
        "trailers": share(lambda s: s.trailers),
    }.items():
        assert 0.03 < frac < 0.2, (name, frac)
    assert share(lambda s: s.conditions.time_of_day == "day") > 0.6
    kinds = {s.layout_kind for s in specs}
    assert kinds == {"straight", "curve", "intersection"}


def test_calibration_is_written_as_rotations(small: Path) -> None:
    ds = load_dataset(small)
    sample = ds.samples[0]
    for cam in CAMERA_NAMES:
        T = sample.cameras[cam].ego_T_cam
        assert np.allclose(T[:3, :3] @ T[:3, :3].T, np.eye(3), atol=1e-9)
        assert np.allclose(invert_rigid(T) @ T, np.eye(4), atol=1e-9)
        assert sample.cameras[cam].width == 192 and sample.cameras[cam].height == 108


# Resume and refusal: killed runs, concurrent runs, stale worlds, the demo's scratch outputs.

TINY = {"scenes": 3, "frames": 2, "seed": 3, "width": 96, "height": 64}


def _synth_argv(root: Path, workers: int, **params: int) -> list[str]:
    argv = ["synth", "--out", str(root), "--workers", str(workers)]
    for k, v in params.items():
        argv += [f"--{k}", str(v)]
    return argv


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    """An uninterrupted run of TINY, the reference of the runs below."""
    root = tmp_path_factory.mktemp("synth") / "tiny"
    synthesize(SynthConfig(out=root, workers=1, **TINY), progress=False)
    return root


def _proc_table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, state, start time) of every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        table[int(entry)] = (int(fields[1]), fields[0], int(fields[19]))
    return table


def _descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every live descendant of ``pid``."""
    table = _proc_table()
    found, frontier = {}, [pid]
    while frontier:
        parent = frontier.pop()
        for child, (ppid, _, start) in table.items():
            if ppid == parent and child not in found:
                found[child] = start
                frontier.append(child)
    return found


def _alive(procs: dict[int, int], out: Path) -> list[int]:
    """Those of ``procs`` (pid -> start time) still running, and any process naming ``out``; zombies are dead."""
    table = _proc_table()
    alive = [pid for pid, start in procs.items()
             if pid in table and table[pid][2] == start and table[pid][1] not in "ZX"]
    for pid, (_, state, _) in table.items():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if str(out).encode() in cmdline and state not in "ZX" and pid != os.getpid():
            alive.append(pid)
    return alive


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")
def test_killed_run_leaves_no_process_behind_and_resumes(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "killed2"
    argv = _synth_argv(root, 2, **TINY)
    proc = subprocess.Popen([sys.executable, "-m", "data_engine.cli", *argv],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not (root / ".synth" / "scene-0000.json").exists():
        assert proc.poll() is None, "synth ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.02)
    family = _descendants(proc.pid)
    assert len(family) >= 3, family  # the forkserver, the resource tracker, the workers
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    family.update(_descendants(proc.pid))
    deadline = time.time() + 5
    while (left := _alive(family, root)) and time.time() < deadline:
        time.sleep(0.05)
    for pid in left:  # do not leak them when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, f"processes of the killed run still alive: {left}"
    assert not (root / "v1.0-synth").exists()
    # A write the kill interrupted leaves its temporary file: the resumed run removes it.
    leftover = root / "samples" / "CAM_BACK" / "scene-0001__CAM_BACK__1700000100000000.jpg.4242.0a1b2c3d.tmp"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"\xff\xd8 half")
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    assert _digest(root) == _digest(tiny)


def test_a_second_run_on_the_same_directory_fails_at_once(tiny: Path, tmp_path: Path) -> None:
    root = tmp_path / "busy"
    argv = _synth_argv(root, 1, **TINY)
    first = subprocess.Popen([sys.executable, "-m", "data_engine.cli", *argv],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while not (root / "synth.json").exists():
        assert first.poll() is None, "the first run ended early"
        assert time.time() < deadline
        time.sleep(0.02)
    t0 = time.time()
    second = CliRunner().invoke(app, argv)
    assert second.exit_code == 1, second.output
    assert str(root) in second.output and "another synth run" in second.output, second.output
    assert time.time() - t0 < 2
    assert first.poll() is None, "the first run ended before the second started: the test proves nothing"
    _, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert _digest(root) == _digest(tiny)
    assert not list(root.rglob("*.tmp"))


def test_concurrent_writers_of_one_file_do_not_share_a_temporary(tmp_path: Path, monkeypatch) -> None:
    """A second writer of the same path, between the first one's write and its rename, must not
    take over the first one's temporary file."""
    from data_engine.sim.nuscenes_writer import _write_bytes

    target = tmp_path / "table.json"
    real_replace = os.replace
    interleaved = []

    def replace_after_another_writer(src, dst):  # type: ignore[no-untyped-def]
        if not interleaved:
            interleaved.append(src)
            _write_bytes(target, b"second")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace_after_another_writer)
    _write_bytes(target, b"first")
    assert interleaved and target.read_bytes() == b"first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.json"]
    assert str(os.getpid()) in Path(interleaved[0]).name


def test_another_version_of_the_world_is_refused(tiny: Path, tmp_path: Path) -> None:
    from data_engine.sim.synth import world_digest

    root = tmp_path / "old_world"
    shutil.copytree(tiny, root)
    recipe = json.loads((root / "synth.json").read_text())
    assert recipe["world"] == world_digest() and len(recipe["world"]) == 16
    recipe["world"] = "0123456789abcdef"
    (root / "synth.json").write_text(json.dumps(recipe))
    (root / ".synth" / "scene-0002.json").unlink()  # a scene the new world would add
    res = CliRunner().invoke(app, _synth_argv(root, 1, **TINY))
    assert res.exit_code == 1
    assert "another version of the world" in res.output and "refusing to mix" in res.output, res.output
    assert not (root / ".synth" / "scene-0002.json").exists()


def test_world_digest_covers_the_world_code(monkeypatch, tmp_path: Path) -> None:
    import data_engine.sim.synth as synth_mod

    before = synth_mod.world_digest()
    fake = tmp_path / "data_engine" / "sim" / "synth.py"
    shutil.copytree(Path(synth_mod.__file__).parent, fake.parent)
    monkeypatch.setattr(synth_mod, "__file__", str(fake))
    synth_mod.world_digest.cache_clear()
    try:
        assert synth_mod.world_digest() == before
        with open(fake.parent / "world.py", "a") as f:
            f.write("\n# changed\n")
        synth_mod.world_digest.cache_clear()
        assert synth_mod.world_digest() != before
    finally:
        synth_mod.world_digest.cache_clear()


@pytest.mark.parametrize("left", [["STATE/"], ["STATE/lock"], ["STATE/lock", "synth.json.1234.0a1b2c3d.tmp"]])
def test_a_run_killed_before_its_recipe_left_a_fresh_directory(tmp_path: Path, left: list[str]) -> None:
    from data_engine.sim.synth_output import prepare_output

    root = tmp_path / "early"
    (root / ".synth").mkdir(parents=True)
    for name in left:
        if name != "STATE/":
            path = root / name.replace("STATE", ".synth")
            path.write_text('{"seed": 3, "sce' if name.endswith(".tmp") else "4242\n")
    cfg = SynthConfig(out=root, workers=1, **{**TINY, "scenes": 1})
    assert prepare_output(cfg) == [0]
    assert json.loads((root / "synth.json").read_text()) == cfg.recipe()
    assert sorted(p.name for p in root.iterdir()) == [".synth", "synth.json"]
    # Something else in .synth/ is not what such a run leaves: refused as before.
    other = tmp_path / "other"
    (other / ".synth").mkdir(parents=True)
    (other / ".synth" / "scene-0000.json").write_text("{}")
    res = CliRunner().invoke(app, _synth_argv(other, 1, **{**TINY, "scenes": 1}))
    assert res.exit_code == 1 and "not empty" in res.output
    assert sorted(p.name for p in (other / ".synth").iterdir()) == ["scene-0000.json"]


def test_in_process_run_restores_opencv_threads(tmp_path: Path) -> None:
    import cv2

    before = cv2.getNumThreads()
    cv2.setNumThreads(3)
    try:
        synthesize(SynthConfig(out=tmp_path / "one", workers=1, **{**TINY, "scenes": 1}), progress=False)
        assert cv2.getNumThreads() == 3
    finally:
        cv2.setNumThreads(before)


def test_demo_rerenders_its_stale_outputs(tmp_path: Path) -> None:
    import io

    from rich.console import Console

    from data_engine.demo import render_own

    root = tmp_path / "demo_world"
    cfg = SynthConfig(out=root, workers=1, **{**TINY, "scenes": 1})
    synthesize(cfg, progress=False)
    reference = _digest(root)
    recipe = json.loads((root / "synth.json").read_text())
    (root / "synth.json").write_text(json.dumps({**recipe, "world": "0123456789abcdef"}))
    (root / "stale.txt").write_text("from the old world")
    out = io.StringIO()
    render_own(cfg, Console(file=out, width=300))
    said = " ".join(out.getvalue().split())  # rich wraps long lines where the temporary path's length puts them
    assert "deleting it and rendering it again" in said
    assert "another version of the world" in said
    assert not (root / "stale.txt").exists() and _digest(root) == reference
    # Another recipe (here the seed) is its own scratch output too.
    out = io.StringIO()
    render_own(SynthConfig(out=root, workers=1, **{**TINY, "scenes": 1, "seed": 4}), Console(file=out, width=300))
    said = " ".join(out.getvalue().split())
    assert "deleting it and rendering it again" in said and "seed" in said
    assert json.loads((root / "synth.json").read_text())["seed"] == 4


def test_demo_fails_in_one_line_on_other_synth_errors(tmp_path: Path, capsys) -> None:
    from data_engine.demo import main

    (tmp_path / "world").mkdir()
    (tmp_path / "world" / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        main(["--out", str(tmp_path), "--scenes", "1", "--frames", "2"])
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not empty" in err and str(tmp_path / "world") in err
    assert (tmp_path / "world" / "notes.txt").read_text() == "mine"
