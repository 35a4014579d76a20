"""The geometry-seeded transformer (spatial cross-attention): exactly the sampling lift at
initialisation (with one camera sampled per point, wherever one camera sees), samples only the
cameras that see a point and never across a camera's edge, and its sampling offsets train at a tenth
of the learning rate."""

from __future__ import annotations

import pytest
import torch

from model_inputs import model_inputs, preset_with
from perception.models.bev_model import build_model
from perception.models.camera_geometry import sampling_grid
from perception.models.neck import merge_to_finest
from perception.models.view_sampling import SamplingLift
from perception.models.view_transformer import OFFSET_LR_SCALE
from perception.training.criterion import Criterion
from perception.training.parts import param_groups


def _features(model, inputs):
    B, N = inputs["K"].shape[:2]
    x = (inputs["images"].reshape(B * N, 3, *inputs["images"].shape[-2:]).float() - model.pixel_mean) / model.pixel_std
    return [f.reshape(B, N, *f.shape[1:]) for f in model.neck(model.backbone(x))]


@pytest.mark.parametrize("preset_name", ["tiny", "edge"])
@pytest.mark.parametrize("cameras", [2, 6])
def test_at_initialisation_the_transformer_is_the_sampling_lift(preset_name: str, cameras: int) -> None:
    preset = preset_with(preset_name, view_transform="transformer", attn_cameras=cameras)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    lift = SamplingLift(preset_with(preset_name, view_transform="sampling"), model.neck.channels,
                        model.neck.strides).eval()
    lift.compress.load_state_dict(model.view_transform.compress.state_dict())
    inputs = model_inputs(preset, batch=2, seed=3)
    inputs["cam_valid"][1, 2] = False  # a dead camera in the second sample
    with torch.no_grad():
        feats = _features(model, inputs)
        got = model.view_transform(feats, inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"])["bev"]
        want = lift(feats, inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"])["bev"]
    assert got.shape == want.shape == (2, preset.model.bev_channels, *preset.trunk_grid.bev.shape)
    assert want.abs().max() > 1.0
    # Equal to float32 rounding of the sampling coordinates (relative to the features' scale).
    assert (got - want).abs().max() <= 1e-5 * want.abs().max()


def test_with_one_camera_sampled_it_is_the_sampling_lift_where_one_camera_sees() -> None:
    # The edge preset samples the first camera that sees each point: at initialisation that is the
    # lift on every cell no two cameras see (at any height), and the first camera's sample where two do.
    preset = preset_with("edge", view_transform="transformer", attn_cameras=1)
    torch.manual_seed(0)
    model = build_model(preset).eval()
    lift = SamplingLift(preset_with("edge", view_transform="sampling"), model.neck.channels, model.neck.strides).eval()
    lift.compress.load_state_dict(model.view_transform.compress.state_dict())
    inputs = model_inputs(preset, batch=1, seed=3)
    vt = model.view_transform
    with torch.no_grad():
        feats = _features(model, inputs)
        got = vt(feats, inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"])["bev"]
        want = lift(feats, inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"])["bev"]
        h, w = merge_to_finest(feats).shape[-2:]
        _, valid = sampling_grid(vt.pillars[None], inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"], h, w,
                                 vt.stride)
    seen_by = valid.reshape(1, valid.shape[1], vt.Z, vt.X, vt.Y).sum(dim=1)  # [1, Z, X, Y] cameras per point
    overlap = (seen_by >= 2).any(dim=1, keepdim=True).float()  # [1, 1, X, Y] cells two cameras see
    # The lift's compression ends in a 3x3 conv: a cell next to an overlap reads it too.
    near = torch.nn.functional.max_pool2d(overlap, 3, stride=1, padding=1)
    single = (near == 0).expand_as(got)
    overlap = (overlap > 0).expand_as(got)
    assert single.any() and overlap.any()
    scale = want.abs().max()
    assert (got - want)[single].abs().max() <= 1e-5 * scale
    assert (got - want)[overlap].abs().max() > 1e-3 * scale  # where two cameras see, it reads one


def test_samples_never_cross_into_the_next_camera() -> None:
    preset = preset_with("tiny", view_transform="transformer")
    torch.manual_seed(0)
    model = build_model(preset).eval()
    sca = model.view_transform.first
    inputs = model_inputs(preset)
    vt = model.view_transform
    with torch.no_grad():
        f = merge_to_finest(_features(model, inputs))  # [1, N, C, h, w]
        N, h, w = f.shape[1], f.shape[-2], f.shape[-1]
        q = vt.query_embed[None] + vt.query_pos(vt.query_xy)[None]
        ref, valid = sampling_grid(vt.pillars[None], inputs["K"], inputs["ego_T_cam"], inputs["cam_valid"], h, w,
                                   vt.stride)
        ref, valid = ref.reshape(1, N, vt.Z, -1, 2), valid.reshape(1, N, vt.Z, -1)
        plain = sca(q, f, ref, valid)
        for shift in (1e3, -1e3):  # every sample pushed far past its camera's right or left edge, same row
            bias = sca.offsets.bias.view(-1, 2)  # (x, y) per head, height and point
            bias[:, 0], bias[:, 1] = shift, 0.0
            pushed = sca(q, f, ref, valid)
            assert plain.abs().max() > 0.1 and pushed.abs().max() == 0.0


def test_gradients_reach_the_attention_once_it_has_moved() -> None:
    preset = preset_with("tiny", view_transform="transformer")
    torch.manual_seed(0)
    model = build_model(preset).train()
    inputs = model_inputs(preset, batch=2)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):  # the refining layers open from zero: their projection, then their heads
        opt.zero_grad()
        sum(v.float().pow(2).mean() for v in model(**inputs).values()).backward()
        opt.step()
    vt = model.view_transform
    for layer in [vt.first, *[lay.sca for lay in vt.layers]]:
        for name in ("offsets", "weights", "value_proj"):
            grad = getattr(layer, name).weight.grad
            assert grad is not None and grad.abs().sum() > 0, name


def test_offsets_and_backbone_have_their_learning_rates() -> None:
    preset = preset_with("tiny", view_transform="transformer")
    model = build_model(preset)
    criterion = Criterion.for_preset(preset)
    groups = param_groups(model, criterion, lr=1e-3, weight_decay=0.01, backbone_lr_scale=0.5)
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    for name, p in model.named_parameters():
        want = 5e-4 if name.startswith("backbone.") else 1e-3 * OFFSET_LR_SCALE if ".offsets." in name else 1e-3
        assert lr_of[id(p)] == pytest.approx(want), name
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters())) + len(list(criterion.parameters()))
