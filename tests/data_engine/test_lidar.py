"""The simulated lidar hits the shapes the cameras draw: object returns agree with the rendered depth,
lie inside their annotated boxes, ground returns lie on the ground; the meshes' solid parts are the
drawn surfaces."""

from __future__ import annotations

import numpy as np
import pytest

from data_engine.sim import lidar, meshes
from data_engine.sim.rig import nuscenes_like_rig
from data_engine.sim.world import FrameCapture, SceneWorld, scene_spec
from perception.schema import CATEGORY_TO_DETECTION
from perception.box_geometry import points_in_boxes
from perception.geometry import invert_rigid, project, transform_points

# Two scenes that between them put every detection class but the trailer's close to the ego at t = 0
# (bicycles, motorcycles, adults and children, a construction vehicle, cones, barriers, buses).
SCENES = ((0, 0), (2, 1))
WIDTH, HEIGHT = 400, 225
DEPTH_TOLERANCE = 0.3  # m, lidar depth along a camera's optical axis vs the rendered depth there
AGREE_ALL = 0.95  # fraction of all object returns, on their own instance's pixels, within tolerance
AGREE_CLASS = 0.90  # the same per class (classes with >= MIN_RETURNS such returns)
MIN_RETURNS = 20
PHANTOM = 0.5  # m: a return this far in front of the rendered surface hit nothing the cameras drew
PHANTOM_FRACTION = 0.01


def _capture(seed: int, index: int) -> tuple[SceneWorld, FrameCapture]:
    world = SceneWorld(scene_spec(seed, index, 4), nuscenes_like_rig(WIDTH, HEIGHT))
    return world, world.capture(0.0, frame_key=0, cameras=False)


@pytest.fixture(scope="module")
def captures() -> list[tuple[SceneWorld, FrameCapture]]:
    return [_capture(seed, index) for seed, index in SCENES]


def _class_of(world: SceneWorld) -> dict[int, str]:
    return {a.uid: CATEGORY_TO_DETECTION.get(a.category, "other") if a.category else "scenery" for a in world.actors}


def _returns_global(world: SceneWorld, cap: FrameCapture) -> np.ndarray:
    return transform_points(cap.global_T_ego @ world.rig.ego_T_lidar, cap.points[:, :3].astype(np.float64))


def _depth_check(world: SceneWorld, cap: FrameCapture) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Per class, lidar depth minus rendered depth of the object returns that land on their own
    instance's pixel in some camera; and, over all object returns landing in an image, the same
    difference whatever the pixel shows."""
    cls = _class_of(world)
    obj = cap.point_ids >= 0
    ids = cap.point_ids[obj]
    pts = _returns_global(world, cap)[obj]
    per_class: dict[str, list[np.ndarray]] = {}
    anywhere = []
    for cam in world.rig.cameras:
        render = cap.renders[cam.name]
        uv, z = project(cam.K, transform_points(invert_rigid(cap.global_T_ego @ cam.ego_T_cam), pts))
        front = z > 0.2
        px = np.full((len(z), 2), -1)
        px[front] = np.round(uv[front]).astype(int)  # pixel centres are at integer coordinates
        inside = front & (px[:, 0] >= 0) & (px[:, 0] < cam.width) & (px[:, 1] >= 0) & (px[:, 1] < cam.height)
        k = np.flatnonzero(inside)
        diff = z[k] - render.depth[px[k, 1], px[k, 0]]
        anywhere.append(diff)
        own = render.instance[px[k, 1], px[k, 0]] == ids[k]
        for name in {cls[i] for i in ids[k[own]]}:
            sel = own & (np.array([cls[i] for i in ids[k]]) == name)
            per_class.setdefault(name, []).append(diff[sel])
    return {k: np.concatenate(v) for k, v in per_class.items()}, np.concatenate(anywhere)


def _depth_report(captures) -> tuple[dict[str, float], float, float, int]:
    per_class: dict[str, list[np.ndarray]] = {}
    anywhere = []
    for world, cap in captures:
        pc, aw = _depth_check(world, cap)
        for k, v in pc.items():
            per_class.setdefault(k, []).append(v)
        anywhere.append(aw)
    diffs = {k: np.concatenate(v) for k, v in per_class.items()}
    agree = {k: float(np.mean(np.abs(v) <= DEPTH_TOLERANCE)) for k, v in diffs.items() if len(v) >= MIN_RETURNS}
    every = np.concatenate(list(diffs.values()))
    aw = np.concatenate(anywhere)
    return agree, float(np.mean(np.abs(every) <= DEPTH_TOLERANCE)), float(np.mean(aw < -PHANTOM)), len(every)


def test_object_returns_agree_with_the_rendered_depth(captures) -> None:
    agree, overall, phantom, n = _depth_report(captures)
    print(f"{n} returns on their own pixels; within {DEPTH_TOLERANCE} m: {overall:.3f} overall, per class {agree}; "
          f"{phantom:.4f} more than {PHANTOM} m in front of the rendered surface")
    assert n > 5000
    assert {"car", "pedestrian", "bicycle", "motorcycle", "construction_vehicle", "scenery"} <= set(agree)
    assert overall >= AGREE_ALL, overall
    assert all(v >= AGREE_CLASS for v in agree.values()), agree
    assert phantom <= PHANTOM_FRACTION, phantom


def test_the_box_only_lidar_fails_the_depth_check(monkeypatch) -> None:
    """The check above has teeth: a lidar that hits whole boxes (the former model) fails it."""
    box_only = lidar.cast

    def cast(*args, **kwargs):
        kwargs["meshes"] = None
        return box_only(*args, **kwargs)

    monkeypatch.setattr(lidar, "cast", cast)
    agree, overall, phantom, _ = _depth_report([_capture(seed, index) for seed, index in SCENES])
    print(f"box-only lidar: within {DEPTH_TOLERANCE} m {overall:.3f} overall, per class {agree}; phantom {phantom:.4f}")
    assert phantom > 10 * PHANTOM_FRACTION
    assert min(agree[c] for c in ("car", "pedestrian", "bicycle")) < AGREE_CLASS - 0.1


def test_object_returns_lie_in_their_boxes(captures) -> None:
    slack = 0.1  # m: 5 sigma of the range noise
    checked: dict[str, int] = {}
    for world, cap in captures:
        pts = _returns_global(world, cap)
        for actor in world.actors:
            if actor.category is None:
                continue
            mine = pts[cap.point_ids == actor.uid]
            if not len(mine):
                continue
            centre, yaw, _ = world.actor_state(actor, cap.t)
            inside = points_in_boxes(mine, centre, actor.size + 2 * slack, yaw)[0]
            assert inside.all(), (actor.category, int((~inside).sum()), len(mine))
            name = CATEGORY_TO_DETECTION[actor.category]
            checked[name] = checked.get(name, 0) + len(mine)
    assert len(checked) >= 9, checked


def test_ground_returns_lie_on_the_ground(captures) -> None:
    for world, cap in captures:
        z = _returns_global(world, cap)[cap.point_ids < 0, 2]
        assert len(z) > 5000
        assert np.abs(z).max() < 0.1 and abs(float(z.mean())) < 0.005, (np.abs(z).max(), z.mean())


def test_sweep_format_and_determinism(captures) -> None:
    world, cap = captures[0]
    again = world.capture(cap.t, frame_key=0, cameras=False, annotate=False)
    assert cap.points.dtype == np.float32 and cap.points.shape[1] == 5
    assert cap.point_ids.shape == (len(cap.points),)
    rings = cap.points[:, 4]
    assert set(np.unique(rings)) <= set(range(lidar.BEAMS)) and len(np.unique(rings)) > lidar.BEAMS // 2
    assert np.linalg.norm(cap.points[:, :3], axis=1).max() < lidar.MAX_RANGE + 0.2
    np.testing.assert_array_equal(again.points, cap.points)
    np.testing.assert_array_equal(again.point_ids, cap.point_ids)
    counts = {o.actor.uid: o.num_lidar_pts for o in cap.objects}
    for uid, n in counts.items():
        assert n == int((cap.point_ids == uid).sum())


def test_a_ray_hits_the_shape_not_the_box() -> None:
    """A level beam at windscreen height, from 10 m ahead of a sedan, returns from its windscreen,
    well behind the front face of its box."""
    w, l, h = 1.95, 4.62, 1.73
    raw = meshes.car(w, l, h, 0)
    mesh = meshes.fit_to_box(raw, w, l, h)
    sx = mesh.vertices[:, 0].max() / raw.vertices[:, 0].max()  # the fit shrinks the car along x only
    # Sedan: the belt line is at 0.52 h, the windscreen runs from (0.22 l, belt) to (0.05 l, roof).
    z = 0.8 * h  # above the ground, in the windscreen
    expected_x = sx * (0.22 * l - (0.8 - 0.52) / (1 - 0.52) * (0.22 - 0.05) * l)
    level = int(np.argmin(np.abs(lidar.ELEVATIONS_DEG)))
    global_T_lidar = np.eye(4)
    global_T_lidar[:3, 3] = [10.0, 0.0, z]
    pts, ids = lidar.cast(global_T_lidar, np.array([[0.0, 0.0, h / 2]]), np.array([[w, l, h]]), np.zeros(1),
                          np.array([7]), np.random.default_rng(0), meshes=[mesh])

    def the_beam(p: np.ndarray) -> np.ndarray:  # the level beam at azimuth pi
        return (p[:, 4] == level) & (np.abs(np.arctan2(p[:, 1], -p[:, 0])) < 1e-3)

    assert the_beam(pts).sum() == 1 and ids[the_beam(pts)][0] == 7
    hit_x = pts[the_beam(pts), 0][0] + 10.0
    assert abs(hit_x - expected_x) < 0.1, (hit_x, expected_x)
    boxed, _ = lidar.cast(global_T_lidar, np.array([[0.0, 0.0, h / 2]]), np.array([[w, l, h]]), np.zeros(1),
                          np.array([7]), np.random.default_rng(0))
    assert abs(boxed[the_beam(boxed), 0][0] + 10.0 - l / 2) < 0.1  # the box alone: its front face


def test_parts_reaching_out_of_the_box_are_hit() -> None:
    """Scenery need not fit its box: a street light's arm, 0.8 m beside its 0.3 m pole, returns."""
    h = 7.0
    mesh = meshes.pole(0.3, 0.3, h)  # the arm runs along x to 1.5 m, at 0.1-0.2 m below the top
    level = int(np.argmin(np.abs(lidar.ELEVATIONS_DEG)))
    global_T_lidar = np.eye(4)
    global_T_lidar[:3, 3] = [0.8, -10.0, h - 0.15]
    pts, ids = lidar.cast(global_T_lidar, np.array([[0.0, 0.0, h / 2]]), np.array([[0.3, 0.3, h]]), np.zeros(1),
                          np.array([3]), np.random.default_rng(0), meshes=[mesh])
    beam = (pts[:, 4] == level) & (np.abs(np.arctan2(pts[:, 1], pts[:, 0]) - np.pi / 2) < 1e-3)  # along +y
    assert beam.sum() == 1 and ids[beam][0] == 3
    assert abs(pts[beam, 1][0] - 9.95) < 0.1


PARTS_OF = [
    ("car", lambda s: meshes.car(1.95, 4.62, 1.73, s)),
    ("truck", lambda s: meshes.truck(2.52, 6.94, 2.84, s % 2)),
    ("bus", lambda s: meshes.bus(2.94, 11.19, 3.47, s % 2)),
    ("trailer", lambda s: meshes.trailer(2.90, 12.29, 3.87, s)),
    ("construction", lambda s: meshes.construction_vehicle(2.85, 6.37, 3.19, s % 2, 0.2)),
    ("cone", lambda s: meshes.traffic_cone(0.41, 0.41, 1.07, s % 2)),
    ("barrier", lambda s: meshes.barrier(2.53, 0.50, 0.98, s % 2)),
    ("cycle", lambda s: meshes.cycle(0.77, 2.11, 1.47, s == 1, s != 0, 1.0)),
    ("person", lambda s: meshes.person(0.67, 0.73, 1.77, 1.2, ("walk", "stand", "sit")[s])),
    ("building", lambda s: meshes.building(10.0, 20.0, 12.0, 3 + s)),
    ("tree", lambda s: meshes.tree(3.0, 3.0, 6.0)),
    ("pole", lambda s: meshes.pole(0.3, 0.3, 7.0)),
]


@pytest.mark.parametrize("name,make", PARTS_OF, ids=[p[0] for p in PARTS_OF])
def test_mesh_parts_are_the_drawn_solids(name, make) -> None:
    """Every face is planar on its normal's plane (the renderer's depth), and every face lies on
    the boundary of the mesh's solid parts, also after fitting into a smaller box."""
    for style in range(3):
        mesh = make(style)
        reach = np.abs(mesh.vertices).max(axis=0)
        for m in (mesh, meshes.fit_to_box(mesh, 1.6 * reach[1], 1.7 * reach[0], 1.8 * reach[2])):
            assert len(m.part_start) >= 2 and m.part_start[-1] == len(m.planes)
            np.testing.assert_allclose(np.linalg.norm(m.planes[:, :3], axis=1), 1.0, atol=1e-9)
            signed = m.vertices @ m.planes[:, :3].T - m.planes[:, 3]  # [V, P]
            inside = np.zeros((len(m.vertices), len(m.part_start) - 1), bool)
            for q in range(len(m.part_start) - 1):
                inside[:, q] = np.all(signed[:, m.part_start[q]:m.part_start[q + 1]] <= 1e-6, axis=1)
            assert inside.any(axis=1).all(), f"{name} style {style}: vertices outside every part"
            for f, n in zip(m.faces, m.normals):
                d = m.vertices[f] @ n
                assert np.ptp(d) < 1e-6, f"{name} style {style}: a face is not on its normal's plane"
                # Just behind the face's centre (against its outward normal) is solid.
                below = m.vertices[f].mean(axis=0) - 1e-4 * n
                s = below @ m.planes[:, :3].T - m.planes[:, 3]
                assert any(np.all(s[m.part_start[q]:m.part_start[q + 1]] <= 1e-9) for q in range(len(m.part_start) - 1)), \
                    f"{name} style {style}: no solid behind a face"
