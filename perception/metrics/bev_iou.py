"""BEV segmentation IoU per class, accumulated over a dataset (the LSS / Simple-BEV protocol).

Intersection and union are *summed over every frame* of the dataset and divided once at the end,
as LSS (``get_batch_iou``) and Simple-BEV compute "vehicle IoU": a frame with a large object weighs
more than a frame with a small one, and frames without the class add only their false positives. It
is not the mean of per-frame IoUs.

Layout (see :mod:`perception.geometry`): rasters are ``[..., S, X, Y]`` on a BEV grid, S classes,
rows along ego x (forward), columns along ego y (left). A cell is predicted positive when its
probability is strictly above the threshold (0.5 by default: the same cells as ``logit > 0`` in LSS
and ``sigmoid(logit).round()`` in Simple-BEV, which rounds 0.5 down).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["BEVIoU"]


class BEVIoU:
    """Accumulates per-class intersection and union over frames; :meth:`compute` gives IoU per class.

        iou = BEVIoU(("drivable_area", "vehicle"))
        for pred_prob, target, valid in frames:      # [S, X, Y] float, [S, X, Y] uint8, [S] bool
            iou.update(pred_prob, target, valid)
        iou.compute()                                # {"drivable_area": 0.71, "vehicle": 0.32}

    A class flagged invalid in a frame (``valid[s]`` False, e.g. no map for the drivable area) adds
    nothing for that frame, neither intersection nor union. A class whose accumulated union is 0
    (never valid, or valid but empty in both prediction and target everywhere) has IoU NaN.
    """

    def __init__(self, classes: Sequence[str], threshold: float = 0.5) -> None:
        if not classes:
            raise ValueError("BEVIoU needs at least one class")
        if len(set(classes)) != len(classes):
            raise ValueError(f"duplicate class names in {tuple(classes)}")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}")
        self.classes: tuple[str, ...] = tuple(classes)
        self.threshold = float(threshold)  # probability; cells with p > threshold are positive
        self.intersection = np.zeros(len(self.classes), dtype=np.int64)  # [S] cells, summed over frames
        self.union = np.zeros(len(self.classes), dtype=np.int64)  # [S] cells, summed over frames
        self.frames = np.zeros(len(self.classes), dtype=np.int64)  # [S] frames in which the class was valid

    def reset(self) -> None:
        """Forget every frame seen."""
        for counts in (self.intersection, self.union, self.frames):
            counts[:] = 0

    def update(
        self,
        pred_prob: np.ndarray,
        target: np.ndarray,
        valid: np.ndarray | None = None,
        cell_mask: np.ndarray | None = None,
    ) -> None:
        """Add one frame ([S, X, Y]) or a batch of frames ([B, S, X, Y]).

        pred_prob: [(B,) S, X, Y] probabilities in [0, 1] (after the sigmoid).
        target: [(B,) S, X, Y] uint8 or bool, nonzero where the class is present.
        valid: [(B,) S] bool, False where a class has no ground truth in that frame (skipped);
            None means every class is valid.
        cell_mask: optional [(B,) X, Y] bool of the cells to count (e.g. Simple-BEV's cells seen by
            a camera); None counts every cell.
        """
        pred_prob, target = np.asarray(pred_prob), np.asarray(target)
        S = len(self.classes)
        if pred_prob.shape != target.shape:
            raise ValueError(f"pred_prob {pred_prob.shape} and target {target.shape} differ in shape")
        if pred_prob.ndim == 3:  # one frame: add the batch axis
            pred_prob, target = pred_prob[None], target[None]
            valid = None if valid is None else np.asarray(valid)[None]
            cell_mask = None if cell_mask is None else np.asarray(cell_mask)[None]
        if pred_prob.ndim != 4 or pred_prob.shape[1] != S:
            raise ValueError(f"expected [S, X, Y] or [B, S, X, Y] with S = {S}, got {pred_prob.shape}")
        B, _, X, Y = pred_prob.shape
        valid_bs = np.ones((B, S), dtype=bool) if valid is None else np.asarray(valid, dtype=bool)
        if valid_bs.shape != (B, S):
            raise ValueError(f"valid has shape {valid_bs.shape}, expected {(B, S)}")
        positive = pred_prob > self.threshold  # [B, S, X, Y]
        present = target.astype(bool)  # [B, S, X, Y]
        if cell_mask is not None:
            cells = np.asarray(cell_mask, dtype=bool)
            if cells.shape != (B, X, Y):
                raise ValueError(f"cell_mask has shape {cells.shape}, expected {(B, X, Y)}")
            positive = positive & cells[:, None]
            present = present & cells[:, None]
        inter = (positive & present).sum(axis=(2, 3))  # [B, S]
        union = (positive | present).sum(axis=(2, 3))  # [B, S]
        self.intersection += np.where(valid_bs, inter, 0).sum(axis=0)
        self.union += np.where(valid_bs, union, 0).sum(axis=0)
        self.frames += valid_bs.sum(axis=0)

    def merge(self, other: BEVIoU) -> None:
        """Add the counts of another accumulator with the same classes (e.g. from another worker)."""
        if other.classes != self.classes or other.threshold != self.threshold:
            raise ValueError("cannot merge BEVIoU accumulators with different classes or thresholds")
        self.intersection += other.intersection
        self.union += other.union
        self.frames += other.frames

    def compute(self) -> dict[str, float]:
        """class name -> IoU in [0, 1] over every frame added (NaN where the union is empty)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(self.union > 0, self.intersection / np.maximum(self.union, 1), np.nan)
        return {name: float(v) for name, v in zip(self.classes, iou)}
