"""The boxes of one sample as the detection metrics read them: :class:`EvalBoxes`.

Frames: centre, yaw and velocity may be written in any frame whose z axis is up (the sample's ego
frame, or the global frame as the devkit uses), as long as the ground truth, the predictions and the
ego position handed to :meth:`DetectionEvaluator.add_sample` share it. Every metric is measured in
the ground plane (x, y), so a frame turned about z gives the same numbers.

Units: centre (x, y, z) m; size (w, l, h) m as nuScenes writes it; yaw rad about +z from +x towards
+y; velocity (vx, vy) m/s, NaN where unknown (ground truth without neighbours in time).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.schema import ATTRIBUTES, DETECTION_CLASSES

if TYPE_CHECKING:
    from perception.boxes import DecodedBoxes
    from perception.data.box_set import BoxSet

__all__ = ["DEFAULT_ATTRIBUTES", "EvalBoxes", "attributes_from_velocity"]

# The attribute commonly submitted for a class whose detector predicts none (barrier and traffic
# cone have no attributes: '').
DEFAULT_ATTRIBUTES: dict[str, str] = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}
_VEHICLES = frozenset({"car", "truck", "construction_vehicle", "bus", "trailer"})
_CYCLES = frozenset({"motorcycle", "bicycle"})


def attributes_from_velocity(names: Sequence[str], velocity: np.ndarray, moving_speed: float = 0.2) -> tuple[str, ...]:
    """Attributes for a detector that predicts none, from its velocity (the rule of common submissions).

    names [K] detection classes; velocity [K, 2] m/s. Faster than ``moving_speed`` m/s: vehicles are
    ``vehicle.moving`` and cycles ``cycle.with_rider``; slower: pedestrians are
    ``pedestrian.standing`` and buses ``vehicle.stopped``; otherwise :data:`DEFAULT_ATTRIBUTES`.
    """
    speed = np.linalg.norm(np.asarray(velocity, dtype=np.float64).reshape(-1, 2), axis=1)
    out = []
    for name, v in zip(names, speed):
        attr = DEFAULT_ATTRIBUTES[name]
        if v > moving_speed:  # NaN speed compares False: treated as still
            attr = "vehicle.moving" if name in _VEHICLES else "cycle.with_rider" if name in _CYCLES else attr
        elif name == "pedestrian":
            attr = "pedestrian.standing"
        elif name == "bus":
            attr = "vehicle.stopped"
        out.append(attr)
    return tuple(out)


@dataclass(frozen=True, eq=False)
class EvalBoxes:
    """N boxes of one sample (ground truth or predictions). Arrays are read-only float64 / int64."""

    center: np.ndarray  # [N, 3] m
    size: np.ndarray  # [N, 3] (w, l, h) m, all > 0
    yaw: np.ndarray  # [N] rad about +z
    velocity: np.ndarray  # [N, 2] (vx, vy) m/s, NaN where unknown
    names: tuple[str, ...]  # [N] detection classes (perception.schema.DETECTION_CLASSES)
    attributes: tuple[str, ...]  # [N] nuScenes attribute name, '' for none
    score: np.ndarray  # [N] detection confidence of predictions; -1 for ground truth
    num_pts: np.ndarray  # [N] lidar + radar points inside a ground-truth box; -1 (unknown) for predictions

    def __post_init__(self) -> None:
        n = len(self.names)
        shapes = {"center": (n, 3), "size": (n, 3), "yaw": (n,), "velocity": (n, 2), "score": (n,), "num_pts": (n,)}
        for name, shape in shapes.items():
            if getattr(self, name).shape != shape:
                raise ValueError(f"EvalBoxes.{name} has shape {getattr(self, name).shape}, expected {shape}")
        if len(self.attributes) != n:
            raise ValueError(f"EvalBoxes has {len(self.attributes)} attributes for {n} boxes")
        unknown = sorted(set(self.names) - set(DETECTION_CLASSES))
        if unknown:
            raise ValueError(f"unknown detection classes {unknown}; expected names of {DETECTION_CLASSES}")
        bad_attr = sorted(set(self.attributes) - set(ATTRIBUTES) - {""})
        if bad_attr:
            raise ValueError(f"unknown attributes {bad_attr}; expected '' or one of {sorted(ATTRIBUTES)}")
        finite = (self.center, self.size, self.yaw, self.score)
        if not all(np.isfinite(a).all() for a in finite):
            raise ValueError("EvalBoxes centre, size, yaw and score must be finite (velocity may be NaN)")
        if np.any(self.size <= 0):
            raise ValueError("EvalBoxes sizes must be > 0 (the scale IoU divides by them)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def create(
        cls,
        center: Any,
        size: Any,
        yaw: Any,
        names: Sequence[str],
        velocity: Any = None,
        attributes: Sequence[str] | None = None,
        score: Any = None,
        num_pts: Any = None,
    ) -> EvalBoxes:
        """Boxes from array-likes; velocity defaults to NaN, attributes to '', score and num_pts to -1."""
        n = len(names)
        return cls(
            center=np.asarray(center, dtype=np.float64).reshape(n, 3),
            size=np.asarray(size, dtype=np.float64).reshape(n, 3),
            yaw=np.asarray(yaw, dtype=np.float64).reshape(n),
            velocity=np.full((n, 2), np.nan) if velocity is None else np.asarray(velocity, dtype=np.float64).reshape(n, 2),
            names=tuple(str(s) for s in names),
            attributes=("",) * n if attributes is None else tuple(str(a) for a in attributes),
            score=np.full(n, -1.0) if score is None else np.asarray(score, dtype=np.float64).reshape(n),
            num_pts=np.full(n, -1, np.int64) if num_pts is None else np.asarray(num_pts, dtype=np.int64).reshape(n),
        )

    @classmethod
    def empty(cls) -> EvalBoxes:
        """No boxes."""
        return cls.create(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), ())

    @classmethod
    def from_box_set(cls, boxes: BoxSet, num_radar_pts: np.ndarray | None = None) -> EvalBoxes:
        """Ground truth from a :class:`~perception.data.box_set.BoxSet` (same frame as the BoxSet).

        Only the 10 detection classes are kept. ``num_pts`` is ``num_lidar_pts`` plus
        ``num_radar_pts`` [B] when given (our reader does not read radar counts; the synthetic world
        writes 0). An annotation with more than one attribute is an error, as in the devkit.
        """
        keep = boxes.label >= 0
        det = boxes.select(keep)
        many = [a for a in det.attributes if len(a) > 1]
        if many:
            raise ValueError(f"ground-truth boxes must have at most one attribute, got {many[0]}")
        pts = det.num_lidar_pts if num_radar_pts is None else det.num_lidar_pts + np.asarray(num_radar_pts)[keep]
        return cls.create(
            det.center, det.size, det.yaw, tuple(n for n in det.detection_classes if n is not None),
            velocity=det.velocity, attributes=tuple(a[0] if a else "" for a in det.attributes),
            score=np.full(len(det), -1.0), num_pts=pts,
        )

    @classmethod
    def from_decoded(
        cls,
        decoded: DecodedBoxes,
        classes: Sequence[str],
        attributes: Sequence[str] | Mapping[str, str] | None = None,
    ) -> EvalBoxes:
        """Predictions from :class:`~perception.boxes.DecodedBoxes` (ego frame) of a codec with ``classes``.

        ``attributes``: one per box, or a class -> attribute mapping, or None for
        :func:`attributes_from_velocity`.
        """
        names = tuple(classes[int(i)] for i in decoded.label)
        if attributes is None:
            attrs: tuple[str, ...] = attributes_from_velocity(names, decoded.velocity)
        elif isinstance(attributes, Mapping):
            attrs = tuple(attributes[n] for n in names)
        else:
            attrs = tuple(attributes)
        return cls.create(decoded.center, decoded.size, decoded.yaw, names, velocity=decoded.velocity,
                          attributes=attrs, score=decoded.score)

    def select(self, keep: np.ndarray | Sequence[int]) -> EvalBoxes:
        """The boxes picked by a boolean mask [N] or an index array."""
        keep = np.asarray(keep)
        idx = np.arange(len(self))[keep if keep.dtype == bool else keep.astype(np.int64)]
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value[idx] if isinstance(value, np.ndarray) else tuple(value[i] for i in idx)
        return EvalBoxes(**values)

    @staticmethod
    def concatenate(parts: Sequence[EvalBoxes]) -> EvalBoxes:
        """The boxes of several sets, in order."""
        if not parts:
            return EvalBoxes.empty()
        values: dict[str, Any] = {}
        for f in fields(EvalBoxes):
            items = [getattr(p, f.name) for p in parts]
            values[f.name] = np.concatenate(items) if isinstance(items[0], np.ndarray) else sum(items, ())
        return EvalBoxes(**values)
