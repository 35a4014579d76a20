"""`perception eval --drop-cameras` (perception/degradation.py) and the BEV visibility of cameras
(perception/geometry.py bev_visibility), on the shared tiny synthetic world with an untrained tiny model."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from model_inputs import preset_with, random_tiny_checkpoint
from typer.testing import CliRunner

from perception.boxes import REGRESSION_CHANNELS
from perception.cli import app
from perception.data.dataset import DatasetConfig, MultiCamDataset
from perception.degradation import (
    DegradationError,
    camera_ring,
    degradation_model,
    drop_sets,
    mask_cameras,
    parse_cameras,
)
from perception.evaluate import evaluate_model, run_model
from perception.geometry import BEVGrid, bev_visibility
from perception.models.camera_geometry import sampling_grid

VAL = "synth_val"


@pytest.fixture(scope="module")
def world(tmp_path_factory, synth_world):
    """The shared world, an untrained tiny model (seeded) and its checkpoint."""
    root = tmp_path_factory.mktemp("degradation")
    ckpt, model = random_tiny_checkpoint(root / "run" / "last.pt", pretrained=False)
    preset = preset_with("tiny", pretrained=None)
    dataset = MultiCamDataset(synth_world, preset)
    return {"data": synth_world, "ckpt": ckpt, "model": model, "preset": preset, "dataset": dataset,
            "frame": dataset[0]}


def _cell(grid: BEVGrid, x: float, y: float) -> tuple[int, int]:
    i, j = np.floor(grid.to_cells(np.array([x, y]))).astype(int)
    return int(i), int(j)


def test_visibility_front_and_back(world):
    preset, frame = world["preset"], world["frame"]
    cams = preset.input.cameras
    grid = preset.bev
    seen = bev_visibility(grid, frame.K, frame.ego_T_cam, (preset.input.height, preset.input.width))
    assert seen.shape == (len(cams), *grid.shape) and seen.dtype == bool
    front, back = cams.index("CAM_FRONT"), cams.index("CAM_BACK")
    ahead, behind = _cell(grid, 12.0, 0.0), _cell(grid, -12.0, 0.0)
    assert seen[front][ahead] and not seen[back][ahead]
    assert seen[back][behind] and not seen[front][behind]
    # The six cameras together see nearly every cell between 3 m and 20 m of the ego.
    dist = np.linalg.norm(grid.cell_centers(), axis=-1)
    ring = (dist > 3.0) & (dist < 20.0)
    assert seen.any(axis=0)[ring].mean() > 0.95
    assert seen.mean(axis=(1, 2)).max() < 0.5  # no camera sees half the grid


def test_visibility_matches_the_models_sampling_geometry(world):
    """At one height, the cells a camera sees are the pillar points the model's view transform samples."""
    preset, frame = world["preset"], world["frame"]
    H, W, stride = preset.input.height, preset.input.width, 8
    grid = preset.bev
    seen = bev_visibility(grid, frame.K, frame.ego_T_cam, (H, W), heights=(0.5,))
    X, Y = grid.shape
    points = np.concatenate([grid.cell_centers().reshape(-1, 2), np.full((X * Y, 1), 0.5)], axis=1)
    N = len(frame.K)
    _, valid = sampling_grid(torch.from_numpy(points).float()[None], torch.from_numpy(frame.K)[None],
                             torch.from_numpy(frame.ego_T_cam)[None], torch.ones(1, N, dtype=torch.bool),
                             H // stride, W // stride, stride)
    model_seen = valid[0].numpy().reshape(N, X, Y)
    assert model_seen.any() and (seen != model_seen).mean() < 1e-3  # float32 against float64 at the edges


def test_visibility_single_camera_by_hand():
    """A camera 1 m up looking along +x, half field of view atan(1.25), sees the wedge |y| < 1.25 x at 1 m
    (no cell centre lies on the wedge's edges)."""
    from perception.geometry import camera_rotation_from_yaw_pitch, make_transform

    grid = BEVGrid(-10.0, 10.0, -10.0, 10.0, 1.0)
    K = np.array([[40.0, 0, 49.5], [0, 40.0, 49.5], [0, 0, 1]])  # 100 x 100 px: |u - 49.5| <= 50 at the edges
    ego_T_cam = make_transform(camera_rotation_from_yaw_pitch(0.0), np.array([0.0, 0.0, 1.0]))
    seen = bev_visibility(grid, K[None], ego_T_cam[None], (100, 100), heights=(1.0,))[0]
    xy = grid.cell_centers()
    wedge = np.abs(xy[..., 1]) < 1.25 * xy[..., 0]
    assert np.array_equal(seen, wedge)
    # Behind the camera, nothing: turn it round and the wedge flips.
    back = make_transform(camera_rotation_from_yaw_pitch(np.pi), np.array([0.0, 0.0, 1.0]))
    assert np.array_equal(bev_visibility(grid, K[None], back[None], (100, 100), heights=(1.0,))[0],
                          np.abs(xy[..., 1]) < -1.25 * xy[..., 0])


def test_ring_and_drop_sets(world):
    cams = world["preset"].input.cameras
    ring = [cams[i] for i in camera_ring(world["frame"].ego_T_cam)]
    start = ring.index("CAM_FRONT")
    ring = ring[start:] + ring[:start]
    assert ring == ["CAM_FRONT", "CAM_FRONT_LEFT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT", "CAM_FRONT_RIGHT"]
    order = camera_ring(world["frame"].ego_T_cam)
    assert len(drop_sets(6, order, "all")) == 6 + 15 and len(drop_sets(6, order, "none")) == 6
    adjacent = {frozenset(cams[i] for i in s) for s in drop_sets(6, order, "adjacent") if len(s) == 2}
    assert adjacent == {frozenset((ring[i], ring[(i + 1) % 6])) for i in range(6)}
    with pytest.raises(DegradationError, match="'some'"):
        drop_sets(6, order, "some")
    assert parse_cameras("CAM_BACK, CAM_FRONT", cams) == (cams.index("CAM_BACK"), cams.index("CAM_FRONT"))
    with pytest.raises(DegradationError, match="unknown camera 'CAM_TOP'"):
        parse_cameras("CAM_TOP", cams)


def test_masking_changes_outputs_and_the_baseline_is_a_normal_eval(world):
    model, preset, ds = world["model"], world["preset"], world["dataset"]
    cams = preset.input.cameras
    keep = cams.index("CAM_FRONT")
    dropped = tuple(i for i in range(len(cams)) if i != keep)
    clips = ds.clips()[:1]
    plain = list(run_model(model, ds, clips))
    masked = list(run_model(model, ds, clips, edit_batch=lambda b: mask_cameras(b, dropped)))
    for (b0, o0), (b1, o1) in zip(plain, masked):
        assert b0.cam_valid.all() and b1.cam_valid[0].tolist() == [i == keep for i in range(len(cams))]
        assert b1.images[:, list(dropped)].eq(0).all() and torch.equal(b1.images[:, keep], b0.images[:, keep])
        assert not torch.allclose(o0["seg"], o1["seg"]) and not torch.equal(o0["heatmap"], o1["heatmap"])
    assert torch.equal(plain[0][0].images, next(iter(run_model(model, ds, clips)))[0].images)  # batch not edited in place

    only = ",".join(cams[i] for i in dropped)
    report = degradation_model(model, preset, world["data"], VAL, only=only, print_fn=None)
    normal = evaluate_model(model, preset, world["data"], VAL, print_fn=None)
    base = report.baseline.regions["grid"]
    assert report.samples == normal.samples == 3
    for c in preset.tasks.seg_classes:
        assert base.bev_iou[c] == pytest.approx(normal.bev_iou[c], nan_ok=True)
    assert base.mAP == pytest.approx(normal.detection_capped.mAP, nan_ok=True)
    assert report.detection_config == normal.detection_capped.config
    assert [r.dropped for r in report.runs] == [tuple(cams[i] for i in dropped)]
    run = report.runs[0]
    inside, outside = run.regions["inside"], run.regions["outside"]
    assert inside.cells > 0.5 and 0 < outside.cells < 0.2  # five cameras out: only CAM_FRONT's own wedge is outside
    assert run.regions["grid"].baseline_bev_iou == base.bev_iou


class _SeesWhatItSees(torch.nn.Module):
    """A stand-in model: every segmentation class positive exactly on the cells a valid camera sees
    (bev_visibility of its inputs), no boxes. Its output at a cell depends only on the cameras seeing it."""

    def __init__(self, preset):
        super().__init__()
        self.preset = preset
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def initial_state(self, batch, device="cpu"):
        return torch.zeros(batch, 1, 1, 1, device=device)

    def forward(self, images, K, ego_T_cam, cam_valid, prev_state, prev_T_curr, dt):
        p = self.preset
        B, (X, Y), (Xd, Yd) = images.shape[0], p.bev.shape, p.det_grid.shape
        seg = torch.full((B, len(p.tasks.seg_classes), X, Y), -5.0)
        for b in range(B):
            seen = bev_visibility(p.bev, K[b].numpy(), ego_T_cam[b].numpy(), (p.input.height, p.input.width))
            seg[b, :, torch.from_numpy(seen[cam_valid[b].numpy()].any(axis=0))] = 5.0
        return {"heatmap": torch.full((B, len(p.tasks.det_classes), Xd, Yd), -20.0),
                "regression": torch.zeros(B, len(REGRESSION_CHANNELS), Xd, Yd), "seg": seg, "state": prev_state}


def test_regions_and_deltas_with_a_model_that_sees_what_its_cameras_see(world):
    """Outside the dead cameras' view such a model predicts what it did with every camera: every delta
    there is exactly 0. Inside, the IoU is what the regions say, counted here frame by frame."""
    preset = world["preset"]
    cams = preset.input.cameras
    report = degradation_model(_SeesWhatItSees(preset), preset, world["data"], VAL, pairs="none", print_fn=None)
    assert [r.dropped for r in report.runs] == [(c,) for c in cams]
    val = MultiCamDataset(world["data"], preset, DatasetConfig(split=VAL))
    frames = [val[i] for i in range(len(val))]
    hw = (preset.input.height, preset.input.width)
    seen = [bev_visibility(preset.bev, f.K, f.ego_T_cam, hw) for f in frames]  # [N, X, Y] per frame
    s = preset.tasks.seg_classes.index("drivable_area")
    for n, run in enumerate(report.runs):
        inside, outside = run.regions["inside"], run.regions["outside"]
        assert 0.05 < inside.cells < 0.5 and 0.3 < outside.cells < 0.95, run.dropped
        for c in preset.tasks.seg_classes:
            if np.isfinite(outside.bev_iou[c]):
                assert outside.delta_iou(c) == 0.0, (run.dropped, c)
        counts = np.zeros((2, 2))  # (masked, baseline) x (intersection, union)
        for f, v in zip(frames, seen):
            region = v[n]
            gt = f.seg[s].astype(bool) & region
            for k, pred in enumerate((np.delete(v, n, axis=0).any(axis=0) & region, v.any(axis=0) & region)):
                counts[k] += [(pred & gt).sum(), (pred | gt).sum()]
        assert inside.bev_iou["drivable_area"] == pytest.approx(counts[0, 0] / counts[0, 1])
        assert inside.baseline_bev_iou["drivable_area"] == pytest.approx(counts[1, 0] / counts[1, 1])
        assert inside.bev_iou["drivable_area"] != inside.baseline_bev_iou["drivable_area"]
    base = report.baseline.regions["outside"]  # no camera dropped: "outside" is every cell a camera sees
    assert base.cells > 0.6 and base.delta_iou("drivable_area") == 0.0


def test_cli_end_to_end(world, tmp_path):
    """The baseline, six cameras and six neighbouring pairs through `perception eval`."""
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
                                   "--split", VAL, "--out", str(out), "--drop-cameras", "--drop-pairs", "adjacent"])
    assert res.exit_code == 0, res.output
    cams = list(world["preset"].input.cameras)
    for word in ("Dead cameras", "mAP* in", "vehicle IoU out", "capped", "Worst of 6 pairs (adjacent)", *cams):
        assert word in res.stdout, word
    rep = json.loads((out / "degradation.json").read_text())
    assert (out / "eval_report.json").is_file() and (out / "metrics_summary.json").is_file()
    assert rep["split"] == VAL and rep["pairs"] == "adjacent" and rep["main_class"] == "vehicle"
    assert rep["cameras"] == cams and sorted(rep["ring"]) == sorted(cams)
    runs = rep["runs"]
    assert [r["dropped"] for r in runs[:6]] == [[c] for c in cams] and len(runs) == 12
    pairs = [r for r in runs if r["k"] == 2]
    ring = rep["ring"]
    assert {frozenset(r["dropped"]) for r in pairs} == {frozenset((ring[i], ring[(i + 1) % 6])) for i in range(6)}
    worst = min(pairs, key=lambda r: r["regions"]["grid"]["delta_bev_iou"]["vehicle"])
    assert rep["worst_pair"] == worst["dropped"] and " + ".join(worst["dropped"]) in res.stdout
    for r in runs:
        for region in ("inside", "outside", "grid"):
            s = r["regions"][region]
            assert set(s["bev_iou"]) == set(world["preset"].tasks.seg_classes)
            assert {"mAP", "baseline_mAP", "delta_mAP", "delta_bev_iou", "num_gt", "cells"} <= set(s)
        assert 0 < r["regions"]["inside"]["cells"] and r["regions"]["inside"]["cells"] + r["regions"]["outside"]["cells"] <= 1


def test_cli_drop_only(world, tmp_path):
    """One dropped set through `perception eval`: the normal outputs, the table and degradation.json."""
    out = tmp_path / "eval"
    res = CliRunner().invoke(app, ["eval", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
                                   "--split", VAL, "--out", str(out), "--drop-cameras",
                                   "--drop-only", "CAM_BACK_LEFT,CAM_BACK"])
    assert res.exit_code == 0, res.output
    assert "RANGE-CAPPED" in res.stdout and "CAM_BACK_LEFT + CAM_BACK" in res.stdout  # the eval, then the table
    assert res.stdout.strip().endswith(f"wrote {out / 'degradation.json'}")
    rep = json.loads((out / "degradation.json").read_text())
    assert rep["pairs"] == "only" and [r["dropped"] for r in rep["runs"]] == [["CAM_BACK_LEFT", "CAM_BACK"]]
    assert rep["worst_pair"] == ["CAM_BACK_LEFT", "CAM_BACK"] and rep["meta"]["checkpoint"] == str(world["ckpt"])
    base = json.loads((out / "eval_report.json").read_text())
    assert rep["baseline"]["regions"]["grid"]["bev_iou"] == base["bev_iou"]
    assert "inside" not in rep["baseline"]["regions"] and rep["baseline"]["regions"]["outside"]["cells"] > 0.5


def test_clear_errors(world, tmp_path):
    runner = CliRunner()
    data, ckpt = str(world["data"]), str(world["ckpt"])
    out = tmp_path / "e"
    res = runner.invoke(app, ["eval", "--checkpoint", ckpt, "--data", data, "--out", str(out), "--drop-cameras",
                              "--drop-only", "CAM_FRONT,CAM_NOSE"])
    assert res.exit_code == 1 and "unknown camera 'CAM_NOSE'" in res.stderr and "CAM_BACK_LEFT" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and "Traceback" not in res.output and not out.exists()
    missing = str(tmp_path / "nope.pt")
    res = runner.invoke(app, ["eval", "--checkpoint", missing, "--data", data, "--drop-cameras"])
    assert res.exit_code == 1 and f"{missing}: checkpoint file missing" in res.stderr
    res = runner.invoke(app, ["eval", "--checkpoint", ckpt, "--data", data, "--drop-cameras", "--drop-pairs", "few"])
    assert res.exit_code == 1 and "--drop-pairs 'few'" in res.stderr and "adjacent" in res.stderr
    res = runner.invoke(app, ["eval", "--checkpoint", ckpt, "--data", data, "--drop-only", "CAM_FRONT"])
    assert res.exit_code == 1 and "go with --drop-cameras" in res.stderr
