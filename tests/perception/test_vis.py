"""Drawing (perception/vis.py) and the `data-engine show` command."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from nuscenes_fixture import Truth, write_nuscenes_fixture
from typer.testing import CliRunner

from data_engine.cli import app
from perception.schema import DETECTION_CLASSES
from perception.geometry import camera_rotation_from_yaw_pitch, invert_rigid, make_transform
from perception.vis import (
    CLASS_COLORS,
    OTHER_COLOR,
    BEVView,
    BoxLayer,
    class_color,
    compose_sample_view,
    draw_bev,
    draw_boxes_on_image,
)

K = np.array([[300.0, 0.0, 400.0], [0.0, 300.0, 225.0], [0.0, 0.0, 1.0]])
CAR = DETECTION_CLASSES.index("car")
PED = DETECTION_CLASSES.index("pedestrian")
BACKGROUND = 40


def _cam_T_ego() -> np.ndarray:
    """A camera at the ego origin looking forward (+x), level."""
    return invert_rigid(make_transform(camera_rotation_from_yaw_pitch(0.0), np.zeros(3)))


def _layer(centers: list[list[float]], sizes: list[list[float]], labels: list[int], **kw: object) -> BoxLayer:
    return BoxLayer(center=np.array(centers, float), size=np.array(sizes, float), yaw=np.zeros(len(centers)),
                    label=np.array(labels), **kw)  # type: ignore[arg-type]


def _has_color(image: np.ndarray, uv: tuple[float, float], color: tuple[int, int, int], radius: int = 2, tol: int = 40) -> bool:
    """Whether a pixel within ``radius`` of (u, v) is within ``tol`` of ``color`` on every channel."""
    u, v = int(round(uv[0])), int(round(uv[1]))
    patch = image[max(v - radius, 0):v + radius + 1, max(u - radius, 0):u + radius + 1].astype(int)
    return bool(np.any(np.all(np.abs(patch - np.array(color)) <= tol, axis=-1)))


def test_every_detection_class_has_its_own_colour() -> None:
    assert set(CLASS_COLORS) == set(DETECTION_CLASSES)
    assert len(set(CLASS_COLORS.values()) | {OTHER_COLOR}) == len(DETECTION_CLASSES) + 1
    assert class_color(CAR) == CLASS_COLORS["car"] and class_color(-1) == OTHER_COLOR


def test_box_layer_checks_shapes() -> None:
    with pytest.raises(ValueError, match="BoxLayer.size"):
        BoxLayer(center=np.zeros((2, 3)), size=np.zeros((3, 3)), yaw=np.zeros(2), label=np.zeros(2, int))
    with pytest.raises(ValueError, match="style"):
        _layer([[1, 0, 0]], [[1, 1, 1]], [0], style="dashed")


def test_box_in_front_is_drawn_at_its_projected_corners() -> None:
    image = np.full((450, 800, 3), BACKGROUND, np.uint8)
    layer = _layer([[10.0, 0.0, 0.0]], [[2.0, 4.0, 2.0]], [CAR])
    out = draw_boxes_on_image(image, K, _cam_T_ego(), layer)
    assert np.all(image == BACKGROUND)  # the input is left alone
    # Bottom front-left corner at ego (12, 1, -1): camera (x=-1, y=1, z=12).
    assert _has_color(out, (400 - 300 / 12, 225 + 300 / 12), CLASS_COLORS["car"])
    # Rear top-right corner at ego (8, -1, 1): camera (x=1, y=-1, z=8).
    assert _has_color(out, (400 + 300 / 8, 225 - 300 / 8), CLASS_COLORS["car"])
    assert not _has_color(out, (100, 100), CLASS_COLORS["car"], radius=20)
    # The front face carries an X: its centre (ego (12, 0, 0)) is on both diagonals.
    assert _has_color(out, (400, 225), CLASS_COLORS["car"], radius=1)


def test_box_behind_the_camera_draws_nothing() -> None:
    image = np.full((450, 800, 3), BACKGROUND, np.uint8)
    out = draw_boxes_on_image(image, K, _cam_T_ego(), _layer([[-10.0, 0.0, 0.0]], [[2.0, 4.0, 2.0]], [CAR]))
    assert np.array_equal(out, image)


def test_edges_crossing_the_near_plane_are_clipped_not_dropped() -> None:
    image = np.full((450, 800, 3), BACKGROUND, np.uint8)
    # 20 m long, from x = -8 (behind the camera) to x = 12; its left side runs at y = 3.5.
    out = draw_boxes_on_image(image, K, _cam_T_ego(), _layer([[2.0, 3.0, 0.0]], [[1.0, 20.0, 1.0]], [PED]))
    # The bottom-left long edge passes ego (3, 3.5, -0.5): camera (-3.5, 0.5, 3) -> pixel (50, 275).
    assert _has_color(out, (50, 275), CLASS_COLORS["pedestrian"])
    assert _has_color(out, (400 - 300 * 3.5 / 12, 225 + 300 * 0.5 / 12), CLASS_COLORS["pedestrian"])


def test_predictions_look_different_from_ground_truth() -> None:
    image = np.full((450, 800, 3), BACKGROUND, np.uint8)
    args = ([[10.0, 0.0, 0.0]], [[2.0, 4.0, 2.0]], [CAR])
    gt = draw_boxes_on_image(image, K, _cam_T_ego(), _layer(*args))
    pred = draw_boxes_on_image(image, K, _cam_T_ego(), _layer(*args, style="pred"))
    scored = draw_boxes_on_image(image, K, _cam_T_ego(), _layer(*args, style="pred", score=np.array([0.87])))
    # Along the bottom edge of the front face (v = 225 + 300 / 12) gt is solid, pred has gaps.
    row = 225 + 25
    assert all(_has_color(gt, (u, row), CLASS_COLORS["car"], radius=1) for u in range(382, 419))
    gaps = [u for u in range(382, 419) if not np.any(pred[row - 1:row + 2, u] != BACKGROUND)]
    assert 3 <= len(gaps) <= 30
    painted = [int(np.any(x != BACKGROUND, axis=-1).sum()) for x in (gt, pred, scored)]
    assert painted[1] < 0.7 * painted[0]  # dashed and thinner
    assert painted[2] > painted[1] + 20  # the score is written


def test_bev_puts_forward_up_and_left_left() -> None:
    view = BEVView(forward=30, backward=10, left=20, right=20, pixels_per_metre=5)
    assert view.shape == (200, 200)
    layer = _layer([[20.0, 0.0, 0.0], [0.0, 12.0, 0.0]], [[2.0, 4.0, 1.5], [1.0, 1.0, 1.5]], [CAR, PED])
    bev = draw_bev(view, boxes=[layer])
    ego_u, ego_v = view.to_pixels(np.zeros(2))
    assert (ego_u, ego_v) == pytest.approx((99.5, 149.5))
    front_u, front_v = view.to_pixels(np.array([22.0, 0.0]))  # the car's front edge, 20 m ahead
    assert front_v < ego_v and front_u == pytest.approx(ego_u)
    assert _has_color(bev, (front_u, front_v), CLASS_COLORS["car"], radius=1)
    side_u, side_v = view.to_pixels(np.array([0.0, 12.5]))  # the pedestrian's left edge, 12 m to the left
    assert side_u < ego_u and _has_color(bev, (side_u, side_v), CLASS_COLORS["pedestrian"], radius=1)
    assert _has_color(bev, view.to_pixels(np.array([1.0, 0.0])), (235, 235, 235), radius=0, tol=5)  # the ego car


def test_bev_drivable_area_is_the_map_seen_from_the_ego() -> None:
    resolution, size = 0.1, 400  # a 40 m x 40 m map
    mask = np.zeros((size, size), np.uint8)
    # Drivable: global x in [20, 26], y in [10, 16]; rows count down from y = 40 m.
    mask[size - 160:size - 100, 200:260] = 255
    pix_T_global = np.array([[1 / resolution, 0, 0, 0], [0, -1 / resolution, 0, size], [0, 0, 1, 0], [0, 0, 0, 1]])
    yaw = 0.7
    global_T_ego = make_transform(np.array([[np.cos(yaw), -np.sin(yaw), 0], [np.sin(yaw), np.cos(yaw), 0], [0, 0, 1]]),
                                  np.array([18.0, 8.0, 0.0]))
    view = BEVView(forward=20, backward=20, left=20, right=20, pixels_per_metre=4)
    bev = draw_bev(view, map_mask=mask, pix_T_ego=pix_T_global @ global_T_ego, draw_ego=False)
    ego_T_global = invert_rigid(global_T_ego)
    on_road = (ego_T_global @ np.array([23.0, 13.0, 0.0, 1.0]))[:2]
    off_road = (ego_T_global @ np.array([23.0, 20.0, 0.0, 1.0]))[:2]
    assert _has_color(bev, view.to_pixels(on_road), (72, 72, 72), radius=0, tol=2)
    assert not _has_color(bev, view.to_pixels(off_road), (72, 72, 72), radius=0, tol=2)


def test_bev_draws_lidar_points_where_they_are() -> None:
    view = BEVView(forward=20, backward=20, left=20, right=20, pixels_per_metre=4)
    bev = draw_bev(view, points_ego=np.array([[10.0, -10.0, 0.0, 5.0]]), draw_ego=False)
    u, v = np.round(view.to_pixels(np.array([10.0, -10.0]))).astype(int)
    assert u > 80 and v < 80  # ahead and to the right
    assert bev[v, u].tolist() != bev[v, u - 3].tolist()


def test_compose_lays_out_cameras_like_nuscenes() -> None:
    channels = ["CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"]
    colors = {ch: (20 * i + 60, 200 - 20 * i, 100) for i, ch in enumerate(channels)}
    images = {ch: np.full((450, 800, 3), c, np.uint8) for ch, c in colors.items() if ch != "CAM_BACK_RIGHT"}
    bev = np.full((300, 300, 3), (0, 0, 250), np.uint8)
    out = compose_sample_view(images, bev, "scene-0001 | sample 1/3 | night", tile_width=160, title_height=30)
    assert out.shape == (30 + 2 * 90, 3 * 160 + 180, 3)
    for i, ch in enumerate(channels[:5]):
        r, c = divmod(i, 3)
        assert out[30 + r * 90 + 60, c * 160 + 100].tolist() == list(colors[ch]), ch
    assert out[30 + 90 + 60, 2 * 160 + 100].max() < 40  # CAM_BACK_RIGHT is missing: a dark tile
    assert out[150, 3 * 160 + 90].tolist() == [0, 0, 250]  # the BEV panel on the right
    assert out[:30].max() > 200  # the title is written


# ------------------------------------------------------------------------------------------------
# data-engine show
# ------------------------------------------------------------------------------------------------


@pytest.fixture()
def fixture_dataset(tmp_path: Path) -> Truth:
    return write_nuscenes_fixture(tmp_path / "ds")


def test_show_writes_a_png_of_the_expected_size(fixture_dataset: Truth, tmp_path: Path) -> None:
    out = tmp_path / "view" / "s.png"
    token = fixture_dataset.sample_tokens[1][1]
    result = CliRunner().invoke(app, ["show", str(fixture_dataset.root), "--sample", token, "--out", str(out),
                                      "--tile-width", "320"])
    assert result.exit_code == 0, result.output
    picture = cv2.imread(str(out))
    assert picture is not None and picture.shape == (36 + 2 * 180, 3 * 320 + 360, 3)
    # The front-camera tile shows the fixture's image (sky on top, ground below) with the truck drawn.
    front = picture[36:36 + 180, 320:640]
    assert front[5, 300].tolist() != front[170, 300].tolist()
    assert np.any(np.all(np.abs(front.astype(int) - CLASS_COLORS["truck"]) < 40, axis=-1))


def test_show_reports_a_deleted_image_by_name(fixture_dataset: Truth, tmp_path: Path) -> None:
    victim = next(p for p in fixture_dataset.image_paths if p.parent.name == "CAM_BACK_LEFT")
    victim.unlink()
    out = tmp_path / "s.png"
    runner = CliRunner()
    results = [runner.invoke(app, ["show", str(fixture_dataset.root), "--sample", str(i), "--out", str(out)]) for i in range(6)]
    failed = [r for r in results if r.exit_code != 0]
    assert len(failed) == 1  # only the sample whose image is gone
    assert failed[0].exit_code == 1 and isinstance(failed[0].exception, SystemExit)  # a clean exit, no crash
    message = failed[0].stderr.strip()
    assert message == f"error: {victim}: image file missing" and "Traceback" not in failed[0].output


def test_show_reports_a_corrupt_image_and_a_bad_sample(fixture_dataset: Truth, tmp_path: Path) -> None:
    victim = fixture_dataset.image_paths[0]
    victim.write_bytes(b"\x00" * 100)
    root, out = str(fixture_dataset.root), str(tmp_path / "s.png")
    result = CliRunner().invoke(app, ["show", root, "--sample", "0", "--out", out])
    assert result.exit_code == 1 and f"{victim}: image file is corrupt" in result.stderr
    result = CliRunner().invoke(app, ["show", root, "--sample", "99", "--out", out])
    assert result.exit_code == 1 and "out of range" in result.stderr and not Path(out).exists()
