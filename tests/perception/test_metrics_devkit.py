"""Our detection metrics agree with the official nuScenes devkit to 1e-6 on perturbed predictions.

A small synthetic dataset is written by ``data-engine synth`` (``devkit_world`` of tests/conftest.py, which
tests/data_engine/test_devkit.py checks: 5 scenes of 4 frames, 400x225; its val scene holds every class,
its train scenes lack trailers).
Predictions are made from the ground truth with random perturbations: centre noise of varied size
(so matches fall at different thresholds), size, yaw (some turned by pi), velocity and class noise,
dropped boxes, duplicates, false positives spread to 55 m (beyond the class ranges), scores that
favour good boxes plus noise, random attributes, and one class left without predictions. They are
written once as an official results JSON (global frame); the devkit (its own venv, through
tests/support/devkit/score_predictions.py) and perception.metrics (through perception.data.nuscenes) both
score that file, for each split and for the cvpr_2019 configuration and a range-capped variant.
Every number of metrics_summary.json and every curve of metrics_details.json must agree to 1e-6,
and both must keep the same boxes after filtering.
"""

from __future__ import annotations

import json
import math
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from perception.schema import ATTRIBUTES, DETECTION_CLASSES
from perception.metrics import DetectionConfig, EvalBoxes, range_capped
from perception.metrics.nuscenes_io import evaluate_split, ground_truth, results_json, split_samples

from devkit_env import DEVKIT_SCRIPTS, devkit_environ, ensure_devkit_python

pytestmark = pytest.mark.slow

SCORE_SCRIPT = DEVKIT_SCRIPTS / "score_predictions.py"
VERSION = "v1.0-synth"
SPLITS = ("synth_val", "synth_train")
TOLERANCE = 1e-6
CONFIGS = {c.name: c for c in (DetectionConfig.cvpr_2019(), range_capped(DetectionConfig.cvpr_2019(), 25.0))}
# Perturbation strength: (drop prob, centre noise scale, size log-std, yaw std rad, velocity std m/s,
# class-swap prob, false positives per sample, class without any prediction).
SCENARIOS = {
    "mild": (0.1, 0.6, 0.08, 0.15, 0.3, 0.03, 4, None),
    "heavy": (0.3, 1.5, 0.25, 0.6, 1.2, 0.1, 15, "bicycle"),
}
_CENTRE_SIGMAS = np.array([0.05, 0.2, 0.45, 0.8, 1.5, 3.0])  # m, one drawn per box, times the scale
_ATTRS_OF = {
    **{c: tuple(a for a in ATTRIBUTES if a.startswith("vehicle.")) for c in
       ("car", "truck", "bus", "trailer", "construction_vehicle")},
    "motorcycle": ("cycle.with_rider", "cycle.without_rider"),
    "bicycle": ("cycle.with_rider", "cycle.without_rider"),
    "pedestrian": tuple(a for a in ATTRIBUTES if a.startswith("pedestrian.")),
    "traffic_cone": ("",),
    "barrier": ("",),
}


def perturb(gt: EvalBoxes, rng: np.random.Generator, scenario: str) -> EvalBoxes:
    """Predictions of one sample (ego frame) made from its ground truth."""
    p_drop, scale, size_std, yaw_std, vel_std, p_swap, n_fp, absent = SCENARIOS[scenario]
    keep = rng.random(len(gt)) > p_drop
    dup = keep & (rng.random(len(gt)) < 0.1)
    idx = np.concatenate([np.flatnonzero(keep), np.flatnonzero(dup)])
    n = len(idx)
    sigma = rng.choice(_CENTRE_SIGMAS, n) * scale
    offset = rng.normal(size=(n, 2)) * sigma[:, None]
    center = gt.center[idx] + np.concatenate([offset, rng.normal(0, 0.2, (n, 1))], axis=1)
    size = gt.size[idx] * np.exp(rng.normal(0, size_std, (n, 3)))
    yaw = gt.yaw[idx] + rng.normal(0, yaw_std, n) + np.pi * (rng.random(n) < 0.1)
    vel = np.where(np.isnan(gt.velocity[idx]), rng.normal(0, 2, (n, 2)), gt.velocity[idx])
    vel = vel + rng.normal(0, vel_std, (n, 2))
    vel[rng.random(n) < 0.03] = np.nan  # a few detections without velocity
    names = [gt.names[i] for i in idx]
    for k in np.flatnonzero(rng.random(n) < p_swap):
        names[k] = str(rng.choice(DETECTION_CLASSES))
    attrs = [gt.attributes[i] if rng.random() < 0.6 and gt.attributes[i] in _ATTRS_OF[nm] else
             str(rng.choice(_ATTRS_OF[nm])) for i, nm in zip(idx, names)]
    # Scores favour accurate boxes, with noise; duplicates score lower.
    score = 0.6 * np.exp(-np.linalg.norm(offset, axis=1)) + 0.4 * rng.random(n)
    score[len(np.flatnonzero(keep)):] *= 0.7
    # False positives anywhere within 55 m, of any class, with the size of a random box of the sample.
    m = rng.poisson(n_fp)
    r, a = 55 * np.sqrt(rng.random(m)), rng.uniform(-np.pi, np.pi, m)
    fp_names = [str(rng.choice(DETECTION_CLASSES)) for _ in range(m)]
    fp_size = gt.size[rng.integers(0, len(gt), m)] if len(gt) else np.full((m, 3), 2.0)
    preds = EvalBoxes.create(
        center=np.concatenate([center, np.stack([r * np.cos(a), r * np.sin(a), rng.uniform(0, 2, m)], 1)]),
        size=np.concatenate([size, fp_size]), yaw=np.concatenate([yaw, rng.uniform(-np.pi, np.pi, m)]),
        names=names + fp_names, velocity=np.concatenate([vel, rng.normal(0, 3, (m, 2))]),
        attributes=attrs + [str(rng.choice(_ATTRS_OF[nm])) for nm in fp_names],
        score=np.concatenate([score, 0.7 * rng.random(m)]),
    )
    return preds.select([nm != absent for nm in preds.names])


@pytest.fixture(scope="module")
def devkit_python() -> Path:
    try:
        return ensure_devkit_python()
    except RuntimeError as exc:  # pip could not reach the registry, or the build broke
        pytest.fail(f"could not build the nuScenes devkit venv:\n{exc}")


@pytest.fixture(scope="module")
def dataset(devkit_world):
    from perception.data.nuscenes import load_dataset

    return load_dataset(devkit_world, VERSION)


@pytest.fixture(scope="module")
def scored(devkit_python, dataset, tmp_path_factory) -> dict:
    """(split, scenario, config) -> (devkit run, our DetectionMetrics); also the time taken by each side."""
    work = tmp_path_factory.mktemp("scores")
    cfg_paths = []
    for name, cfg in CONFIGS.items():
        if name != "detection_cvpr_2019":
            cfg_paths.append(work / f"{name}.json")
            cfg_paths[-1].write_text(json.dumps(cfg.serialize()))
    out: dict = {"seconds": {"devkit": 0.0, "ours": 0.0}}
    for split in SPLITS:
        results = {}
        for k, scenario in enumerate(SCENARIOS):
            rng = np.random.default_rng([2024, k, len(split)])
            preds = {s.token: perturb(ground_truth(dataset, s), rng, scenario) for s in split_samples(dataset, split)}
            scores = np.concatenate([p.score for p in preds.values()])
            assert len(np.unique(scores)) == len(scores), "equal scores would make the ranking order-dependent"
            results[scenario] = work / split / f"{scenario}.json"
            results[scenario].parent.mkdir(exist_ok=True)
            results[scenario].write_text(json.dumps(results_json(preds, dataset)))
        cmd = [str(devkit_python), str(SCORE_SCRIPT), "--dataroot", str(dataset.root), "--version", VERSION,
               "--split", split, "--out-dir", str(work / split / "devkit"), "--results",
               *map(str, results.values()), "--config", "detection_cvpr_2019",
               *[a for p in cfg_paths for a in ("--config", str(p))]]  # fmt: skip
        start = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, env=devkit_environ())
        out["seconds"]["devkit"] += time.monotonic() - start
        report_path = work / split / "devkit" / "report.json"
        assert report_path.exists(), f"the devkit wrote no report (exit {proc.returncode}):\n{proc.stderr[-5000:]}"
        report = json.loads(report_path.read_text())
        assert "error" not in report, f"the devkit failed:\n{report['error']}"
        for run in report["runs"]:
            scenario = Path(run["results"]).stem
            start = time.monotonic()
            ours = evaluate_split(dataset, run["results"], split, CONFIGS[run["config"]])
            out["seconds"]["ours"] += time.monotonic() - start
            out[(split, scenario, run["config"])] = (run, ours)
    print(f"scoring time: devkit {out['seconds']['devkit']:.1f} s, ours {out['seconds']['ours']:.2f} s")
    return out


CASES = [(s, sc, c) for s in SPLITS for sc in SCENARIOS for c in CONFIGS]


def _close(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) <= TOLERANCE


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_summary_matches_devkit(scored, case):
    run, ours = scored[case]
    theirs = json.loads(Path(run["summary"]).read_text())
    mine = ours.to_devkit_json()
    diffs, worst = [], 0.0
    def compare(path: str, a: float, b: float) -> None:
        nonlocal worst
        if not _close(a, b):
            diffs.append(f"{path}: devkit {b!r}, ours {a!r}")
        elif not math.isnan(a):
            worst = max(worst, abs(a - b))
    for key in ("mean_ap", "nd_score"):
        compare(key, mine[key], theirs[key])
    for key in ("mean_dist_aps", "tp_errors", "tp_scores"):
        assert mine[key].keys() == theirs[key].keys(), key
        for name in theirs[key]:
            compare(f"{key}.{name}", mine[key][name], theirs[key][name])
    for c in theirs["label_aps"]:
        assert mine["label_aps"][c].keys() == theirs["label_aps"][c].keys()
        for t in theirs["label_aps"][c]:
            compare(f"label_aps.{c}.{t}", mine["label_aps"][c][t], theirs["label_aps"][c][t])
        for m in theirs["label_tp_errors"][c]:
            compare(f"label_tp_errors.{c}.{m}", mine["label_tp_errors"][c][m], theirs["label_tp_errors"][c][m])
    assert mine["cfg"] == theirs["cfg"]
    assert not diffs, f"{len(diffs)} numbers differ from the devkit:\n" + "\n".join(diffs[:40])
    # Not a vacuous agreement: the predictions are neither perfect nor worthless.
    assert 0.05 < theirs["mean_ap"] < 0.95, theirs["mean_ap"]
    print(f"{case}: mAP {theirs['mean_ap']:.4f} NDS {theirs['nd_score']:.4f}, largest difference {worst:.1e}")


@pytest.mark.parametrize("case", CASES, ids=["-".join(c) for c in CASES])
def test_curves_and_filters_match_devkit(scored, case):
    run, ours = scored[case]
    assert {c: n for c, n in ours.num_gt.items() if n} == run["gt_after_filter"]
    assert {c: n for c, n in ours.num_pred.items() if n} == run["pred_after_filter"]
    theirs = json.loads(Path(run["details"]).read_text())
    mine = ours.to_devkit_details_json()
    assert mine.keys() == theirs.keys()
    for key, curves in theirs.items():
        for name, values in curves.items():
            np.testing.assert_allclose(mine[key][name], values, rtol=0, atol=TOLERANCE, err_msg=f"{key} {name}")


def test_cases_exercise_the_special_rules(scored):
    """The runs hold a class without ground truth, a class without predictions, and capped ranges."""
    _, train = scored[("synth_train", "mild", "detection_cvpr_2019")]
    assert train.num_gt["trailer"] == 0 and train.mean_dist_aps["trailer"] == 0.0
    _, heavy = scored[("synth_val", "heavy", "detection_cvpr_2019")]
    assert heavy.num_gt["bicycle"] > 0 and heavy.num_pred["bicycle"] == 0
    _, full = scored[("synth_val", "mild", "detection_cvpr_2019")]
    _, capped = scored[("synth_val", "mild", "detection_cvpr_2019_capped_25m")]
    assert sum(capped.num_gt.values()) < sum(full.num_gt.values())
    # Matches at every threshold, and more of them at larger thresholds.
    assert full.label_aps["car"][0.5] < full.label_aps["car"][4.0]
