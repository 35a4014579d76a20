"""How well a model's probabilities are calibrated on a split, and the samples a calibration is fitted on.

The model's outputs over the split's frames (the pairs :func:`perception.evaluate.run_model` or
:func:`export.dataset_runs.run_edge` yield) are decoded as `perception eval` decodes them; each detection is
a true positive when it matches a ground-truth box of its class within 2 m (the nuScenes TP threshold,
on the range capped to the BEV grid), and each valid BEV cell is a segmentation sample of each class.

    samples = collect_confidence(preset, dataset, pairs)          # raw scores
    calibration = samples.fit("synth_val of data/synth")
    report = collect_confidence(preset, other, pairs2, calibration).report()   # ECE raw and calibrated

Detection samples are all kept; segmentation is measured on every valid cell (histograms) and fitted on
a random sample of ``seg_samples_per_frame`` cells per frame.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .boxes import BoxCodec, sigmoid
from .data.batch import MultiCamBatch
from .data.dataset import MultiCamDataset
from .metrics import DetectionConfig, DetectionEvaluator, EvalBoxes, range_capped_to_grid
from .metrics.calibration import ReliabilityHistogram, ScoreCalibration, fit_calibration, logit
from .metrics.nuscenes_io import ground_truth
from .presets import Preset

__all__ = ["ConfidenceSamples", "collect_confidence"]


@dataclass
class ConfidenceSamples:
    """Detection (logit, true positive) pairs per class and segmentation histograms and samples per class."""

    det: dict[str, tuple[np.ndarray, np.ndarray]]  # class -> ([P] raw logits, [P] bool matched at 2 m)
    seg: dict[str, tuple[np.ndarray, np.ndarray]]  # class -> ([M] raw logits, [M] bool) sampled cells
    seg_raw: dict[str, ReliabilityHistogram]  # class -> every valid cell, raw probabilities
    seg_calibrated: dict[str, ReliabilityHistogram]  # the same cells under ``calibration`` (empty without one)
    frames: int
    calibration: ScoreCalibration | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def fit(self, fitted_on: str = "") -> ScoreCalibration:
        """Per-class Platt scalings of these samples' raw logits."""
        return fit_calibration(self.det, self.seg, fitted_on)

    def report(self) -> dict[str, Any]:
        """ECE per class and pooled per task, raw and (with a calibration) calibrated, with the
        reliability curves; detection over every detection, segmentation over every valid cell."""
        out: dict[str, Any] = {"frames": self.frames, "detection": {}, "segmentation": {}, **self.meta}
        pooled = {"raw": ReliabilityHistogram(), "calibrated": ReliabilityHistogram()}
        for c, (z, tp) in self.det.items():
            raw = ReliabilityHistogram()
            raw.update(sigmoid(z), tp)
            pooled["raw"].update(sigmoid(z), tp)
            row: dict[str, Any] = {"detections": int(len(z)), "true_positives": int(tp.sum()), "ece_raw": _num(raw.ece)}
            if self.calibration is not None:
                cal = ReliabilityHistogram()
                scaling = self.calibration.detection.get(c)
                p = scaling.prob(z) if scaling is not None else sigmoid(z)
                cal.update(p, tp)
                pooled["calibrated"].update(p, tp)
                row["ece_calibrated"] = _num(cal.ece)
            out["detection"][c] = row
        out["detection_pooled"] = _pooled(pooled, self.calibration is not None)
        seg_pooled = {"raw": ReliabilityHistogram(), "calibrated": ReliabilityHistogram()}
        for c, hist in self.seg_raw.items():
            row = {"cells": hist.total, "ece_raw": _num(hist.ece)}
            _add(seg_pooled["raw"], hist)
            if c in self.seg_calibrated:
                row["ece_calibrated"] = _num(self.seg_calibrated[c].ece)
                _add(seg_pooled["calibrated"], self.seg_calibrated[c])
            out["segmentation"][c] = row
        out["segmentation_pooled"] = _pooled(seg_pooled, bool(self.seg_calibrated))
        return out


def _num(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


def _add(into: ReliabilityHistogram, hist: ReliabilityHistogram) -> None:
    into.count += hist.count
    into.positives += hist.positives
    into.confidence += hist.confidence


def _pooled(hists: Mapping[str, ReliabilityHistogram], calibrated: bool) -> dict[str, Any]:
    out: dict[str, Any] = {"ece_raw": _num(hists["raw"].ece), "reliability_raw": hists["raw"].curve()}
    if calibrated:
        out.update(ece_calibrated=_num(hists["calibrated"].ece), reliability_calibrated=hists["calibrated"].curve())
    return out


def collect_confidence(preset: Preset, dataset: MultiCamDataset, pairs: Iterable[tuple[MultiCamBatch, Mapping[str, Any]]],
                       calibration: ScoreCalibration | None = None, *, score_threshold: float = 0.1,
                       seg_samples_per_frame: int = 2000, seed: int = 0) -> ConfidenceSamples:
    """Samples of the model's outputs over ``dataset`` (see the module docstring). pairs: (batch, outputs)
    with ``heatmap``, ``regression`` and ``seg`` logits as numpy arrays or CPU tensors (raw, uncalibrated)."""
    reader = dataset.reader
    codec = BoxCodec.from_preset(preset)
    config: DetectionConfig = range_capped_to_grid(DetectionConfig.cvpr_2019(), preset.bev)
    evaluator = DetectionEvaluator(config)
    seg_classes = tuple(preset.tasks.seg_classes)
    seg_raw = {c: ReliabilityHistogram() for c in seg_classes}
    seg_cal = {c: ReliabilityHistogram() for c in seg_classes} if calibration is not None else {}
    seg_z: dict[str, list[np.ndarray]] = {c: [] for c in seg_classes}
    seg_y: dict[str, list[np.ndarray]] = {c: [] for c in seg_classes}
    rng = np.random.default_rng(seed)
    frames = 0
    for batch, outputs in pairs:
        decoded = codec.decode_logits(outputs, score_threshold, config.max_boxes_per_sample)
        seg_logits = np.asarray(outputs["seg"], np.float32)  # [B, S, X, Y]
        seg_gt, seg_valid = batch.seg.numpy().astype(bool), batch.seg_valid.numpy()
        cal_probs = calibration.segmentation_probs(seg_logits, seg_classes) if calibration is not None else None
        for b, boxes in enumerate(decoded):
            sample = reader.samples[int(batch.sample_index[b])]
            evaluator.add_sample(sample.token, ground_truth(reader, sample), EvalBoxes.from_decoded(boxes, codec.classes))
            frames += 1
            for s, c in enumerate(seg_classes):
                if not seg_valid[b, s]:
                    continue
                z, y = seg_logits[b, s].ravel(), seg_gt[b, s].ravel()
                seg_raw[c].update(sigmoid(z.astype(np.float64)), y)
                if cal_probs is not None:
                    seg_cal[c].update(cal_probs[b, s].ravel(), y)
                pick = rng.choice(z.size, size=min(seg_samples_per_frame, z.size), replace=False)
                seg_z[c].append(z[pick])
                seg_y[c].append(y[pick])
    if frames == 0:
        raise ValueError(f"{reader.root}: no frames to measure calibration on")
    metrics = evaluator.compute()
    det = {}
    for c in config.class_names:
        scores, tp = metrics.scores_and_matches(c, 2.0)
        det[c] = (logit(scores), np.asarray(tp, bool))
    seg = {c: (np.concatenate(seg_z[c]) if seg_z[c] else np.zeros(0, np.float32),
               np.concatenate(seg_y[c]) if seg_y[c] else np.zeros(0, bool)) for c in seg_classes}
    return ConfidenceSamples(det, seg, seg_raw, seg_cal, frames, calibration,
                             {"split": dataset.config.split, "dataset": str(reader.root), "match": "2 m, range capped to the grid"})
