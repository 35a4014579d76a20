"""The official nuScenes devkit loads what ``data-engine synth`` writes, and agrees with us about it.

One synthetic dataset is generated; the devkit (in its own venv, it pins numpy<2: see
tests/support/devkit_env.py) runs tests/support/devkit/check_dataset.py over its validation split. Then:

- the devkit loads it, and its consistency checks find no problem;
- every box the devkit projects into a camera, our reader (perception.data.nuscenes) projects to
  the same corners within 0.5 px;
- the boxes sit on the rendered objects: >= 95 % of each visible instance's pixels in the
  synthetic world's instance masks fall inside the convex hull of its devkit-projected corners;
- the official detection evaluator scores the ground truth, submitted as predictions, at mAP 1.0
  with every one of the 10 classes at AP 1.0 (so the split must contain all 10 classes).
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from perception.schema import CAMERA_NAMES, DETECTION_CLASSES
from perception.box_geometry import box_corners
from perception.geometry import project, transform_points

from devkit_env import DEVKIT_SCRIPTS, devkit_environ, ensure_devkit_python
from devkit_world import synth_args

pytestmark = pytest.mark.slow

CHECK_SCRIPT = DEVKIT_SCRIPTS / "check_dataset.py"
VERSION = "v1.0-synth"
SPLIT = "synth_val"

PIXEL_TOLERANCE = 0.5  # px, our projection vs the devkit's
HULL_COVERAGE = 0.95  # fraction of an instance's mask pixels inside its projected box
HULL_MARGIN = 1.0  # px: a mask pixel within this distance of the hull counts as inside (rasterization)
MIN_MASK_PIXELS = 20  # smaller masks are too coarse to measure a 95 % fraction on

# Our corner order (perception.geometry) and the devkit's (Box.corners): both list sign patterns
# of (x along length, y along width, z up). DEVKIT_TO_OURS[k] is our index of the devkit's corner k.
_DEVKIT_SIGNS = np.array(
    [[1, 1, 1, 1, -1, -1, -1, -1], [1, -1, -1, 1, 1, -1, -1, 1], [1, 1, -1, -1, 1, 1, -1, -1]]
).T
_OUR_SIGNS = np.sign(box_corners(np.zeros(3), np.ones(3), 0.0))
DEVKIT_TO_OURS = np.array([int(np.flatnonzero((_OUR_SIGNS == s).all(1))[0]) for s in _DEVKIT_SIGNS])


@pytest.fixture(scope="module")
def devkit_python() -> Path:
    start = time.monotonic()
    try:
        py = ensure_devkit_python()
    except RuntimeError as exc:  # pip could not reach the registry, or the build broke
        pytest.fail(f"could not build the nuScenes devkit venv:\n{exc}")
    print(f"devkit venv ready in {time.monotonic() - start:.1f} s: {py}")
    return py


@pytest.fixture(scope="module")
def synth_root(devkit_world: Path) -> Path:
    assert (devkit_world / VERSION / "splits.json").is_file(), f"no {VERSION}/splits.json under {devkit_world}"
    return devkit_world


@pytest.fixture(scope="module")
def report(devkit_python, synth_root, tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("devkit") / "report.json"
    cmd = [
        str(devkit_python), str(CHECK_SCRIPT), "--dataroot", str(synth_root), "--version", VERSION,
        "--split", SPLIT, "--out", str(out),
    ]  # fmt: skip
    start = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=devkit_environ(), cwd=synth_root)
    print(f"devkit check ran in {time.monotonic() - start:.1f} s")
    assert out.exists(), f"the devkit check wrote no report (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
    result = json.loads(out.read_text())
    assert "error" not in result, f"the devkit failed on the synthetic dataset:\n{result['error']}"
    assert proc.returncode == 0, f"devkit check exited {proc.returncode}:\n{proc.stderr[-5000:]}"
    return result


def test_devkit_loads_the_dataset(report):
    assert report["loaded"]
    tables = report["tables"]
    for name in ("scene", "sample", "sample_data", "sample_annotation", "instance", "map"):
        assert tables[name] > 0, f"table {name} is empty: {tables}"
    assert report["num_samples"] > 0, f"split {SPLIT} has no samples"
    problems = report["problems"]
    assert report["num_problems"] == 0, f"{report['num_problems']} format problems, e.g.:\n" + "\n".join(problems[:30])
    # Every camera of every sample was visited.
    assert len(report["frames"]) == report["num_samples"] * len(CAMERA_NAMES)


def test_validation_split_holds_every_class(report):
    """Precondition of the mAP check: AP of a class without ground truth is 0, not 1."""
    per_class = report["gt_per_class"]
    kept = report["eval"]["gt_after_filter"]
    missing = [c for c in DETECTION_CLASSES if per_class.get(c, 0) == 0]
    assert not missing, (
        f"split {SPLIT} lacks classes {missing}; class histogram {per_class}. "
        f"Arguments were {synth_args()}."
    )
    filtered_out = [c for c in DETECTION_CLASSES if kept.get(c, 0) == 0]
    assert not filtered_out, (
        f"split {SPLIT}: the evaluator's range and point-count filters leave no box of {filtered_out}; "
        f"before filtering {per_class}, after {kept}"
    )


def test_our_projection_matches_the_devkit(report, synth_root):
    from perception.data.nuscenes import load_dataset

    ds = load_dataset(synth_root, VERSION)
    worst, compared, failures = 0.0, 0, []
    for frame in report["frames"]:
        if not frame["boxes"]:
            continue
        sample = ds.sample(frame["sample_token"])
        cam = sample.cameras[frame["camera"]]
        assert cam.token == frame["sample_data_token"]
        assert (cam.width, cam.height) == (frame["width"], frame["height"])
        np.testing.assert_allclose(cam.K, frame["intrinsic"], atol=1e-9)
        boxes = ds.box_set(sample)
        index = {tok: i for i, tok in enumerate(boxes.tokens)}
        cam_T_ref = sample.cam_T_ref(frame["camera"])
        for box in frame["boxes"]:
            i = index.get(box["annotation_token"])
            assert i is not None, f"our reader lacks annotation {box['annotation_token']} of {frame['sample_token']}"
            assert boxes.instance_tokens[i] == box["instance_token"]
            corners_ref = box_corners(boxes.center[i], boxes.size[i], boxes.yaw[i])[DEVKIT_TO_OURS]
            uv, depth = project(cam.K, transform_points(cam_T_ref, corners_ref))
            expected = np.asarray(box["corners_2d"])
            np.testing.assert_allclose(depth, np.asarray(box["corners_cam"])[:, 2], atol=1e-3)
            err = float(np.max(np.abs(uv - expected)))
            compared += 1
            worst = max(worst, err)
            if err > PIXEL_TOLERANCE:
                failures.append(f"{frame['camera']} {box['annotation_token']} ({box['category_name']}): {err:.3f} px")
    assert compared > 0, "the devkit projected no box into any camera"
    assert not failures, f"{len(failures)}/{compared} boxes differ by > {PIXEL_TOLERANCE} px:\n" + "\n".join(failures[:20])
    print(f"compared {compared} boxes with the devkit, worst corner {worst:.2e} px")


def _fraction_in_hull(pixels_uv: np.ndarray, corners_uv: np.ndarray, margin: float) -> float:
    """Fraction of points [M, 2] within ``margin`` px of the convex hull of corners [8, 2]."""
    from scipy.spatial import ConvexHull

    hull = ConvexHull(corners_uv)
    # hull.equations: rows (a, b, c) with unit normal (a, b) pointing out: a*u + b*v + c <= 0 inside.
    dist = pixels_uv @ hull.equations[:, :2].T + hull.equations[:, 2]
    return float(np.mean(dist.max(axis=1) <= margin))


def test_boxes_land_on_rendered_objects(report, synth_root):
    from data_engine.sim import oracle

    frames_by_sample: dict[str, list[dict]] = {}
    for frame in report["frames"]:
        frames_by_sample.setdefault(frame["sample_token"], []).append(frame)
    checked, failures = 0, []
    for sample_token, frames in frames_by_sample.items():
        masks = oracle.render_instance_masks(synth_root, sample_token)
        for frame in frames:
            mask, ids = masks[frame["camera"]]
            assert mask.shape == (frame["height"], frame["width"]), f"mask shape {mask.shape} vs image"
            for box in frame["boxes"]:
                inst_id = ids.get(box["instance_token"])
                if inst_id is None:
                    continue  # not rendered in this camera
                rows, cols = np.nonzero(mask == inst_id)
                if rows.size < MIN_MASK_PIXELS:
                    continue
                # Pixel (row, col) is sampled at its integer coordinates; HULL_MARGIN absorbs the convention.
                frac = _fraction_in_hull(np.stack([cols, rows], 1).astype(float), np.asarray(box["corners_2d"]), HULL_MARGIN)
                checked += 1
                if frac < HULL_COVERAGE:
                    failures.append(
                        f"{frame['camera']} of {sample_token}: {box['category_name']} {box['instance_token']}: "
                        f"{frac:.1%} of {rows.size} px inside its box"
                    )
    assert checked > 0, "no rendered instance with a devkit box was large enough to check"
    assert not failures, f"{len(failures)}/{checked} instances lie outside their boxes:\n" + "\n".join(failures[:20])


def test_devkit_evaluator_scores_ground_truth_perfectly(report):
    ev = report["eval"]
    per_class = {c: ev["class_ap"].get(c) for c in DETECTION_CLASSES}
    assert abs(ev["mAP"] - 1.0) <= 1e-6, f"mAP {ev['mAP']} for GT submitted as predictions; per class {per_class}"
    bad = {c: ap for c, ap in per_class.items() if ap is None or abs(ap - 1.0) > 1e-6}
    assert not bad, f"classes below AP 1.0: {bad}; GT kept by the evaluator {ev['gt_after_filter']}"
    # Translation, scale and orientation errors of a perfect submission are zero.
    for name in ("trans_err", "scale_err", "orient_err"):
        assert ev["tp_errors"][name] == pytest.approx(0.0, abs=1e-6), f"{name} = {ev['tp_errors'][name]}"
