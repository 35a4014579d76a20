"""The things in the world: annotated actors of the 10 nuScenes detection classes and unannotated
scenery, with sizes, shapes, colours and motion.

Sizes follow nuScenes' per-class means and spreads (w, l, h in metres). Colours come from palettes
shared across classes, so no class is recognisable by colour alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import meshes
from .layout import Path
from .mesh_builder import Mesh

# nuScenes category -> (mean w, l, h), relative spread
SIZES: dict[str, tuple[tuple[float, float, float], float]] = {
    "vehicle.car": ((1.95, 4.62, 1.73), 0.08),
    "vehicle.truck": ((2.52, 6.94, 2.84), 0.15),
    "vehicle.construction": ((2.85, 6.37, 3.19), 0.12),
    "vehicle.bus.rigid": ((2.94, 11.19, 3.47), 0.06),
    "vehicle.trailer": ((2.90, 12.29, 3.87), 0.08),
    "movable_object.barrier": ((2.53, 0.50, 0.98), 0.12),
    "vehicle.motorcycle": ((0.77, 2.11, 1.47), 0.08),
    "vehicle.bicycle": ((0.60, 1.70, 1.28), 0.08),
    "human.pedestrian.adult": ((0.67, 0.73, 1.77), 0.07),
    "human.pedestrian.child": ((0.50, 0.52, 1.30), 0.08),
    "human.pedestrian.construction_worker": ((0.70, 0.75, 1.80), 0.06),
    "human.pedestrian.police_officer": ((0.68, 0.73, 1.80), 0.05),
    "movable_object.trafficcone": ((0.41, 0.41, 1.07), 0.12),
}

# Shared palettes (BGR, 0-1). Vehicles, cones and barriers all draw from overlapping sets.
_PAINT = np.array([
    [0.92, 0.92, 0.92], [0.08, 0.08, 0.09], [0.62, 0.63, 0.65], [0.35, 0.36, 0.38], [0.12, 0.12, 0.72],
    [0.65, 0.25, 0.10], [0.15, 0.35, 0.12], [0.10, 0.75, 0.90], [0.05, 0.45, 0.90], [0.55, 0.70, 0.78],
    [0.30, 0.15, 0.45], [0.20, 0.20, 0.45],
], np.float32)
_CLOTH = np.array([
    [0.1, 0.1, 0.1], [0.55, 0.25, 0.1], [0.2, 0.2, 0.6], [0.8, 0.8, 0.8], [0.3, 0.5, 0.2], [0.5, 0.5, 0.5],
    [0.1, 0.5, 0.9], [0.6, 0.3, 0.6], [0.25, 0.3, 0.4], [0.05, 0.6, 0.95], [0.7, 0.6, 0.4],
], np.float32)
_SKIN = np.array([[0.55, 0.65, 0.85], [0.35, 0.48, 0.68], [0.2, 0.3, 0.45], [0.45, 0.6, 0.8]], np.float32)


@dataclass
class Motion:
    """Pose over time: along a path at constant speed (from t_start, until t_stop), or static."""

    path: Path | None = None
    s0: float = 0.0  # arc length at t = 0
    speed: float = 0.0  # m/s along the path
    t_start: float = 0.0  # s, starts moving
    t_stop: float = np.inf  # s, stops moving
    xy: np.ndarray | None = None  # static position when path is None
    yaw: float = 0.0  # static heading when path is None

    def pose(self, t: float) -> tuple[np.ndarray, float, float]:
        """(xy [2], yaw, speed) at time t."""
        if self.path is None:
            return np.asarray(self.xy, np.float64), self.yaw, 0.0
        tau = float(np.clip(t, self.t_start, self.t_stop) - self.t_start)
        xy, h = self.path.pose(self.s0 + self.speed * tau)
        moving = self.t_start <= t < self.t_stop
        return xy, float(h), self.speed if moving else 0.0


@dataclass
class Actor:
    """One object of the world. ``category`` is a nuScenes category, or None for scenery."""

    uid: int
    category: str | None
    size: np.ndarray  # (w, l, h) m
    motion: Motion
    palette: np.ndarray  # [10, 3] BGR 0-1, by meshes' colour roles
    shape: Callable[[float], Mesh]  # time -> mesh in the box frame
    static_mesh: bool = True
    rider: bool = False  # cycles
    pose_name: str = "walk"  # pedestrians: walk, stand or sit
    stopped_attribute: str = "vehicle.parked"
    _mesh: Mesh | None = field(default=None, repr=False)

    def mesh(self, t: float) -> Mesh:
        if self.static_mesh:
            if self._mesh is None:
                self._mesh = self.shape(t)
            return self._mesh
        return self.shape(t)

    def attribute(self, t: float) -> str | None:
        """The nuScenes attribute name at time t (None for classes without attributes)."""
        cat = self.category or ""
        _, _, speed = self.motion.pose(t)
        if cat.startswith("human.pedestrian"):
            if self.pose_name == "sit":
                return "pedestrian.sitting_lying_down"
            return "pedestrian.moving" if speed > 0.2 else "pedestrian.standing"
        if cat in ("vehicle.bicycle", "vehicle.motorcycle"):
            return "cycle.with_rider" if self.rider else "cycle.without_rider"
        if cat.startswith("vehicle."):
            return "vehicle.moving" if speed > 0.3 else self.stopped_attribute
        return None


def sample_size(rng: np.random.Generator, category: str) -> np.ndarray:
    mean, spread = SIZES[category]
    return np.array(mean) * np.clip(rng.normal(1.0, spread, size=3), 1 - 2.5 * spread, 1 + 2.5 * spread)


def sample_palette(rng: np.random.Generator, category: str) -> np.ndarray:
    """Colours by role. Bright paints are shared by cars, trucks, construction vehicles, cones and
    barriers; clothing colours are shared by all people."""
    pal = np.zeros((10, 3), np.float32)
    body = _PAINT[rng.integers(len(_PAINT))] * rng.uniform(0.8, 1.1)
    accent = _PAINT[rng.integers(len(_PAINT))] * rng.uniform(0.8, 1.1)
    if category == "vehicle.construction" and rng.random() < 0.6:
        body = _PAINT[rng.choice([7, 8])] * rng.uniform(0.8, 1.1)  # often, not always, yellow/orange
    if category in ("movable_object.trafficcone", "movable_object.barrier"):
        body = _PAINT[rng.choice([8, 8, 7, 4, 0, 2])] * rng.uniform(0.8, 1.1)
        accent = _PAINT[rng.choice([0, 0, 4, 1, 7])]
    pal[meshes.BODY] = body
    pal[meshes.ACCENT] = accent
    pal[meshes.WINDOW] = np.array([0.22, 0.18, 0.15]) * rng.uniform(0.6, 1.4)
    pal[meshes.DARK] = np.array([0.08, 0.08, 0.08]) * rng.uniform(0.7, 1.8)
    pal[meshes.LIGHT_FRONT] = [0.85, 0.95, 1.0]
    pal[meshes.LIGHT_REAR] = [0.1, 0.1, 0.95]
    pal[meshes.SKIN] = _SKIN[rng.integers(len(_SKIN))]
    pal[meshes.SHIRT] = _CLOTH[rng.integers(len(_CLOTH))]
    pal[meshes.PANTS] = _CLOTH[rng.integers(len(_CLOTH))] * 0.8
    pal[meshes.HAIR] = np.array([0.05, 0.08, 0.12]) * rng.uniform(0.5, 4.0)
    if category == "human.pedestrian.construction_worker":
        pal[meshes.SHIRT] = _PAINT[rng.choice([7, 8])]
    if category == "human.pedestrian.police_officer":
        pal[meshes.SHIRT] = [0.35, 0.15, 0.05]
    return np.clip(pal, 0.0, 1.0)


def shape_for(rng: np.random.Generator, category: str, size: np.ndarray, rider: bool, pose_name: str,
              motion: Motion) -> tuple[Callable[[float], Mesh], bool]:
    """The mesh of an actor as a function of time, and whether it is the same at every time."""
    w, l, h = (float(v) for v in size)
    style = int(rng.integers(0, 3))
    if category == "vehicle.car":
        return (lambda t: meshes.car(w, l, h, style)), True
    if category == "vehicle.truck":
        return (lambda t: meshes.truck(w, l, h, style % 2)), True
    if category.startswith("vehicle.bus"):
        return (lambda t: meshes.bus(w, l, h, style % 2)), True
    if category == "vehicle.trailer":
        return (lambda t: meshes.trailer(w, l, h, style)), True
    if category == "vehicle.construction":
        arm = float(rng.uniform(-0.3, 0.3))
        return (lambda t: meshes.construction_vehicle(w, l, h, style % 2, arm)), True
    if category in ("vehicle.bicycle", "vehicle.motorcycle"):
        motor = category == "vehicle.motorcycle"
        phase0 = float(rng.uniform(0, 2 * np.pi))
        if rider and not motor:
            return (lambda t: meshes.cycle(w, l, h, motor, rider, phase0 + 5.0 * t)), False
        return (lambda t: meshes.cycle(w, l, h, motor, rider, phase0)), True
    if category.startswith("human.pedestrian"):
        phase0 = float(rng.uniform(0, 2 * np.pi))
        if pose_name == "walk":
            stride = 1.4  # metres per step cycle
            return (lambda t: meshes.person(w, l, h, phase0 + 2 * np.pi * motion.pose(t)[2] * t / stride, "walk")), False
        return (lambda t: meshes.person(w, l, h, phase0, pose_name)), True
    if category == "movable_object.trafficcone":
        return (lambda t: meshes.traffic_cone(w, l, h, style % 2)), True
    if category == "movable_object.barrier":
        return (lambda t: meshes.barrier(w, l, h, style % 2)), True
    raise ValueError(f"no shape for category {category!r}")


def make_actor(rng: np.random.Generator, uid: int, category: str, motion: Motion, *, rider: bool = False,
               pose_name: str = "walk", size: np.ndarray | None = None,
               stopped_attribute: str = "vehicle.parked") -> Actor:
    """An annotated actor whose mesh always fits inside its box (the box is the label)."""
    size = sample_size(rng, category) if size is None else size
    raw_shape, static = shape_for(rng, category, size, rider, pose_name, motion)
    w, l, h = (float(v) for v in size)

    def shape(t: float) -> Mesh:
        return meshes.fit_to_box(raw_shape(t), w, l, h)

    return Actor(uid, category, size, motion, sample_palette(rng, category), shape, static, rider, pose_name,
                 stopped_attribute)


def make_scenery(rng: np.random.Generator, uid: int, kind: str, xy: np.ndarray, yaw: float) -> Actor:
    """Unannotated scenery: a building, a tree or a pole."""
    pal = np.zeros((10, 3), np.float32)
    if kind == "building":
        size = np.array([rng.uniform(8, 16), rng.uniform(10, 30), rng.uniform(6, 22)])
        floors = max(1, int(size[2] / 3.2))
        shape = lambda t, s=size, f=floors: meshes.building(s[0], s[1], s[2], f)  # noqa: E731
        pal[meshes.BODY] = np.array([[0.55, 0.6, 0.65], [0.4, 0.45, 0.6], [0.7, 0.7, 0.7], [0.35, 0.3, 0.3],
                                     [0.5, 0.55, 0.45]][rng.integers(5)]) * rng.uniform(0.8, 1.1)
        pal[meshes.DARK] = [0.25, 0.25, 0.25]
        pal[meshes.WINDOW] = np.array([0.35, 0.3, 0.25]) * rng.uniform(0.5, 1.3)
    elif kind == "tree":
        size = np.array([rng.uniform(2.5, 5.0), 0.0, rng.uniform(4.0, 9.0)])
        size[1] = size[0]
        shape = lambda t, s=size: meshes.tree(s[0], s[1], s[2])  # noqa: E731
        pal[meshes.BODY] = np.array([0.15, 0.4, 0.2]) * rng.uniform(0.6, 1.3)
        pal[meshes.DARK] = [0.12, 0.2, 0.28]
    else:
        size = np.array([0.3, 0.3, rng.uniform(6.0, 8.0)])
        shape = lambda t, s=size: meshes.pole(s[0], s[1], s[2])  # noqa: E731
        pal[meshes.DARK] = np.array([0.3, 0.3, 0.3]) * rng.uniform(0.6, 1.4)
    return Actor(uid, None, size, Motion(xy=np.asarray(xy, np.float64), yaw=float(yaw)), np.clip(pal, 0, 1), shape)
