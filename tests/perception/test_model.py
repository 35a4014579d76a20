"""The BEV model: shapes for every preset and view transform, geometry as input, dead cameras,
gradients, the cost budget, and ONNX export of each view transform and the video module."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from model_inputs import INPUT_NAMES, model_inputs, preset_with
from perception import geometry
from perception.models import camera_geometry as cg
from perception.models.bev_model import build_model
from perception.models.temporal import VideoModule

VIEWS = ("transformer", "global_attention", "sampling", "lift_splat")


@pytest.mark.parametrize("view", VIEWS)
@pytest.mark.parametrize("preset_name", ["tiny", "edge"])
def test_output_shapes(preset_name: str, view: str) -> None:
    preset = preset_with(preset_name, view_transform=view)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    with torch.no_grad():
        out = model(**model_inputs(preset, batch=2))
    X, Y = preset.bev.shape
    Xd, Yd = preset.det_grid.shape
    C = preset.model.bev_channels
    s = preset.model.bev_stride
    assert out["seg"].shape == (2, len(preset.tasks.seg_classes), X, Y)
    assert out["heatmap"].shape == (2, len(preset.tasks.det_classes), Xd, Yd)
    assert out["regression"].shape == (2, 10, Xd, Yd)
    assert out["state"].shape == (2, C, X // s, Y // s) == (2, *preset.state_shape) == (2, *model.state_shape)
    assert out["embedding"].shape == (2, preset.model.embedding_dim)
    assert torch.allclose(out["embedding"].norm(dim=1), torch.ones(2), atol=1e-5)
    assert ("depth_logits" in out) == (view == "lift_splat")
    assert all(torch.isfinite(v).all() for v in out.values())


@pytest.mark.slow
@pytest.mark.parametrize("view", VIEWS)
def test_base_preset_shapes_within_memory(view: str) -> None:
    import resource

    preset = preset_with("base", view_transform=view)
    model = build_model(preset).eval()
    with torch.no_grad():
        out = model(**model_inputs(preset, batch=1))
    assert out["seg"].shape[-2:] == (200, 200) and out["heatmap"].shape[-2:] == (100, 100)
    assert out["state"].shape[-2:] == (100, 100)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    assert peak_gb < 12, f"peak resident memory {peak_gb:.1f} GB"


def test_closed_form_inverses_match_numpy_geometry() -> None:
    rng = np.random.default_rng(0)
    for det in (1, -1):
        R = geometry.quat_to_rotation(rng.normal(size=4) / 1.0)
        if det < 0:
            R = R @ np.diag([1, -1, 1])
        T = geometry.make_transform(R, rng.normal(size=3))
        got = cg.invert_rigid(torch.from_numpy(T)).numpy()
        assert np.allclose(got, geometry.invert_rigid(T), atol=1e-12)
    K = np.array([[-600.0, 0.5, 300.0], [0.0, 590.0, 200.0], [0.0, 0.0, 1.0]])
    assert np.allclose(cg.invert_intrinsics(torch.from_numpy(K)).numpy(), geometry.invert_intrinsics(K), atol=1e-12)


def test_outputs_follow_the_rig() -> None:
    preset = preset_with("tiny", view_transform="transformer")
    torch.manual_seed(0)
    model = build_model(preset).eval()
    inputs = model_inputs(preset)
    with torch.no_grad():
        a = model(**inputs)["heatmap"]
        moved = dict(inputs, ego_T_cam=inputs["ego_T_cam"].clone())
        moved["ego_T_cam"][..., 0, 3] += 1.5  # the whole rig 1.5 m further forward
        b = model(**moved)["heatmap"]
    assert (a - b).abs().max() > 1e-3


def test_yawing_the_rig_rotates_the_sampling_lift() -> None:
    preset = preset_with("tiny", view_transform="sampling")
    torch.manual_seed(0)
    model = build_model(preset).eval()
    model.view_transform.compress = nn.Identity()  # the raw lift: [B, C*Z, X, Y]
    inputs = model_inputs(preset)
    B, N = inputs["K"].shape[:2]
    with torch.no_grad():
        feats = [f.reshape(B, N, *f.shape[1:]) for f in model.neck(model.backbone(
            (inputs["images"].reshape(B * N, 3, *inputs["images"].shape[-2:]).float() - model.pixel_mean)
            / model.pixel_std))]
        lift = lambda E: model.view_transform(feats, inputs["K"], E, inputs["cam_valid"])["bev"]  # noqa: E731
        plain = lift(inputs["ego_T_cam"])
        yaw = torch.from_numpy(geometry.make_transform(geometry.rotz(math.pi / 2), np.zeros(3)).astype(np.float32))
        turned = lift(yaw @ inputs["ego_T_cam"])
    expected = torch.rot90(plain, k=1, dims=(-2, -1))
    assert plain.abs().max() > 0.1
    assert torch.allclose(turned, expected, atol=1e-5 * float(plain.abs().max()))  # float32 rounding


def test_a_dead_camera_only_disturbs_its_view() -> None:
    preset = preset_with("tiny", view_transform="transformer", temporal=False)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    inputs = model_inputs(preset)
    dead = 3  # CAM_BACK
    with torch.no_grad():
        a = model(**inputs)
        inputs_dead = dict(inputs, cam_valid=inputs["cam_valid"].clone())
        inputs_dead["cam_valid"][0, dead] = False
        b = model(**inputs_dead)
    assert all(torch.isfinite(v).all() for v in b.values())
    change = (a["seg"] - b["seg"]).abs().mean(dim=(0, 1)).numpy()  # [X, Y]
    # Cells the dead camera sees (a pillar at any z projecting into its image), and those far from them.
    grid = preset.bev
    centres = grid.cell_centers().reshape(-1, 2)
    K = inputs["K"][0, dead].double().numpy()
    cam_T_ego = geometry.invert_rigid(inputs["ego_T_cam"][0, dead].double().numpy())
    seen = np.zeros(len(centres), bool)
    for z in preset.model.z_levels:
        pts = np.concatenate([centres, np.full((len(centres), 1), z)], axis=1)
        uv, depth = geometry.project(K, geometry.transform_points(cam_T_ego, pts))
        seen |= (depth > 0.1) & (uv[:, 0] >= 0) & (uv[:, 0] < preset.input.width) & (uv[:, 1] >= 0) & \
            (uv[:, 1] < preset.input.height)
    seen = seen.reshape(grid.shape)
    import cv2

    far = cv2.dilate(seen.astype(np.uint8), np.ones((41, 41), np.uint8)) == 0  # 20 cells beyond its view
    assert seen.sum() > 100 and far.sum() > 100
    assert change[far].mean() < 0.1 * change[seen].mean()


@pytest.mark.parametrize("view", VIEWS)
def test_gradients_reach_every_parameter(view: str) -> None:
    preset = preset_with("tiny", view_transform=view)
    torch.manual_seed(0)
    model = build_model(preset).train()
    inputs = model_inputs(preset, batch=2)
    # Three steps: the transformer's refining layers open from zero (their projection, then their
    # offset and weight heads), so what lies before them gets gradient from the third step on.
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        sum(v.float().pow(2).mean() for v in model(**inputs).values()).backward()
        opt.step()
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    missing = [n for n, p in model.named_parameters()
               if n not in frozen and (p.grad is None or not p.grad.abs().sum() > 0)]
    assert not missing, missing
    # The pretrained backbone's stem and first stage (stride <= 4) are frozen, and only they.
    assert frozen and all(n.startswith(("backbone.stem.", "backbone.stages.0.")) for n in frozen)


@pytest.mark.parametrize("preset_name", ["tiny", "edge", pytest.param("base", marks=pytest.mark.slow)])
def test_view_transform_costs_no_more_than_the_backbone(preset_name: str) -> None:
    for view in VIEWS:
        preset = preset_with(preset_name, view_transform=view)
        model = build_model(preset).eval()
        inputs = model_inputs(preset)
        B, N = inputs["K"].shape[:2]
        x = inputs["images"].reshape(B * N, 3, *inputs["images"].shape[-2:]).float()
        with FlopCounterMode(display=False) as backbone_count:
            feats = model.backbone(x)
        feats = [f.reshape(B, N, *f.shape[1:]) for f in model.neck(feats)]
        with FlopCounterMode(display=False) as view_count:
            model.view_transform(feats, inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"])
        assert view_count.get_total_flops() <= backbone_count.get_total_flops(), (
            view, view_count.get_total_flops() / 1e9, backbone_count.get_total_flops() / 1e9)


def _export_and_compare(module: nn.Module, first: tuple, second: tuple, names: list[str], path) -> None:
    with torch.no_grad():
        expected = module(*second)
    if isinstance(expected, dict):
        out_names = list(expected)
        expected = [expected[k] for k in out_names]
    else:
        expected = list(expected)
        out_names = [f"out{i}" for i in range(len(expected))]
    batch = torch.export.Dim("batch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, first, str(path), input_names=names, output_names=out_names, dynamo=True,
                          opset_version=18, dynamic_shapes={n: {0: batch} for n in names})
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(out_names, {n: v.numpy() for n, v in zip(names, second)})
    for name, g, e in zip(out_names, got, expected):
        assert g.shape == tuple(e.shape), name
        assert np.abs(g - e.numpy()).max() < 1e-4 * max(1.0, float(e.abs().max())), name


@pytest.mark.slow
@pytest.mark.parametrize("view", VIEWS)
def test_model_exports_to_onnx(view: str, tmp_path) -> None:
    preset = preset_with("tiny", view_transform=view)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    first = tuple(model_inputs(preset, batch=2, seed=0)[n] for n in INPUT_NAMES)
    second = dict(model_inputs(preset, batch=2, seed=1))
    second["cam_valid"] = second["cam_valid"].clone()
    second["cam_valid"][1, 2] = False  # a different input: other images, a dead camera, ego motion
    second["prev_T_curr"] = torch.from_numpy(
        geometry.make_transform(geometry.rotz(0.1), np.array([2.0, 0.3, 0.0])).astype(np.float32))[None].repeat(2, 1, 1)
    _export_and_compare(model, first, tuple(second[n] for n in INPUT_NAMES), list(INPUT_NAMES), tmp_path / "m.onnx")


@pytest.mark.slow
def test_video_module_exports_to_onnx(tmp_path) -> None:
    preset = preset_with("tiny")
    torch.manual_seed(0)
    module = VideoModule(preset, 16).eval()
    X, Y = preset.trunk_grid.bev.shape
    g = torch.Generator().manual_seed(0)

    def inputs(angle: float, dx: float) -> tuple:
        T = torch.from_numpy(geometry.make_transform(geometry.rotz(angle), np.array([dx, 0.0, 0.0])).astype(np.float32))
        return (torch.randn(2, 16, X, Y, generator=g), torch.randn(2, 16, X, Y, generator=g), T[None].repeat(2, 1, 1),
                torch.tensor([0.5, 1 / 12]))

    _export_and_compare(module, inputs(0.0, 0.0), inputs(0.2, 3.0), ["bev", "prev_state", "prev_T_curr", "dt"],
                        tmp_path / "video.onnx")


def test_video_state_follows_the_ego_motion() -> None:
    preset = preset_with("tiny")
    module = VideoModule(preset, 1)
    X, Y = preset.trunk_grid.bev.shape
    state = torch.zeros(1, 1, X, Y)
    res = preset.trunk_grid.resolution  # m per cell of the grid the state lives on
    i, j = X // 2 + 8, Y // 2  # a marked cell 8 cells ahead of the ego
    state[0, 0, i, j] = 1.0
    # The ego moved 2 cells forward: the mark now lies 2 rows closer.
    T = torch.from_numpy(geometry.make_transform(np.eye(3), np.array([2 * res, 0.0, 0.0])).astype(np.float32))[None]
    warped = module.warp(state, T)
    assert warped[0, 0, i - 2, j] == pytest.approx(1.0, abs=1e-5)
    assert warped.sum() == pytest.approx(1.0, abs=1e-5)
