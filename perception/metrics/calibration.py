"""Calibration of the model's probabilities: reliability histograms, the expected calibration error
(ECE) and per-class Platt scaling. numpy only: export fits it, the edge runtime applies it.

A detection score is calibrated when, among the detections scoring about p, a fraction p are true
positives (matched to a ground-truth box of their class within 2 m, the nuScenes TP threshold:
:meth:`DetectionMetrics.scores_and_matches`). A segmentation probability is calibrated when, among the
BEV cells of probability about p, a fraction p hold the class.

    hist = ReliabilityHistogram(); hist.update(prob, label); hist.ece
    scaling = PlattScaling.fit(logits, label); calibrated = scaling.prob(logits)
    cal = fit_calibration(det={"car": (logits, tp), ...}, seg={"vehicle": (logits, label), ...})
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["N_BINS", "PlattScaling", "ReliabilityHistogram", "ScoreCalibration", "ece_noise_floor",
           "expected_calibration_error", "fit_calibration", "logit"]

N_BINS = 15  # equal-width probability bins of the ECE and the reliability diagram
_EPS = 1e-7
# A class is fitted on its own when it has this many samples, positives and negatives; else it takes
# the fit pooled over every class of its task.
MIN_SAMPLES, MIN_EACH = 50, 5


def logit(prob: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) elementwise, float64, p clipped to [1e-7, 1 - 1e-7]."""
    p = np.clip(np.asarray(prob, np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))  # no overflow warnings for large |z|


@dataclass
class ReliabilityHistogram:
    """Counts, positives and summed confidence per equal-width probability bin, accumulated in fixed
    memory over any number of samples."""

    bins: int = N_BINS
    count: np.ndarray = field(init=False)  # [bins] samples
    positives: np.ndarray = field(init=False)  # [bins] of them positive
    confidence: np.ndarray = field(init=False)  # [bins] sum of their probabilities

    def __post_init__(self) -> None:
        self.count = np.zeros(self.bins, np.int64)
        self.positives = np.zeros(self.bins, np.int64)
        self.confidence = np.zeros(self.bins, np.float64)

    def update(self, prob: np.ndarray, label: np.ndarray, mask: np.ndarray | None = None) -> None:
        """Add samples: prob in [0, 1] and label (bool or 0/1) of any equal shape; ``mask`` keeps some."""
        p = np.asarray(prob, np.float64).ravel()
        y = np.asarray(label).ravel().astype(bool)
        if p.shape != y.shape:
            raise ValueError(f"prob has {p.size} values, label {y.size}")
        if mask is not None:
            keep = np.asarray(mask, bool).ravel()
            p, y = p[keep], y[keep]
        idx = np.minimum((p * self.bins).astype(np.int64), self.bins - 1)
        self.count += np.bincount(idx, minlength=self.bins)
        self.positives += np.bincount(idx, weights=y, minlength=self.bins).astype(np.int64)
        self.confidence += np.bincount(idx, weights=p, minlength=self.bins)

    @property
    def total(self) -> int:
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        """Sum over bins of (share of samples) x |accuracy - mean confidence|; NaN with no samples."""
        n = self.total
        if n == 0:
            return math.nan
        full = self.count > 0
        gap = np.abs(self.positives[full] - self.confidence[full])  # = count * |acc - conf|
        return float(gap.sum() / n)

    def curve(self) -> dict[str, list[float | None]]:
        """Per bin: mean confidence, observed frequency (None for empty bins) and count; for plots and JSON."""
        full = self.count > 0
        conf = np.where(full, self.confidence / np.maximum(self.count, 1), np.nan)
        acc = np.where(full, self.positives / np.maximum(self.count, 1), np.nan)
        return {"confidence": [None if not math.isfinite(v) else float(v) for v in conf],
                "frequency": [None if not math.isfinite(v) else float(v) for v in acc],
                "count": [int(c) for c in self.count]}


def expected_calibration_error(prob: np.ndarray, label: np.ndarray, bins: int = N_BINS) -> float:
    """ECE of probabilities ``prob`` against binary ``label`` (any equal shapes), ``bins`` equal-width bins."""
    hist = ReliabilityHistogram(bins)
    hist.update(prob, label)
    return hist.ece


def ece_noise_floor(prob: np.ndarray, bins: int = N_BINS, draws: int = 200, seed: int = 0) -> dict[str, float]:
    """The ECE a perfectly calibrated model would read with these probabilities and this many samples
    (binned ECE is biased upwards on few samples): labels drawn as Bernoulli(prob), ``draws`` times.
    Returns the mean and the 5th and 95th percentiles; NaNs with no samples."""
    p = np.asarray(prob, np.float64).ravel()
    if p.size == 0:
        return {"mean": math.nan, "p5": math.nan, "p95": math.nan}
    rng = np.random.default_rng(seed)
    eces = np.array([expected_calibration_error(p, rng.random(p.size) < p, bins) for _ in range(draws)])
    return {"mean": float(eces.mean()), "p5": float(np.percentile(eces, 5)), "p95": float(np.percentile(eces, 95))}


@dataclass(frozen=True)
class PlattScaling:
    """p = sigmoid(a * z + b) of a logit z: a = 1 / temperature, b a bias; (1, 0) is the identity.
    ``a`` > 0, so the scaling keeps every ranking (and so every AP) as it is."""

    a: float = 1.0
    b: float = 0.0

    def prob(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities of logits (any shape), float64."""
        return _sigmoid(self.a * np.asarray(logits, np.float64) + self.b)

    @classmethod
    def fit(cls, logits: np.ndarray, label: np.ndarray, ridge: float = 1e-4, iters: int = 50) -> PlattScaling:
        """Maximum likelihood (a, b) by Newton's method on the logistic loss, with a small ridge towards
        the identity; the identity when the labels are all equal or the fit would not increase with z."""
        z = np.asarray(logits, np.float64).ravel()
        y = np.asarray(label).ravel().astype(np.float64)
        if z.size == 0 or y.min() == y.max():
            return cls()
        X = np.column_stack([z, np.ones_like(z)])
        prior = np.array([1.0, 0.0])
        lam = ridge * len(z)

        def loss(w: np.ndarray) -> float:  # logistic loss (log(1 + e^t) - y t) plus the ridge
            t = X @ w
            return float(np.sum(np.logaddexp(0.0, t) - y * t) + 0.5 * lam * np.sum((w - prior) ** 2))

        w, current = prior.copy(), loss(prior)
        for _ in range(iters):  # Newton's method with backtracking: plain steps overshoot from far away
            p = _sigmoid(X @ w)
            grad = X.T @ (p - y) + lam * (w - prior)
            hess = (X * (p * (1 - p))[:, None]).T @ X + lam * np.eye(2)
            step = np.linalg.solve(hess, grad)
            size = 1.0
            while size > 1e-6 and loss(w - size * step) > current:
                size *= 0.5
            w, current = w - size * step, loss(w - size * step)
            if np.abs(size * step).max() < 1e-8:
                break
        if not (np.all(np.isfinite(w)) and w[0] > 0):
            return cls()
        return cls(float(w[0]), float(w[1]))

    def to_json(self) -> list[float]:
        return [self.a, self.b]

    @classmethod
    def from_json(cls, data: Any, where: str) -> PlattScaling:
        """[a, b] of finite numbers with a > 0; ValueError naming ``where`` otherwise."""
        ok = (isinstance(data, list) and len(data) == 2 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                                 and math.isfinite(v) for v in data) and data[0] > 0)
        if not ok:
            raise ValueError(f"{where} is {data!r}, expected [a, b]: finite numbers with a > 0")
        return cls(float(data[0]), float(data[1]))


@dataclass(frozen=True)
class ScoreCalibration:
    """Per-class Platt scaling of detection scores and of segmentation probabilities."""

    detection: Mapping[str, PlattScaling]  # detection class -> scaling of its heatmap logits
    segmentation: Mapping[str, PlattScaling]  # segmentation class -> scaling of its logits
    fitted_on: str = ""  # what it was fitted on, e.g. "synth_val of data/synth: 80 frames"

    def detection_scores(self, scores: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...]) -> np.ndarray:
        """Calibrated scores [K] of detections with raw scores [K] (heatmap probabilities at the peaks)
        and class indices ``labels`` [K] into ``class_names``; classes without a scaling stay as they are."""
        scores = np.asarray(scores, np.float64)
        out = scores.copy()
        labels = np.asarray(labels)
        for k, name in enumerate(class_names):
            scaling = self.detection.get(name)
            sel = labels == k
            if scaling is not None and sel.any():
                out[sel] = scaling.prob(logit(scores[sel]))
        return out

    def segmentation_probs(self, logits: np.ndarray, seg_classes: tuple[str, ...]) -> np.ndarray:
        """Calibrated probabilities float32 [..., S, X, Y] of segmentation logits [..., S, X, Y]."""
        logits = np.asarray(logits)
        out = np.empty(logits.shape, np.float32)
        for s, name in enumerate(seg_classes):
            out[..., s, :, :] = self.segmentation.get(name, PlattScaling()).prob(logits[..., s, :, :])
        return out

    def to_json(self) -> dict[str, Any]:
        return {"method": "platt", "detection": {c: s.to_json() for c, s in self.detection.items()},
                "segmentation": {c: s.to_json() for c, s in self.segmentation.items()}, "fitted_on": self.fitted_on}

    @classmethod
    def from_json(cls, data: Any, where: str = "calibration") -> ScoreCalibration:
        """The inverse of :meth:`to_json`; ValueError naming the field that is wrong."""
        if not isinstance(data, dict) or data.get("method") != "platt":
            raise ValueError(f"{where} is {str(data)[:80]!r}, expected an object with method 'platt'")
        parts = {}
        for task in ("detection", "segmentation"):
            table = data.get(task)
            if not isinstance(table, dict):
                raise ValueError(f"{where}.{task} is {table!r}, expected class -> [a, b]")
            parts[task] = {str(c): PlattScaling.from_json(v, f"{where}.{task}.{c}") for c, v in table.items()}
        return cls(parts["detection"], parts["segmentation"], str(data.get("fitted_on", "")))


def _fit_task(samples: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, PlattScaling]:
    """class -> scaling: its own fit where it has enough samples of each label, else the pooled one."""
    pooled_z = [np.asarray(z, np.float64).ravel() for z, _ in samples.values()]
    pooled_y = [np.asarray(y).ravel() for _, y in samples.values()]
    pooled = (PlattScaling.fit(np.concatenate(pooled_z), np.concatenate(pooled_y)) if pooled_z
              else PlattScaling())
    out = {}
    for c, (z, y) in samples.items():
        y = np.asarray(y).ravel().astype(bool)
        pos = int(y.sum())
        enough = y.size >= MIN_SAMPLES and pos >= MIN_EACH and y.size - pos >= MIN_EACH
        out[c] = PlattScaling.fit(z, y) if enough else pooled
    return out


def fit_calibration(det: Mapping[str, tuple[np.ndarray, np.ndarray]], seg: Mapping[str, tuple[np.ndarray, np.ndarray]],
                    fitted_on: str = "") -> ScoreCalibration:
    """Per-class Platt scalings from (logits, label) samples per detection class (label: the detection
    is a true positive) and per segmentation class (label: the cell holds the class)."""
    return ScoreCalibration(_fit_task(det), _fit_task(seg), fitted_on)
