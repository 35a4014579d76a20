"""Ground-truth 3D boxes of a sample: one :class:`Box3D` per annotation, or a :class:`BoxSet` of arrays.

Boxes are in the sample's reference ego frame (the ego pose of its LIDAR_TOP key frame, as the
devkit puts them): centre (x, y, z) m, size (w, l, h) m, yaw rad about +z from +x, velocity (vx, vy)
m/s (NaN when the devkit cannot estimate it). ``label`` indexes ``schema.DETECTION_CLASSES``, -1 for
categories outside the 10 detection classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES
from perception.geometry import quat_to_rotation, transform_points, transform_vectors, yaw_from_rotation

__all__ = ["Box3D", "BoxSet", "annotation_velocities"]

_CLASS_INDEX = {name: i for i, name in enumerate(DETECTION_CLASSES)}


@dataclass(frozen=True, eq=False)
class Box3D:
    """One annotation in the sample's reference ego frame."""

    token: str  # sample_annotation token
    sample_token: str
    instance_token: str
    category: str  # nuScenes category name, e.g. "vehicle.car"
    detection_class: str | None  # one of schema.DETECTION_CLASSES, None for other categories
    attributes: tuple[str, ...]  # attribute names, e.g. ("vehicle.moving",)
    visibility: str  # visibility token "1".."4" (schema.VISIBILITY)
    num_lidar_pts: int
    center: np.ndarray  # [3] metres
    size: np.ndarray  # [3] (w, l, h) metres
    yaw: float  # radians about +z, from +x towards +y
    velocity: np.ndarray  # [2] (vx, vy) m/s, NaN when unknown


@dataclass(frozen=True, eq=False)
class BoxSet:
    """B boxes as arrays (what training and metrics want). Arrays are read-only."""

    center: np.ndarray  # [B, 3] float64, metres
    size: np.ndarray  # [B, 3] float64, (w, l, h) metres
    yaw: np.ndarray  # [B] float64, radians
    velocity: np.ndarray  # [B, 2] float64, (vx, vy) m/s, NaN when unknown
    label: np.ndarray  # [B] int64, index into DETECTION_CLASSES, -1 for other categories
    num_lidar_pts: np.ndarray  # [B] int64
    categories: tuple[str, ...]  # [B] nuScenes category names
    attributes: tuple[tuple[str, ...], ...]  # [B] attribute names
    visibility: tuple[str, ...]  # [B] visibility tokens "1".."4"
    tokens: tuple[str, ...]  # [B] sample_annotation tokens
    instance_tokens: tuple[str, ...]  # [B]

    def __post_init__(self) -> None:
        n = len(self.tokens)
        for f in fields(self):
            value = getattr(self, f.name)
            if len(value) != n:
                raise ValueError(f"BoxSet.{f.name} has {len(value)} entries, expected {n}")
            if isinstance(value, np.ndarray):
                value.setflags(write=False)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def detection_classes(self) -> tuple[str | None, ...]:
        """[B] detection class names, None for other categories."""
        return tuple(DETECTION_CLASSES[i] if i >= 0 else None for i in self.label.tolist())

    def select(self, keep: np.ndarray | Sequence[int]) -> BoxSet:
        """The boxes picked by a boolean mask [B] or an index array."""
        idx = np.arange(len(self))[np.asarray(keep)]
        values: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            values[f.name] = value[idx] if isinstance(value, np.ndarray) else tuple(value[i] for i in idx)
        return BoxSet(**values)

    def detections(self) -> BoxSet:
        """Only the boxes of the 10 detection classes."""
        return self.select(self.label >= 0)

    def to_boxes(self, sample_token: str) -> list[Box3D]:
        """One :class:`Box3D` per box."""
        return [
            Box3D(
                token=self.tokens[i], sample_token=sample_token, instance_token=self.instance_tokens[i],
                category=self.categories[i], detection_class=self.detection_classes[i],
                attributes=self.attributes[i], visibility=self.visibility[i],
                num_lidar_pts=int(self.num_lidar_pts[i]), center=self.center[i], size=self.size[i],
                yaw=float(self.yaw[i]), velocity=self.velocity[i],
            )
            for i in range(len(self))
        ]

    @classmethod
    def from_global(
        cls,
        ego_T_global: np.ndarray,
        translation: np.ndarray,
        size_wlh: np.ndarray,
        rotation: np.ndarray,
        velocity_global: np.ndarray,
        categories: tuple[str, ...],
        **meta: Any,
    ) -> BoxSet:
        """Boxes given in the global frame moved into an ego frame.

        ego_T_global [4, 4]; translation [B, 3]; size_wlh [B, 3]; rotation [B, 4] quaternions
        (w, x, y, z) of global_R_box; velocity_global [B, 3] m/s. ``meta`` holds the remaining fields
        (attributes, visibility, num_lidar_pts, tokens, instance_tokens). Velocity is rotated, not
        compensated for ego motion, as the devkit does.
        """
        ego_R_box = ego_T_global[:3, :3] @ quat_to_rotation(rotation) if len(rotation) else np.zeros((0, 3, 3))
        velocity = transform_vectors(ego_T_global, velocity_global)[:, :2] if len(rotation) else np.zeros((0, 2))
        return cls(
            center=transform_points(ego_T_global, translation).reshape(-1, 3),
            size=np.asarray(size_wlh, dtype=np.float64).reshape(-1, 3),
            yaw=yaw_from_rotation(ego_R_box).reshape(-1),
            velocity=velocity.reshape(-1, 2),
            label=np.asarray([_CLASS_INDEX.get(CATEGORY_TO_DETECTION.get(c, ""), -1) for c in categories], np.int64),
            categories=categories,
            **meta,
        )


def annotation_velocities(
    anns: Sequence[Mapping[str, Any]],
    ann_by_token: Mapping[str, Mapping[str, Any]],
    sample_time: Mapping[str, int],
    max_time_diff: float = 1.5,
) -> np.ndarray:
    """Global-frame velocities [B, 3] m/s of annotation records, as the devkit's ``box_velocity``.

    The difference runs from the previous annotation (or this one) to the next (or this one), over
    their samples' timestamps. NaN when there is neither a previous nor a next annotation, or when
    the time gap exceeds ``max_time_diff`` seconds (``2 * max_time_diff`` for a central difference).
    """
    out = np.full((len(anns), 3), np.nan, dtype=np.float64)
    for i, cur in enumerate(anns):
        has_prev, has_next = cur["prev"] != "", cur["next"] != ""
        if not (has_prev or has_next):
            continue
        first = ann_by_token[cur["prev"]] if has_prev else cur
        last = ann_by_token[cur["next"]] if has_next else cur
        time_diff = 1e-6 * (sample_time[last["sample_token"]] - sample_time[first["sample_token"]])
        limit = 2.0 * max_time_diff if (has_prev and has_next) else max_time_diff
        if not 0.0 < time_diff <= limit:  # the devkit divides by zero here; we say "unknown"
            continue
        pos_diff = np.asarray(last["translation"], dtype=np.float64) - np.asarray(first["translation"], dtype=np.float64)
        out[i] = pos_diff / time_diff
    return out
