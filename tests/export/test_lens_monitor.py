"""The lens monitor of the edge runtime (export/runtime/lens_monitor.py): on frames of the shared world, a
camera given the world's own blocked-lens pass is flagged and the others are not; a uniformly darkened
(night-like) frame flags no camera; a masked camera is not assessed; EdgeModel results carry the camera
health, with a memory across the frames of a stream; `data-engine mine --strategy lens` fires on the
blocked frame; the benchmark runs end to end."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from model_inputs import random_tiny_checkpoint
from typer.testing import CliRunner

from data_engine.sim.effects import _lens
from export.exporter import export_checkpoint
from export.runtime import (
    FEATURE_NAMES,
    Camera,
    CameraHealth,
    EdgeModel,
    LensMemory,
    LensMonitorConfig,
    PreparedFrame,
    RuntimeInputError,
    camera_health,
    lens_features,
)
from export.runtime.edge_model import prepare_cameras
from perception.data.nuscenes import load_dataset

EDGE_HW = (224, 400)  # the edge preset's input: the size the monitor is calibrated at
THRESHOLD = LensMonitorConfig().blocked_threshold
REPO = Path(__file__).resolve().parents[2]


def blocked(image_bgr: np.ndarray, seed: int) -> np.ndarray:
    """The world's blocked-lens pass (data_engine/sim/effects.py ``_lens``) on a camera image, then day
    sensor noise (sigma 2, which the world adds after the pass)."""
    rng = np.random.default_rng(seed)
    out = _lens(image_bgr.astype(np.float32), rng, blocked=True) + rng.normal(0.0, 2.0, image_bgr.shape)
    return np.clip(out, 0, 255).astype(np.uint8)


def world_frames(root: Path) -> list[tuple[tuple[str, ...], dict[str, Camera], dict[str, np.ndarray]]]:
    """Every sample of a dataset: its camera names, rig and decoded BGR images."""
    ds = load_dataset(root)
    out = []
    for s in ds.samples:
        rig = {n: Camera(c.K, s.ref_T_cam(n), (c.height, c.width)) for n, c in s.cameras.items()}
        out.append((ds.camera_channels, rig, {n: cv2.imread(str(c.path)) for n, c in s.cameras.items()}))
    return out


def prepare(names: tuple[str, ...], rig: dict[str, Camera], images: dict[str, np.ndarray]) -> PreparedFrame:
    return prepare_cameras(images, rig, names, EDGE_HW)


def test_a_blocked_camera_scores_above_the_threshold_and_the_others_below(synth_world: Path) -> None:
    frames = world_frames(synth_world)
    assert len(frames) == 6
    for k, (names, rig, images) in enumerate(frames):
        clean = prepare(names, rig, images)
        assert not any(h.blocked for h in camera_health(clean.images, clean.cam_valid)), f"sample {k}: clean frame"
        j = k % len(names)  # each sample blocks another camera, with another draw of the occluder
        frame = prepare(names, rig, {**images, names[j]: blocked(images[names[j]], seed=k)})
        health = camera_health(frame.images, frame.cam_valid)
        assert len(health) == len(names) and all(isinstance(h, CameraHealth) and h.assessed for h in health)
        assert health[j].blocked and health[j].blocked_score >= THRESHOLD, f"sample {k}: {names[j]} {health[j]}"
        others = [h.blocked_score for i, h in enumerate(health) if i != j]
        assert max(others) < THRESHOLD, f"sample {k}: a clear camera flagged: {others}"
        assert all(0.0 <= h.blocked_score <= 1.0 and 0.0 <= h.dirty_score <= 1.0 for h in health)


def test_a_uniformly_darkened_frame_flags_no_camera(synth_world: Path) -> None:
    rng = np.random.default_rng(0)
    for k, (names, rig, images) in enumerate(world_frames(synth_world)):
        frame = prepare(names, rig, images)
        # Night-like: every camera at a quarter of the light, with more visible noise.
        dark = np.clip(frame.images * 0.25 + rng.normal(0.0, 1.5, frame.images.shape), 0, 255).astype(np.uint8)
        assert dark.mean() < 0.3 * frame.images.mean()
        scores = [h.blocked_score for h in camera_health(dark, frame.cam_valid)]
        assert max(scores) < THRESHOLD, f"sample {k}: {scores}"


def test_a_masked_camera_is_not_assessed_and_does_not_move_the_others(synth_world: Path) -> None:
    names, rig, images = world_frames(synth_world)[0]
    frame = prepare(names, rig, {**images, names[1]: blocked(images[names[1]], seed=3)})
    valid = frame.cam_valid.copy()
    valid[1] = False
    health = camera_health(frame.images, valid)
    masked = health[1]
    assert not masked.assessed and math.isnan(masked.blocked_score) and math.isnan(masked.dirty_score)
    assert not masked.blocked and not masked.dirty
    assert all(h.assessed for i, h in enumerate(health) if i != 1)
    feats = lens_features(frame.images, valid)
    assert feats.shape == (len(names), len(FEATURE_NAMES)) and np.isnan(feats[1]).all()
    assert np.isfinite(np.delete(feats, 1, axis=0)).all()
    # What the masked camera's pixels hold (a stale frame, zeros) changes nothing for the others.
    noise = frame.images.copy()
    noise[1] = np.random.default_rng(0).integers(0, 256, noise[1].shape, dtype=np.uint8)
    again = camera_health(noise, valid)
    assert [h.blocked_score for i, h in enumerate(again) if i != 1] == \
           [h.blocked_score for i, h in enumerate(health) if i != 1]
    assert not any(h.assessed for h in camera_health(frame.images, np.zeros(len(names), bool)))
    with pytest.raises(RuntimeInputError, match="uint8 images"):
        camera_health(frame.images.astype(np.float32), frame.cam_valid)
    with pytest.raises(RuntimeInputError, match="cam_valid"):
        camera_health(frame.images, frame.cam_valid[:-1])


@pytest.fixture(scope="module")
def exported_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model at its random initialization, exported to ONNX FP32 (as tests/export/test_export_smoke.py)."""
    root = tmp_path_factory.mktemp("lens_export")
    ckpt, _ = random_tiny_checkpoint(root / "run" / "last.pt")
    export_checkpoint(ckpt, root / "export", ["fp32"], evaluate=False, log=lambda _: None)
    return root / "export" / "model.fp32.onnx"


def _jpeg(image_bgr: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image_bgr, [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def test_edge_results_carry_camera_health(exported_model: Path, synth_world: Path) -> None:
    model = EdgeModel(exported_model, threads=2)
    ds = load_dataset(synth_world)
    sample = ds.samples[0]
    names = model.metadata.camera_names
    rig = {n: Camera(c.K, sample.ref_T_cam(n), (c.height, c.width)) for n, c in sample.cameras.items()}
    frames: dict[str, bytes | None] = {n: c.path.read_bytes() for n, c in sample.cameras.items()}
    frames[names[0]] = _jpeg(blocked(cv2.imread(str(sample.cameras[names[0]].path)), seed=1))
    frames[names[4]] = None  # a missing camera: masked
    res = model.step(frames, rig, sample.global_T_ego, sample.timestamp / 1e6)
    assert list(res.camera_health) == list(names)
    assert res.camera_health[names[0]].blocked, res.camera_health[names[0]]
    assert not res.camera_health[names[4]].assessed and names[4] in res.masked
    assert not any(res.camera_health[n].blocked for n in names[1:])
    assert res.timings_ms["lens_monitor"] >= 0.0
    assert res.camera_health[names[0]].memory_s == 0.0  # the first frame of the stream
    # The stream remembers: the same frames 0.5 s later are judged on 0.5 s of evidence.
    t0 = sample.timestamp / 1e6
    again = model.step(frames, rig, sample.global_T_ego, t0 + 0.5)
    first = res.camera_health[names[0]]
    assert again.camera_health[names[0]].memory_s == pytest.approx(0.5)
    assert again.camera_health[names[0]].blocked_score == pytest.approx(first.blocked_score, rel=1e-6)
    # After reset() or a gap longer than max_gap the evidence starts again.
    model.reset()
    assert model.step(frames, rig, sample.global_T_ego, t0 + 1.0).camera_health[names[0]].memory_s == 0.0
    gap = model.step(frames, rig, sample.global_T_ego, t0 + 1.0 + model.max_gap + 0.1)
    assert gap.camera_health[names[0]].memory_s == 0.0
    # The thresholds are the model's monitor config: raised above the score, nothing is flagged.
    over = first.blocked_score + 0.5 * (1.0 - first.blocked_score)
    model.lens_monitor = LensMonitorConfig(blocked_threshold=over, blocked_settled_threshold=over)
    res = model.step(frames, rig, sample.global_T_ego, t0 + 10.0)
    assert res.camera_health[names[0]].assessed and not res.camera_health[names[0]].blocked


def test_the_memory_is_a_moving_average_in_time_that_skips_unassessed_frames() -> None:
    mem, tau = LensMemory(), 1.0
    b, d, span = mem.update(np.array([2.0, np.nan]), np.array([-1.0, np.nan]), 10.0, tau)
    np.testing.assert_allclose(b, [2.0, np.nan])
    np.testing.assert_allclose(span, [0.0, np.nan])
    b, d, span = mem.update(np.array([0.0, 1.0]), np.array([1.0, 3.0]), 11.0, tau)
    w = 1.0 - math.exp(-1.0)  # one time constant after the first frame
    np.testing.assert_allclose(b, [2.0 - 2.0 * w, 1.0])  # the second camera starts its own average
    np.testing.assert_allclose(d, [-1.0 + 2.0 * w, 3.0])
    np.testing.assert_allclose(span, [1.0, 0.0])
    b, _, span = mem.update(np.array([np.nan, 5.0]), np.array([np.nan, 5.0]), 12.0, tau)  # camera 0 masked
    assert math.isnan(b[0]) and math.isnan(span[0]) and mem.blocked[0] == pytest.approx(2.0 - 2.0 * w)
    b, _, span = mem.update(np.array([0.0, 1.0]), np.array([0.0, 1.0]), 13.0, tau)
    w2 = 1.0 - math.exp(-2.0)  # two seconds since camera 0's last assessed frame
    assert b[0] == pytest.approx((2.0 - 2.0 * w) * (1.0 - w2)) and span.tolist() == [3.0, 2.0]


def test_the_thresholds_slide_from_a_frame_alone_to_settled() -> None:
    cfg = LensMonitorConfig(blocked_threshold=0.9, blocked_settled_threshold=0.6, memory_s=1.5)
    first, _ = cfg.thresholds(np.array([0.0]))
    settled, _ = cfg.thresholds(np.array([100.0]))
    assert first[0] == pytest.approx(math.log(9.0)) and settled[0] == pytest.approx(math.log(1.5))
    mid, _ = cfg.thresholds(np.array([0.5, 1.0, 2.0]))
    assert math.log(9.0) > mid[0] > mid[1] > mid[2] > math.log(1.5)
    for bad in ({"blocked_threshold": 1.0}, {"dirty_settled_threshold": 0.0}, {"memory_s": 0.0}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            LensMonitorConfig(**bad)


def test_mine_with_the_lens_strategy_fires_on_the_blocked_frames(exported_model: Path, synth_world: Path,
                                                                tmp_path: Path) -> None:
    from data_engine.catalog import Catalog
    from data_engine.cli import app

    pool = tmp_path / "pool"
    shutil.copytree(synth_world, pool, symlinks=True)  # the shared world stays as rendered
    ds = load_dataset(pool)
    scene = ds.samples[4].scene_token  # CAM_BACK_LEFT blocked through this scene, a new draw each frame
    clip = [s for s in ds.samples if s.scene_token == scene]
    assert len(clip) == 3
    for k, sample in enumerate(clip):
        cam = sample.cameras["CAM_BACK_LEFT"]
        cv2.imwrite(str(cam.path), blocked(cv2.imread(str(cam.path)), seed=2 + k), [cv2.IMWRITE_JPEG_QUALITY, 92])
    db = tmp_path / "cat.db"
    with Catalog.open(db) as cat:
        cat.index_dataset(pool, unlabeled=True)
    res = CliRunner().invoke(app, ["mine", "--model", str(exported_model), "--catalog", str(db), "--strategy", "lens",
                                   "--budget", "1", "--run", "lens", "--diversity", "0"])
    assert res.exit_code == 0, res.output
    with Catalog.open(db) as cat:
        rid = cat.run_id("lens")
        rows = {tok: (score, json.loads(details)) for tok, score, details in cat.conn.execute(
            "SELECT f.sample_token, s.score, s.details FROM scores s JOIN frames f ON f.id = s.frame_id "
            "WHERE s.run_id = ? AND s.strategy = 'lens'", (rid,))}
        picks = cat.selections("lens")
    assert len(rows) == len(ds.samples)
    for sample in clip:
        score, details = rows[sample.token]
        assert details["fired"] and details["camera"] == "CAM_BACK_LEFT" and details["blocked"] == ["CAM_BACK_LEFT"]
    # The score is the alarm level: the blocked score against the threshold it was held to (>= 0.5 fires).
    assert min(rows[s.token][0] for s in clip) >= 0.5 > max(v for tok, (v, _) in rows.items() if tok not in
                                                            {s.token for s in clip})
    assert rows[clip[0].token][1]["blocked_score"] >= THRESHOLD  # the clip's first frame is judged alone
    tokens = {s.token for s in clip}
    others = {tok: d for tok, (_, d) in rows.items() if tok not in tokens}
    assert not any(d["fired"] for d in others.values()), others
    assert len(picks) == 1 and picks[0].frame.sample_token in tokens


@pytest.mark.slow
def test_the_benchmark_runs_end_to_end_quick(tmp_path: Path) -> None:
    from bench.lens_monitor import FRAMES, MEMORY_GRID

    results = tmp_path / "lens_monitor.json"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "bench.lens_monitor", "--quick", "--data", str(tmp_path / "worlds"),
                           "--results", str(results), "--no-progress"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "| blocked-lens recall, per camera-frame |" in proc.stdout
    report = json.loads(results.read_text())
    test = report["test"]
    counts = test["camera_frames"]
    assert sum(counts.values()) == 8 * FRAMES * 6  # 8 scenes of FRAMES frames, 6 cameras
    assert counts["blocked"] >= 3 * FRAMES and counts["dirty"] >= 1 * FRAMES  # the lens quotas (a day scene may add more)
    recall = test["blocked_recall"]
    assert recall["n"] == counts["blocked"] and 0.0 <= recall["lo"] <= recall["share"] <= recall["hi"] <= 1.0
    assert set(test["false_alarms_by_condition"]) == {"night", "fog", "dusk", "rain", "day"}
    # The thresholds are chosen on the calibration world: at most 1 % of its clear camera-frames flagged,
    # with memory and each frame alone; the memory's time constant is one of the grid's.
    assert report["calibration"]["false_alarms"]["share"] <= 0.01
    assert report["calibration"]["frame_alone"]["false_alarms"]["share"] <= 0.01
    assert report["config"]["memory_s"] in MEMORY_GRID
    assert set(test["by_seconds_into_clip"]) == {f"{0.5 * k:g}" for k in range(FRAMES)}
    assert 0.0 < report["config"]["blocked_threshold"] <= 1.0
    assert len(report["config"]["blocked_weights"]) == len(FEATURE_NAMES) + 1
    assert test["ms_per_frame"]["p50"] > 0


def test_the_median_of_the_other_cameras_is_numpys() -> None:
    from export.runtime.lens_monitor import _others_median

    rng = np.random.default_rng(0)
    for V in range(1, 8):
        for shape in [(V,), (V, 48), (V, 4, 3)]:
            x = rng.normal(size=shape)
            x[rng.random(shape) < 0.3] = 0.5  # ties
            want = x.copy() if V < 2 else np.stack([np.median(np.delete(x, i, axis=0), axis=0) for i in range(V)])
            np.testing.assert_allclose(_others_median(x), want, rtol=0, atol=1e-12)
