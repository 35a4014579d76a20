"""Metrics of the stack, in numpy only (no torch): the data engine and the edge side import them.

- :mod:`perception.metrics.bev_iou`: BEV segmentation IoU per class, accumulated over a dataset
  (the LSS / Simple-BEV protocol).
- :mod:`perception.metrics.detection`: the nuScenes detection metrics (mAP, ATE, ASE, AOE, AVE, AAE,
  NDS) as the official devkit's ``detection_cvpr_2019`` configuration defines them.
- :mod:`perception.metrics.heatmap_ap`: average precision of the detection heatmaps cell by cell,
  accumulated over a dataset in fixed memory.
- :mod:`perception.metrics.nuscenes_io`: ground truth from a :class:`NuScenesDataset`, predictions
  from and to the official results JSON, attribute rules for detectors that predict none.
"""

from perception.metrics.bev_iou import BEVIoU
from perception.metrics.detection import (
    TP_METRICS,
    DetectionConfig,
    DetectionEvaluator,
    DetectionMetrics,
    EvalBoxes,
    range_capped,
    range_capped_to_grid,
    unclipped,
)
from perception.metrics.heatmap_ap import HeatmapAP

__all__ = [
    "BEVIoU",
    "HeatmapAP",
    "DetectionConfig",
    "DetectionEvaluator",
    "DetectionMetrics",
    "EvalBoxes",
    "TP_METRICS",
    "range_capped",
    "range_capped_to_grid",
    "unclipped",
]
