"""Geometry of the stack, written once: frames, transforms, rotations, projection, BEV grid.

The conventions below hold everywhere; the 3-D box geometry built on them (corners, points in
boxes, box image rectangles) is in :mod:`perception.box_geometry`.

Conventions (the same as nuScenes):

- Ego frame: x forward, y left, z up, origin on the ground below the rear axle.
- Camera frame (optical): x right, y down, z forward along the optical axis.
- Global frame: the map frame of a log, z up; metres.
- Every transform is a 4x4 homogeneous matrix named ``dst_T_src``: it maps points written in
  ``src`` into ``dst``. Composition reads right to left:
  ``pix_T_cam @ cam_T_ego @ ego_T_obj``. ``pix_T_cam`` is the intrinsic matrix K (3x3) or K padded
  to 4x4 (:func:`pad_intrinsics`).
- Rotations may be reflections (det = -1): a horizontal image flip or a BEV flip made by
  augmentation gives ``ego_T_cam`` a reflection. All inverses here are closed form and exact for
  rotations, reflections and, where stated, general scaled linear parts.
- Boxes: centre (x, y, z) in metres, size (w, l, h) in metres as nuScenes writes it (w across,
  l along the heading, h up), yaw in radians about +z, measured from +x towards +y; velocity
  (vx, vy) in m/s. The box's own frame has x along the length, y along the width, z up.
- Quaternions are (w, x, y, z) as nuScenes stores them.
- BEV grid: ``bev_T_ego`` maps metres to continuous cell coordinates (row, col): the row index grows
  with x (forward), the column index grows with y (left); cell ``(i, j)`` covers
  ``[i, i+1) x [j, j+1)``, so its centre is at ``(i + 0.5, j + 0.5)``. Arrays laid out on the grid
  are ``[..., X, Y]``. Pictures show forward up by flipping rows at drawing time only.

Everything here is numpy only: the edge runtime, the data engine and training
all import it, and none of them may need torch for geometry.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "BEVGrid",
    "bev_visibility",
    "camera_rotation_from_yaw_pitch",
    "invert_3x3",
    "invert_intrinsics",
    "invert_rigid",
    "invert_transform",
    "make_transform",
    "pad_intrinsics",
    "project",
    "quat_from_yaw",
    "quat_to_rotation",
    "rotation_to_quat",
    "rotz",
    "transform_points",
    "transform_vectors",
    "unproject",
    "yaw_from_quat",
    "yaw_from_rotation",
]


# --------------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------------


def make_transform(rotation: np.ndarray, translation: np.ndarray) -> np.ndarray:
    """``dst_T_src`` from a 3x3 linear part and a translation; batched over leading dims.

    rotation: [..., 3, 3], translation: [..., 3] -> [..., 4, 4]
    """
    rotation = np.asarray(rotation, dtype=np.float64)
    translation = np.asarray(translation, dtype=np.float64)
    batch = np.broadcast_shapes(rotation.shape[:-2], translation.shape[:-1])
    out = np.zeros(batch + (4, 4), dtype=np.float64)
    out[..., :3, :3] = rotation
    out[..., :3, 3] = translation
    out[..., 3, 3] = 1.0
    return out


def invert_rigid(dst_T_src: np.ndarray) -> np.ndarray:
    """Closed-form inverse of a rigid transform whose linear part is orthogonal.

    Exact for rotations and for reflections (det = -1), since R^-1 = R^T for both. [..., 4, 4].
    """
    dst_T_src = np.asarray(dst_T_src, dtype=np.float64)
    rot = dst_T_src[..., :3, :3]
    rot_t = np.swapaxes(rot, -1, -2)
    trans = dst_T_src[..., :3, 3]
    return make_transform(rot_t, -np.einsum("...ij,...j->...i", rot_t, trans))


def invert_3x3(mat: np.ndarray) -> np.ndarray:
    """Closed-form inverse of 3x3 matrices by the adjugate; [..., 3, 3].

    Raises ValueError for a singular matrix.
    """
    m = np.asarray(mat, dtype=np.float64)
    a, b, c = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    d, e, f = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    g, h, i = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    co00, co01, co02 = e * i - f * h, -(d * i - f * g), d * h - e * g
    det = a * co00 + b * co01 + c * co02
    if np.any(np.abs(det) < 1e-12):
        raise ValueError("matrix is singular (|det| < 1e-12); cannot invert")
    adj = np.stack(
        [
            np.stack([co00, -(b * i - c * h), b * f - c * e], axis=-1),
            np.stack([co01, a * i - c * g, -(a * f - c * d)], axis=-1),
            np.stack([co02, -(a * h - b * g), a * e - b * d], axis=-1),
        ],
        axis=-2,
    )
    return adj / det[..., None, None]


def invert_transform(dst_T_src: np.ndarray) -> np.ndarray:
    """Closed-form inverse of an affine 4x4 (linear part any invertible 3x3: scale, reflection)."""
    dst_T_src = np.asarray(dst_T_src, dtype=np.float64)
    lin_inv = invert_3x3(dst_T_src[..., :3, :3])
    return make_transform(lin_inv, -np.einsum("...ij,...j->...i", lin_inv, dst_T_src[..., :3, 3]))


def transform_points(dst_T_src: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 transform to points [..., 3] (the transform broadcasts over leading dims; a single
    4x4 is one matmul over all points)."""
    dst_T_src = np.asarray(dst_T_src, dtype=np.float64)
    points = np.asarray(points, dtype=np.float64)
    if dst_T_src.ndim == 2:
        return points @ dst_T_src[:3, :3].T + dst_T_src[:3, 3]
    return np.einsum("...ij,...j->...i", dst_T_src[..., :3, :3], points) + dst_T_src[..., :3, 3]


def transform_vectors(dst_T_src: np.ndarray, vectors: np.ndarray) -> np.ndarray:
    """Apply only the linear part of a 4x4 transform to directions or velocities [..., 3]."""
    dst_T_src = np.asarray(dst_T_src, dtype=np.float64)
    return np.einsum("...ij,...j->...i", dst_T_src[..., :3, :3], np.asarray(vectors, dtype=np.float64))


def rotz(yaw: np.ndarray | float) -> np.ndarray:
    """Rotation about +z by ``yaw`` radians: [...] -> [..., 3, 3]."""
    yaw = np.asarray(yaw, dtype=np.float64)
    c, s = np.cos(yaw), np.sin(yaw)
    zero, one = np.zeros_like(yaw), np.ones_like(yaw)
    return np.stack(
        [np.stack([c, -s, zero], -1), np.stack([s, c, zero], -1), np.stack([zero, zero, one], -1)], -2
    )


def yaw_from_rotation(rotation: np.ndarray) -> np.ndarray:
    """Heading of the x axis of a 3x3 rotation, projected on the ground plane: atan2(R10, R00)."""
    rotation = np.asarray(rotation, dtype=np.float64)
    return np.arctan2(rotation[..., 1, 0], rotation[..., 0, 0])


def camera_rotation_from_yaw_pitch(yaw: float, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    """``ego_R_cam`` for an optical camera looking along ego heading ``yaw`` (rad, +left).

    ``pitch`` > 0 tilts the optical axis down; ``roll`` turns the image about the optical axis.
    Columns are the camera axes written in the ego frame: x right, y down, z forward.
    """
    forward = np.array([np.cos(yaw), np.sin(yaw), 0.0])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.array([0.0, 0.0, -1.0])
    base = np.stack([right, down, forward], axis=1)  # ego_R_cam with no pitch or roll
    # Pitch about the camera x axis, roll about the camera z axis, both in the camera frame.
    cp, sp = np.cos(pitch), np.sin(pitch)
    pitch_rot = np.array([[1.0, 0.0, 0.0], [0.0, cp, sp], [0.0, -sp, cp]])
    cr, sr = np.cos(roll), np.sin(roll)
    roll_rot = np.array([[cr, -sr, 0.0], [sr, cr, 0.0], [0.0, 0.0, 1.0]])
    return base @ pitch_rot @ roll_rot


# --------------------------------------------------------------------------------------------------
# Quaternions (w, x, y, z), closed form
# --------------------------------------------------------------------------------------------------


def quat_to_rotation(quat_wxyz: np.ndarray) -> np.ndarray:
    """Quaternion(s) [..., 4] (w, x, y, z), normalised first -> rotation matrices [..., 3, 3]."""
    q = np.asarray(quat_wxyz, dtype=np.float64)
    norm = np.linalg.norm(q, axis=-1, keepdims=True)
    if np.any(norm < 1e-12):
        raise ValueError("a zero quaternion is not a rotation")
    w, x, y, z = np.moveaxis(q / norm, -1, 0)
    return np.stack([
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], -1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], -1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], -1),
    ], -2)


def rotation_to_quat(rotation: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] (proper, det = +1) -> unit quaternions [..., 4] (w, x, y, z), w >= 0.

    Shepperd's method: each matrix uses the branch of its largest diagonal term (or the trace), so no
    branch divides by a small number.
    """
    r = np.asarray(rotation, dtype=np.float64)
    m = r.reshape(-1, 3, 3)
    if np.any(np.linalg.det(m) < 0):
        raise ValueError("a reflection (det = -1) has no quaternion; undo the flip before writing it")
    m00, m11, m22 = m[:, 0, 0], m[:, 1, 1], m[:, 2, 2]
    diffs = (m[:, 2, 1] - m[:, 1, 2], m[:, 0, 2] - m[:, 2, 0], m[:, 1, 0] - m[:, 0, 1])
    sums = (m[:, 0, 1] + m[:, 1, 0], m[:, 0, 2] + m[:, 2, 0], m[:, 1, 2] + m[:, 2, 1])
    branch = np.argmax(np.stack([m00 + m11 + m22, m00, m11, m22], axis=1), axis=1)
    candidates = []
    for k, d in enumerate((1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22)):
        s = 2.0 * np.sqrt(np.maximum(d, 1e-12))
        if k == 0:
            q = (0.25 * s, diffs[0] / s, diffs[1] / s, diffs[2] / s)
        elif k == 1:
            q = (diffs[0] / s, 0.25 * s, sums[0] / s, sums[1] / s)
        elif k == 2:
            q = (diffs[1] / s, sums[0] / s, 0.25 * s, sums[2] / s)
        else:
            q = (diffs[2] / s, sums[1] / s, sums[2] / s, 0.25 * s)
        candidates.append(np.stack(q, axis=1))
    q = np.stack(candidates, axis=0)[branch, np.arange(len(m))]
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q = np.where(q[:, :1] < 0, -q, q)
    return q.reshape(r.shape[:-2] + (4,))


def quat_from_yaw(yaw: np.ndarray | float) -> np.ndarray:
    """Rotation about +z by ``yaw`` as a quaternion (w, x, y, z): [...] -> [..., 4]."""
    yaw = np.asarray(yaw, dtype=np.float64)
    zero = np.zeros_like(yaw)
    return np.stack([np.cos(yaw / 2), zero, zero, np.sin(yaw / 2)], axis=-1)


def yaw_from_quat(quat_wxyz: np.ndarray) -> np.ndarray:
    """Heading (rad) of the x axis of quaternion(s) [..., 4], projected on the ground plane."""
    return yaw_from_rotation(quat_to_rotation(quat_wxyz))


# --------------------------------------------------------------------------------------------------
# Pinhole cameras
# --------------------------------------------------------------------------------------------------


def pad_intrinsics(K: np.ndarray) -> np.ndarray:
    """``pix_T_cam`` as a 4x4 from K [..., 3, 3]."""
    K = np.asarray(K, dtype=np.float64)
    out = np.zeros(K.shape[:-2] + (4, 4), dtype=np.float64)
    out[..., :3, :3] = K
    out[..., 3, 3] = 1.0
    return out


def invert_intrinsics(K: np.ndarray) -> np.ndarray:
    """Closed-form inverse of upper-triangular intrinsics [[fx, s, cx], [0, fy, cy], [0, 0, 1]].

    Negative focal lengths (a flipped image) are fine; zero focal lengths raise ValueError.
    """
    K = np.asarray(K, dtype=np.float64)
    fx, s, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    if np.any(np.abs(fx) < 1e-12) or np.any(np.abs(fy) < 1e-12):
        raise ValueError("intrinsics have a zero focal length")
    out = np.zeros(K.shape, dtype=np.float64)
    out[..., 0, 0] = 1.0 / fx
    out[..., 0, 1] = -s / (fx * fy)
    out[..., 0, 2] = (s * cy - cx * fy) / (fx * fy)
    out[..., 1, 1] = 1.0 / fy
    out[..., 1, 2] = -cy / fy
    out[..., 2, 2] = 1.0
    return out


def project(pix_T_cam: np.ndarray, points_cam: np.ndarray, eps: float = 1e-6) -> tuple[np.ndarray, np.ndarray]:
    """Project camera-frame points [..., 3] with K [3, 3] -> (pixels [..., 2], depth [...]).

    Depth is the camera z (metres along the optical axis). Points with depth <= eps get NaN
    pixels: callers mask them with ``depth > near``.
    """
    pix_T_cam = np.asarray(pix_T_cam, dtype=np.float64)[..., :3, :3]
    points_cam = np.asarray(points_cam, dtype=np.float64)
    depth = points_cam[..., 2]
    hom = np.einsum("...ij,...j->...i", pix_T_cam, points_cam)
    with np.errstate(divide="ignore", invalid="ignore"):
        uv = hom[..., :2] / np.where(depth > eps, depth, np.nan)[..., None]
    return uv, depth


def unproject(pix_T_cam: np.ndarray, pixels: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Pixels [..., 2] at camera depth [...] -> camera-frame points [..., 3]."""
    pixels = np.asarray(pixels, dtype=np.float64)
    depth = np.asarray(depth, dtype=np.float64)
    cam_T_pix = invert_intrinsics(np.asarray(pix_T_cam, dtype=np.float64)[..., :3, :3])
    hom = np.concatenate([pixels, np.ones(pixels.shape[:-1] + (1,))], axis=-1)
    rays = np.einsum("...ij,...j->...i", cam_T_pix, hom)  # z component is 1
    return rays * depth[..., None]


# --------------------------------------------------------------------------------------------------
# BEV grid
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BEVGrid:
    """A BEV raster around the ego: rows along ego x (forward), columns along ego y (left)."""

    x_min: float = -50.0  # metres, rear edge of row 0
    x_max: float = 50.0  # metres, front edge of the last row
    y_min: float = -50.0  # metres, right edge of column 0
    y_max: float = 50.0  # metres, left edge of the last column
    resolution: float = 0.5  # metres per cell, the same along x and y

    def __post_init__(self) -> None:
        if self.resolution <= 0:
            raise ValueError(f"BEV resolution must be > 0 m, got {self.resolution}")
        for lo, hi, axis in ((self.x_min, self.x_max, "x"), (self.y_min, self.y_max, "y")):
            if hi <= lo:
                raise ValueError(f"BEV {axis} extent is empty: [{lo}, {hi}]")
            cells = (hi - lo) / self.resolution
            if abs(cells - round(cells)) > 1e-6:
                raise ValueError(f"BEV {axis} extent {hi - lo} m is not a whole number of {self.resolution} m cells")

    @property
    def shape(self) -> tuple[int, int]:
        """(X, Y): number of rows (forward) and columns (left)."""
        return (
            int(round((self.x_max - self.x_min) / self.resolution)),
            int(round((self.y_max - self.y_min) / self.resolution)),
        )

    @property
    def bev_T_ego(self) -> np.ndarray:
        """4x4 mapping ego metres (x, y, z) to continuous cells (row, col, z)."""
        r = 1.0 / self.resolution
        return np.array(
            [[r, 0, 0, -self.x_min * r], [0, r, 0, -self.y_min * r], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64
        )

    @property
    def ego_T_bev(self) -> np.ndarray:
        """Inverse of :attr:`bev_T_ego`."""
        return invert_transform(self.bev_T_ego)

    @property
    def cv_T_ego(self) -> np.ndarray:
        """3x3 mapping ego (x, y, 1) to cv2 pixel coordinates (u = column, v = row, 1) of an [X, Y]
        raster laid out on the grid (cv2 puts pixel centres at integers: u = col - 0.5, v = row - 0.5)."""
        r = 1.0 / self.resolution
        return np.array([[0.0, r, -self.y_min * r - 0.5], [r, 0.0, -self.x_min * r - 0.5], [0.0, 0.0, 1.0]])

    def cell_centers(self) -> np.ndarray:
        """Ego-frame (x, y) of every cell centre: [X, Y, 2]."""
        X, Y = self.shape
        xs = self.x_min + (np.arange(X) + 0.5) * self.resolution
        ys = self.y_min + (np.arange(Y) + 0.5) * self.resolution
        return np.stack(np.meshgrid(xs, ys, indexing="ij"), axis=-1)

    def to_cells(self, xy: np.ndarray) -> np.ndarray:
        """Ego (x, y) [..., 2] -> continuous (row, col) [..., 2]."""
        xy = np.asarray(xy, dtype=np.float64)
        return np.stack(
            [(xy[..., 0] - self.x_min) / self.resolution, (xy[..., 1] - self.y_min) / self.resolution], axis=-1
        )

    def contains(self, xy: np.ndarray) -> np.ndarray:
        """Whether ego (x, y) [..., 2] lies inside the grid: bool [...]."""
        xy = np.asarray(xy, dtype=np.float64)
        return (
            (xy[..., 0] >= self.x_min)
            & (xy[..., 0] < self.x_max)
            & (xy[..., 1] >= self.y_min)
            & (xy[..., 1] < self.y_max)
        )


def bev_visibility(grid: BEVGrid, K: np.ndarray, ego_T_cam: np.ndarray, image_hw: tuple[int, int],
                   heights: tuple[float, ...] = (0.0, 1.0, 2.0), min_depth: float = 0.1) -> np.ndarray:
    """Which BEV cells each camera sees: bool [N, X, Y].

    A cell is seen by camera n when its centre, lifted to any of ``heights`` (metres, ego z), lies
    more than ``min_depth`` m in front of the camera (camera z, as the model's view transforms test
    it) and projects inside the H x W image (cv2 convention: pixel centres at integers, so the image
    spans [-0.5, W - 0.5] x [-0.5, H - 0.5]).

    grid: the BEV raster (ego frame); K [N, 3, 3] ``pix_T_cam`` of the H x W images; ego_T_cam
    [N, 4, 4] camera -> ego; image_hw (H, W) in pixels of the images K belongs to.
    """
    K = np.asarray(K, dtype=np.float64).reshape(-1, 3, 3)
    cam_T_ego = invert_transform(np.asarray(ego_T_cam, dtype=np.float64).reshape(-1, 4, 4))
    H, W = image_hw
    X, Y = grid.shape
    xy = np.broadcast_to(grid.cell_centers()[:, :, None, :], (X, Y, len(heights), 2))
    z = np.broadcast_to(np.asarray(heights, dtype=np.float64), (X, Y, len(heights)))
    points_ego = np.concatenate([xy, z[..., None]], axis=-1)  # [X, Y, Z, 3]
    seen = np.zeros((len(K), X, Y), dtype=bool)
    for n in range(len(K)):
        uv, depth = project(K[n], transform_points(cam_T_ego[n], points_ego))  # [X, Y, Z, 2], [X, Y, Z]
        with np.errstate(invalid="ignore"):  # NaN pixels behind the camera compare False
            inside = ((depth > min_depth) & (uv[..., 0] >= -0.5) & (uv[..., 0] <= W - 0.5)
                      & (uv[..., 1] >= -0.5) & (uv[..., 1] <= H - 0.5))
        seen[n] = inside.any(axis=-1)
    return seen
