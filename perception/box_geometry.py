"""3-D box geometry: box frames and corners, points inside boxes, and the image rectangle a box covers.

Boxes follow the conventions of :mod:`perception.geometry`: centre (x, y, z) m, size (w, l, h) m,
yaw rad about +z from +x; the box's own frame has x along the length, y along the width, z up.
Numpy only, like :mod:`perception.geometry`: the edge runtime, the data engine and training import it.
"""

from __future__ import annotations

import numpy as np

from perception.geometry import make_transform, project, rotz, transform_points

__all__ = [
    "BOX_EDGES",
    "box_corners",
    "box_frame",
    "box_image_bounds",
    "clip_segments_at_near",
    "points_in_boxes",
]

# Corner order of :func:`box_corners`, in the box frame, in units of half the size:
# the four bottom corners counter-clockwise seen from above starting front-left, then the four top
# corners in the same order. Edges of the box join (i, i+1 mod 4), (4+i, 4+(i+1) mod 4), (i, 4+i).
_CORNER_SIGNS = np.array(
    [
        [+1, +1, -1],
        [-1, +1, -1],
        [-1, -1, -1],
        [+1, -1, -1],
        [+1, +1, +1],
        [-1, +1, +1],
        [-1, -1, +1],
        [+1, -1, +1],
    ],
    dtype=np.float64,
)
BOX_EDGES: tuple[tuple[int, int], ...] = tuple(
    [(i, (i + 1) % 4) for i in range(4)] + [(4 + i, 4 + (i + 1) % 4) for i in range(4)] + [(i, 4 + i) for i in range(4)]
)


def box_frame(center: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """``ref_T_box`` of boxes with centre [..., 3] and yaw [...] in a reference frame: [..., 4, 4]."""
    return make_transform(rotz(yaw), center)


def box_corners(center: np.ndarray, size_wlh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """The 8 corners of boxes: centre [..., 3], size (w, l, h) [..., 3], yaw [...] -> [..., 8, 3].

    Corner order: bottom front-left, bottom rear-left, bottom rear-right, bottom front-right, then
    the same four on top (see ``BOX_EDGES`` for the 12 edges).
    """
    center = np.asarray(center, dtype=np.float64)
    size = np.asarray(size_wlh, dtype=np.float64)
    half_lwh = np.stack([size[..., 1], size[..., 0], size[..., 2]], axis=-1) / 2.0  # box-frame x, y, z
    local = _CORNER_SIGNS * half_lwh[..., None, :]  # [..., 8, 3]
    rot = rotz(yaw)  # [..., 3, 3]
    return np.einsum("...ij,...kj->...ki", rot, local) + center[..., None, :]


def points_in_boxes(points: np.ndarray, center: np.ndarray, size_wlh: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Which points lie inside which boxes: points [M, 3], boxes [B] -> bool [B, M]."""
    points = np.asarray(points, dtype=np.float64)
    center = np.atleast_2d(np.asarray(center, dtype=np.float64))
    size = np.atleast_2d(np.asarray(size_wlh, dtype=np.float64))
    yaw = np.atleast_1d(np.asarray(yaw, dtype=np.float64))
    rel = points[None, :, :] - center[:, None, :]  # [B, M, 3]
    c, s = np.cos(yaw)[:, None], np.sin(yaw)[:, None]
    local_x = c * rel[..., 0] + s * rel[..., 1]
    local_y = -s * rel[..., 0] + c * rel[..., 1]
    return (
        (np.abs(local_x) <= size[:, None, 1] / 2)
        & (np.abs(local_y) <= size[:, None, 0] / 2)
        & (np.abs(rel[..., 2]) <= size[:, None, 2] / 2)
    )


def clip_segments_at_near(a: np.ndarray, b: np.ndarray, near: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut camera-frame segments a -> b [..., 3] at the plane z = ``near``; keep the part in front.

    Returns (a', b' [..., 3], kept bool [...]): an end behind the plane moves to where the segment
    crosses it; a segment with both ends behind it is not kept (its a', b' are meaningless).
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    za, zb = a[..., 2], b[..., 2]
    kept = (za >= near) | (zb >= near)
    with np.errstate(divide="ignore", invalid="ignore"):  # t is only used on segments that cross z = near
        t = np.clip((near - za) / (zb - za), 0.0, 1.0)[..., None]
        crossing = a + (b - a) * t
    return np.where((za < near)[..., None], crossing, a), np.where((zb < near)[..., None], crossing, b), kept


def box_image_bounds(
    pix_T_cam: np.ndarray,
    cam_T_ref: np.ndarray,
    center: np.ndarray,
    size_wlh: np.ndarray,
    yaw: np.ndarray,
    image_hw: tuple[int, int],
    near: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """The image rectangle each 3D box covers in one camera: boxes [B] -> (bounds [B, 4], visible [B]).

    Boxes: centre [B, 3], size (w, l, h) [B, 3], yaw [B] in a reference frame (e.g. the sample's ego
    frame); ``cam_T_ref`` [4, 4] maps it into the optical camera frame, ``pix_T_cam`` is K [3, 3].
    bounds are (u0, v0, u1, v1) in pixels of K's pixel-centre convention, so the image of
    ``image_hw`` = (H, W) spans [-0.5, W - 0.5] x [-0.5, H - 0.5]; they are clipped to it.

    The rectangle bounds the part of the box in front of the plane z_cam = ``near``: its corners in
    front of the plane plus the points where its 12 edges cross it (the box clipped at the near plane,
    as :func:`perception.vis.draw_boxes_on_image` draws it). It therefore contains the projection of
    every point of the box in front of the plane, its centre included, even for a box the camera is
    inside of or beside. A box is ``visible`` when some corner is in front of the plane and its
    clipped rectangle has positive area; the bounds of other boxes are NaN.
    """
    H, W = int(image_hw[0]), int(image_hw[1])
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3)
    corners = transform_points(cam_T_ref, box_corners(center, np.reshape(size_wlh, (-1, 3)), np.reshape(yaw, -1)))
    edges = np.asarray(BOX_EDGES)  # [12, 2]
    a, b, kept = clip_segments_at_near(corners[:, edges[:, 0]], corners[:, edges[:, 1]], near)  # [B, 12, 3] each
    ends = np.concatenate([a, b], axis=1)  # [B, 24, 3] ends of the clipped edges, all at z >= near when kept
    uv, _ = project(pix_T_cam, ends, eps=near * 0.5)  # [B, 24, 2]
    uv = np.where(np.concatenate([kept, kept], axis=1)[..., None], uv, np.nan)
    bounds = np.full((len(center), 4), np.nan)
    any_kept = kept.any(axis=1)
    if np.any(any_kept):
        lo = np.nanmin(uv[any_kept], axis=1)  # [b, 2]
        hi = np.nanmax(uv[any_kept], axis=1)
        bounds[any_kept] = np.concatenate([lo, hi], axis=1)
    bounds[:, [0, 2]] = np.clip(bounds[:, [0, 2]], -0.5, W - 0.5)
    bounds[:, [1, 3]] = np.clip(bounds[:, [1, 3]], -0.5, H - 0.5)
    visible = any_kept & (bounds[:, 2] > bounds[:, 0]) & (bounds[:, 3] > bounds[:, 1])  # NaN compares False
    bounds[~visible] = np.nan
    return bounds, visible
