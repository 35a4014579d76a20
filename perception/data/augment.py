"""Geometry-true augmentation: pixels move with their intrinsics, the world moves with its extrinsics.

Two kinds (DESIGN.md section 3):

- Image augmentation, per camera (:func:`augment_cameras`): albumentations does the pixels
  (photometric effects; a random zoom with a shifted crop window; a horizontal flip) and we read
  back the 3x3 pixel affine ``A = aug_T_pre`` it applied, by passing four keypoints through the
  same ``Compose`` call and solving for the affine; then ``K' = A @ K``. Nothing geometric is
  re-implemented here.
- BEV augmentation, per sample (:func:`augment_bev`): a random ``aug_T_ego`` (rotation about z,
  uniform scale, flip y -> -y) applied to cameras, boxes, velocities and lidar points alike.

Plus random camera dropout (:func:`drop_cameras`). Every function takes a ``np.random.Generator``:
the same seed gives the same result.

Pixel convention: cv2's, integer coordinates are pixel centres. albumentations 2.0.8 follows it for
the transforms used here: ``Affine`` warps pixels and keypoints with one matrix built around the
centre ``(W/2 - 0.5, H/2 - 0.5)``, and ``HorizontalFlip`` maps ``x -> W - 1 - x`` for both (checked
against drawn markers in tests/perception/test_augment.py). Avoided on purpose: ``RandomScale``/``Resize``,
whose keypoints scale as ``x * s`` while cv2.resize moves pixel centres to ``(x + 0.5) * s' - 0.5``
with ``s'`` the rounded size ratio (measured 0.3 px off at s = 1.1 on 224 rows), and
``MotionBlur``'s default shifted, directional kernels (they move content without moving keypoints).

Seeding: albumentations 2.0.8's ``Compose(seed=)`` / ``set_random_seed`` hands the SAME seed to
every child transform, so their coin flips are identical (two transforms with p = 0.5 always fire
together). :func:`_seed` gives each transform its own seed drawn from the numpy Generator.

Reflections: a horizontal flip gives ``A`` (hence ``K'``) a negative fx; a BEV flip gives ``ego_T_cam``
and ``aug_T_ego`` det = -1. That is intended, and geometry's inverses handle both. The checks that
rotations are orthonormal and proper apply to calibration read from disk, not to augmented geometry.
"""

from __future__ import annotations

from typing import NamedTuple

import albumentations as A
import cv2
import numpy as np

from perception.geometry import invert_transform, make_transform, rotz
from perception.specs import AugmentConfig

__all__ = [
    "AugmentConfig",
    "BevAug",
    "CameraAug",
    "augment_bev",
    "augment_cameras",
    "augment_ego_motion",
    "apply_bev",
    "build_image_transform",
    "drop_cameras",
    "sample_aug_T_ego",
]


# --------------------------------------------------------------------------------------------------
# Image augmentation (per camera)
# --------------------------------------------------------------------------------------------------


class CameraAug(NamedTuple):
    """Result of :func:`augment_cameras`."""

    images: np.ndarray  # [N, H, W, 3] uint8 RGB
    K: np.ndarray  # [N, 3, 3] intrinsics of the augmented images, K' = aug_T_pre @ K
    aug_T_pre: np.ndarray  # [N, 3, 3] pixel affine albumentations applied (det < 0 after a flip)


def build_image_transform(cfg: AugmentConfig, out_hw: tuple[int, int]) -> A.Compose:
    """The albumentations pipeline for images of ``out_hw``: photometric first, then geometric.

    Photometric first, so the black border the geometric part brings in stays black. Keypoints
    ("xy", never removed) carry the probe points from which the pixel affine is solved.
    """
    H, W = out_hw
    border = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0}
    dx, dy = int(cfg.crop_shift[0] * W), int(cfg.crop_shift[1] * H)
    weather = []  # only when switched on: each transform draws a seed, and the others' draws stay as they were
    if cfg.low_light_p > 0:  # darkening first, so the sensor noise below lands on the dark image as at night
        weather.append(A.MultiplicativeNoise(multiplier=cfg.low_light_range, per_channel=False, elementwise=False,
                                             p=cfg.low_light_p))
    if cfg.rain_p > 0:
        weather.append(A.RandomRain(slant_range=(-2, 2), drop_length=max(2, round(cfg.rain_drop_length * H)),
                                    drop_width=1, blur_value=3, brightness_coefficient=0.8, p=cfg.rain_p))
    transforms = [
        *weather,
        A.RandomBrightnessContrast(cfg.brightness_limit, cfg.contrast_limit, p=cfg.brightness_contrast_p),
        A.HueSaturationValue(cfg.hue_shift_limit, cfg.sat_shift_limit, cfg.val_shift_limit, p=cfg.hue_saturation_p),
        A.RandomGamma(cfg.gamma_limit, p=cfg.gamma_p),
        A.GaussNoise(std_range=cfg.noise_std_range, p=cfg.noise_p),
        A.GaussianBlur(blur_limit=0, sigma_limit=cfg.blur_sigma_range, p=cfg.blur_p),
        A.ImageCompression(compression_type="jpeg", quality_range=cfg.jpeg_quality_range, p=cfg.jpeg_p),
        # Resize and crop in ONE warp: a crop shift after a separate zoom would bring in black where
        # the zoom had already thrown content away. Outside the source: black (fill 0).
        A.Affine(scale=cfg.scale_range, keep_ratio=True, translate_px={"x": (-dx, dx), "y": (-dy, dy)},
                 interpolation=cv2.INTER_LINEAR, p=cfg.scale_crop_p, **border),
        A.HorizontalFlip(p=cfg.flip_p),
    ]
    keypoints = A.KeypointParams(format="xy", remove_invisible=False, check_each_transform=False)
    return A.Compose(transforms, keypoint_params=keypoints)


def _seed(transform: A.BasicTransform | A.BaseCompose, rng: np.random.Generator) -> None:
    """Give ``transform`` and each transform inside it its own seed (albumentations gives them one)."""
    transform.set_random_seed(int(rng.integers(2**32)))
    for child in getattr(transform, "transforms", ()):
        _seed(child, rng)


def _solve_affine(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The 3x3 affine mapping points src [P, 2] to dst [P, 2] (P >= 3, least squares, checked exact)."""
    X = np.concatenate([src, np.ones((len(src), 1))], axis=1)  # [P, 3]
    top, *_ = np.linalg.lstsq(X, dst, rcond=None)  # [3, 2]
    residual = np.abs(X @ top - dst).max()
    if residual > 1e-2:
        raise RuntimeError(f"the image transform is not affine (probe residual {residual:.3g} px)")
    out = np.eye(3)
    out[:2] = top.T
    return out


def augment_cameras(
    images: np.ndarray, K: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> CameraAug:
    """Augment each camera independently: images [N, H, W, 3] uint8 RGB, K [N, 3, 3] -> :class:`CameraAug`.

    Images are at the preset size (after :func:`perception.preprocess.preprocess_hwc`) and keep it.
    ``K' = aug_T_pre @ K`` where ``aug_T_pre`` is read back from albumentations' keypoints.
    """
    images = np.asarray(images)
    N, H, W, C = images.shape  # cameras, rows, columns, RGB
    K = np.asarray(K, dtype=np.float64)
    if not cfg.enabled:
        return CameraAug(images.copy(), K.copy(), np.broadcast_to(np.eye(3), (N, 3, 3)).copy())
    compose = build_image_transform(cfg, (H, W))
    probes = np.array([[0, 0], [W - 1, 0], [0, H - 1], [W - 1, H - 1]], dtype=np.float32)
    out = np.empty_like(images)
    aug_T_pre = np.empty((N, 3, 3))
    for i in range(N):
        _seed(compose, rng)
        result = compose(image=images[i], keypoints=probes)
        if result["image"].shape != (H, W, C):
            raise RuntimeError(f"augmentation changed the image size to {result['image'].shape}")
        out[i] = result["image"]
        aug_T_pre[i] = _solve_affine(probes.astype(np.float64), np.asarray(result["keypoints"], np.float64)[:, :2])
    return CameraAug(out, aug_T_pre @ K, aug_T_pre)


def drop_cameras(
    images: np.ndarray, cam_valid: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Random camera dropout: images [N, ...] (any layout), cam_valid bool [N] -> (images, cam_valid).

    With probability ``cfg.dropout_p`` up to ``cfg.dropout_cameras`` valid cameras are marked invalid
    and their images zeroed; at least one valid camera always remains. Inputs are not modified.
    """
    images, cam_valid = np.array(images, copy=True), np.array(cam_valid, dtype=bool, copy=True)
    u = rng.random()  # drawn even when disabled, so toggling dropout does not shift other draws
    order = rng.permutation(len(cam_valid))
    if not cfg.enabled or u >= cfg.dropout_p:
        return images, cam_valid
    candidates = [int(i) for i in order if cam_valid[i]]
    drop = candidates[: min(cfg.dropout_cameras, len(candidates) - 1)]
    cam_valid[drop] = False
    images[drop] = 0
    return images, cam_valid


# --------------------------------------------------------------------------------------------------
# BEV augmentation (per sample)
# --------------------------------------------------------------------------------------------------


class BevAug(NamedTuple):
    """Result of :func:`augment_bev` / :func:`apply_bev`; everything in the augmented ego frame."""

    ego_T_cam: np.ndarray  # [N, 4, 4] rigid (orthonormal linear part, det -1 after a flip)
    center: np.ndarray  # [B, 3] metres
    size: np.ndarray  # [B, 3] (w, l, h) metres
    yaw: np.ndarray  # [B] radians in (-pi, pi]
    velocity: np.ndarray  # [B, 2] m/s
    points: np.ndarray | None  # [M, D] with xyz in the first 3 columns, other columns untouched
    aug_T_ego: np.ndarray  # [4, 4] original ego -> augmented ego: s * rotz(theta) @ diag(1, +-1, 1)


def sample_aug_T_ego(rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """A random ``aug_T_ego`` [4, 4]: ``s * rotz(theta) @ flip`` (flip = diag(1, -1, 1) or identity).

    Five numbers are always drawn, so switching one part on or off does not change the others.
    """
    u_rot, u_scale, u_flip = rng.random(3)
    theta = np.deg2rad(rng.uniform(-cfg.bev_rotate_deg, cfg.bev_rotate_deg))
    s = rng.uniform(*cfg.bev_scale_range)
    if not cfg.enabled:
        return np.eye(4)
    theta = theta if u_rot < cfg.bev_rotate_p else 0.0
    s = s if u_scale < cfg.bev_scale_p else 1.0
    flip = np.diag([1.0, -1.0 if u_flip < cfg.bev_flip_p else 1.0, 1.0])
    return make_transform(s * rotz(theta) @ flip, np.zeros(3))


def apply_bev(
    aug_T_ego: np.ndarray,
    ego_T_cam: np.ndarray,
    center: np.ndarray,
    size: np.ndarray,
    yaw: np.ndarray,
    velocity: np.ndarray,
    points: np.ndarray | None = None,
) -> BevAug:
    """Move the world by ``aug_T_ego`` (linear part ``s * Q``, Q orthogonal with a z axis of its own).

    ego_T_cam [N, 4, 4]; boxes in the ego frame: center [B, 3], size [B, 3] (w, l, h), yaw [B],
    velocity [B, 2]; points [M, D>=3] or None.

    - points, centres: ``aug_T_ego @ p``; sizes and velocities scale by ``s``, velocities turn by Q.
    - yaw: the heading of the box x axis after Q (a flip gives -yaw, a rotation adds theta). Under
      a flip the box's own frame would be left-handed; the right-handed box with the new yaw has
      exactly the same corners (a box is symmetric across its length axis), in another order.
    - cameras: ``ego_T_cam' = aug_T_ego @ ego_T_cam @ diag(1/s, 1/s, 1/s, 1)``. The right factor
      rescales the camera frame so ``ego_T_cam'`` stays rigid (``invert_rigid`` is exact, as the
      model's view transform assumes) while projecting every augmented point to the same pixel as
      before: a pinhole projection ignores a uniform scale of camera coordinates (depths become
      ``s`` times larger, consistent with the scaled world and lidar).
    """
    aug_T_ego = np.asarray(aug_T_ego, dtype=np.float64)
    lin = aug_T_ego[:3, :3]
    s = np.cbrt(abs(np.linalg.det(lin)))
    q = lin / s  # orthogonal, det +-1
    if not np.allclose(q.T @ q, np.eye(3), atol=1e-9) or not np.allclose(q[2], [0, 0, 1], atol=1e-9):
        raise ValueError("aug_T_ego must be s * Q with Q orthogonal and leaving z alone")
    unscale = np.diag([1.0 / s, 1.0 / s, 1.0 / s, 1.0])
    ego_T_cam = aug_T_ego @ np.asarray(ego_T_cam, dtype=np.float64) @ unscale
    center = np.asarray(center, dtype=np.float64).reshape(-1, 3) @ lin.T + aug_T_ego[:3, 3]
    size = np.asarray(size, dtype=np.float64).reshape(-1, 3) * s
    yaw = np.asarray(yaw, dtype=np.float64).reshape(-1)
    heading = np.stack([np.cos(yaw), np.sin(yaw)], axis=-1) @ q[:2, :2].T  # [B, 2]
    yaw = np.arctan2(heading[:, 1], heading[:, 0])
    velocity = np.asarray(velocity, dtype=np.float64).reshape(-1, 2) @ lin[:2, :2].T
    if points is not None:
        points = np.array(points, copy=True)
        points[:, :3] = (points[:, :3].astype(np.float64) @ lin.T + aug_T_ego[:3, 3]).astype(points.dtype)
    return BevAug(ego_T_cam, center, size, yaw, velocity, points, aug_T_ego)


def augment_bev(
    ego_T_cam: np.ndarray,
    center: np.ndarray,
    size: np.ndarray,
    yaw: np.ndarray,
    velocity: np.ndarray,
    points: np.ndarray | None,
    rng: np.random.Generator,
    cfg: AugmentConfig,
) -> BevAug:
    """Sample ``aug_T_ego`` (:func:`sample_aug_T_ego`) and apply it (:func:`apply_bev`).

    For a clip of frames, sample once and :func:`apply_bev` the same matrix to every frame, and map
    ego motion with :func:`augment_ego_motion`. Map rasters in the original ego frame are read at
    ``invert_transform(aug_T_ego)`` of the augmented cells.
    """
    return apply_bev(sample_aug_T_ego(rng, cfg), ego_T_cam, center, size, yaw, velocity, points)


def augment_ego_motion(prev_T_curr: np.ndarray, aug_T_ego: np.ndarray) -> np.ndarray:
    """Ego motion between two frames augmented by the same ``aug_T_ego``: [..., 4, 4] -> [..., 4, 4].

    ``prev'_T_curr' = aug_T_ego @ prev_T_curr @ inv(aug_T_ego)``; rigid again (the scale cancels in
    the linear part, translations scale by s).
    """
    aug_T_ego = np.asarray(aug_T_ego, dtype=np.float64)
    return aug_T_ego @ np.asarray(prev_T_curr, dtype=np.float64) @ invert_transform(aug_T_ego)
