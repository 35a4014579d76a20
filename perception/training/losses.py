"""The loss functions of the heads, functional and stateless (torch). :class:`~.criterion.Criterion`
combines them; each can be used and tested on its own.

Shapes: B frames, N cameras, C detection classes, S segmentation classes, R = 10 regression channels
(:data:`perception.boxes.REGRESSION_CHANNELS`), M target slots, (X, Y) a BEV grid, (H, W) the input
image, (h, w) a camera feature map, D depth bins.

Every function computes in float32 with autocast disabled, whatever the dtype of its inputs (bf16
logits under ``torch.autocast`` are upcast first), and returns a float32 scalar. Normalisers are
clamped to at least 1, so empty batches (no objects, no valid class, no lidar pixel) give a finite
zero loss with zero gradients instead of NaN.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F

from perception.boxes import REGRESSION_SLICES
from perception.specs import DepthBins

__all__ = [
    "depth_cross_entropy",
    "downsample_sparse_depth",
    "focal_heatmap_loss",
    "gather_at_indices",
    "infer_stride",
    "regression_l1_loss",
    "seg_bce_loss",
    "seg_dice_loss",
]


@contextmanager
def float32_region(tensor: torch.Tensor) -> Iterator[None]:
    """Disable autocast on ``tensor``'s device inside the block (inputs must still be cast with .float())."""
    with torch.autocast(device_type=tensor.device.type, enabled=False):
        yield


def focal_heatmap_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_objects: torch.Tensor | float | None = None,
    alpha: float = 2.0,
    beta: float = 4.0,
) -> torch.Tensor:
    """CenterNet / CenterPoint penalty-reduced focal loss on heatmaps, from logits.

    logits [B, C, X, Y] (any float dtype); target [B, C, X, Y] in [0, 1], exactly 1 at object centres.
    With p = sigmoid(logits) and t = target:

        positives (t == 1):  -(1 - p)^alpha * log(p)
        negatives (t <  1):  -(1 - t)^beta * p^alpha * log(1 - p)

    summed over all cells and divided by ``num_objects`` (default: the number of cells with t == 1),
    clamped to >= 1. log(p) and log(1 - p) are ``logsigmoid(x)`` and ``logsigmoid(-x)``, exact for any
    logit, so p is not clamped (CenterPoint clamps p to [1e-4, 1 - 1e-4] to avoid log(0); logsigmoid
    needs no clamp and keeps the gradient of confident predictions).
    """
    if logits.shape != target.shape:
        raise ValueError(f"heatmap logits {tuple(logits.shape)} and targets {tuple(target.shape)} differ")
    with float32_region(logits):
        x, t = logits.float(), target.float()
        positive = t == 1.0
        pos = torch.sigmoid(-x).pow(alpha) * F.logsigmoid(x)  # (1 - p)^a log p
        neg = (1.0 - t).pow(beta) * torch.sigmoid(x).pow(alpha) * F.logsigmoid(-x)  # (1-t)^b p^a log(1 - p)
        total = -torch.where(positive, pos, neg).sum()
        n = positive.sum() if num_objects is None else num_objects
        return total / torch.as_tensor(n, dtype=torch.float32, device=x.device).clamp(min=1.0)


def gather_at_indices(maps: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Values of dense maps at flat cell indices: maps [B, R, X, Y], indices [B, M] (row * Y + col) -> [B, M, R].

    The torch counterpart of :func:`perception.boxes.gather_regression` (same flat index convention).
    """
    B, R, X, Y = maps.shape
    M = indices.shape[1]
    flat = maps.reshape(B, R, X * Y)  # (B, R, cells)
    idx = indices.long().unsqueeze(1).expand(B, R, M)  # (B, R, M), the same cell for every channel
    return flat.gather(2, idx).transpose(1, 2)  # (B, M, R)


def regression_l1_loss(
    regression: torch.Tensor,
    target: torch.Tensor,
    indices: torch.Tensor,
    mask: torch.Tensor,
    velocity_valid: torch.Tensor | None = None,
    channel_weights: torch.Tensor | Sequence[float] | None = None,
    num_objects: torch.Tensor | float | None = None,
    velocity_channels: slice = REGRESSION_SLICES["velocity"],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted L1 between the regression map at object centres and the box targets.

    regression [B, R, X, Y] (head output); target [B, M, R]; indices [B, M] flat cell index; mask [B, M]
    bool, True for real objects; velocity_valid [B, M] bool (None: all valid), False masks the
    ``velocity_channels`` of that object; channel_weights [R] (default all 1).

    Per channel c: ``w_c * sum over valid (b, m) of |pred - target| / num_objects`` (num_objects
    defaults to ``mask.sum()``, clamped to >= 1). Returns (sum over channels, the per-channel terms [R]).
    """
    B, R = regression.shape[:2]
    if (target.shape[0] != B or target.shape[2] != R or indices.shape != target.shape[:2]
            or mask.shape != indices.shape):
        raise ValueError(f"regression {tuple(regression.shape)}, targets {tuple(target.shape)}, indices "
                         f"{tuple(indices.shape)}, mask {tuple(mask.shape)}: "
                         "expected [B, R, X, Y], [B, M, R], [B, M], [B, M]")
    with float32_region(regression):
        pred = gather_at_indices(regression.float(), indices)  # (B, M, R)
        valid = mask.bool().unsqueeze(-1).expand(B, mask.shape[1], R).clone()  # (B, M, R)
        if velocity_valid is not None:
            valid[..., velocity_channels] &= velocity_valid.bool().unsqueeze(-1)
        err = torch.where(valid, (pred - target.float()).abs(), 0.0).sum(dim=(0, 1))  # (R,)
        n = mask.bool().sum() if num_objects is None else num_objects
        per_channel = err / torch.as_tensor(n, dtype=torch.float32, device=err.device).clamp(min=1.0)
        if channel_weights is not None:
            w = torch.as_tensor(channel_weights, dtype=torch.float32, device=err.device)
            if w.shape != (R,):
                raise ValueError(f"channel_weights must have {R} values, got {tuple(w.shape)}")
            per_channel = per_channel * w
        return per_channel.sum(), per_channel


def seg_bce_loss(
    logits: torch.Tensor,
    target: torch.Tensor,
    valid: torch.Tensor,
    pos_weight: float | Sequence[float] | torch.Tensor | None = None,
) -> torch.Tensor:
    """Binary cross-entropy with logits for multi-label BEV segmentation.

    logits [B, S, X, Y]; target [B, S, X, Y] in {0, 1} (uint8 or float); valid [B, S] bool, the
    classes each frame has labels for. pos_weight: one value or one per class [S] (weights the
    positive term, as in ``F.binary_cross_entropy_with_logits``). Returns the mean over cells and over
    the valid (frame, class) pairs; invalid pairs contribute nothing (neither loss nor gradient).
    """
    _check_seg(logits, target, valid)
    with float32_region(logits):
        x, t, v = logits.float(), target.float(), valid.bool()
        pw = None
        if pos_weight is not None:
            pw = torch.as_tensor(pos_weight, dtype=torch.float32, device=x.device).reshape(-1, 1, 1)  # (S or 1, 1, 1)
        per_cell = F.binary_cross_entropy_with_logits(x, t, pos_weight=pw, reduction="none")  # (B, S, X, Y)
        per_pair = per_cell.mean(dim=(2, 3))  # (B, S)
        return torch.where(v, per_pair, 0.0).sum() / v.sum().clamp(min=1)


def seg_dice_loss(
    logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, smooth: float = 1.0
) -> torch.Tensor:
    """Soft dice loss per class, averaged over the classes that are valid in at least one frame.

    logits, target [B, S, X, Y]; valid [B, S] bool. With p = sigmoid(logits), for each class c, over
    the frames where it is valid and all their cells: ``1 - (2 sum(p t) + smooth) / (sum(p) + sum(t) +
    smooth)`` (sums over the batch, as segmentation_models_pytorch does, so rare classes are not
    dominated by frames without them). Invalid (frame, class) pairs contribute nothing.
    """
    _check_seg(logits, target, valid)
    with float32_region(logits):
        p, t = torch.sigmoid(logits.float()), target.float()
        v = valid.bool()[:, :, None, None]  # (B, S, 1, 1)
        inter = torch.where(v, p * t, 0.0).sum(dim=(0, 2, 3))  # (S,)
        card = torch.where(v, p + t, 0.0).sum(dim=(0, 2, 3))  # (S,)
        dice = 1.0 - (2.0 * inter + smooth) / (card + smooth)
        has = valid.bool().any(dim=0)  # (S,)
        return torch.where(has, dice, 0.0).sum() / has.sum().clamp(min=1)


def _check_seg(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
    if logits.shape != target.shape or valid.shape != logits.shape[:2]:
        raise ValueError(f"seg logits {tuple(logits.shape)}, targets {tuple(target.shape)}, "
                         f"valid {tuple(valid.shape)}: "
                         "expected [B, S, X, Y], [B, S, X, Y], [B, S]")


def infer_stride(image_hw: tuple[int, int], feature_hw: tuple[int, int]) -> int:
    """Stride s from an image (H, W) to its features (h, w): h = ceil(H / s) or floor(H / s), same for w."""
    (H, W), (h, w) = image_hw, feature_hw
    s = max(1, round(H / h))
    if all(n in (math.ceil(N / s), N // s) for N, n in ((H, h), (W, w))):
        return s
    raise ValueError(f"cannot infer an integer stride from image {H}x{W} to features {h}x{w}; "
                     "set LossConfig.depth_stride")


def downsample_sparse_depth(depth: torch.Tensor, stride: int, out_hw: tuple[int, int] | None = None) -> torch.Tensor:
    """Sparse depth at a coarser stride: the nearest valid depth of each stride x stride window.

    depth [B, N, H, W] m, 0 (or non-finite) where there is no measurement -> [B, N, h, w], the minimum
    of the window's positive values, 0 where the window has none. (h, w) defaults to
    (ceil(H / stride), ceil(W / stride)); the image is zero-padded (or cropped) at the bottom and right
    to (h * stride, w * stride), as a padded convolution's feature map covers it.
    """
    B, N, H, W = depth.shape
    h, w = out_hw if out_hw is not None else (math.ceil(H / stride), math.ceil(W / stride))
    with float32_region(depth):
        d = depth.float()
        d = torch.where(d > 0, d, math.inf)  # no measurement (0, negative, NaN) never wins the minimum
        d = F.pad(d[..., : h * stride, : w * stride], (0, max(0, w * stride - W), 0, max(0, h * stride - H)),
                  value=math.inf)
        d = d.reshape(B, N, h, stride, w, stride).amin(dim=(3, 5))  # (B, N, h, w), min over each window
        return torch.where(torch.isfinite(d), d, 0.0)


def depth_bin_index(bins: DepthBins, depth: torch.Tensor) -> torch.Tensor:
    """Bin index (int64, same shape) of each metric depth in ``depth`` (m, any shape).

    -1 where the depth falls outside ``[bins.lower, bins.upper)``, is not finite, or is 0 (no
    measurement), so the result can be used directly as a cross-entropy target with ``ignore_index=-1``.
    """
    d = depth.float()
    valid = torch.isfinite(d) & (d > 0) & (d >= bins.lower) & (d < bins.upper)
    # floor((d - lower) / step); clamp guards float rounding at the upper edge
    k = torch.floor((torch.where(valid, d, torch.zeros_like(d)) - bins.lower) / bins.step).long()
    return torch.where(valid, k.clamp(0, bins.count - 1), torch.full_like(k, -1))


def depth_cross_entropy(
    depth_logits: torch.Tensor,
    depth: torch.Tensor,
    bins: DepthBins,
    cam_valid: torch.Tensor | None = None,
    stride: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy of categorical depth against lidar depth, at the feature stride.

    depth_logits [B, N, D, h, w] (D = ``bins.count``); depth [B, N, H, W] sparse lidar depth (m, 0 =
    none); cam_valid [B, N] bool (None: all valid). The lidar depth is reduced to (h, w) by
    :func:`downsample_sparse_depth` (stride inferred from the shapes unless given) and binned by
    :func:`depth_bin_index`; pixels without depth, with depth outside the bins, or of invalid cameras are
    ignored. Returns (mean over the supervised pixels, their number as an int64 scalar).
    """
    B, N, D, h, w = depth_logits.shape
    if D != bins.count:
        raise ValueError(f"depth_logits have {D} bins but DepthBins has {bins.count}")
    if depth.shape[:2] != (B, N):
        raise ValueError(f"depth {tuple(depth.shape)} does not match depth_logits {tuple(depth_logits.shape)}")
    s = stride if stride is not None else infer_stride(tuple(depth.shape[2:]), (h, w))
    with float32_region(depth_logits):
        target = depth_bin_index(bins, downsample_sparse_depth(depth, s, (h, w)))  # (B, N, h, w), -1 = ignore
        if cam_valid is not None:
            target = torch.where(cam_valid.bool()[:, :, None, None], target, -1)
        logits = depth_logits.float().transpose(1, 2)  # (B, D, N, h, w): classes on dim 1
        total = F.cross_entropy(logits, target, ignore_index=-1, reduction="sum")
        n = (target >= 0).sum()
        return total / n.clamp(min=1), n
