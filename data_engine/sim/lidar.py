"""A simulated 32-beam spinning lidar (HDL-32E-like, as nuScenes' LIDAR_TOP) cast against the world:
the flat ground and every object's shape, with range noise and intensity by surface.

Objects are hit on the solid parts of their meshes (meshes.py: each primitive is a convex
polyhedron, the intersection of its faces' half-spaces), which are the surfaces the cameras draw.
Casting is in three stages per object: the rays whose azimuth falls in the object's angular span
(the beams are a ring-major [BEAMS, AZIMUTH_STEPS] grid), of those the rays that hit its box, and of
those the nearest hit over its parts. Without a mesh the box itself is the solid.

Points are returned in the lidar frame as nuScenes stores them: float32 [M, 5] with x, y, z,
intensity, ring index. The id of the object each ray hit is returned too, so annotations count their
lidar points exactly.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from perception.geometry import invert_rigid, transform_points

from .mesh_builder import Mesh

BEAMS = 32
ELEVATIONS_DEG = np.linspace(-30.67, 10.67, BEAMS)
AZIMUTH_STEPS = 1080
MAX_RANGE = 70.0  # m
MIN_RANGE = 0.3  # m, closer surfaces return nothing
_AZ_STEP = 2 * np.pi / AZIMUTH_STEPS


def _ray_dirs() -> np.ndarray:
    el = np.deg2rad(ELEVATIONS_DEG)[:, None]
    az = np.linspace(-np.pi, np.pi, AZIMUTH_STEPS, endpoint=False)[None, :]
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], axis=-1)
    return d.reshape(-1, 3)  # [BEAMS * AZIMUTH_STEPS, 3], ring-major


_DIRS = _ray_dirs()
_RINGS = np.repeat(np.arange(BEAMS, dtype=np.float32), AZIMUTH_STEPS)
_RING_BASE = (np.arange(BEAMS) * AZIMUTH_STEPS)[:, None]
_CORNER_SIGNS = np.array([[sx, sy, sz] for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)], np.float64) / 2


def _candidate_rays(corners_lidar: np.ndarray, centre_lidar: np.ndarray) -> np.ndarray:
    """Indices of the rays whose azimuth (in the lidar frame) can reach a box, from its corners [8, 3]."""
    dist = np.hypot(centre_lidar[0], centre_lidar[1])
    reach = np.hypot(corners_lidar[:, 0] - centre_lidar[0], corners_lidar[:, 1] - centre_lidar[1]).max()
    if dist <= reach + 1e-6:  # the lidar is above or inside the box's footprint: every azimuth
        cols = np.arange(AZIMUTH_STEPS)
    else:  # the footprint is inside a cone of half-angle < 90 deg about the centre's azimuth
        az_c = np.arctan2(centre_lidar[1], centre_lidar[0])
        rel = np.arctan2(corners_lidar[:, 1], corners_lidar[:, 0]) - az_c
        rel = (rel + np.pi) % (2 * np.pi) - np.pi
        lo = int(np.floor((az_c + rel.min() + np.pi) / _AZ_STEP)) - 1
        hi = int(np.ceil((az_c + rel.max() + np.pi) / _AZ_STEP)) + 1
        cols = np.arange(lo, hi + 1) % AZIMUTH_STEPS
    return (_RING_BASE + cols[None, :]).ravel()


def _slab(o: np.ndarray, d: np.ndarray, half: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Entry and exit distances of rays o + t d [N, 3] through the box |x| <= half (empty: near > far)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        t1 = (-half - o) / d
        t2 = (half - o) / d
    parallel = d == 0.0
    outside = parallel & (np.abs(o) > half)
    lo = np.where(parallel, np.where(outside, np.inf, -np.inf), np.minimum(t1, t2))
    hi = np.where(parallel, np.where(outside, -np.inf, np.inf), np.maximum(t1, t2))
    return lo.max(axis=1), hi.min(axis=1)


def _hit_parts(o: np.ndarray, d: np.ndarray, planes: np.ndarray, part_start: np.ndarray) -> np.ndarray:
    """Nearest entry distance (> MIN_RANGE) of rays o + t d [N, 3] into any convex part, inf if none.

    Part q is {x : n . x <= c} over its planes [part_start[q]:part_start[q + 1]] of ``planes`` (n, c).
    """
    normals, offsets = planes[:, :3], planes[:, 3]
    num = offsets - normals @ o  # [P] > 0 where the origin is inside the plane's half-space
    # [N, P] by broadcasting: a BLAS matmul with an inner size of 3 gains nothing and its threads
    # fight over the cores with the sweep's other work.
    den = d[:, 0:1] * normals[:, 0] + d[:, 1:2] * normals[:, 1] + d[:, 2:3] * normals[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        t = num / den
    enter = np.where(den < 0, t, np.where((den == 0) & (num < 0), np.inf, -np.inf))
    leave = np.where(den > 0, t, np.inf)
    starts = part_start[:-1]
    t_in = np.maximum.reduceat(enter, starts, axis=1)  # [N, Q]
    t_out = np.minimum.reduceat(leave, starts, axis=1)
    t_in = np.where((t_in <= t_out) & (t_in > MIN_RANGE), t_in, np.inf)
    return t_in.min(axis=1)


def cast(
    global_T_lidar: np.ndarray,
    box_centres: np.ndarray,
    box_sizes_wlh: np.ndarray,
    box_yaws: np.ndarray,
    box_ids: np.ndarray,
    rng: np.random.Generator,
    ground_intensity: float = 12.0,
    meshes: Sequence[Mesh | None] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """One sweep. Boxes in the global frame: centres [B, 3], sizes [B, 3], yaws [B], ids [B].

    ``meshes``: per box, its shape in the box frame (x along the length, origin at the centre), whose
    solid parts the rays hit; without it (or where an entry is None) the box itself is hit.

    Returns points [M, 5] float32 in the lidar frame and the hit object id per point [M] (-1: ground).
    """
    origin = global_T_lidar[:3, 3]
    rot = global_T_lidar[:3, :3]
    dirs = _DIRS @ rot.T  # [R, 3] global
    down = dirs[:, 2] < -1e-6
    t_hit = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)  # the ground z = 0
    hit_id = np.full(len(dirs), -1, np.int64)
    box_centres = np.asarray(box_centres, np.float64).reshape(-1, 3)
    box_sizes_wlh = np.asarray(box_sizes_wlh, np.float64).reshape(-1, 3)
    box_yaws = np.asarray(box_yaws, np.float64).reshape(-1)
    # Half extents in the box frame (x along the length) of what can be hit: the box, grown to hold
    # its mesh where the mesh reaches out of it (scenery such as a pole's arm).
    halves = box_sizes_wlh[:, [1, 0, 2]] / 2
    if meshes is not None:
        for b, mesh in enumerate(meshes):
            if mesh is not None and len(mesh.vertices):
                halves[b] = np.maximum(halves[b], np.abs(mesh.vertices).max(axis=0))
    if len(box_centres):
        rel = box_centres - origin
        near = np.flatnonzero(np.linalg.norm(rel[:, :2], axis=1) < MAX_RANGE + 2 * np.linalg.norm(halves[:, :2], axis=1))
        for b in near:
            c, half, yaw, bid = box_centres[b], halves[b], box_yaws[b], int(box_ids[b])
            cy, sy = np.cos(yaw), np.sin(yaw)
            box_rot = np.array([[cy, -sy, 0.0], [sy, cy, 0.0], [0.0, 0.0, 1.0]])  # global_R_box
            corners = (_CORNER_SIGNS * (2 * half)) @ box_rot.T + c  # [8, 3] global
            rays = _candidate_rays((corners - origin) @ rot, (c - origin) @ rot)
            o = box_rot.T @ (origin - c)  # the lidar in the box frame
            dg = dirs[rays]
            d = np.stack([dg[:, 0] * cy + dg[:, 1] * sy, dg[:, 1] * cy - dg[:, 0] * sy, dg[:, 2]], axis=1)  # box frame
            t_near, t_far = _slab(o, d, half)
            keep = (t_near <= t_far) & (t_far > MIN_RANGE) & (t_near < t_hit[rays])
            rays, d = rays[keep], d[keep]
            if not len(rays):
                continue
            mesh = meshes[b] if meshes is not None else None
            if mesh is None:
                t_obj = np.where(t_near[keep] > MIN_RANGE, t_near[keep], np.inf)
            elif len(mesh.part_start) < 2:
                continue  # a shape without solid parts: nothing to hit
            else:
                t_obj = _hit_parts(o, d, mesh.planes, mesh.part_start)
            closer = t_obj < t_hit[rays]
            t_hit[rays[closer]] = t_obj[closer]
            hit_id[rays[closer]] = bid
    valid = t_hit < MAX_RANGE
    t = t_hit[valid] + rng.normal(0.0, 0.02, size=int(valid.sum()))
    pts_global = origin + dirs[valid] * t[:, None]
    ids = hit_id[valid]
    intensity = np.where(ids >= 0, rng.uniform(5, 80, size=len(ids)), ground_intensity + rng.uniform(-4, 4, size=len(ids)))
    pts_lidar = transform_points(invert_rigid(global_T_lidar), pts_global)
    out = np.concatenate([pts_lidar, intensity[:, None], _RINGS[valid][:, None]], axis=1).astype(np.float32)
    return out, ids
