"""nuScenes detection metrics (mAP, ATE, ASE, AOE, AVE, AAE, NDS), in numpy, as the devkit defines them.

The official devkit (nuscenes-devkit 1.2.0) with its ``detection_cvpr_2019`` configuration is the
reference; a slow test scores the same predictions with both and asks for agreement to 1e-6.

    evaluator = DetectionEvaluator(DetectionConfig.cvpr_2019())
    for token, gt, pred in samples:                    # EvalBoxes in the sample's ego frame
        evaluator.add_sample(token, gt, pred)          # ego_xy defaults to (0, 0): the ego frame
    metrics = evaluator.compute()
    print(metrics.summary_table()); metrics.nd_score; metrics.to_devkit_json()

What :meth:`DetectionEvaluator.add_sample` keeps, as the devkit's loaders do:

- boxes (ground truth and predictions alike) whose BEV centre lies strictly closer to the ego than
  their class's range (``class_range``, m; the distance is measured in the ground plane from
  ``ego_xy``, the ego position in the boxes' frame);
- ground-truth boxes with at least one lidar or radar point (``num_pts != 0``; predictions carry -1);
- at most ``max_boxes_per_sample`` predictions per sample, or it raises (the devkit asserts).

The devkit also drops bicycles and motorcycles inside ``static_object.bicycle_rack`` annotations. We
do not: our synthetic maps have no bike racks. On real nuScenes, that filter is the one difference.

Per class, :mod:`perception.metrics.detection_curves` gives AP at each distance threshold
(0.5, 1, 2, 4 m) and TP errors at ``dist_th_tp`` (2 m). Traffic cones have no AOE, AVE or AAE, and
barriers no AVE or AAE (NaN, skipped in the means); barrier orientation is taken modulo pi.
mAP is the mean of AP over thresholds and classes; each mTP error is the mean over classes;
NDS = (mean_ap_weight * mAP + sum over the 5 TP metrics of (1 - min(1, mTP))) / (mean_ap_weight + 5).

Beside the benchmark: :func:`unclipped` (AP without the 0.1 precision and recall floors, which hide
weak rare-class detectors) and :meth:`DetectionMetrics.recall_at` (recall at a score threshold).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.metrics.detection_boxes import EvalBoxes
from perception.metrics.detection_curves import (
    TP_METRICS,
    MetricCurves,
    average_precision,
    class_curves,
    match_predictions,
    tp_error,
)

if TYPE_CHECKING:
    from perception.geometry import BEVGrid

__all__ = [
    "CVPR_2019_CLASS_RANGE",
    "TP_METRICS",
    "TP_METRIC_NAMES",
    "DetectionConfig",
    "DetectionEvaluator",
    "DetectionMetrics",
    "EvalBoxes",
    "range_capped",
    "range_capped_to_grid",
    "unclipped",
]

# Class -> max BEV distance (m) from the ego, in the order of the devkit's detection_cvpr_2019.json
# (which is also the order of its per-class results).
CVPR_2019_CLASS_RANGE: Mapping[str, float] = MappingProxyType({
    "car": 50, "truck": 50, "bus": 50, "trailer": 50, "construction_vehicle": 50,
    "pedestrian": 40, "motorcycle": 40, "bicycle": 40, "traffic_cone": 30, "barrier": 30,
})
# TP metric -> the name of its mean over classes.
TP_METRIC_NAMES: Mapping[str, str] = MappingProxyType({
    "trans_err": "mATE", "scale_err": "mASE", "orient_err": "mAOE", "vel_err": "mAVE", "attr_err": "mAAE",
})
# TP metrics that a class does not have (NaN in its results, skipped in the means over classes).
UNDEFINED_TP_METRICS: Mapping[str, tuple[str, ...]] = MappingProxyType({
    "traffic_cone": ("attr_err", "vel_err", "orient_err"),
    "barrier": ("attr_err", "vel_err"),
})
# Classes whose orientation is only defined up to this period (rad); 2 pi for the others.
ORIENTATION_PERIOD: Mapping[str, float] = MappingProxyType({"barrier": math.pi})


@dataclass(frozen=True)
class DetectionConfig:
    """Settings of the detection evaluation (the fields of the devkit's DetectionConfig, plus a name)."""

    class_range: Mapping[str, float]  # class -> max BEV distance (m) of a box centre from the ego (strict <)
    dist_ths: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)  # m, BEV centre-distance match thresholds (strict <)
    dist_th_tp: float = 2.0  # m, the threshold whose matches give the TP errors
    min_recall: float = 0.1  # recalls at or below this are left out of AP and TP errors
    min_precision: float = 0.1  # precision below this counts as 0 in AP
    max_boxes_per_sample: int = 500  # more predictions in one sample is an error
    mean_ap_weight: int = 5  # weight of mAP in NDS, against 1 for each of the 5 TP scores
    name: str = "detection_cvpr_2019"  # how reports label this configuration

    def __post_init__(self) -> None:
        object.__setattr__(self, "class_range", MappingProxyType(dict(self.class_range)))
        object.__setattr__(self, "dist_ths", tuple(float(t) for t in self.dist_ths))
        if self.dist_th_tp not in self.dist_ths:
            raise ValueError(f"dist_th_tp {self.dist_th_tp} must be one of dist_ths {self.dist_ths}")
        if not self.class_range or any(r <= 0 for r in self.class_range.values()):
            raise ValueError(f"class_range must name classes with positive ranges, got {dict(self.class_range)}")

    @classmethod
    def cvpr_2019(cls) -> DetectionConfig:
        """The devkit's ``detection_cvpr_2019`` configuration (the nuScenes detection benchmark)."""
        return cls(class_range=CVPR_2019_CLASS_RANGE)

    @property
    def class_names(self) -> tuple[str, ...]:
        """The evaluated classes, in the order results are reported."""
        return tuple(self.class_range)

    def serialize(self) -> dict[str, Any]:
        """The devkit's ``cfg`` entry of metrics_summary.json."""
        return {
            "class_range": dict(self.class_range), "dist_fcn": "center_distance", "dist_ths": list(self.dist_ths),
            "dist_th_tp": self.dist_th_tp, "min_recall": self.min_recall, "min_precision": self.min_precision,
            "max_boxes_per_sample": self.max_boxes_per_sample, "mean_ap_weight": self.mean_ap_weight,
        }


def range_capped(config: DetectionConfig, max_range: float) -> DetectionConfig:
    """``config`` with every class range capped at ``max_range`` m (e.g. the model's BEV extent).

    Its name says so (``detection_cvpr_2019_capped_25m``): numbers from it are not the benchmark's.
    """
    if max_range <= 0:
        raise ValueError(f"max_range must be > 0, got {max_range}")
    ranges = {c: min(r, max_range) for c, r in config.class_range.items()}
    return replace(config, class_range=ranges, name=f"{config.name}_capped_{max_range:g}m")


def range_capped_to_grid(config: DetectionConfig, grid: BEVGrid) -> DetectionConfig:
    """:func:`range_capped` at the largest BEV distance whose whole circle lies on ``grid`` (m)."""
    return range_capped(config, float(min(-grid.x_min, grid.x_max, -grid.y_min, grid.y_max)))


def unclipped(config: DetectionConfig) -> DetectionConfig:
    """``config`` with ``min_recall = min_precision = 0``, named ``<config.name>_unclipped``.

    The official AP counts precision only above 0.1 and recall only above 0.1, so a weak detector of
    a rare class scores exactly 0 whatever it found. The unclipped AP (mean precision over recalls
    0.01..1) still moves there; it is not the benchmark's number and its name says so, to be
    reported beside the official one.
    """
    return replace(config, min_recall=0.0, min_precision=0.0, name=f"{config.name}_unclipped")


@dataclass(frozen=True, eq=False)
class DetectionMetrics:
    """The results of a detection evaluation; the properties are those of the devkit's summary."""

    config: DetectionConfig
    label_aps: Mapping[str, Mapping[float, float]]  # class -> distance threshold (m) -> AP
    label_tp_errors: Mapping[str, Mapping[str, float]]  # class -> TP metric -> error (NaN: undefined)
    curves: Mapping[tuple[str, float], MetricCurves]  # (class, threshold) -> curves on 101 recall points
    num_gt: Mapping[str, int]  # class -> ground-truth boxes kept by the filters
    num_pred: Mapping[str, int]  # class -> predictions kept by the filters
    num_samples: int
    eval_time: float = 0.0  # s spent in compute()
    # class -> [P] scores of the kept predictions, in matching order (descending)
    pred_scores: Mapping[str, np.ndarray] = field(default_factory=dict)
    # (class, threshold) -> [P] bool, whether each of those predictions matched a ground-truth box
    pred_matched: Mapping[tuple[str, float], np.ndarray] = field(default_factory=dict)

    def scores_and_matches(self, cls: str, dist_th: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """([P] scores, [P] bool true positive) of the predictions of ``cls``, matched at ``dist_th`` m
        (default ``config.dist_th_tp``): what a calibration of the scores is measured and fitted on."""
        th = self.config.dist_th_tp if dist_th is None else float(dist_th)
        if (cls, th) not in self.pred_matched:
            raise KeyError(f"no matches of class {cls!r} at {th:g} m (classes {self.config.class_names}, "
                           f"thresholds {self.config.dist_ths})")
        return self.pred_scores[cls], self.pred_matched[(cls, th)]

    @property
    def mean_dist_aps(self) -> dict[str, float]:
        """class -> AP averaged over the distance thresholds."""
        return {c: float(np.mean(list(aps.values()))) for c, aps in self.label_aps.items()}

    @property
    def mean_ap(self) -> float:
        """mAP: AP averaged over thresholds and classes."""
        return float(np.mean(list(self.mean_dist_aps.values())))

    def recall_at(self, cls: str, score: float, dist_th: float | None = None) -> float:
        """Recall in [0, 1] of the predictions of class ``cls`` scoring >= ``score``.

        The true positives among them (matched at ``dist_th`` m, default ``config.dist_th_tp``)
        over the class's ground-truth boxes; NaN when the class has none. Counted from the
        matches themselves: the 101-point ``curves`` interpolate the score linearly between two
        true positives, and reading recall off them would overstate it by up to one box's share.
        """
        scores, tp = self.scores_and_matches(cls, dist_th)
        if self.num_gt[cls] == 0:
            return math.nan
        return float(np.count_nonzero(scores[tp] >= score)) / self.num_gt[cls]

    @property
    def tp_errors(self) -> dict[str, float]:
        """TP metric -> its mean over the classes that define it (mATE m, mASE, mAOE rad, mAVE m/s, mAAE)."""
        return {m: float(np.nanmean([self.label_tp_errors[c][m] for c in self.config.class_names]))
                for m in TP_METRICS}

    @property
    def tp_scores(self) -> dict[str, float]:
        """TP metric -> 1 - min(1, mean error)."""
        return {m: max(0.0, 1.0 - e) for m, e in self.tp_errors.items()}

    @property
    def nd_score(self) -> float:
        """NDS: (mean_ap_weight * mAP + sum of the TP scores) / (mean_ap_weight + 5)."""
        w = self.config.mean_ap_weight
        return float(w * self.mean_ap + sum(self.tp_scores.values())) / float(w + len(TP_METRICS))

    def summary(self) -> dict[str, float]:
        """The headline numbers: mAP, mATE, mASE, mAOE, mAVE, mAAE, NDS."""
        out = {"mAP": self.mean_ap}
        out.update({TP_METRIC_NAMES[m]: e for m, e in self.tp_errors.items()})
        out["NDS"] = self.nd_score
        return out

    def summary_table(self) -> str:
        """A plain-text report: headline numbers, then AP and TP errors per class."""
        cfg = self.config
        lines = [f"nuScenes detection metrics ({cfg.name}; {self.num_samples} samples)"]
        lines += [f"  {k:<5} {v:.4f}" for k, v in self.summary().items()]
        ths = "  ".join(f"AP@{t:g}" for t in cfg.dist_ths)
        head = f"{'class':<21}{'range':>6}{'GT':>6}{'pred':>6}  {'AP':>6}  {ths}  " + "  ".join(
            f"{n[1:]:>6}" for n in TP_METRIC_NAMES.values())
        lines += ["", head]
        for c in cfg.class_names:
            aps = "  ".join(f"{self.label_aps[c][t]:>{len(f'AP@{t:g}')}.3f}" for t in cfg.dist_ths)
            tps = "  ".join(f"{self.label_tp_errors[c][m]:>6.3f}" for m in TP_METRICS)
            lines.append(f"{c:<21}{cfg.class_range[c]:>6g}{self.num_gt[c]:>6d}{self.num_pred[c]:>6d}  "
                         f"{self.mean_dist_aps[c]:>6.3f}  {aps}  {tps}")
        return "\n".join(lines).replace(" nan", " n/a")

    def to_devkit_json(self, meta: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``metrics_summary.json`` in the devkit's layout (thresholds as the strings JSON makes of them).

        ``meta``: the submission's meta (the devkit copies it); ``eval_config`` names the
        configuration, so numbers of a range-capped configuration are labelled as such.
        """
        return {
            "label_aps": {c: {str(t): ap for t, ap in aps.items()} for c, aps in self.label_aps.items()},
            "mean_dist_aps": self.mean_dist_aps,
            "mean_ap": self.mean_ap,
            "label_tp_errors": {c: dict(e) for c, e in self.label_tp_errors.items()},
            "tp_errors": self.tp_errors,
            "tp_scores": self.tp_scores,
            "nd_score": self.nd_score,
            "eval_time": self.eval_time,
            "cfg": self.config.serialize(),
            "meta": {**dict(meta or {}), "eval_config": self.config.name},
        }

    def to_devkit_details_json(self) -> dict[str, Any]:
        """``metrics_details.json`` in the devkit's layout: "class:threshold" -> the curves."""
        return {f"{c}:{t}": curves.serialize() for (c, t), curves in self.curves.items()}


class DetectionEvaluator:
    """Collects ground truth and predictions sample by sample; :meth:`compute` scores them all."""

    def __init__(self, config: DetectionConfig | None = None) -> None:
        self.config = config if config is not None else DetectionConfig.cvpr_2019()
        self.sample_tokens: list[str] = []  # in the order added
        self._token_set: set[str] = set()
        self._gt: list[EvalBoxes] = []  # per sample, after the filters
        self._pred: list[EvalBoxes] = []

    def __len__(self) -> int:
        return len(self.sample_tokens)

    def add_sample(
        self, sample_token: str, gt: EvalBoxes, pred: EvalBoxes, ego_xy: Sequence[float] | np.ndarray = (0.0, 0.0)
    ) -> None:
        """Add one sample's ground truth and predictions, both in one frame (z up).

        ego_xy: [2] m, the ego position in that frame ((0, 0) in the ego frame; the LIDAR_TOP ego
        pose's translation in the global frame, as the devkit measures it). Every sample of the
        evaluated split must be added once, with empty predictions where there are none.
        """
        if sample_token in self._token_set:
            raise ValueError(f"sample {sample_token!r} was added twice")
        if len(pred) > self.config.max_boxes_per_sample:
            raise ValueError(f"sample {sample_token!r}: {len(pred)} predictions, at most "
                             f"{self.config.max_boxes_per_sample} are allowed")
        ego = np.asarray(ego_xy, dtype=np.float64).reshape(2)
        self.sample_tokens.append(sample_token)
        self._token_set.add(sample_token)
        self._gt.append(self._filter(gt, ego))
        self._pred.append(self._filter(pred, ego))

    def _filter(self, boxes: EvalBoxes, ego_xy: np.ndarray) -> EvalBoxes:
        """The boxes within their class range of the ego, and with points (num_pts != 0)."""
        unknown = sorted(set(boxes.names) - set(self.config.class_range))
        if unknown:
            raise ValueError(f"classes {unknown} have no range in config {self.config.name!r}")
        max_dist = np.asarray([self.config.class_range[n] for n in boxes.names], dtype=np.float64)
        dist = np.linalg.norm(boxes.center[:, :2] - ego_xy, axis=1)
        return boxes.select((dist < max_dist) & (boxes.num_pts != 0))

    def compute(self) -> DetectionMetrics:
        """Match, build the curves and score every class of the configuration."""
        start = time.perf_counter()
        cfg = self.config
        if not self.sample_tokens:
            raise ValueError("no samples were added")
        gt_all, pred_all = EvalBoxes.concatenate(self._gt), EvalBoxes.concatenate(self._pred)
        gt_sample = np.repeat(np.arange(len(self._gt)), [len(b) for b in self._gt])
        pred_sample = np.repeat(np.arange(len(self._pred)), [len(b) for b in self._pred])
        gt_names, pred_names = np.asarray(gt_all.names, dtype=object), np.asarray(pred_all.names, dtype=object)
        label_aps: dict[str, dict[float, float]] = {}
        label_tp: dict[str, dict[str, float]] = {}
        curves: dict[tuple[str, float], MetricCurves] = {}
        pred_scores: dict[str, np.ndarray] = {}
        pred_matched: dict[tuple[str, float], np.ndarray] = {}
        num_gt, num_pred = {}, {}
        for c in cfg.class_names:
            gi, pi = np.flatnonzero(gt_names == c), np.flatnonzero(pred_names == c)
            gt, pred = gt_all.select(gi), pred_all.select(pi)
            num_gt[c], num_pred[c] = len(gt), len(pred)
            order, matched = match_predictions(gt_sample[gi], gt.center[:, :2], pred_sample[pi],
                                               pred.center[:, :2], pred.score, cfg.dist_ths)
            period = ORIENTATION_PERIOD.get(c, 2 * math.pi)
            pred_scores[c] = pred.score[order]
            for t in cfg.dist_ths:
                curves[(c, t)] = class_curves(gt, pred, order, matched[t], period)
                pred_matched[(c, t)] = matched[t] >= 0
            label_aps[c] = {t: average_precision(curves[(c, t)], cfg.min_recall, cfg.min_precision)
                            for t in cfg.dist_ths}
            undefined = UNDEFINED_TP_METRICS.get(c, ())
            label_tp[c] = {m: math.nan if m in undefined else tp_error(curves[(c, cfg.dist_th_tp)], m, cfg.min_recall)
                           for m in TP_METRICS}
        return DetectionMetrics(cfg, label_aps, label_tp, curves, num_gt, num_pred, len(self.sample_tokens),
                                eval_time=time.perf_counter() - start, pred_scores=pred_scores,
                                pred_matched=pred_matched)
