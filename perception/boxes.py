"""The box codec of the stack: 3D boxes <-> CenterPoint-style heatmaps and regression targets.

One implementation, numpy only (no torch), shared by training targets, evaluation, the edge
runtime and the data engine.

Frames and layout (see :mod:`perception.geometry`): boxes are in the ego frame (x forward, y left,
z up; centre m, size (w, l, h) m, yaw rad about +z from +x, velocity (vx, vy) m/s). Maps live on the
detection grid (``preset.det_grid``, a :class:`~perception.geometry.BEVGrid`) as ``[..., X, Y]``:
row i grows with x, column j with y, cell (i, j) covers continuous cells ``[i, i+1) x [j, j+1)``.
A flat cell index is ``i * Y + j``.

An object is assigned to the cell holding its centre. Its heatmap target is a Gaussian in its class
channel, peak exactly 1.0 at that cell, max-combined with other objects' Gaussians (drawn, and
found again at decoding, by :mod:`perception.heatmap`). Its regression target is the 10 channels
of :data:`REGRESSION_CHANNELS`, read back at the same cell.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.geometry import BEVGrid
from perception.heatmap import circle_nms, draw_gaussian, gaussian_radius, heatmap_peaks
from perception.specs import NUM_REGRESSION, REGRESSION_CHANNELS

if TYPE_CHECKING:
    from perception.presets import Preset

__all__ = [
    "REGRESSION_CHANNELS",
    "REGRESSION_SLICES",
    "NUM_REGRESSION",
    "BoxCodec",
    "DecodedBoxes",
    "DetectionTargets",
    "gather_regression",
    "sigmoid",
]

# Channel groups, e.g. for per-group loss weights or masking velocity: name -> slice of channels.
REGRESSION_SLICES: dict[str, slice] = {
    "offset": slice(0, 2),
    "z": slice(2, 3),
    "size": slice(3, 6),
    "yaw": slice(6, 8),
    "velocity": slice(8, 10),
}


@dataclass(frozen=True, eq=False)
class DetectionTargets:
    """Training targets of one frame (M = ``BoxCodec.max_objects``; slots past the objects are padding)."""

    heatmap: np.ndarray  # [C, X, Y] float32 in [0, 1]; C = len(classes), det grid layout
    indices: np.ndarray  # [M] int64, flat index row * Y + col of each object's centre cell (0 when padding)
    mask: np.ndarray  # [M] bool, True for real objects
    regression: np.ndarray  # [M, 10] float32, channels REGRESSION_CHANNELS (0 when padding)
    velocity_valid: np.ndarray  # [M] bool, False where velocity is unknown (NaN) or padding
    labels: np.ndarray  # [M] int64, class index, -1 when padding
    box_index: np.ndarray  # [M] int64, index of the source box in the encode() input, -1 when padding

    @property
    def num_objects(self) -> int:
        return int(self.mask.sum())


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Logits -> probabilities, elementwise, without overflow (float32 in, float32 out)."""
    x = np.asarray(logits)
    return (0.5 * (1.0 + np.tanh(0.5 * x))).astype(x.dtype if x.dtype.kind == "f" else np.float32, copy=False)


@dataclass(frozen=True, eq=False)
class DecodedBoxes:
    """K detections in the ego frame, sorted by score (descending). Field names match ``BoxSet``."""

    center: np.ndarray  # [K, 3] float64, metres
    size: np.ndarray  # [K, 3] float64, (w, l, h) metres
    yaw: np.ndarray  # [K] float64, radians in [-pi, pi]
    velocity: np.ndarray  # [K, 2] float64, (vx, vy) m/s
    label: np.ndarray  # [K] int64, class index into BoxCodec.classes
    score: np.ndarray  # [K] float64, heatmap probability at the peak

    def __len__(self) -> int:
        return len(self.label)

    def select(self, keep: np.ndarray | Sequence[int]) -> DecodedBoxes:
        """The detections picked by a boolean mask [K] or an index array."""
        keep = np.asarray(keep)
        idx = np.arange(len(self))[keep if keep.dtype == bool else keep.astype(np.int64)]
        return DecodedBoxes(*(getattr(self, f)[idx] for f in _DECODED_FIELDS))

    def as_dict(self) -> dict[str, np.ndarray]:
        return {f: getattr(self, f) for f in _DECODED_FIELDS}


_DECODED_FIELDS = ("center", "size", "yaw", "velocity", "label", "score")


def gather_regression(regression_map: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Regression rows at flat cell indices: map [R, X, Y], indices [M] (row * Y + col) -> [M, R]."""
    regression_map = np.asarray(regression_map)
    R = regression_map.shape[0]
    return regression_map.reshape(R, -1)[:, np.asarray(indices, dtype=np.int64)].T


@dataclass(frozen=True)
class BoxCodec:
    """Encodes ego-frame boxes into heatmap + regression targets and decodes dense head outputs."""

    grid: BEVGrid  # the detection heatmap grid (preset.det_grid)
    classes: tuple[str, ...]  # class names, in heatmap channel order
    max_objects: int = 256  # M: regression target slots per frame; the nearest boxes are kept
    min_overlap: float = 0.1  # IoU of the CornerNet radius (gaussian_radius)
    min_radius: int = 2  # cells, lower bound of the Gaussian radius
    sigma_ratio: float = 1.0 / 6.0  # Gaussian sigma = (2 * radius + 1) * sigma_ratio (CenterNet)
    max_distance: float | None = None  # m, boxes whose BEV centre is farther from the ego are not targets

    def __post_init__(self) -> None:
        if not self.classes:
            raise ValueError("BoxCodec needs at least one class")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be >= 1, got {self.max_objects}")
        if not 0.0 < self.min_overlap < 1.0:
            raise ValueError(f"min_overlap must be in (0, 1), got {self.min_overlap}")
        if self.min_radius < 0 or self.sigma_ratio <= 0:
            raise ValueError("min_radius must be >= 0 and sigma_ratio > 0")

    @classmethod
    def from_preset(cls, preset: Preset, **overrides: Any) -> BoxCodec:
        """The codec of a :class:`~perception.presets.Preset`: det grid, det classes, max objects, range."""
        kwargs: dict[str, Any] = dict(
            grid=preset.det_grid,
            classes=tuple(preset.tasks.det_classes),
            max_objects=preset.tasks.max_objects,
            max_distance=preset.tasks.det_max_distance,
        )
        kwargs.update(overrides)
        return cls(**kwargs)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def heatmap_shape(self) -> tuple[int, int, int]:
        """(C, X, Y)."""
        return (self.num_classes, *self.grid.shape)

    def radius(self, size_wlh: np.ndarray) -> np.ndarray:
        """Integer Gaussian radius (cells) of boxes of size (w, l, h) m [B, 3] -> int64 [B]."""
        size = np.asarray(size_wlh, dtype=np.float64).reshape(-1, 3)
        r = gaussian_radius(size[:, 1] / self.grid.resolution, size[:, 0] / self.grid.resolution, self.min_overlap)
        return np.maximum(np.floor(r).astype(np.int64), self.min_radius)

    def encode(
        self,
        center: np.ndarray,
        size_wlh: np.ndarray,
        yaw: np.ndarray,
        velocity: np.ndarray,
        label: np.ndarray,
    ) -> DetectionTargets:
        """Targets of B ego-frame boxes.

        center [B, 3] m; size_wlh [B, 3] m (> 0); yaw [B] rad; velocity [B, 2] m/s (NaN allowed:
        velocity_valid is False and the target is 0); label [B] int, index into ``classes``, -1 to
        ignore. Boxes with label -1, with a centre outside the grid (``BEVGrid.contains``) or farther
        than ``max_distance`` are dropped; of the rest, the ``max_objects`` nearest to the ego (BEV
        distance) are kept, in input order, and the others are dropped entirely (no heatmap either).
        Two objects whose centres share a cell keep both targets at the same index (as CenterPoint).
        """
        center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
        B = len(center)
        size = np.asarray(size_wlh, dtype=np.float64).reshape(B, 3)
        yaw = np.asarray(yaw, dtype=np.float64).reshape(B)
        velocity = np.asarray(velocity, dtype=np.float64).reshape(B, 2)
        label = np.asarray(label).reshape(B)  # may be an empty float array
        if label.size and not np.issubdtype(label.dtype, np.integer):
            raise TypeError(f"labels must be integers, got {label.dtype}")
        if np.any((label < -1) | (label >= self.num_classes)):
            raise ValueError(f"labels must be in [-1, {self.num_classes}), got {np.unique(label).tolist()}")

        keep = (label >= 0) & self.grid.contains(center[:, :2])
        dist = np.hypot(center[:, 0], center[:, 1])
        if self.max_distance is not None:
            keep &= dist <= self.max_distance
        kept = np.flatnonzero(keep)
        if len(kept) > self.max_objects:
            nearest = kept[np.argsort(dist[kept], kind="stable")[: self.max_objects]]
            kept = np.sort(nearest)
        if not (np.all(np.isfinite(center[kept])) and np.all(np.isfinite(yaw[kept]))):
            raise ValueError("box centres and yaws must be finite")
        if not np.all(size[kept] > 0):  # also catches NaN sizes
            raise ValueError("box sizes must be > 0 m")

        X, Y = self.grid.shape
        cells = self.grid.to_cells(center[kept, :2])  # [K, 2] continuous (row, col)
        # Floor, clipped: a centre a hair below x_max can round to exactly X (its offset is then 1.0).
        ij = np.clip(np.floor(cells).astype(np.int64), 0, [X - 1, Y - 1])
        vel = velocity[kept]
        vel_ok = np.all(np.isfinite(vel), axis=1)
        reg = np.concatenate(
            [
                cells - ij,
                center[kept, 2:3],
                np.log(size[kept]),
                np.sin(yaw[kept])[:, None],
                np.cos(yaw[kept])[:, None],
                np.where(vel_ok[:, None], vel, 0.0),
            ],
            axis=1,
        )

        heatmap = np.zeros(self.heatmap_shape, dtype=np.float32)
        for (i, j), cls, r in zip(ij.tolist(), label[kept].tolist(), self.radius(size[kept]).tolist()):
            draw_gaussian(heatmap[cls], i, j, r, self.sigma_ratio)
        M = self.max_objects
        return DetectionTargets(
            heatmap=heatmap,
            indices=_pad(ij[:, 0] * Y + ij[:, 1], M, 0, np.int64),
            mask=_pad(np.ones(len(kept), dtype=bool), M, False, bool),
            regression=_pad(reg, M, 0.0, np.float32),
            velocity_valid=_pad(vel_ok, M, False, bool),
            labels=_pad(label[kept], M, -1, np.int64),
            box_index=_pad(kept, M, -1, np.int64),
        )

    def decode(
        self,
        heatmap: np.ndarray,
        regression: np.ndarray,
        score_threshold: float = 0.1,
        max_detections: int = 500,
        nms_radius: float | Sequence[float] | None = None,
        nms_class_agnostic: bool = False,
    ) -> DecodedBoxes:
        """Boxes of one frame from dense head outputs.

        heatmap [C, X, Y]: probabilities (after sigmoid). regression [10, X, Y]: the channels of
        :data:`REGRESSION_CHANNELS`. A cell is a detection when it equals the 3x3 maximum of its
        class channel (plateaus give several) and its score is > ``score_threshold``; the
        ``max_detections`` best are returned, by descending score (ties: class, row, column).
        ``nms_radius`` (m, one value or one per class; off by default) additionally suppresses a
        detection whose BEV centre lies within the radius of a better one of the same class (of any
        class with ``nms_class_agnostic``; the better one's class radius applies).
        """
        heatmap, regression = np.asarray(heatmap), np.asarray(regression)
        if heatmap.ndim != 3:
            raise ValueError(f"expected heatmap [C, X, Y], got {heatmap.shape}")
        peaks = self.peak_mask(heatmap[None])[0]
        return self._decode_peaks(
            heatmap, regression, peaks, score_threshold, max_detections, nms_radius, nms_class_agnostic
        )

    def decode_logits(self, outputs: Mapping[str, Any], score_threshold: float = 0.1,
                      max_detections: int = 500) -> list[DecodedBoxes]:
        """Boxes (ego frame) of each frame of a batch of model outputs: ``outputs["heatmap"]`` logits
        [B, C, X, Y] and ``outputs["regression"]`` [B, 10, X, Y], numpy arrays or CPU tensors. The one
        place a model's logits become boxes: evaluation, prediction, export parity, the runtime, benches."""
        heatmap = sigmoid(np.asarray(outputs["heatmap"], dtype=np.float32))
        return self.decode_batch(heatmap, np.asarray(outputs["regression"]), score_threshold, max_detections)

    def decode_batch(
        self,
        heatmap: np.ndarray,
        regression: np.ndarray,
        score_threshold: float = 0.1,
        max_detections: int = 500,
        nms_radius: float | Sequence[float] | None = None,
        nms_class_agnostic: bool = False,
    ) -> list[DecodedBoxes]:
        """:meth:`decode` of each frame of heatmap [B, C, X, Y] and regression [B, 10, X, Y]."""
        heatmap, regression = np.asarray(heatmap), np.asarray(regression)
        if heatmap.ndim != 4 or regression.ndim != 4 or len(heatmap) != len(regression):
            raise ValueError(f"expected [B, C, X, Y] and [B, 10, X, Y], got {heatmap.shape}, {regression.shape}")
        peaks = self.peak_mask(heatmap)
        return [
            self._decode_peaks(h, r, p, score_threshold, max_detections, nms_radius, nms_class_agnostic)
            for h, r, p in zip(heatmap, regression, peaks)
        ]

    def peak_mask(self, heatmap: np.ndarray) -> np.ndarray:
        """bool [B, C, X, Y]: cells equal to the 3x3 max of their channel (:func:`heatmap_peaks`)."""
        if heatmap.shape[1:] != self.heatmap_shape:
            raise ValueError(f"heatmap shape {heatmap.shape[1:]} != codec's (C, X, Y) {self.heatmap_shape}")
        return heatmap_peaks(heatmap)

    def _decode_peaks(
        self,
        heatmap: np.ndarray,
        regression: np.ndarray,
        peaks: np.ndarray,
        score_threshold: float,
        max_detections: int,
        nms_radius: float | Sequence[float] | None,
        nms_class_agnostic: bool,
    ) -> DecodedBoxes:
        _, X, Y = self.heatmap_shape
        if regression.shape != (NUM_REGRESSION, X, Y):
            raise ValueError(f"regression shape {regression.shape} != {(NUM_REGRESSION, X, Y)}")
        cls, row, col = np.nonzero(peaks & (heatmap > score_threshold))  # ordered by class, row, col
        score = heatmap[cls, row, col].astype(np.float64)
        order = np.argsort(-score, kind="stable")
        if nms_radius is None:
            order = order[:max_detections]
        cls, row, col, score = cls[order], row[order], col[order], score[order]

        reg = regression[:, row, col].T.astype(np.float64)  # [K, 10]
        res = self.grid.resolution
        center = np.stack(
            [self.grid.x_min + (row + reg[:, 0]) * res, self.grid.y_min + (col + reg[:, 1]) * res, reg[:, 2]], axis=1
        )
        boxes = DecodedBoxes(
            center=center.reshape(-1, 3),
            size=np.exp(reg[:, 3:6]).reshape(-1, 3),
            yaw=np.arctan2(reg[:, 6], reg[:, 7]),
            velocity=reg[:, 8:10].reshape(-1, 2),
            label=cls.astype(np.int64),
            score=score,
        )
        if nms_radius is not None:
            keep = circle_nms(
                boxes.center[:, :2], boxes.label, nms_radius, self.num_classes, nms_class_agnostic, max_detections
            )
            boxes = boxes.select(keep)
        return boxes


def _pad(values: np.ndarray, length: int, fill: float, dtype: Any) -> np.ndarray:
    """``values`` [K, ...] followed by ``fill`` up to ``length`` rows, as ``dtype``."""
    out = np.full((length, *np.shape(values)[1:]), fill, dtype=dtype)
    out[: len(values)] = values
    return out
