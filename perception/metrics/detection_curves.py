"""The nuScenes detection metrics of one class: matching, curves on 101 recall points, AP, TP errors.

Definitions (those of the official devkit, nuscenes-devkit 1.2.0, ``nuscenes/eval/detection``):

- Matching, per class and per distance threshold, over the whole dataset at once: predictions are
  visited by descending score (equal scores: the later-added prediction first); each takes the
  nearest ground-truth box of its sample and class not yet taken, by BEV centre distance (m; equal
  distances: the earlier box), and is a true positive when that distance is strictly below the
  threshold; otherwise it is a false positive. Duplicates of a matched box are false positives.
- Precision and recall after each prediction, then linearly interpolated (``np.interp``) at the 101
  recall points 0, 0.01, ..., 1, with precision 0 beyond the highest recall reached (no monotone
  envelope is taken). The scores are interpolated the same way.
- AP: the interpolated precision at recalls above ``min_recall`` (indices 11..100 for 0.1), minus
  ``min_precision`` and clipped at 0, averaged, and divided by ``1 - min_precision``.
- TP errors, over the matches of one threshold in score order: the running mean (NaN entries
  skipped) of each error, read at the interpolated scores, averaged over the recall points from
  ``min_recall`` (excluded) to the highest recall reached (included); 1 when that range is empty.
  Errors: ATE = BEV centre distance (m); ASE = 1 - IoU of the two boxes aligned on a common centre
  and heading; AOE = smallest yaw difference (rad) modulo a period (2 pi, pi for barriers); AVE =
  L2 norm of the (vx, vy) difference (m/s, NaN where either is unknown); AAE = 1 - attribute accuracy
  (NaN when the ground truth has no attribute).
- A class with no ground truth, or no match at a threshold, gets precision 0 and errors 1 there.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from perception.metrics.detection_boxes import EvalBoxes

__all__ = [
    "NUM_RECALL_POINTS",
    "TP_METRICS",
    "MetricCurves",
    "aligned_iou",
    "angle_diff",
    "average_precision",
    "class_curves",
    "cummean",
    "match_predictions",
    "tp_error",
]

NUM_RECALL_POINTS = 101  # recall points 0, 0.01, ..., 1
TP_METRICS: tuple[str, ...] = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")


@dataclass(frozen=True, eq=False)
class MetricCurves:
    """One class at one distance threshold, sampled at the 101 recall points."""

    recall: np.ndarray  # [101] 0, 0.01, ..., 1
    precision: np.ndarray  # [101] interpolated precision, 0 beyond the highest recall reached
    confidence: np.ndarray  # [101] interpolated score, 0 beyond the highest recall reached
    errors: Mapping[str, np.ndarray]  # TP metric name -> [101] running mean of the matches' errors

    @classmethod
    def no_predictions(cls) -> MetricCurves:
        """The curves of a class without ground truth or without any match: precision 0, errors 1."""
        ones = np.ones(NUM_RECALL_POINTS)
        return cls(_recall_points(), np.zeros(NUM_RECALL_POINTS), np.zeros(NUM_RECALL_POINTS),
                   {m: ones.copy() for m in TP_METRICS})

    @property
    def max_recall_index(self) -> int:
        """Index of the highest recall reached: the last point with a nonzero score (0 if none)."""
        nonzero = np.flatnonzero(self.confidence)
        return int(nonzero[-1]) if len(nonzero) else 0

    def serialize(self) -> dict[str, list[float]]:
        """The devkit's ``metrics_details.json`` entry of one (class, threshold)."""
        out = {"recall": self.recall.tolist(), "precision": self.precision.tolist(),
               "confidence": self.confidence.tolist()}
        out.update({m: self.errors[m].tolist() for m in TP_METRICS})
        return out


def _recall_points() -> np.ndarray:
    return np.linspace(0.0, 1.0, NUM_RECALL_POINTS)


def cummean(values: np.ndarray) -> np.ndarray:
    """Running mean of [M] values skipping NaNs (0 before the first number; all ones if all NaN)."""
    values = np.asarray(values, dtype=np.float64)
    is_nan = np.isnan(values)
    if is_nan.all():
        return np.ones(len(values))
    total = np.cumsum(np.where(is_nan, 0.0, values))
    count = np.cumsum(~is_nan)
    return np.divide(total, count, out=np.zeros_like(total), where=count > 0)


def angle_diff(yaw_to: np.ndarray, yaw_from: np.ndarray, period: float) -> np.ndarray:
    """Signed smallest difference ``yaw_to - yaw_from`` (rad) modulo ``period``, in [-period/2, period/2)."""
    diff = np.mod(np.asarray(yaw_to) - np.asarray(yaw_from) + period / 2, period) - period / 2
    return np.where(diff > np.pi, diff - 2 * np.pi, diff)


def aligned_iou(size_a: np.ndarray, size_b: np.ndarray) -> np.ndarray:
    """3D IoU of boxes [M, 3] (w, l, h) m aligned on a common centre and heading -> [M]."""
    size_a, size_b = np.asarray(size_a, dtype=np.float64), np.asarray(size_b, dtype=np.float64)
    inter = np.prod(np.minimum(size_a, size_b), axis=-1)
    return inter / (np.prod(size_a, axis=-1) + np.prod(size_b, axis=-1) - inter)


def match_predictions(
    gt_sample: np.ndarray,
    gt_xy: np.ndarray,
    pred_sample: np.ndarray,
    pred_xy: np.ndarray,
    pred_score: np.ndarray,
    dist_ths: tuple[float, ...],
) -> tuple[np.ndarray, dict[float, np.ndarray]]:
    """Greedy matching of one class's predictions to its ground truth at each distance threshold.

    gt_sample [G] / pred_sample [P]: int sample index of each box; gt_xy [G, 2], pred_xy [P, 2]: BEV
    centres (m, one frame per sample); pred_score [P]. Returns ``order`` [P], the prediction indices
    by descending score (ties: later index first), and, per threshold, ``matched`` [P] aligned with
    ``order``: the ground-truth index taken by that prediction, -1 for a false positive.
    """
    gt_sample, pred_sample = np.asarray(gt_sample, np.int64), np.asarray(pred_sample, np.int64)
    P = len(pred_sample)
    order = np.lexsort((np.arange(P), np.asarray(pred_score)))[::-1]
    by_sample = np.argsort(gt_sample, kind="stable")  # GT indices grouped by sample, in input order
    sorted_samples = gt_sample[by_sample]
    lo = np.searchsorted(sorted_samples, pred_sample, side="left")
    hi = np.searchsorted(sorted_samples, pred_sample, side="right")
    # Candidates and their distances, per prediction, computed once for every threshold; a prediction
    # whose nearest candidate is at or beyond a threshold can match nothing there and is skipped.
    candidates = [by_sample[lo[i]:hi[i]] for i in range(P)]
    distances = [np.linalg.norm(gt_xy[c] - pred_xy[i], axis=1) if len(c) else np.zeros(0) for i, c in enumerate(candidates)]
    nearest = np.array([d.min() if len(d) else np.inf for d in distances])[order] if P else np.zeros(0)
    matched_by_th: dict[float, np.ndarray] = {}
    for th in dist_ths:
        taken = np.zeros(len(gt_sample), dtype=bool)
        matched = np.full(P, -1, dtype=np.int64)
        for k in np.flatnonzero(nearest < th):
            i = order[k]
            cand = candidates[i]
            dist = np.where(taken[cand], np.inf, distances[i])
            j = int(np.argmin(dist))  # the first of equal distances
            if dist[j] < th:
                taken[cand[j]] = True
                matched[k] = cand[j]
        matched_by_th[float(th)] = matched
    return order, matched_by_th


def class_curves(
    gt: EvalBoxes, pred: EvalBoxes, order: np.ndarray, matched: np.ndarray, orientation_period: float
) -> MetricCurves:
    """Precision, score and TP-error curves of one class at one threshold, from a matching.

    gt, pred: the class's boxes over the dataset (the indices of :func:`match_predictions`);
    orientation_period: rad, 2 pi in general, pi for barriers.
    """
    is_tp = matched >= 0
    if len(gt) == 0 or not is_tp.any():
        return MetricCurves.no_predictions()
    tp = np.cumsum(is_tp).astype(np.float64)
    fp = np.cumsum(~is_tp).astype(np.float64)
    precision = tp / (tp + fp)
    recall = tp / float(len(gt))
    score = pred.score[order]
    points = _recall_points()
    precision_at = np.interp(points, recall, precision, right=0)
    score_at = np.interp(points, recall, score, right=0)

    p, g = order[is_tp], matched[is_tp]  # matched pairs, in score order
    gt_attr = np.asarray(gt.attributes, dtype=object)[g] if len(g) else np.zeros(0, dtype=object)
    pred_attr = np.asarray(pred.attributes, dtype=object)[p] if len(p) else np.zeros(0, dtype=object)
    errors = {
        "trans_err": np.linalg.norm(pred.center[p, :2] - gt.center[g, :2], axis=1),
        "vel_err": np.linalg.norm(pred.velocity[p] - gt.velocity[g], axis=1),
        "scale_err": 1.0 - aligned_iou(gt.size[g], pred.size[p]),
        "orient_err": np.abs(angle_diff(gt.yaw[g], pred.yaw[p], orientation_period)),
        "attr_err": np.where(gt_attr == "", np.nan, (gt_attr != pred_attr).astype(np.float64)),
    }
    match_score = score[is_tp]
    # Each running mean is read at the interpolated scores (np.interp wants increasing abscissae).
    curves = {
        m: np.interp(score_at[::-1], match_score[::-1], cummean(errors[m])[::-1])[::-1] for m in TP_METRICS
    }
    return MetricCurves(points, precision_at, score_at, curves)


def average_precision(curves: MetricCurves, min_recall: float, min_precision: float) -> float:
    """AP of one class at one threshold: mean of max(precision - min_precision, 0) over recalls
    above ``min_recall``, normalised by ``1 - min_precision`` (so a perfect detector has AP 1)."""
    if not (0.0 <= min_precision < 1.0 and 0.0 <= min_recall <= 1.0):
        raise ValueError(f"need 0 <= min_precision < 1 and 0 <= min_recall <= 1, got {min_precision}, {min_recall}")
    first = int(round(100 * min_recall)) + 1  # the min-recall point itself is excluded
    precision = np.clip(curves.precision[first:] - min_precision, 0.0, None)
    return float(np.mean(precision)) / (1.0 - min_precision)


def tp_error(curves: MetricCurves, metric: str, min_recall: float) -> float:
    """Mean of a TP error curve from just above ``min_recall`` to the highest recall reached (1 if none)."""
    first = int(round(100 * min_recall)) + 1
    last = curves.max_recall_index
    if last < first:
        return 1.0
    return float(np.mean(curves.errors[metric][first : last + 1]))
