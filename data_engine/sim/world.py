"""One scene of the synthetic world: its layout, conditions, actors and ego course, and everything
the sensors see at any time. Deterministic: the same (seed, scene index) gives the same world, and
each frame's random draws depend only on (seed, scene index, frame), so any frame can be re-rendered
on its own (the oracle labels frames this way).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from perception.schema import CAMERA_NAMES, visibility_token
from perception.geometry import invert_intrinsics, invert_rigid, make_transform, rotz

from . import effects, lidar
from .actors import Actor, Motion
from .effects import Conditions
from .layout import Layout, drivable_mask, global_T_tex, lane_divider_mask, make_layout, paint_ground
from .population import populate
from .render import CameraImage, RenderItem, face_colours, ground_rays, render_camera
from .rig import Rig

KEYFRAME_DT = 0.5  # s, 2 Hz keyframes
SWEEP_DT = 1.0 / 12.0  # s, 12 Hz camera frames
ANNOTATION_RANGE = 60.0  # m, objects farther from the ego are not annotated
RENDER_RANGE = 130.0  # m


@dataclass(frozen=True)
class SceneSpec:
    """What a scene is, drawn from (seed, index) before anything is built."""

    seed: int
    index: int
    name: str
    layout_kind: str
    conditions: Conditions
    ego_speed: float  # m/s
    construction: bool  # a work zone with a construction vehicle
    trailers: bool  # trucks with trailers and parked trailers
    duration: float  # s


def scene_spec(seed: int, index: int, frames: int) -> SceneSpec:
    """Draw a scene's spec. Night, fog, construction vehicles and trailers are rare on purpose."""
    rng = np.random.default_rng([seed, index, 0])
    kind = str(rng.choice(["straight", "curve", "intersection"], p=[0.35, 0.3, 0.35]))
    tod = str(rng.choice(["day", "dusk", "night"], p=[0.72, 0.16, 0.12]))
    weather = rng.random()
    rain, fog = weather < 0.18, 0.18 <= weather < 0.26
    glare = tod != "night" and not (fog or rain) and rng.random() < 0.14
    lens_r = rng.random()
    lens = "dirty" if lens_r < 0.07 else ("blocked" if lens_r < 0.10 else "clean")
    lens_cam = str(rng.choice(CAMERA_NAMES)) if lens != "clean" else ""
    cond = Conditions(
        time_of_day=tod, rain=bool(rain), fog=bool(fog), glare=bool(glare), lens=lens, lens_camera=lens_cam,
        fog_density=float(rng.uniform(0.03, 0.07)), sun_azimuth=float(rng.uniform(-np.pi, np.pi)),
        sun_elevation=float(rng.uniform(0.05, 0.2) if (glare or tod == "dusk") else rng.uniform(0.4, 1.2)),
    )
    speed = 0.0 if rng.random() < 0.08 else float(rng.uniform(3.0, 11.0))
    return SceneSpec(
        seed=seed, index=index, name=f"scene-{index:04d}", layout_kind=kind, conditions=cond, ego_speed=speed,
        construction=bool(rng.random() < 0.12), trailers=bool(rng.random() < 0.12),
        duration=(frames - 1) * KEYFRAME_DT,
    )


class _StageClock:
    """Accumulates the seconds between laps into a dict, when one is given."""

    def __init__(self, timings: dict[str, float] | None) -> None:
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, stage: str | None = None) -> None:
        if self.timings is None:
            return
        now = time.perf_counter()
        if stage is not None:
            self.timings[stage] = self.timings.get(stage, 0.0) + now - self.last
        self.last = now


@dataclass
class ObjectTruth:
    """An annotated object at one time: box in the global frame and what the sensors saw of it."""

    actor: Actor
    center: np.ndarray  # [3] global
    yaw: float  # global
    velocity: np.ndarray  # [2] global m/s
    attribute: str | None
    num_lidar_pts: int
    visible_fraction: float

    @property
    def visibility(self) -> str:
        return visibility_token(self.visible_fraction)


@dataclass
class FrameCapture:
    """All sensors at one time."""

    t: float
    global_T_ego: np.ndarray
    images: dict[str, np.ndarray]  # camera -> BGR uint8
    renders: dict[str, CameraImage]
    points: np.ndarray | None  # [M, 5] lidar frame
    objects: list[ObjectTruth]
    point_ids: np.ndarray | None = None  # [M] actor uid each point hit, -1 for the ground


class SceneWorld:
    """A built scene: layout, textures, actors, the ego's course, and the sensors."""

    def __init__(self, spec: SceneSpec, rig: Rig):
        self.spec = spec
        self.rig = rig
        rng = np.random.default_rng([spec.seed, spec.index, 1])
        travel = spec.ego_speed * spec.duration
        self.map_size = float(np.clip(np.ceil((travel + 200.0) / 20.0) * 20.0, 220.0, 600.0))
        self.layout: Layout = make_layout(rng, spec.layout_kind, self.map_size)
        self.texture = paint_ground(self.layout, rng)
        self.drivable = drivable_mask(self.layout)
        self.tex_to_global = global_T_tex(self.texture.shape[0])
        road = self.layout.roads[self.layout.ego_road]
        lane = road.lane_path(0, 1)
        mid = lane.project(np.array([self.map_size / 2, self.map_size / 2]))
        if spec.ego_speed == 0.0 and self.layout.junction is not None:
            start = mid - self.layout.junction_radius - 8.0  # waiting at the junction
        else:
            start = mid - 0.5 * travel + float(rng.uniform(-15, 15))
        self.ego = Motion(lane, start, spec.ego_speed)
        self.actors = populate(np.random.default_rng([spec.seed, spec.index, 2]), self.layout, self.ego, spec.duration,
                               construction=spec.construction, trailers=spec.trailers)
        self._n_ids = max((a.uid for a in self.actors), default=0) + 1
        self._ground = {cam.name: ground_rays(cam.K, cam.ego_T_cam, cam.width, cam.height) for cam in rig.cameras}
        self._rays = {}
        for cam in rig.cameras:
            cols, rows = np.meshgrid(np.arange(cam.width, dtype=np.float32), np.arange(cam.height, dtype=np.float32))
            pix = np.stack([cols, rows, np.ones_like(cols)], -1)
            self._rays[cam.name] = (pix @ invert_intrinsics(cam.K).T.astype(np.float32)) @ cam.ego_T_cam[:3, :3].T.astype(np.float32)

    def lane_dividers(self) -> np.ndarray:
        return lane_divider_mask(self.layout)

    def global_T_ego(self, t: float) -> np.ndarray:
        xy, yaw, _ = self.ego.pose(t)
        return make_transform(rotz(yaw), np.array([xy[0], xy[1], 0.0]))

    def actor_state(self, actor: Actor, t: float) -> tuple[np.ndarray, float, np.ndarray]:
        """Box centre [3], yaw and velocity [2] of an actor in the global frame."""
        xy, yaw, speed = actor.motion.pose(t)
        centre = np.array([xy[0], xy[1], actor.size[2] / 2])
        return centre, yaw, speed * np.array([np.cos(yaw), np.sin(yaw)])

    def capture(self, t: float, frame_key: int, *, cameras: bool = True, lidar_sweep: bool = True,
                annotate: bool = True, timings: dict[str, float] | None = None) -> FrameCapture:
        """Render every camera (and cast the lidar) at time t. ``frame_key`` seeds the frame's noise.

        ``timings``, when given, accumulates seconds per stage (render, effects, lidar).
        """
        clock = _StageClock(timings)
        rng = np.random.default_rng([self.spec.seed, self.spec.index, 3, frame_key])
        global_T_ego = self.global_T_ego(t)
        ego_xy = global_T_ego[:2, 3]
        states = []
        for actor in self.actors:
            centre, yaw, vel = self.actor_state(actor, t)
            if np.linalg.norm(centre[:2] - ego_xy) < RENDER_RANGE:
                states.append((actor, centre, yaw, vel))
        items = []
        for actor, centre, yaw, _ in states:
            mesh = actor.mesh(t)
            colours, emissive = face_colours(mesh, actor.palette)
            radius = float(np.linalg.norm(mesh.vertices, axis=1).max()) if len(mesh.vertices) else 0.0
            items.append(RenderItem(actor.uid, mesh, make_transform(rotz(yaw), centre), colours, emissive, radius, actor.size))
        cond = self.spec.conditions
        ambient, diffuse = cond.lighting
        images: dict[str, np.ndarray] = {}
        renders: dict[str, CameraImage] = {}
        if cameras or annotate:
            for cam in self.rig.cameras:
                depth, sky = self._ground[cam.name]
                clock.lap()
                img = render_camera(cam.K, cam.ego_T_cam, global_T_ego, cam.width, cam.height, self.texture,
                                    self.tex_to_global, depth, sky, items, cond.sun_dir, ambient, diffuse)
                renders[cam.name] = img
                clock.lap("render")
                if cameras:
                    sun_cam = invert_rigid(global_T_ego @ cam.ego_T_cam)[:3, :3] @ cond.sun_dir
                    sun_px = None
                    if sun_cam[2] > 0.05:
                        p = cam.K @ sun_cam
                        sun_px = p[:2] / p[2]
                    images[cam.name] = effects.finish(img, cond, cam.name, self._rays[cam.name], cam.ego_T_cam[:3, 3],
                                                      sun_px, rng)
                    clock.lap("effects")
        points, hit_ids = None, None
        if lidar_sweep or annotate:
            clock.lap()
            boxes = [(a.uid, c, a.size, y) for a, c, y, _ in states]
            ids = np.array([b[0] for b in boxes], np.int64)
            centres = np.array([b[1] for b in boxes]).reshape(-1, 3)
            sizes = np.array([b[2] for b in boxes]).reshape(-1, 3)
            yaws = np.array([b[3] for b in boxes])
            shapes = [item.mesh for item in items]  # the meshes the cameras drew, in the same order
            points, hit_ids = lidar.cast(global_T_ego @ self.rig.ego_T_lidar, centres, sizes, yaws, ids, rng,
                                         meshes=shapes)
            clock.lap("lidar")
        objects: list[ObjectTruth] = []
        if annotate:
            counts = np.bincount(hit_ids[hit_ids >= 0], minlength=self._n_ids) if hit_ids is not None else None
            visible = np.zeros(self._n_ids, np.int64)
            full = np.zeros(self._n_ids, np.int64)
            for img in renders.values():
                ins = img.instance[img.instance >= 0]
                visible += np.bincount(ins, minlength=len(visible))[: len(visible)]
                for uid, n in img.silhouette.items():
                    full[uid] += n
            for actor, centre, yaw, vel in states:
                if actor.category is None or np.linalg.norm(centre[:2] - ego_xy) > ANNOTATION_RANGE:
                    continue
                n_pts = int(counts[actor.uid]) if counts is not None else 0
                if n_pts == 0 and visible[actor.uid] == 0:
                    continue
                frac = float(visible[actor.uid] / full[actor.uid]) if full[actor.uid] > 0 else 0.0
                objects.append(ObjectTruth(actor, centre, yaw, vel, actor.attribute(t), n_pts, frac))
        return FrameCapture(t, global_T_ego, images, renders, points if lidar_sweep else None, objects,
                            hit_ids if lidar_sweep else None)
