"""Tests of perception/geometry.py (transforms, inverses, cameras, quaternions, the BEV grid) and
perception/box_geometry.py (boxes).

Each test checks a property that a wrong implementation breaks (identities against numpy's
general routines, hand-computed values, axis directions), not merely that the code runs.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from perception import box_geometry as bg
from perception import geometry as g

RNG_SEED = 1234


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def random_rotations(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random proper rotations [n, 3, 3] (det +1)."""
    return Rotation.random(n, random_state=int(rng.integers(1 << 31))).as_matrix()


def random_reflections(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random improper orthogonal matrices [n, 3, 3] (det -1): a rotation times a mirror."""
    mirror = np.diag([1.0, -1.0, 1.0])
    return random_rotations(rng, n) @ mirror


def random_K(rng: np.random.Generator, n: int, skew: bool = True) -> np.ndarray:
    K = np.zeros((n, 3, 3))
    K[:, 0, 0] = rng.uniform(200, 2000, n) * rng.choice([-1.0, 1.0], n)
    K[:, 1, 1] = rng.uniform(200, 2000, n) * rng.choice([-1.0, 1.0], n)
    K[:, 0, 1] = rng.uniform(-5, 5, n) if skew else 0.0
    K[:, 0, 2] = rng.uniform(0, 1600, n)
    K[:, 1, 2] = rng.uniform(0, 900, n)
    K[:, 2, 2] = 1.0
    return K


# --------------------------------------------------------------------------------------------------
# Transforms and inverses
# --------------------------------------------------------------------------------------------------


def test_make_transform_layout_and_batching(rng):
    R = random_rotations(rng, 5)
    t = rng.normal(size=(5, 3))
    T = g.make_transform(R, t)
    assert T.shape == (5, 4, 4)
    np.testing.assert_array_equal(T[:, :3, :3], R)
    np.testing.assert_array_equal(T[:, :3, 3], t)
    np.testing.assert_array_equal(T[:, 3], np.tile([0.0, 0.0, 0.0, 1.0], (5, 1)))
    # A single rotation broadcasts against many translations.
    T2 = g.make_transform(R[0], t)
    assert T2.shape == (5, 4, 4)
    np.testing.assert_array_equal(T2[:, :3, :3], np.broadcast_to(R[0], (5, 3, 3)))


@pytest.mark.parametrize("kind", ["rotation", "reflection"])
def test_invert_rigid_rotations_and_reflections(rng, kind):
    n = 64
    R = random_rotations(rng, n) if kind == "rotation" else random_reflections(rng, n)
    dets = np.linalg.det(R)
    np.testing.assert_allclose(dets, 1.0 if kind == "rotation" else -1.0, atol=1e-12)
    T = g.make_transform(R, rng.normal(scale=20.0, size=(n, 3)))
    inv = g.invert_rigid(T)
    eye = np.broadcast_to(np.eye(4), (n, 4, 4))
    np.testing.assert_allclose(T @ inv, eye, atol=1e-12)
    np.testing.assert_allclose(inv @ T, eye, atol=1e-12)
    np.testing.assert_allclose(inv, np.linalg.inv(T), atol=1e-12)
    # Points go there and back.
    pts = rng.normal(scale=10.0, size=(n, 3))
    np.testing.assert_allclose(g.transform_points(inv, g.transform_points(T, pts)), pts, atol=1e-10)


def test_invert_rigid_single_matrix_keeps_shape(rng):
    T = g.make_transform(random_rotations(rng, 1)[0], [1.0, 2.0, 3.0])
    inv = g.invert_rigid(T)
    assert inv.shape == (4, 4)
    np.testing.assert_allclose(T @ inv, np.eye(4), atol=1e-12)


def test_invert_transform_scaled_sheared_reflected_affine(rng):
    n = 64
    scales = rng.uniform(0.1, 10.0, size=(n, 3)) * rng.choice([-1.0, 1.0], size=(n, 3))
    shear = np.eye(3) + np.triu(rng.normal(scale=0.3, size=(n, 3, 3)), k=1)
    lin = random_rotations(rng, n) @ shear @ (scales[:, :, None] * np.eye(3))
    T = g.make_transform(lin, rng.normal(scale=30.0, size=(n, 3)))
    inv = g.invert_transform(T)
    np.testing.assert_allclose(T @ inv, np.broadcast_to(np.eye(4), (n, 4, 4)), atol=1e-9)
    np.testing.assert_allclose(inv, np.linalg.inv(T), rtol=1e-9, atol=1e-9)
    # A pure mirror with scale: BEV flip of y and a 2x zoom.
    flip = g.make_transform(np.diag([2.0, -2.0, 1.0]), [5.0, 0.0, 0.0])
    np.testing.assert_allclose(
        g.invert_transform(flip), g.make_transform(np.diag([0.5, -0.5, 1.0]), [-2.5, 0.0, 0.0]), atol=1e-15
    )
    # invert_rigid would be wrong for a scaled transform: make sure the test could tell them apart.
    assert not np.allclose(g.invert_rigid(flip), g.invert_transform(flip))


def test_invert_3x3_matches_numpy(rng):
    M = rng.normal(size=(200, 3, 3)) * rng.uniform(0.01, 100.0, size=(200, 1, 1))
    inv = g.invert_3x3(M)
    np.testing.assert_allclose(inv, np.linalg.inv(M), rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(M @ inv, np.broadcast_to(np.eye(3), M.shape), atol=1e-8)
    # Hand-checked example.
    A = np.array([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [0.0, 1.0, 4.0]])
    np.testing.assert_allclose(g.invert_3x3(A), np.linalg.inv(A), atol=1e-14)
    # Shape of a single matrix is kept, and nested batches work.
    assert g.invert_3x3(A).shape == (3, 3)
    assert g.invert_3x3(M.reshape(10, 20, 3, 3)).shape == (10, 20, 3, 3)


@pytest.mark.parametrize(
    "singular",
    [
        np.zeros((3, 3)),
        np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]]),  # rows 0 and 1 dependent
        np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0], [1.0, 1.0, 2.0]]),  # row 2 = row 0 + row 1
    ],
)
def test_invert_3x3_raises_on_singular(singular):
    with pytest.raises(ValueError, match="singular"):
        g.invert_3x3(singular)
    # One singular matrix in a batch is enough to raise.
    batch = np.stack([np.eye(3), singular])
    with pytest.raises(ValueError):
        g.invert_3x3(batch)
    with pytest.raises(ValueError):
        g.invert_transform(g.make_transform(singular, [1.0, 2.0, 3.0]))


def test_transform_points_and_vectors(rng):
    R = random_rotations(rng, 1)[0]
    t = np.array([10.0, -3.0, 2.0])
    T = g.make_transform(R, t)
    pts = rng.normal(size=(7, 3))
    np.testing.assert_allclose(g.transform_points(T, pts), pts @ R.T + t, atol=1e-12)
    np.testing.assert_allclose(g.transform_points(np.broadcast_to(T, (7, 4, 4)), pts), pts @ R.T + t, atol=1e-12)
    # Vectors ignore the translation.
    np.testing.assert_allclose(g.transform_vectors(T, pts), pts @ R.T, atol=1e-12)
    # Composition reads right to left: a_T_c = a_T_b @ b_T_c.
    a_T_b = g.make_transform(random_rotations(rng, 1)[0], rng.normal(size=3))
    b_T_c = g.make_transform(random_rotations(rng, 1)[0], rng.normal(size=3))
    np.testing.assert_allclose(
        g.transform_points(a_T_b @ b_T_c, pts), g.transform_points(a_T_b, g.transform_points(b_T_c, pts)), atol=1e-12
    )


def test_rotz_direction():
    # +90 deg about z takes +x to +y (counter-clockwise seen from above).
    np.testing.assert_allclose(g.rotz(np.pi / 2) @ [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], atol=1e-15)
    assert g.rotz(np.zeros(4)).shape == (4, 3, 3)
    yaws = np.linspace(-3.0, 3.0, 13)
    np.testing.assert_allclose(g.yaw_from_rotation(g.rotz(yaws)), yaws, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Cameras
# --------------------------------------------------------------------------------------------------


def test_pad_intrinsics():
    K = np.array([[800.0, 0.0, 400.0], [0.0, 800.0, 225.0], [0.0, 0.0, 1.0]])
    P = g.pad_intrinsics(K)
    assert P.shape == (4, 4)
    np.testing.assert_array_equal(P[:3, :3], K)
    np.testing.assert_array_equal(P[3], [0, 0, 0, 1])
    np.testing.assert_array_equal(P[:3, 3], 0)


def test_invert_intrinsics_random_with_skew_and_flips(rng):
    K = random_K(rng, 100, skew=True)
    assert (K[:, 0, 0] < 0).any() and (K[:, 1, 1] < 0).any()  # flipped images are covered
    inv = g.invert_intrinsics(K)
    np.testing.assert_allclose(inv, np.linalg.inv(K), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(K @ inv, np.broadcast_to(np.eye(3), K.shape), atol=1e-10)


def test_invert_intrinsics_horizontal_flip_example():
    # Horizontal flip of a W-wide image: u' = W - u  =>  K' = [[-fx, 0, W - cx], [0, fy, cy], [0, 0, 1]].
    W = 1600.0
    K = np.array([[1266.0, 0.0, 816.0], [0.0, 1266.0, 491.0], [0.0, 0.0, 1.0]])
    A = np.array([[-1.0, 0.0, W], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    K_flip = A @ K
    assert K_flip[0, 0] < 0
    inv = g.invert_intrinsics(K_flip)
    np.testing.assert_allclose(inv @ K_flip, np.eye(3), atol=1e-12)
    # A point projected with K lands at u, and with K_flip at W - u.
    p = np.array([2.0, -1.0, 10.0])
    uv, _ = g.project(K, p)
    uv_f, _ = g.project(K_flip, p)
    np.testing.assert_allclose(uv_f, [W - uv[0], uv[1]], atol=1e-9)
    np.testing.assert_allclose(g.unproject(K_flip, uv_f, 10.0), p, atol=1e-9)


def test_invert_intrinsics_zero_focal_raises():
    with pytest.raises(ValueError):
        g.invert_intrinsics(np.array([[0.0, 0.0, 1.0], [0.0, 5.0, 1.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(ValueError):
        g.invert_intrinsics(np.array([[5.0, 0.0, 1.0], [0.0, 0.0, 1.0], [0.0, 0.0, 1.0]]))


def test_project_known_values():
    K = np.array([[100.0, 0.0, 50.0], [0.0, 200.0, 40.0], [0.0, 0.0, 1.0]])
    pts = np.array([[0.0, 0.0, 5.0], [1.0, 0.0, 2.0], [0.0, -1.0, 4.0]])
    uv, depth = g.project(K, pts)
    np.testing.assert_allclose(uv, [[50.0, 40.0], [100.0, 40.0], [50.0, -10.0]])
    np.testing.assert_allclose(depth, [5.0, 2.0, 4.0])
    # The 4x4 padded form gives the same.
    uv4, _ = g.project(g.pad_intrinsics(K), pts)
    np.testing.assert_allclose(uv4, uv)


def test_project_behind_camera_is_nan():
    K = np.eye(3)
    uv, depth = g.project(K, np.array([[1.0, 1.0, -2.0], [1.0, 1.0, 0.0], [1.0, 1.0, 2.0]]))
    assert np.isnan(uv[0]).all() and np.isnan(uv[1]).all()
    np.testing.assert_allclose(uv[2], [0.5, 0.5])
    np.testing.assert_allclose(depth, [-2.0, 0.0, 2.0])


def test_project_unproject_round_trip(rng):
    K = random_K(rng, 1, skew=True)[0]
    pts = np.stack([rng.uniform(-20, 20, 500), rng.uniform(-5, 5, 500), rng.uniform(0.5, 80, 500)], axis=-1)
    uv, depth = g.project(K, pts)
    np.testing.assert_allclose(g.unproject(K, uv, depth), pts, rtol=1e-10, atol=1e-9)
    # And pixels -> points -> pixels, batched over an extra leading dim.
    pix = rng.uniform(0, 1000, size=(4, 25, 2))
    d = rng.uniform(1, 50, size=(4, 25))
    back, d2 = g.project(K, g.unproject(K, pix, d))
    np.testing.assert_allclose(back, pix, atol=1e-8)
    np.testing.assert_allclose(d2, d, atol=1e-10)


def test_full_chain_ego_to_pixels(rng):
    """pix_T_cam @ cam_T_ego maps an ego point on the optical axis to the principal point."""
    K = np.array([[1000.0, 0.0, 800.0], [0.0, 1000.0, 450.0], [0.0, 0.0, 1.0]])
    for yaw in np.linspace(-np.pi, np.pi, 9):
        ego_T_cam = g.make_transform(g.camera_rotation_from_yaw_pitch(yaw, 0.1), [1.5, 0.2, 1.6])
        cam_T_ego = g.invert_rigid(ego_T_cam)
        direction = ego_T_cam[:3, 2]
        target = ego_T_cam[:3, 3] + 12.0 * direction
        uv, depth = g.project(K, g.transform_points(cam_T_ego, target))
        np.testing.assert_allclose(uv, [800.0, 450.0], atol=1e-9)
        np.testing.assert_allclose(depth, 12.0, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# camera_rotation_from_yaw_pitch
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("yaw", np.linspace(-np.pi, np.pi, 7))
@pytest.mark.parametrize("pitch", [0.0, 0.2, -0.3])
@pytest.mark.parametrize("roll", [0.0, 0.15])
def test_camera_rotation_is_proper_and_looks_along_yaw(yaw, pitch, roll):
    R = g.camera_rotation_from_yaw_pitch(yaw, pitch, roll)
    np.testing.assert_allclose(R.T @ R, np.eye(3), atol=1e-12)
    assert np.linalg.det(R) == pytest.approx(1.0, abs=1e-12)
    view = np.array([np.cos(yaw) * np.cos(pitch), np.sin(yaw) * np.cos(pitch), -np.sin(pitch)])
    np.testing.assert_allclose(R[:, 2], view, atol=1e-12)  # z column = viewing direction
    if roll == 0.0:
        # x right: horizontal, and pointing to the right of the viewing direction (clockwise seen from above).
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        np.testing.assert_allclose(R[:, 0], right, atol=1e-12)
        # y down: its z component is negative (or zero for a camera looking straight down).
        assert R[2, 1] <= 0.0
        assert R[2, 1] == pytest.approx(-np.cos(pitch), abs=1e-12)
    # Roll turns the image about the optical axis: the z column does not depend on it.
    np.testing.assert_allclose(R[:, 2], g.camera_rotation_from_yaw_pitch(yaw, pitch, 0.0)[:, 2], atol=1e-12)


def test_camera_rotation_front_camera_axes():
    R = g.camera_rotation_from_yaw_pitch(0.0)
    np.testing.assert_allclose(R[:, 0], [0.0, -1.0, 0.0], atol=1e-15)  # x_cam = -y_ego (right)
    np.testing.assert_allclose(R[:, 1], [0.0, 0.0, -1.0], atol=1e-15)  # y_cam = -z_ego (down)
    np.testing.assert_allclose(R[:, 2], [1.0, 0.0, 0.0], atol=1e-15)  # z_cam = +x_ego (forward)
    # The left camera (yaw +90 deg) sees +y ahead and the ego's forward on its right.
    L = g.camera_rotation_from_yaw_pitch(np.pi / 2)
    np.testing.assert_allclose(L[:, 2], [0.0, 1.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(L[:, 0], [1.0, 0.0, 0.0], atol=1e-15)


def test_camera_rotation_pixels_move_the_right_way():
    """Objects to the ego's right appear right of centre, objects below the axis appear lower."""
    K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    cam_T_ego = g.invert_rigid(g.make_transform(g.camera_rotation_from_yaw_pitch(0.0), [0.0, 0.0, 1.5]))
    right_pt = g.transform_points(cam_T_ego, [10.0, -2.0, 1.5])  # ego y < 0: to the right
    low_pt = g.transform_points(cam_T_ego, [10.0, 0.0, 0.5])  # below the camera
    (u_r, v_r), _ = g.project(K, right_pt)
    (u_l, v_l), _ = g.project(K, low_pt)
    assert u_r > 320.0 and v_r == pytest.approx(240.0)
    assert v_l > 240.0 and u_l == pytest.approx(320.0)


def test_camera_rotation_pitch_down_sees_ground_below_centre():
    cam_T_ego = g.invert_rigid(g.make_transform(g.camera_rotation_from_yaw_pitch(0.0, pitch=0.1), [0.0, 0.0, 1.5]))
    K = np.array([[500.0, 0.0, 320.0], [0.0, 500.0, 240.0], [0.0, 0.0, 1.0]])
    # The horizon (a far point at camera height) is above the image centre when the camera pitches down.
    (_, v_h), _ = g.project(K, g.transform_points(cam_T_ego, [1e4, 0.0, 1.5]))
    assert v_h < 240.0
    assert v_h == pytest.approx(240.0 - 500.0 * np.tan(0.1), abs=0.1)


# --------------------------------------------------------------------------------------------------
# Quaternions
# --------------------------------------------------------------------------------------------------


def test_quaternion_rotation_round_trip(rng):
    R = random_rotations(rng, 100)
    q = g.rotation_to_quat(R)
    assert q.shape == (100, 4)
    assert (q[:, 0] >= 0).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=-1), 1.0, atol=1e-12)
    np.testing.assert_allclose(g.quat_to_rotation(q), R, atol=1e-12)
    # Quaternion -> rotation -> quaternion gives back q up to the sign (q and -q are one rotation).
    q_rand = rng.normal(size=(100, 4))
    q_rand /= np.linalg.norm(q_rand, axis=-1, keepdims=True)
    back = g.rotation_to_quat(g.quat_to_rotation(q_rand))
    np.testing.assert_allclose(back, q_rand * np.sign(q_rand[:, :1]), atol=1e-12)


def test_quaternion_order_is_wxyz():
    # 90 deg about z: (w, x, y, z) = (cos 45, 0, 0, sin 45).
    q = np.array([np.cos(np.pi / 4), 0.0, 0.0, np.sin(np.pi / 4)])
    np.testing.assert_allclose(g.quat_to_rotation(q), g.rotz(np.pi / 2), atol=1e-15)
    np.testing.assert_allclose(g.rotation_to_quat(g.rotz(np.pi / 2)), q, atol=1e-15)
    np.testing.assert_allclose(g.quat_to_rotation([1.0, 0.0, 0.0, 0.0]), np.eye(3), atol=1e-15)
    # 180 deg about x.
    np.testing.assert_allclose(g.quat_to_rotation([0.0, 1.0, 0.0, 0.0]), np.diag([1.0, -1.0, -1.0]), atol=1e-15)


def test_quat_yaw_round_trip():
    yaws = np.linspace(-np.pi + 1e-6, np.pi - 1e-6, 101)
    q = g.quat_from_yaw(yaws)
    assert q.shape == (101, 4)
    np.testing.assert_allclose(g.yaw_from_quat(q), yaws, atol=1e-12)
    np.testing.assert_allclose(g.quat_to_rotation(q), g.rotz(yaws), atol=1e-12)
    # Scalars work, and yaws outside (-pi, pi] come back wrapped.
    assert g.quat_from_yaw(0.3).shape == (4,)
    assert float(g.yaw_from_quat(g.quat_from_yaw(0.3))) == pytest.approx(0.3)
    assert float(g.yaw_from_quat(g.quat_from_yaw(2 * np.pi + 0.3))) == pytest.approx(0.3)


def test_yaw_from_quat_ignores_small_pitch_and_roll():
    q = Rotation.from_euler("ZYX", [0.7, 0.05, -0.04]).as_quat()[[3, 0, 1, 2]]
    assert float(g.yaw_from_quat(q)) == pytest.approx(0.7, abs=1e-12)


def test_rotation_to_quat_refuses_reflections(rng):
    with pytest.raises(ValueError, match="reflection"):
        g.rotation_to_quat(np.diag([1.0, -1.0, 1.0]))
    batch = np.concatenate([random_rotations(rng, 3), random_reflections(rng, 1)])
    with pytest.raises(ValueError):
        g.rotation_to_quat(batch)


# --------------------------------------------------------------------------------------------------
# Boxes
# --------------------------------------------------------------------------------------------------


def test_box_corners_yaw0_known_values():
    center = np.array([10.0, 2.0, 1.0])
    w, l, h = 2.0, 4.0, 1.5
    c = bg.box_corners(center, [w, l, h], 0.0)
    assert c.shape == (8, 3)
    # Corner 0: front (+x, half length), left (+y, half width), bottom (-z, half height).
    np.testing.assert_allclose(c[0], [12.0, 3.0, 0.25])
    expected = np.array(
        [
            [12.0, 3.0, 0.25],  # bottom front-left
            [8.0, 3.0, 0.25],  # bottom rear-left
            [8.0, 1.0, 0.25],  # bottom rear-right
            [12.0, 1.0, 0.25],  # bottom front-right
            [12.0, 3.0, 1.75],
            [8.0, 3.0, 1.75],
            [8.0, 1.0, 1.75],
            [12.0, 1.0, 1.75],
        ]
    )
    np.testing.assert_allclose(c, expected)
    # Size is (w, l, h): the x extent is l, the y extent is w.
    np.testing.assert_allclose(c.max(0) - c.min(0), [l, w, h])
    np.testing.assert_allclose(c.mean(0), center)


def test_box_corners_yaw90_front_points_to_plus_y():
    center = np.array([0.0, 0.0, 0.0])
    c = bg.box_corners(center, [2.0, 4.0, 1.0], np.pi / 2)
    front = (c[0] + c[3] + c[4] + c[7]) / 4  # centre of the front face
    np.testing.assert_allclose(front, [0.0, 2.0, 0.0], atol=1e-12)
    # Front-left is on the -x side when facing +y.
    np.testing.assert_allclose(c[0], [-1.0, 2.0, -0.5], atol=1e-12)
    np.testing.assert_allclose(c.max(0) - c.min(0), [2.0, 4.0, 1.0], atol=1e-12)


def test_box_corners_batched_and_edges(rng):
    n = 10
    centers = rng.normal(size=(n, 3))
    sizes = rng.uniform(0.5, 5.0, size=(n, 3))
    yaws = rng.uniform(-np.pi, np.pi, size=n)
    c = bg.box_corners(centers, sizes, yaws)
    assert c.shape == (n, 8, 3)
    for k in range(n):
        np.testing.assert_allclose(c[k], bg.box_corners(centers[k], sizes[k], yaws[k]))
        # The corners written in the box frame are +-half sizes.
        local = g.transform_points(g.invert_rigid(bg.box_frame(centers[k], yaws[k])), c[k])
        np.testing.assert_allclose(np.abs(local), np.broadcast_to(sizes[k][[1, 0, 2]] / 2, (8, 3)), atol=1e-12)
    # Edges have the lengths of the box: 4 of l, 4 of w, 4 of h.
    w, l, h = sizes[0]
    lengths = sorted(np.linalg.norm(c[0, i] - c[0, j]) for i, j in bg.BOX_EDGES)
    np.testing.assert_allclose(lengths, sorted([l] * 4 + [w] * 4 + [h] * 4), atol=1e-12)
    assert len(set(bg.BOX_EDGES)) == 12


def test_points_in_boxes(rng):
    center = np.array([[5.0, 0.0, 1.0], [-5.0, 5.0, 0.5]])
    size = np.array([[2.0, 4.0, 2.0], [1.0, 1.0, 1.0]])
    yaw = np.array([np.pi / 2, 0.0])
    pts = np.array(
        [
            [5.0, 0.0, 1.0],  # centre of box 0
            [5.0, 1.9, 1.0],  # along box 0's length (now +y): inside (l/2 = 2)
            [6.9, 0.0, 1.0],  # along box 0's width (now x): outside (w/2 = 1)
            [5.0, 0.0, 2.1],  # above box 0
            [-5.0, 5.0, 0.5],  # centre of box 1
            [100.0, 100.0, 0.0],
        ]
    )
    inside = bg.points_in_boxes(pts, center, size, yaw)
    assert inside.shape == (2, 6)
    np.testing.assert_array_equal(inside[0], [True, True, False, False, False, False])
    np.testing.assert_array_equal(inside[1], [False, False, False, False, True, False])
    # Random check against the box frame: inside iff |local| <= half size.
    c, s, y = rng.normal(size=3), rng.uniform(1, 3, size=3), rng.uniform(-np.pi, np.pi)
    p = c + rng.uniform(-3, 3, size=(2000, 3))
    local = g.transform_points(g.invert_rigid(bg.box_frame(c, y)), p)
    expect = (np.abs(local) <= s[[1, 0, 2]] / 2).all(-1)
    assert expect.any() and (~expect).any()
    np.testing.assert_array_equal(bg.points_in_boxes(p, c, s, y)[0], expect)
    # Corners shrunk slightly towards the centre are inside; grown slightly, outside.
    corners = bg.box_corners(c, s, y)
    assert bg.points_in_boxes(c + 0.999 * (corners - c), c, s, y).all()
    assert not bg.points_in_boxes(c + 1.001 * (corners - c), c, s, y).any()


# --------------------------------------------------------------------------------------------------
# BEV grid
# --------------------------------------------------------------------------------------------------


def test_bev_grid_default_shape():
    grid = g.BEVGrid()
    assert grid.shape == (200, 200)
    assert g.BEVGrid(-51.2, 51.2, -51.2, 51.2, 0.8).shape == (128, 128)
    assert g.BEVGrid(x_min=-10, x_max=30, y_min=-20, y_max=20, resolution=0.5).shape == (80, 80)
    assert g.BEVGrid(x_min=0, x_max=10, y_min=-2, y_max=2, resolution=0.5).shape == (20, 8)


def test_bev_T_ego_maps_corners_and_cell_centres():
    grid = g.BEVGrid(x_min=-10.0, x_max=30.0, y_min=-20.0, y_max=10.0, resolution=0.5)
    X, Y = grid.shape
    assert (X, Y) == (80, 60)
    T = grid.bev_T_ego
    # Rear-right corner of the grid is cell (0, 0); front-left is (X, Y).
    np.testing.assert_allclose(g.transform_points(T, [-10.0, -20.0, 0.0]), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(g.transform_points(T, [30.0, 10.0, 0.0]), [X, Y, 0.0])
    np.testing.assert_allclose(g.transform_points(T, [30.0, -20.0, 0.0]), [X, 0.0, 0.0])
    np.testing.assert_allclose(g.transform_points(T, [-10.0, 10.0, 2.0]), [0.0, Y, 2.0])
    # The ego origin.
    np.testing.assert_allclose(g.transform_points(T, [0.0, 0.0, 0.0]), [20.0, 40.0, 0.0])
    # Cell centres map to (i + 0.5, j + 0.5).
    centres = grid.cell_centers()
    assert centres.shape == (X, Y, 2)
    cells = g.transform_points(T, np.concatenate([centres, np.zeros((X, Y, 1))], axis=-1))[..., :2]
    ii, jj = np.meshgrid(np.arange(X), np.arange(Y), indexing="ij")
    np.testing.assert_allclose(cells, np.stack([ii + 0.5, jj + 0.5], axis=-1), atol=1e-12)
    # Rows grow forward (x), columns grow to the left (y).
    assert centres[1, 0, 0] > centres[0, 0, 0] and centres[1, 0, 1] == centres[0, 0, 1]
    assert centres[0, 1, 1] > centres[0, 0, 1] and centres[0, 1, 0] == centres[0, 0, 0]
    # ego_T_bev is the inverse.
    np.testing.assert_allclose(grid.ego_T_bev @ T, np.eye(4), atol=1e-12)


def test_bev_to_cells_agrees_with_bev_T_ego(rng):
    grid = g.BEVGrid(x_min=-25.0, x_max=25.0, y_min=-25.0, y_max=25.0, resolution=0.25)
    xy = rng.uniform(-30, 30, size=(50, 2))
    via_T = g.transform_points(grid.bev_T_ego, np.concatenate([xy, np.zeros((50, 1))], axis=-1))[:, :2]
    np.testing.assert_allclose(grid.to_cells(xy), via_T, atol=1e-12)
    # Integer cell index of a point is floor of its continuous coordinate, and the cell's centre is near it.
    inside = grid.contains(xy)
    idx = np.floor(grid.to_cells(xy[inside])).astype(int)
    centres = grid.cell_centers()[idx[:, 0], idx[:, 1]]
    assert (np.abs(centres - xy[inside]) <= grid.resolution / 2 + 1e-12).all()


def test_bev_contains_half_open():
    grid = g.BEVGrid(x_min=-10.0, x_max=10.0, y_min=-5.0, y_max=5.0, resolution=1.0)
    pts = np.array(
        [
            [0.0, 0.0],
            [-10.0, -5.0],  # lower edges are inside
            [10.0, 0.0],  # upper x edge is outside
            [0.0, 5.0],  # upper y edge is outside
            [9.999, 4.999],
            [-10.001, 0.0],
            [0.0, -5.001],
        ]
    )
    np.testing.assert_array_equal(grid.contains(pts), [True, True, False, False, True, False, False])
    # Every point contains() accepts gets an in-range integer cell.
    cells = np.floor(grid.to_cells(pts[grid.contains(pts)])).astype(int)
    X, Y = grid.shape
    assert ((cells >= 0) & (cells < [X, Y])).all()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(resolution=0.0), "resolution"),
        (dict(resolution=-0.5), "resolution"),
        (dict(x_min=10.0, x_max=10.0), "x extent"),
        (dict(x_min=10.0, x_max=-10.0), "x extent"),
        (dict(y_min=5.0, y_max=-5.0), "y extent"),
        (dict(resolution=0.3), "whole number"),
        (dict(x_min=-50.0, x_max=50.2, resolution=0.5), "whole number"),
    ],
)
def test_bev_grid_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        g.BEVGrid(**kwargs)


def test_bev_grid_is_frozen():
    grid = g.BEVGrid()
    with pytest.raises(Exception):
        grid.resolution = 1.0  # type: ignore[misc]
