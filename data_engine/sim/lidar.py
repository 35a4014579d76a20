"""A simulated 32-beam spinning lidar (HDL-32E-like, as nuScenes' LIDAR_TOP) cast against the world:
the flat ground and every object's box, with range noise and intensity by surface.

Points are returned in the lidar frame as nuScenes stores them: float32 [M, 5] with x, y, z,
intensity, ring index. The id of the object each ray hit is returned too, so annotations count their
lidar points exactly.
"""

from __future__ import annotations

import numpy as np

from perception.geometry import invert_rigid, transform_points_batch

BEAMS = 32
ELEVATIONS_DEG = np.linspace(-30.67, 10.67, BEAMS)
AZIMUTH_STEPS = 1080
MAX_RANGE = 70.0  # m


def _ray_dirs() -> np.ndarray:
    el = np.deg2rad(ELEVATIONS_DEG)[:, None]
    az = np.linspace(-np.pi, np.pi, AZIMUTH_STEPS, endpoint=False)[None, :]
    d = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el) * np.ones_like(az)], axis=-1)
    return d.reshape(-1, 3)  # [BEAMS * AZIMUTH_STEPS, 3], ring-major


_DIRS = _ray_dirs()
_RINGS = np.repeat(np.arange(BEAMS, dtype=np.float32), AZIMUTH_STEPS)


def cast(
    global_T_lidar: np.ndarray,
    box_centres: np.ndarray,
    box_sizes_wlh: np.ndarray,
    box_yaws: np.ndarray,
    box_ids: np.ndarray,
    rng: np.random.Generator,
    ground_intensity: float = 12.0,
) -> tuple[np.ndarray, np.ndarray]:
    """One sweep. Boxes in the global frame: centres [B, 3], sizes [B, 3], yaws [B], ids [B].

    Returns points [M, 5] float32 in the lidar frame and the hit object id per point [M] (-1: ground).
    """
    origin = global_T_lidar[:3, 3]
    dirs = _DIRS @ global_T_lidar[:3, :3].T  # [R, 3] global
    R = dirs.shape[0]
    t_hit = np.full(R, np.inf)
    hit_id = np.full(R, -1, np.int64)
    down = dirs[:, 2] < -1e-6
    t_ground = np.where(down, -origin[2] / np.where(down, dirs[:, 2], -1.0), np.inf)
    t_hit = np.minimum(t_hit, t_ground)
    # Boxes within range: slab test in each box frame.
    if len(box_centres):
        rel = box_centres - origin
        near = np.linalg.norm(rel[:, :2], axis=1) < MAX_RANGE + np.linalg.norm(box_sizes_wlh[:, :2], axis=1)
        for c, s, yaw, bid in zip(box_centres[near], box_sizes_wlh[near], box_yaws[near], box_ids[near]):
            cy, sy = np.cos(yaw), np.sin(yaw)
            o = origin - c
            ox, oy = cy * o[0] + sy * o[1], -sy * o[0] + cy * o[1]
            dx = cy * dirs[:, 0] + sy * dirs[:, 1]
            dy = -sy * dirs[:, 0] + cy * dirs[:, 1]
            dz = dirs[:, 2]
            half = np.array([s[1] / 2, s[0] / 2, s[2] / 2])
            t_near = np.full(R, -np.inf)
            t_far = np.full(R, np.inf)
            for oc, dc, hc in ((ox, dx, half[0]), (oy, dy, half[1]), (o[2], dz, half[2])):
                with np.errstate(divide="ignore", invalid="ignore"):
                    t1 = (-hc - oc) / dc
                    t2 = (hc - oc) / dc
                lo = np.where(np.abs(dc) < 1e-12, np.where(np.abs(oc) <= hc, -np.inf, np.inf), np.minimum(t1, t2))
                hi = np.where(np.abs(dc) < 1e-12, np.where(np.abs(oc) <= hc, np.inf, -np.inf), np.maximum(t1, t2))
                t_near = np.maximum(t_near, lo)
                t_far = np.minimum(t_far, hi)
            hit = (t_near <= t_far) & (t_near > 0.3) & (t_near < t_hit)
            t_hit = np.where(hit, t_near, t_hit)
            hit_id = np.where(hit, bid, hit_id)
    valid = t_hit < MAX_RANGE
    t = t_hit[valid] + rng.normal(0.0, 0.02, size=int(valid.sum()))
    pts_global = origin + dirs[valid] * t[:, None]
    ids = hit_id[valid]
    intensity = np.where(ids >= 0, rng.uniform(5, 80, size=len(ids)), ground_intensity + rng.uniform(-4, 4, size=len(ids)))
    pts_lidar = transform_points_batch(invert_rigid(global_T_lidar), pts_global)
    out = np.concatenate([pts_lidar, intensity[:, None], _RINGS[valid][:, None]], axis=1).astype(np.float32)
    return out, ids
