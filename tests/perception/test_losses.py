"""Tests of perception/training: the head losses and the Criterion that weights them.

Small hand-made tensors (targets from the real box codec), so the whole file runs in about a second.
Each loss is pinned by a hand computation or an invariance: perfect predictions give ~0, masked
entries (velocity, invalid seg classes, empty depth pixels, dead cameras) change nothing, empty
batches give finite zeros, and everything is float32 and differentiable under bf16 autocast.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from perception.boxes import NUM_REGRESSION, REGRESSION_SLICES, BoxCodec
from perception.data.batch import MultiCamBatch
from perception.geometry import BEVGrid
from perception.specs import DepthBins
from perception.training.losses import depth_bin_index
from perception.training.criterion import TASKS, Criterion, LossConfig, UncertaintyWeighting
from perception.training.losses import (
    depth_cross_entropy,
    downsample_sparse_depth,
    focal_heatmap_loss,
    gather_at_indices,
    infer_stride,
    regression_l1_loss,
    seg_bce_loss,
    seg_dice_loss,
)

B, N, C, S, M = 2, 2, 3, 3, 4  # frames, cameras, det classes, seg classes, target slots
H, W, STRIDE = 16, 24, 4  # image px; depth_logits are [H / 4, W / 4]
BINS = DepthBins(2.0, 10.0, 5)  # centres 2, 4, 6, 8, 10 m; covers [1, 11)
CODEC = BoxCodec(BEVGrid(-4.0, 4.0, -4.0, 4.0, 1.0), classes=("car", "pedestrian", "cone"), max_objects=M)
X, Y = CODEC.grid.shape


def make_batch(num_objects: int = 3, seed: int = 0, with_depth: bool = True) -> MultiCamBatch:
    """A batch of B frames with ``num_objects`` boxes each (distinct cells), seg targets and sparse depth."""
    rng = np.random.default_rng(seed)
    targets = []
    for _ in range(B):
        cells = rng.choice(X * Y, size=num_objects, replace=False)
        centre = np.stack([cells // Y - 3.5, cells % Y - 3.5, rng.uniform(0, 1, num_objects)], axis=1) + 0.1
        velocity = rng.normal(size=(num_objects, 2))
        velocity[:1] = np.nan  # the first object of each frame has no velocity
        targets.append(CODEC.encode(centre, rng.uniform(0.5, 3.0, (num_objects, 3)), rng.uniform(-3, 3, num_objects),
                                    velocity, rng.integers(0, C, num_objects)))
    depth = np.zeros((B, N, H, W), np.float32)
    hit = rng.random((B, N, H, W)) < 0.15
    depth[hit] = rng.uniform(0.5, 12.0, hit.sum())  # some outside the bins' [1, 11) on purpose

    def stack(name: str) -> torch.Tensor:
        return torch.from_numpy(np.stack([getattr(t, name) for t in targets]))

    return MultiCamBatch(
        images=torch.zeros(B, N, 3, H, W, dtype=torch.uint8), K=torch.eye(3).expand(B, N, 3, 3),
        ego_T_cam=torch.eye(4).expand(B, N, 4, 4), cam_valid=torch.tensor([[True, True], [True, False]]),
        seg=torch.from_numpy((rng.random((B, S, X, Y)) < 0.3).astype(np.uint8)),
        seg_valid=torch.tensor([[True, False, True], [True, True, False]]),
        heatmap=stack("heatmap"), det_indices=stack("indices"), det_mask=stack("mask"),
        det_regression=stack("regression"), det_velocity_valid=stack("velocity_valid"), det_labels=stack("labels"),
        prev_T_curr=torch.eye(4).expand(B, 4, 4), dt=torch.zeros(B), is_first=torch.ones(B, dtype=torch.bool),
        sequence_id=torch.zeros(B, dtype=torch.int64), frame_index=torch.zeros(B, dtype=torch.int64),
        sample_index=torch.arange(B), gt_boxes=torch.zeros(B, 1, 9), gt_labels=torch.full((B, 1), -1),
        aug_T_ego=torch.eye(4).expand(B, 4, 4), depth=torch.from_numpy(depth) if with_depth else None,
    )


def make_outputs(seed: int = 1, depth: bool = True) -> dict[str, torch.Tensor]:
    """Random model outputs (leaf tensors that require grad)."""
    g = torch.Generator().manual_seed(seed)
    out = {"heatmap": torch.randn(B, C, X, Y, generator=g),
           "regression": torch.randn(B, NUM_REGRESSION, X, Y, generator=g),
           "seg": torch.randn(B, S, X, Y, generator=g), "state": torch.randn(B, 4, X, Y, generator=g)}
    if depth:
        out["depth_logits"] = torch.randn(B, N, BINS.count, H // STRIDE, W // STRIDE, generator=g)
    return {k: v.requires_grad_() for k, v in out.items()}


def scatter_targets(batch: MultiCamBatch) -> torch.Tensor:
    """A regression map [B, R, X, Y] holding every object's target at its cell (exact predictions)."""
    reg = torch.randn(B, NUM_REGRESSION, X * Y)
    for b in range(B):
        for m in torch.nonzero(batch.det_mask[b]).flatten().tolist():
            reg[b, :, batch.det_indices[b, m]] = batch.det_regression[b, m]
    return reg.reshape(B, NUM_REGRESSION, X, Y)


# ----------------------------------------------------------------------------------------- heatmap


def test_focal_loss_equals_hand_computation() -> None:
    target = torch.tensor([[[[1.0, 0.5], [0.0, 0.25]]]])
    logits = torch.tensor([[[[2.0, -1.0], [0.5, -3.0]]]])
    p = [[1 / (1 + math.exp(-x)) for x in row] for row in logits[0, 0].tolist()]
    pos = -((1 - p[0][0]) ** 2) * math.log(p[0][0])
    neg = sum(-((1 - t) ** 4) * q**2 * math.log(1 - q) for t, q in [(0.5, p[0][1]), (0.0, p[1][0]), (0.25, p[1][1])])
    assert focal_heatmap_loss(logits, target).item() == pytest.approx(pos + neg, rel=1e-6)
    assert focal_heatmap_loss(logits, target, num_objects=2).item() == pytest.approx((pos + neg) / 2, rel=1e-6)
    # other exponents: alpha on the prediction, beta on the target's penalty reduction
    neg3 = sum(-((1 - t) ** 2) * q**3 * math.log(1 - q) for t, q in [(0.5, p[0][1]), (0.0, p[1][0]), (0.25, p[1][1])])
    pos3 = -((1 - p[0][0]) ** 3) * math.log(p[0][0])
    assert focal_heatmap_loss(logits, target, alpha=3, beta=2).item() == pytest.approx(pos3 + neg3, rel=1e-6)
    # from logits without clamping p: a confidently missed centre costs ~|logit| and keeps its gradient
    missed = torch.tensor([[[[-30.0]]]], requires_grad=True)
    loss = focal_heatmap_loss(missed, torch.ones(1, 1, 1, 1))
    loss.backward()
    assert loss.item() == pytest.approx(30.0, rel=1e-6) and missed.grad.item() == pytest.approx(-1.0, rel=1e-6)


def test_focal_loss_near_perfect_predictions_are_much_better_than_random() -> None:
    target = make_batch().heatmap
    perfect = torch.where(target == 1, 20.0, -20.0)
    as_target = torch.logit(target.clamp(1e-6, 1 - 1e-6))  # p = t: only the penalty-reduced negatives remain
    random = torch.randn(target.shape, generator=torch.Generator().manual_seed(0))
    assert focal_heatmap_loss(perfect, target).item() < 1e-6
    assert focal_heatmap_loss(as_target, target).item() < 0.1 * focal_heatmap_loss(random, target).item()


def test_focal_loss_is_finite_for_extreme_logits_and_no_objects() -> None:
    target = make_batch().heatmap
    for logits in (torch.full(target.shape, 80.0), torch.full(target.shape, -80.0), torch.zeros(target.shape)):
        for t in (target, torch.zeros_like(target)):
            x = logits.clone().requires_grad_()
            loss = focal_heatmap_loss(x, t)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(x.grad).all()


# -------------------------------------------------------------------------------------- regression


def test_regression_loss_is_zero_for_exact_predictions_and_counts_each_object() -> None:
    batch = make_batch()
    reg = scatter_targets(batch)
    weights = LossConfig().regression_channel_weights
    args = (batch.det_regression, batch.det_indices, batch.det_mask, batch.det_velocity_valid, weights)
    total, per_channel = regression_l1_loss(reg, *args)
    assert total.item() == 0.0 and per_channel.shape == (NUM_REGRESSION,)
    # an error of 0.6 on z of one object, 6 objects in the batch: 0.6 / 6
    b, m = 1, 2
    reg.view(B, NUM_REGRESSION, -1)[b, 2, batch.det_indices[b, m]] += 0.6
    assert regression_l1_loss(reg, *args)[0].item() == pytest.approx(0.6 / 6, rel=1e-5)
    assert gather_at_indices(reg, batch.det_indices)[b, m, 2] == pytest.approx(batch.det_regression[b, m, 2] + 0.6)


def test_velocity_is_masked_where_unknown_and_weighted_where_known() -> None:
    batch = make_batch()
    assert not batch.det_velocity_valid[:, 0].any() and batch.det_velocity_valid[:, 1].all()
    reg = scatter_targets(batch)
    args = (batch.det_regression, batch.det_indices, batch.det_mask, batch.det_velocity_valid,
            LossConfig().regression_channel_weights)
    vx = REGRESSION_SLICES["velocity"].start
    moved = reg.clone()
    moved.view(B, NUM_REGRESSION, -1)[0, vx, batch.det_indices[0, 0]] += 5.0  # object 0: velocity unknown
    assert regression_l1_loss(moved, *args)[0].item() == 0.0
    moved.view(B, NUM_REGRESSION, -1)[0, vx, batch.det_indices[0, 1]] += 5.0  # object 1: known, weight 0.2
    assert regression_l1_loss(moved, *args)[0].item() == pytest.approx(0.2 * 5.0 / 6, rel=1e-5)


def test_regression_loss_with_no_objects_is_zero_without_nan() -> None:
    batch = make_batch(num_objects=0)
    reg = torch.randn(B, NUM_REGRESSION, X, Y, requires_grad=True)
    total, _ = regression_l1_loss(reg, batch.det_regression, batch.det_indices, batch.det_mask,
                                  batch.det_velocity_valid)
    total.backward()
    assert total.item() == 0.0 and torch.equal(reg.grad, torch.zeros_like(reg))


# ------------------------------------------------------------------------------------ segmentation


def test_seg_losses_ignore_invalid_classes() -> None:
    batch = make_batch()
    logits = torch.randn(B, S, X, Y, requires_grad=True)
    bce = seg_bce_loss(logits, batch.seg, batch.seg_valid)
    dice = seg_dice_loss(logits, batch.seg, batch.seg_valid)
    (bce + dice).backward()
    invalid = ~batch.seg_valid
    assert torch.equal(logits.grad[invalid], torch.zeros_like(logits.grad[invalid]))
    assert (logits.grad[batch.seg_valid].abs().sum(dim=(1, 2)) > 0).all()
    changed = logits.detach().clone()
    changed[invalid] = 50.0 * torch.randn_like(changed[invalid])
    assert seg_bce_loss(changed, batch.seg, batch.seg_valid).item() == bce.item()
    assert seg_dice_loss(changed, batch.seg, batch.seg_valid).item() == dice.item()
    # the BCE is the mean over valid (frame, class) pairs of each pair's mean over cells
    pairs = [torch.nn.functional.binary_cross_entropy_with_logits(logits[b, s], batch.seg[b, s].float())
             for b, s in torch.nonzero(batch.seg_valid).tolist()]
    assert bce.item() == pytest.approx(torch.stack(pairs).mean().item(), rel=1e-6)


def test_seg_losses_near_zero_for_perfect_logits_and_zero_when_no_class_is_valid() -> None:
    batch = make_batch()
    perfect = torch.where(batch.seg.bool(), 30.0, -30.0)
    assert seg_bce_loss(perfect, batch.seg, batch.seg_valid).item() < 1e-6
    assert seg_dice_loss(perfect, batch.seg, batch.seg_valid).item() < 1e-6
    logits = torch.randn(B, S, X, Y, requires_grad=True)
    none = torch.zeros(B, S, dtype=torch.bool)
    loss = seg_bce_loss(logits, batch.seg, none) + seg_dice_loss(logits, batch.seg, none)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_dice_is_per_class_over_the_valid_frames_and_skips_classes_valid_nowhere() -> None:
    batch = make_batch()
    valid = torch.tensor([[True, False, False], [True, True, False]])  # class 2 is valid in no frame
    logits = torch.randn(B, S, X, Y)
    p, t = torch.sigmoid(logits), batch.seg.float()

    def dice(frames: list[int], c: int) -> float:
        inter = (p[frames, c] * t[frames, c]).sum()
        return 1.0 - ((2 * inter + 1.0) / (p[frames, c].sum() + t[frames, c].sum() + 1.0)).item()

    expected = (dice([0, 1], 0) + dice([1], 1)) / 2
    assert seg_dice_loss(logits, batch.seg, valid).item() == pytest.approx(expected, rel=1e-5)


def test_seg_pos_weight_scales_the_positive_term() -> None:
    batch = make_batch()
    logits, ones = torch.randn(B, S, X, Y), torch.ones(B, S, X, Y)
    valid = torch.ones(B, S, dtype=torch.bool)
    assert seg_bce_loss(logits, ones, valid, pos_weight=3.0).item() == pytest.approx(
        3.0 * seg_bce_loss(logits, ones, valid).item(), rel=1e-6)
    per_class = seg_bce_loss(logits, ones, valid, pos_weight=(1.0, 2.0, 0.0))
    assert per_class.item() < seg_bce_loss(logits, ones, valid, pos_weight=(1.0, 2.0, 1.0)).item()
    # negatives are not weighted
    zeros = torch.zeros_like(ones)
    unweighted = seg_bce_loss(logits, zeros, batch.seg_valid).item()
    assert seg_bce_loss(logits, zeros, batch.seg_valid, 5.0).item() == unweighted


# ------------------------------------------------------------------------------------------- depth


def test_depth_bins_index_and_centres() -> None:
    assert BINS.step == 2.0 and BINS.centers == (2.0, 4.0, 6.0, 8.0, 10.0)
    d = torch.tensor([0.0, 0.99, 1.0, 2.9, 3.0, 9.99, 10.99, 11.0, float("nan"), -2.0, float("inf")])
    assert depth_bin_index(BINS, d).tolist() == [-1, -1, 0, 0, 1, 4, 4, -1, -1, -1, -1]
    # the bins' centres fall into their own bins
    assert depth_bin_index(BINS, torch.tensor(BINS.centers)).tolist() == list(range(BINS.count))
    # bins reaching below 0 m still treat 0 (no lidar) and non-finite depths as no measurement
    low = DepthBins(0.5, 10.5, 6)
    assert low.lower < 0
    assert depth_bin_index(low, torch.tensor([0.0, -0.0, -0.2, float("-inf"), 0.1])).tolist() == [-1, -1, -1, -1, 0]
    with pytest.raises(ValueError):
        DepthBins(5.0, 2.0, 10)
    with pytest.raises(ValueError):
        DepthBins(1.0, 2.0, 1)


def test_downsample_sparse_depth_keeps_the_nearest_valid_depth() -> None:
    depth = torch.zeros(1, 1, 4, 6)
    depth[0, 0, :2, :2] = torch.tensor([[0.0, 7.0], [3.0, 0.0]])  # window (0, 0): nearest is 3
    depth[0, 0, 2, 3] = 5.0  # window (1, 1)
    depth[0, 0, 0, 4] = float("nan")  # window (0, 2): no valid depth
    out = downsample_sparse_depth(depth, 2)
    assert out.tolist() == [[[[3.0, 0.0, 0.0], [0.0, 5.0, 0.0]]]]
    # a feature map with ceil(H / s) rows covers a zero-padded image
    assert downsample_sparse_depth(torch.ones(1, 1, 5, 7), 2).shape == (1, 1, 3, 4)
    assert infer_stride((96, 176), (3, 6)) == 32 and infer_stride((96, 176), (12, 22)) == 8
    with pytest.raises(ValueError):
        infer_stride((96, 176), (12, 7))


def test_depth_loss_ignores_empty_pixels_and_invalid_cameras() -> None:
    batch = make_batch()
    logits = torch.randn(B, N, BINS.count, H // STRIDE, W // STRIDE, requires_grad=True)
    loss, n = depth_cross_entropy(logits, batch.depth, BINS, batch.cam_valid)
    loss.backward()
    target = depth_bin_index(BINS, downsample_sparse_depth(batch.depth, STRIDE))  # [B, N, h, w]
    target[~batch.cam_valid] = -1
    supervised = target >= 0
    assert n.item() == supervised.sum().item() > 0 and (~supervised).any()
    grad_norm = logits.grad.abs().sum(dim=2)  # [B, N, h, w]
    assert torch.equal(grad_norm[~supervised], torch.zeros_like(grad_norm[~supervised]))
    assert (grad_norm[supervised] > 0).all()
    changed = logits.detach().clone()
    changed.permute(0, 1, 3, 4, 2)[~supervised] = 30.0 * torch.randn(int((~supervised).sum()), BINS.count)
    assert depth_cross_entropy(changed, batch.depth, BINS, batch.cam_valid)[0].item() == loss.item()
    # the mean of -log softmax at the target bins
    logp = torch.log_softmax(logits.detach(), dim=2).permute(0, 1, 3, 4, 2)[supervised]
    manual = -logp.gather(1, target[supervised][:, None]).mean()
    assert loss.item() == pytest.approx(manual.item(), rel=1e-6)
    # no lidar at all: zero loss, no NaN
    empty, n0 = depth_cross_entropy(logits, torch.zeros_like(batch.depth), BINS, batch.cam_valid)
    assert empty.item() == 0.0 and n0.item() == 0


# --------------------------------------------------------------------------------------- criterion


def test_criterion_gradients_reach_every_output_and_logs_are_detached() -> None:
    batch, outputs = make_batch(), make_outputs()
    criterion = Criterion(LossConfig(), depth_bins=BINS)
    total, logs = criterion(outputs, batch)
    total.backward()
    for name in ("heatmap", "regression", "seg", "depth_logits"):
        assert outputs[name].grad is not None and outputs[name].grad.abs().sum() > 0, name
    assert outputs["state"].grad is None  # outputs the criterion does not read
    assert all(not v.requires_grad and v.dtype == torch.float32 and v.ndim == 0 for v in logs.values())
    assert set(TASKS) <= set(logs) and {"seg_bce", "seg_dice", "num_objects", "depth_pixels", "total"} <= set(logs)
    assert {f"regression_{g}" for g in REGRESSION_SLICES} <= set(logs)
    weights = LossConfig().task_weights()
    assert total.item() == pytest.approx(sum(weights[t] * logs[t].item() for t in TASKS), rel=1e-6)
    assert logs["regression"].item() == pytest.approx(sum(logs[f"regression_{g}"].item() for g in REGRESSION_SLICES))
    assert logs["num_objects"].item() == 6
    # the focal loss is normalised by the number of objects (det_mask), not by counting heatmap peaks
    batch.heatmap[0, 0, 0, 0] = 1.0  # a seventh peak without an object slot
    _, logs = criterion(outputs, batch)
    expected = focal_heatmap_loss(outputs["heatmap"].detach(), batch.heatmap, num_objects=6)
    assert logs["heatmap"].item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("weighting", ["fixed", "uncertainty"])
def test_criterion_no_nan_with_no_objects_no_valid_seg_class_and_no_lidar(weighting: str) -> None:
    batch = make_batch(num_objects=0)
    batch.seg_valid[:] = False
    batch.depth.zero_()
    outputs = make_outputs()
    criterion = Criterion(LossConfig(weighting=weighting), depth_bins=BINS)
    total, logs = criterion(outputs, batch)
    total.backward()
    assert torch.isfinite(total) and all(torch.isfinite(v) for v in logs.values())
    assert logs["regression"].item() == logs["seg"].item() == logs["depth"].item() == 0.0
    for name in ("heatmap", "regression", "seg", "depth_logits"):
        assert torch.isfinite(outputs[name].grad).all()
    if weighting == "uncertainty":  # tasks with nothing to supervise leave their log-variance alone
        grad = dict(zip(TASKS, criterion.uncertainty.log_vars.grad.tolist()))
        assert grad["heatmap"] != 0.0 and grad["regression"] == grad["seg"] == grad["depth"] == 0.0


def test_uncertainty_weighting_learns_log_variances() -> None:
    batch, outputs = make_batch(), make_outputs()
    criterion = Criterion(LossConfig(weighting="uncertainty"), depth_bins=BINS)
    params = list(criterion.parameters())
    assert len(params) == 1 and params[0].shape == (len(TASKS),)
    total, logs = criterion(outputs, batch)
    # s_i = 0 at start: the same total as fixed weighting
    fixed, _ = Criterion(LossConfig(), depth_bins=BINS)(outputs, batch)
    assert total.item() == pytest.approx(fixed.item(), rel=1e-6)
    total.backward()
    assert (params[0].grad != 0).all() and {f"log_var_{t}" for t in TASKS} <= set(logs)
    # d/ds (exp(-s) L + s) = 1 - exp(-s) L
    scaled = torch.tensor([LossConfig().task_weights()[t] * logs[t].item() for t in TASKS])
    assert torch.allclose(params[0].grad, 1.0 - scaled, rtol=1e-5)
    # a few steps of SGD on s alone move each s_i towards log(L_i)
    weighting = UncertaintyWeighting(["a", "b"])
    opt = torch.optim.SGD(weighting.parameters(), lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        weighting({"a": torch.tensor(4.0), "b": torch.tensor(0.5)}).backward()
        opt.step()
    assert torch.allclose(weighting.log_vars.detach(), torch.tensor([math.log(4.0), math.log(0.5)]), atol=1e-2)


def test_criterion_under_bf16_autocast_computes_in_float32() -> None:
    batch = make_batch()
    head = torch.nn.Conv2d(4, C + NUM_REGRESSION + S, 1)
    feats = torch.randn(B, 4, X, Y)
    criterion = Criterion(LossConfig(weighting="uncertainty"), depth_bins=BINS)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(feats)
        assert out.dtype == torch.bfloat16
        outputs = dict(zip(("heatmap", "regression", "seg"), out.split([C, NUM_REGRESSION, S], dim=1)))
        total, logs = criterion(outputs, batch)
    assert total.dtype == torch.float32 and torch.isfinite(total)
    total.backward()
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    # the same (bf16-rounded) outputs in plain float32 give the same losses
    ref_total, ref_logs = criterion({k: v.detach().float() for k, v in outputs.items()}, batch)
    assert total.item() == pytest.approx(ref_total.item(), rel=1e-5)
    assert "depth" not in logs  # no depth_logits: the depth task is skipped


def test_criterion_errors_and_switches() -> None:
    batch, outputs = make_batch(with_depth=False), make_outputs()
    with pytest.raises(ValueError, match="no depth"):
        Criterion(depth_bins=BINS)(outputs, batch)
    _, logs = Criterion(LossConfig(depth_weight=0.0, seg_weight=0.0), depth_bins=BINS)(outputs, batch)
    assert "depth" not in logs and "seg" not in logs
    with pytest.raises(ValueError, match="depth_bins"):
        Criterion()(outputs, make_batch())
    with pytest.raises(ValueError, match="bins"):
        Criterion(depth_bins=DepthBins(1.0, 50.0, 40))(outputs, make_batch())
    with pytest.raises(KeyError, match="seg"):
        Criterion()({"heatmap": outputs["heatmap"], "regression": outputs["regression"]}, batch)
    with pytest.raises(ValueError):
        LossConfig(regression_channel_weights=(1.0,) * 9)
    with pytest.raises(ValueError):
        LossConfig(weighting="learned")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        LossConfig(seg_weight=-1.0)
