"""The evaluation report: what one evaluation of a model measured, typed, one spelling per metric.

`perception eval`, validation during training, the exporter's accuracy check, the data engine's
loop and the benches all read these attributes; ``eval_report.json`` is :meth:`EvalReport.to_json`
and reads back with :meth:`EvalReport.from_json`. The official devkit files (``metrics_summary.json``
and its details) are written beside it, in the devkit's own layout, from :class:`DetectionMetrics`.

    report = evaluate(...)                      # an EvalReport
    report.detection.mAP, report.detection.NDS  # nuScenes mAP and NDS at the benchmark's ranges
    report.detection_capped.mAP                 # the same, class ranges capped to the BEV grid
    report.bev_iou["vehicle"]                   # BEV segmentation IoU per class
    report.conditions["night"].detection.mAP    # per scene condition (None without such scenes)
    report.rare["trailer"].AP                   # the rare classes (schema.RARE_CLASSES)

Non-finite numbers (a class without ground truth has AP NaN) are written as JSON null and read back
as NaN. The JSON carries ``format`` (:data:`REPORT_FORMAT`); files of another layout are refused.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ..schema import RARE_CLASSES
from .detection import TP_METRIC_NAMES, DetectionMetrics

__all__ = ["REPORT_FORMAT", "ClassScores", "ConditionScores", "DetectionScores", "EvalReport", "nan_to_none"]

REPORT_FORMAT = 2  # eval_report.json's layout (1: the devkit's summary dicts under "detection", no "format" key)


def nan_to_none(x: Any) -> Any:
    """x with every non-finite float (in nested dicts and lists) replaced by None: strict JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: nan_to_none(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [nan_to_none(v) for v in x]
    return x


def _num(x: Any) -> float:
    return math.nan if x is None else float(x)


@dataclass(frozen=True)
class ClassScores:
    """One class under one detection configuration: ground-truth and prediction counts (after the
    range filters), AP averaged over the distance thresholds, and the true-positive errors of its
    matches (ATE m, ASE 1-IoU, AOE rad, AVE m/s, AAE 1-accuracy; NaN where undefined)."""

    num_gt: int
    num_pred: int
    AP: float
    ATE: float
    ASE: float
    AOE: float
    AVE: float
    AAE: float

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ClassScores:
        return cls(num_gt=int(d["num_gt"]), num_pred=int(d["num_pred"]),
                   **{k: _num(d[k]) for k in ("AP", "ATE", "ASE", "AOE", "AVE", "AAE")})


@dataclass(frozen=True)
class DetectionScores:
    """The nuScenes detection metrics of one configuration (``config``: its name) over ``samples``
    frames: mAP, NDS and the five mean true-positive errors, and the same per class."""

    config: str
    samples: int
    mAP: float
    NDS: float
    mATE: float
    mASE: float
    mAOE: float
    mAVE: float
    mAAE: float
    classes: dict[str, ClassScores]

    @classmethod
    def from_metrics(cls, m: DetectionMetrics) -> DetectionScores:
        headline = m.summary()  # mAP, mATE .. mAAE, NDS
        aps = m.mean_dist_aps
        classes = {c: ClassScores(num_gt=int(m.num_gt[c]), num_pred=int(m.num_pred[c]), AP=float(aps[c]),
                                  **{TP_METRIC_NAMES[k][1:]: float(v) for k, v in m.label_tp_errors[c].items()})
                   for c in m.config.class_names}
        return cls(config=m.config.name, samples=m.num_samples, classes=classes,
                   **{k: float(v) for k, v in headline.items()})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> DetectionScores:
        return cls(config=str(d["config"]), samples=int(d["samples"]),
                   classes={c: ClassScores.from_json(v) for c, v in d["classes"].items()},
                   **{k: _num(d[k]) for k in ("mAP", "NDS", "mATE", "mASE", "mAOE", "mAVE", "mAAE")})


@dataclass(frozen=True)
class ConditionScores:
    """The frames of the scenes with one condition (night, fog, ...): detection at the benchmark's
    ranges and capped, and BEV IoU; the scores are None when the split holds no such scene."""

    scenes: int
    samples: int
    detection: DetectionScores | None = None
    detection_capped: DetectionScores | None = None
    bev_iou: dict[str, float] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> ConditionScores:
        def det(key: str) -> DetectionScores | None:
            return None if d.get(key) is None else DetectionScores.from_json(d[key])

        return cls(scenes=int(d["scenes"]), samples=int(d["samples"]), detection=det("detection"),
                   detection_capped=det("detection_capped"), bev_iou={k: _num(v) for k, v in d["bev_iou"].items()})


@dataclass(frozen=True)
class EvalReport:
    """One evaluation of a model on ``split`` of ``dataset``: detection (benchmark ranges and capped
    to the BEV grid), BEV IoU per class, the same per scene condition; ``table`` is the printed text,
    ``files`` what was written (name -> path), ``meta`` the caller's context (checkpoint, precision)."""

    split: str | None
    dataset: str
    scenes: int
    samples: int
    video_state: str  # "carried" or "reset every frame"
    detection: DetectionScores
    detection_capped: DetectionScores
    bev_iou: dict[str, float]
    conditions: dict[str, ConditionScores]
    table: str = ""
    files: dict[str, str] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def rare(self) -> dict[str, ClassScores]:
        """The rare classes this model detects (:data:`perception.schema.RARE_CLASSES`), benchmark ranges."""
        return {c: self.detection.classes[c] for c in RARE_CLASSES if c in self.detection.classes}

    @property
    def rare_capped(self) -> dict[str, ClassScores]:
        """The rare classes with ranges capped to the BEV grid."""
        return {c: self.detection_capped.classes[c] for c in RARE_CLASSES if c in self.detection_capped.classes}

    def summary(self) -> dict[str, Any]:
        """The headline numbers as a flat dict: mAP, NDS, ``iou_<class>``, and the same per condition
        that has scenes (the form the export report and the benches store)."""
        out: dict[str, Any] = {"mAP": self.detection.mAP, "NDS": self.detection.NDS,
                               **{f"iou_{k}": v for k, v in self.bev_iou.items()}, "conditions": {}}
        for g, c in self.conditions.items():
            if c.detection is not None:
                out["conditions"][g] = {"samples": c.samples, "mAP": c.detection.mAP, "NDS": c.detection.NDS,
                                        **{f"iou_{k}": v for k, v in c.bev_iou.items()}}
        return out

    def with_files(self, files: dict[str, str]) -> EvalReport:
        return dataclasses.replace(self, files=dict(files))

    def to_json(self) -> dict[str, Any]:
        """Strict JSON (NaN as null), with the layout's version under ``format``."""
        return {"format": REPORT_FORMAT, **nan_to_none(dataclasses.asdict(self))}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> EvalReport:
        """The report of :meth:`to_json`; a ValueError for another layout (an older eval_report.json)."""
        if d.get("format") != REPORT_FORMAT:
            raise ValueError(f"an evaluation report of format {d.get('format', 1)!r}, not {REPORT_FORMAT}: "
                             "evaluate the checkpoint again (perception eval) to write the current one")
        return cls(split=d["split"], dataset=str(d["dataset"]), scenes=int(d["scenes"]), samples=int(d["samples"]),
                   video_state=str(d["video_state"]), detection=DetectionScores.from_json(d["detection"]),
                   detection_capped=DetectionScores.from_json(d["detection_capped"]),
                   bev_iou={k: _num(v) for k, v in d["bev_iou"].items()},
                   conditions={g: ConditionScores.from_json(c) for g, c in d["conditions"].items()},
                   table=str(d.get("table", "")), files=dict(d.get("files") or {}), meta=dict(d.get("meta") or {}))
