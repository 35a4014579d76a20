"""perception.data.augment: after every augmentation, 3D points reproject onto their markers.

A synthetic scene (boxes and lidar-like points in the ego frame) is seen by the six cameras of
``nuscenes_like_rig`` at 1600x900: a Gaussian dot is drawn at the projection of every box corner and
point, and the images go through ``preprocess`` to the edge preset's size. After each augmentation
alone and all together, the augmented 3D geometry (K', ego_T_cam', boxes', points') must project
onto the dots found in the augmented images. A flip with the wrong pixel convention is off by 1 px,
a wrong resize convention by ~0.05 px per 10 % of scale, so the tolerance is tight.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pytest
from markers import draw_markers, find_markers, well_separated

from data_engine.sim.rig import nuscenes_like_rig
from perception.data.augment import (
    AugmentConfig,
    apply_bev,
    augment_bev,
    augment_cameras,
    augment_ego_motion,
    drop_cameras,
    sample_aug_T_ego,
)
from perception.box_geometry import box_corners
from perception.geometry import (
    invert_intrinsics,
    invert_rigid,
    make_transform,
    project,
    rotz,
    transform_points,
)
from perception.preprocess import ResizeCrop, preprocess_hwc
from perception.presets import get_preset

TOL = 0.3  # px, with photometric effects on; measured < 0.19 px (noise, JPEG q40 move centroids)
TOL_GEOMETRY = 0.1  # px, without them; measured < 0.06 px (bilinear resampling of 1.2 px dots)
PHOTOMETRIC = ("brightness_contrast_p", "hue_saturation_p", "gamma_p", "noise_p", "blur_p", "jpeg_p")
RADIUS = 4  # px, marker search window
MARGIN = RADIUS + 4  # px, drawn markers keep this far from the preset image's edges

I0 = AugmentConfig.identity()
ALL = replace(
    AugmentConfig(), **{k: 1.0 for k in ("brightness_contrast_p", "hue_saturation_p", "gamma_p", "noise_p", "blur_p",
                                         "jpeg_p", "scale_crop_p", "flip_p", "bev_rotate_p", "bev_scale_p",
                                         "bev_flip_p", "dropout_p")}
)
CASES = {
    "none": I0,
    "photometric": replace(ALL, scale_crop_p=0.0, flip_p=0.0, bev_rotate_p=0.0, bev_scale_p=0.0,
                           bev_flip_p=0.0, dropout_p=0.0),
    "scale": replace(I0, scale_crop_p=1.0, crop_shift=(0.0, 0.0)),
    "crop": replace(I0, scale_crop_p=1.0, scale_range=(1.0, 1.0)),
    "flip": replace(I0, flip_p=1.0),
    "bev_rotate": replace(I0, bev_rotate_p=1.0),
    "bev_scale": replace(I0, bev_scale_p=1.0),
    "bev_flip": replace(I0, bev_flip_p=1.0),
    "dropout": replace(I0, dropout_p=1.0, dropout_cameras=2),
    "all": ALL,
    "default": AugmentConfig(),
}


@dataclass(frozen=True)
class Scene:
    images: np.ndarray  # [6, H, W, 3] RGB uint8 at the preset size, with markers
    K: np.ndarray  # [6, 3, 3] after preprocess
    ego_T_cam: np.ndarray  # [6, 4, 4]
    center: np.ndarray  # [B, 3]
    size: np.ndarray  # [B, 3]
    yaw: np.ndarray  # [B]
    velocity: np.ndarray  # [B, 2]
    points: np.ndarray  # [M, 4] float32 (x, y, z, intensity)
    drawn: np.ndarray  # [6, B * 8 + M] which 3D points have a marker in which camera


def _scene_points(center, size, yaw, points) -> np.ndarray:
    """Box corners then lidar points, ego frame: [B * 8 + M, 3]."""
    return np.concatenate([box_corners(center, size, yaw).reshape(-1, 3), np.asarray(points, np.float64)[:, :3]])


def make_scene() -> Scene:
    """The synthetic scene (see the module docstring)."""
    rng = np.random.default_rng(7)
    preset = get_preset("edge")
    out_hw = (preset.input.height, preset.input.width)
    center = np.array([[9.0, 1.5, 0.8], [-11.0, -2.5, 0.9], [4.0, 7.5, 0.8], [3.0, -8.5, 1.0], [-6.0, 9.0, 0.7],
                       [18.0, -5.0, 1.6], [-15.0, 6.0, 0.8]])
    size = np.array([[1.9, 4.5, 1.6], [2.0, 4.8, 1.8], [0.7, 0.7, 1.7], [1.8, 4.2, 1.5], [0.6, 1.8, 1.2],
                     [2.6, 8.0, 3.2], [1.9, 4.4, 1.5]])
    yaw = np.array([0.1, 3.0, -1.2, 1.6, 2.4, -0.3, -2.8])
    velocity = rng.normal(0.0, 4.0, (len(yaw), 2))
    az, r = rng.uniform(-np.pi, np.pi, 300), rng.uniform(5.0, 30.0, 300)
    points = np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(-0.5, 3.0, 300), rng.uniform(0, 1, 300)], -1)
    points = points.astype(np.float32)
    X = _scene_points(center, size, yaw, points)

    rig = nuscenes_like_rig(1600, 900)
    images, Ks, drawn = [], [], []
    for cam in rig.cameras:
        plan = ResizeCrop.plan((cam.height, cam.width), out_hw)
        K_pre = plan.dst_T_src @ cam.K
        uv, depth = project(K_pre, transform_points(invert_rigid(cam.ego_T_cam), X))
        H, W = out_hw
        inside = (depth > 1.0) & (uv[:, 0] >= MARGIN) & (uv[:, 0] <= W - 1 - MARGIN)
        inside &= (uv[:, 1] >= MARGIN) & (uv[:, 1] <= H - 1 - MARGIN)
        keep = well_separated(np.nan_to_num(uv, nan=-1e6), inside, 3 * RADIUS)
        uv_src = project(cam.K, transform_points(invert_rigid(cam.ego_T_cam), X[keep]))[0]
        bgr = draw_markers(cam.height, cam.width, uv_src, sigma=4.8)[..., ::-1]  # ~1.2 px after preprocess
        image, K = preprocess_hwc(np.ascontiguousarray(bgr), cam.K, out_hw)
        images.append(image), Ks.append(K), drawn.append(keep)
    ego_T_cam = np.stack([c.ego_T_cam for c in rig.cameras])
    return Scene(np.stack(images), np.stack(Ks), ego_T_cam, center, size, yaw, velocity, points, np.stack(drawn))


@pytest.fixture(scope="module")
def scene() -> Scene:
    return make_scene()


def _run(scene: Scene, cfg: AugmentConfig, seed: int):
    rng = np.random.default_rng(seed)
    cams = augment_cameras(scene.images, scene.K, rng, cfg)
    bev = augment_bev(scene.ego_T_cam, scene.center, scene.size, scene.yaw, scene.velocity, scene.points, rng, cfg)
    images, valid = drop_cameras(cams.images, np.ones(len(scene.images), bool), rng, cfg)
    return cams, bev, images, valid


def _corners_in_original_order(bev, scene: Scene) -> np.ndarray:
    """Corners of the augmented boxes, matched to aug_T_ego applied to the original corners [B, 8, 3].

    Checks corner-set equality: the same 8 points per box, in any order (a flip permutes them).
    """
    ref = transform_points(bev.aug_T_ego, box_corners(scene.center, scene.size, scene.yaw))
    new = box_corners(bev.center, bev.size, bev.yaw)
    d = np.linalg.norm(ref[:, :, None, :] - new[:, None, :, :], axis=-1)  # [B, 8 ref, 8 new]
    match = d.argmin(axis=-1)
    assert d.min(axis=-1).max() < 1e-9, "augmented boxes do not have the transformed corners"
    assert all(len(set(m)) == 8 for m in match.tolist()), "corner matching is not a permutation"
    return np.take_along_axis(new, match[..., None], axis=1)


def _reprojection_errors(images, K, ego_T_cam, valid, X, drawn) -> np.ndarray:
    """Distances [n] between projected 3D points and the markers found there (valid cameras only)."""
    errs = []
    H, W = images.shape[1:3]
    for i in np.flatnonzero(valid):
        uv, depth = project(K[i], transform_points(invert_rigid(ego_T_cam[i]), X))
        m = RADIUS + 1
        sel = drawn[i] & (uv[:, 0] >= m) & (uv[:, 0] <= W - 1 - m) & (uv[:, 1] >= m) & (uv[:, 1] <= H - 1 - m)
        found = find_markers(images[i], uv[sel], RADIUS)
        errs.append(np.linalg.norm(found - uv[sel], axis=-1))
    return np.concatenate(errs)


@pytest.mark.parametrize("case", list(CASES))
def test_reprojection_after_augmentation(scene, case):
    cfg = CASES[case]
    tol = TOL if any(getattr(cfg, name) > 0 for name in PHOTOMETRIC) else TOL_GEOMETRY
    for seed in (0, 1):
        cams, bev, images, valid = _run(scene, cfg, seed)
        corners = _corners_in_original_order(bev, scene).reshape(-1, 3)
        X = np.concatenate([corners, bev.points[:, :3].astype(np.float64)])
        err = _reprojection_errors(images, cams.K, bev.ego_T_cam, valid, X, scene.drawn)
        assert len(err) >= 60, f"{case}: only {len(err)} markers checked"
        assert np.all(np.isfinite(err)), f"{case}: {np.isnan(err).sum()} of {len(err)} markers not found"
        assert err.max() < tol, f"{case} seed {seed}: max reprojection error {err.max():.3f} px"
        # The inverses geometry offers hold for augmented matrices (reflections included).
        eye3, eye4 = np.broadcast_to(np.eye(3), cams.K.shape), np.broadcast_to(np.eye(4), bev.ego_T_cam.shape)
        np.testing.assert_allclose(invert_intrinsics(cams.K) @ cams.K, eye3, atol=1e-9)
        np.testing.assert_allclose(invert_rigid(bev.ego_T_cam) @ bev.ego_T_cam, eye4, atol=1e-9)
        # Dropped cameras are black; at least one camera remains.
        assert valid.any() and not images[~valid].any()
        if case == "dropout":
            assert (~valid).sum() == 2


def test_flip_is_a_reflection(scene):
    cams, bev, _, _ = _run(scene, CASES["flip"], 0)
    np.testing.assert_allclose(np.linalg.det(cams.aug_T_pre), -1.0, atol=1e-6)
    assert np.all(cams.K[:, 0, 0] < 0)
    W = scene.images.shape[2]
    np.testing.assert_allclose(cams.aug_T_pre[:, 0, 2], W - 1, atol=1e-3)  # x -> W - 1 - x
    np.testing.assert_array_equal(cams.images, scene.images[:, :, ::-1])

    _, bev, _, _ = _run(scene, CASES["bev_flip"], 0)
    np.testing.assert_allclose(np.linalg.det(bev.ego_T_cam[:, :3, :3]), -1.0, atol=1e-9)
    np.testing.assert_allclose(bev.aug_T_ego, np.diag([1.0, -1.0, 1.0, 1.0]))
    np.testing.assert_allclose(bev.yaw, np.angle(np.exp(-1j * scene.yaw)))  # yaw -> -yaw


def test_bev_velocity_scale_and_points(scene):
    rng = np.random.default_rng(3)
    aug = sample_aug_T_ego(rng, CASES["all"])
    dt = 0.5
    now = apply_bev(aug, scene.ego_T_cam, scene.center, scene.size, scene.yaw, scene.velocity, scene.points)
    moved = scene.center + np.concatenate([scene.velocity * dt, np.zeros((len(scene.yaw), 1))], axis=1)
    later = apply_bev(aug, scene.ego_T_cam, moved, scene.size, scene.yaw, scene.velocity)
    np.testing.assert_allclose((later.center - now.center)[:, :2] / dt, now.velocity, atol=1e-9)
    s = np.cbrt(abs(np.linalg.det(aug[:3, :3])))
    np.testing.assert_allclose(now.size, scene.size * s)
    assert np.all(np.abs(now.yaw) <= np.pi)
    assert now.points.dtype == np.float32
    np.testing.assert_array_equal(now.points[:, 3], scene.points[:, 3])  # intensity untouched
    np.testing.assert_allclose(now.points[:, :3], transform_points(aug, scene.points[:, :3]), rtol=1e-6, atol=1e-5)
    # A camera's depth of a point scales with the world; its pixel does not move (test above).
    p = scene.points[:5, :3].astype(np.float64)
    depth = transform_points(invert_rigid(scene.ego_T_cam[0]), p)[:, 2]
    depth_aug = transform_points(invert_rigid(now.ego_T_cam[0]), transform_points(aug, p))[:, 2]
    np.testing.assert_allclose(depth_aug, s * depth)


def test_crop_shift_copies_pixels(scene):
    cams, _, _, _ = _run(scene, CASES["crop"], 0)
    H, W = scene.images.shape[1:3]
    for i, A in enumerate(cams.aug_T_pre):
        np.testing.assert_allclose(A[:2, :2], np.eye(2), atol=1e-6)
        tx, ty = (int(round(t)) for t in A[:2, 2])
        assert np.allclose(A[:2, 2], [tx, ty], atol=1e-3) and (tx, ty) != (0, 0)
        src = scene.images[i, max(0, -ty) : H - max(0, ty), max(0, -tx) : W - max(0, tx)]
        dst = cams.images[i, max(0, ty) : H - max(0, -ty), max(0, tx) : W - max(0, -tx)]
        np.testing.assert_array_equal(dst, src)  # whole-pixel shift: no resampling blur


def test_ego_motion_follows_the_augmentation():
    rng = np.random.default_rng(5)
    aug = sample_aug_T_ego(rng, replace(I0, bev_rotate_p=1.0, bev_scale_p=1.0, bev_flip_p=1.0))
    prev_T_curr = make_transform(rotz(0.2), np.array([3.0, 0.4, 0.1]))
    p_curr = rng.normal(0, 10, (20, 3))
    p_prev = transform_points(prev_T_curr, p_curr)
    motion = augment_ego_motion(prev_T_curr, aug)
    np.testing.assert_allclose(transform_points(motion, transform_points(aug, p_curr)), transform_points(aug, p_prev))
    np.testing.assert_allclose(invert_rigid(motion) @ motion, np.eye(4), atol=1e-12)


def test_same_seed_same_result_and_independent_coin_flips(scene):
    a, b, c = (_run(scene, CASES["default"], seed) for seed in (11, 11, 12))
    np.testing.assert_array_equal(a[2], b[2])
    np.testing.assert_array_equal(a[0].K, b[0].K)
    np.testing.assert_array_equal(a[1].aug_T_ego, b[1].aug_T_ego)
    assert not np.array_equal(a[2], c[2])
    # albumentations 2.0.8 seeds every transform of a Compose alike; ours must not fire together.
    combos = set()
    rng = np.random.default_rng(0)
    for _ in range(8):
        cfg = replace(I0, scale_crop_p=0.5, flip_p=0.5)
        A = augment_cameras(scene.images[:, :16, :16], scene.K, rng, cfg).aug_T_pre
        det = np.linalg.det(A)
        combos |= set(zip((det < 0).tolist(), (np.abs(np.abs(det) - 1) > 1e-6).tolist()))
    assert combos == {(False, False), (False, True), (True, False), (True, True)}


def test_low_light_darkens_each_image_by_one_factor(scene):
    # Not in ALL: at a quarter of the light, the noise after it moves the marker centroids by up
    # to 0.5 px. A constant ratio per image is the check that no pixel moved.
    cfg = replace(I0, low_light_p=1.0, low_light_range=(0.3, 0.5))
    cams = augment_cameras(scene.images, scene.K, np.random.default_rng(3), cfg)
    np.testing.assert_allclose(cams.K, scene.K, atol=1e-6)  # photometric: pixels do not move
    factors = []
    for before, after in zip(scene.images.astype(np.float64), cams.images.astype(np.float64)):
        bright = before > 40  # away from rounding at 0
        ratio = after[bright] / before[bright]
        # One multiplier for the whole image (not per pixel or channel): the ratio only varies by rounding.
        assert np.ptp(ratio) < 2.0 / 40 + 1e-9
        factors.append(np.median(ratio))
    assert all(0.3 - 0.01 <= f <= 0.5 + 0.01 for f in factors), factors
    assert np.ptp(factors) > 0.01  # each camera draws its own factor


def test_rain_draws_streaks_on_a_dimmer_image():
    grey = np.full((2, 224, 400, 3), 100, np.uint8)
    K = np.broadcast_to(np.diag([300.0, 300.0, 1.0]), (2, 3, 3))
    cams = augment_cameras(grey, K, np.random.default_rng(0), replace(I0, rain_p=1.0))
    np.testing.assert_allclose(cams.K, K, atol=1e-6)
    for image in cams.images:
        assert 70 <= np.median(image) <= 90  # 0.8 of the light
        streaks = image.max(axis=-1) > 110
        assert 0.002 < streaks.mean() < 0.2, streaks.mean()
    assert not np.array_equal(cams.images[0], cams.images[1])  # each camera its own rain


def test_disabled_is_identity(scene):
    cams, bev, images, valid = _run(scene, replace(ALL, enabled=False), 0)
    np.testing.assert_array_equal(images, scene.images)
    np.testing.assert_array_equal(cams.K, scene.K)
    np.testing.assert_array_equal(bev.aug_T_ego, np.eye(4))
    np.testing.assert_allclose(bev.ego_T_cam, scene.ego_T_cam)
    assert valid.all()


def test_dropout_keeps_one_camera_and_config_checks():
    images = np.ones((3, 2, 2, 3), np.uint8)
    out, valid = drop_cameras(images, np.array([False, True, False]), np.random.default_rng(0), CASES["dropout"])
    assert valid.tolist() == [False, True, False] and out[1].all()
    with pytest.raises(ValueError, match="probability"):
        AugmentConfig(flip_p=1.5)
    with pytest.raises(ValueError, match="low, high"):
        AugmentConfig(scale_range=(1.1, 0.9))
    with pytest.raises(ValueError, match="rain_drop_length"):
        AugmentConfig(rain_drop_length=1.0)
