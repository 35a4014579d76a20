"""Average precision of the detection heatmaps, cell by cell, accumulated over a dataset.

The detection head predicts one heatmap per class on the detection grid; its targets are the
Gaussians of :func:`perception.heatmap.draw_gaussian`, exactly 1.0 at an object's centre cell and in
(0, 1) around it. Scored as a per-cell ranking, before peaks and boxes are decoded:

- positives: cells with target >= 1 - 1e-6 (object centres);
- ignored: cells with 0 < target < 1 - 1e-6 (the Gaussian's skirt, where a high probability is not
  a false alarm; CenterNet's focal loss down-weights them the same way);
- negatives: cells with target == 0.

AP = sum over thresholds, descending, of (recall step) * precision: the step-wise area under the
precision-recall curve, as sklearn's ``average_precision_score`` defines it. The probabilities are
kept as per-class histograms on ``bins`` uniform bins of [0, 1], so memory is O(K * bins) however
many frames are added; cells sharing a bin count as tied scores (one threshold), which is where
the result may differ from the exact AP (by little at 1000 bins).

    hap = HeatmapAP(("car", "pedestrian"))
    for prob, target in batches:          # [B, K, X, Y] sigmoid probabilities, Gaussian targets
        hap.update(prob, target)
    hap.compute()                         # {"car": 0.41, "pedestrian": 0.12}
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["POSITIVE_TARGET", "HeatmapAP"]

POSITIVE_TARGET = 1.0 - 1e-6  # a cell whose target reaches this is an object centre


class HeatmapAP:
    """Per-class histograms of the probabilities at positive and negative cells; AP per class."""

    def __init__(self, class_names: Sequence[str], bins: int = 1000) -> None:
        if not class_names:
            raise ValueError("HeatmapAP needs at least one class")
        if len(set(class_names)) != len(class_names):
            raise ValueError(f"duplicate class names in {tuple(class_names)}")
        if bins < 1:
            raise ValueError(f"bins must be >= 1, got {bins}")
        self.class_names: tuple[str, ...] = tuple(class_names)
        self.bins = int(bins)  # uniform bins of [0, 1]; bin b holds probabilities in [b / bins, (b + 1) / bins)
        K = len(self.class_names)
        self.positives = np.zeros((K, self.bins), dtype=np.int64)  # [K, bins] centre cells per probability bin
        self.negatives = np.zeros((K, self.bins), dtype=np.int64)  # [K, bins] target-0 cells per probability bin

    def reset(self) -> None:
        """Forget every cell seen."""
        self.positives[:] = 0
        self.negatives[:] = 0

    def update(self, prob: np.ndarray, target: np.ndarray) -> None:
        """Add one frame [K, X, Y] or a batch [B, K, X, Y].

        prob: probabilities in [0, 1] (the heatmap after the sigmoid), float.
        target: the Gaussian targets in [0, 1], same shape (1.0 at centres, 0 away from objects).
        """
        prob, target = np.asarray(prob), np.asarray(target)
        K = len(self.class_names)
        if prob.shape != target.shape:
            raise ValueError(f"prob {prob.shape} and target {target.shape} differ in shape")
        if prob.ndim == 3:  # one frame: add the batch axis
            prob, target = prob[None], target[None]
        if prob.ndim != 4 or prob.shape[1] != K:
            raise ValueError(f"expected [K, X, Y] or [B, K, X, Y] with K = {K}, got {prob.shape}")
        if prob.size and not (prob.min() >= 0.0 and prob.max() <= 1.0):  # NaN fails too
            raise ValueError("prob must be probabilities in [0, 1] (apply the sigmoid first)")
        # [B, K, X, Y] -> [K, B*X*Y]: one row of cells per class
        prob = np.moveaxis(prob, 1, 0).reshape(K, -1)
        target = np.moveaxis(target, 1, 0).reshape(K, -1)
        # Bin index offset by the class, so one bincount fills the histograms of every class.
        b = np.minimum((prob * self.bins).astype(np.int64), self.bins - 1)  # [K, cells]
        b += np.arange(K, dtype=np.int64)[:, None] * self.bins
        n = K * self.bins
        self.positives += np.bincount(b[target >= POSITIVE_TARGET], minlength=n).reshape(K, self.bins)
        self.negatives += np.bincount(b[target == 0], minlength=n).reshape(K, self.bins)

    def merge(self, other: HeatmapAP) -> None:
        """Add the histograms of another accumulator with the same classes and bins (another worker)."""
        if other.class_names != self.class_names or other.bins != self.bins:
            raise ValueError("cannot merge HeatmapAP accumulators with different classes or bins")
        self.positives += other.positives
        self.negatives += other.negatives

    def compute(self) -> dict[str, float]:
        """class name -> AP in [0, 1] over every cell added (NaN for a class without a positive cell).

        With the bins visited from the highest down, each is a threshold: the recall step there is
        its positives over all positives, the precision the positives over all cells at or above it.
        """
        pos, neg = self.positives[:, ::-1], self.negatives[:, ::-1]  # [K, bins], thresholds descending
        tp = np.cumsum(pos, axis=1)
        fp = np.cumsum(neg, axis=1)
        precision = tp / np.maximum(tp + fp, 1)  # [K, bins]; 0 / 0 only where no cell is above, step 0
        total = pos.sum(axis=1)  # [K] positive cells
        ap = np.where(total > 0, (pos * precision).sum(axis=1) / np.maximum(total, 1), np.nan)
        return {name: float(v) for name, v in zip(self.class_names, ap)}
