"""Tests of perception/boxes.py: the box codec (targets and decoding) shared by the whole stack.

The central test is the round trip: encode boxes, lay the regression targets out as dense maps at
their cells, decode, and recover every box exactly. The others pin the heatmap (peak 1.0, radius,
max-combination), dropping and truncation rules, and the decoder's threshold, top-k and batching.
"""

from __future__ import annotations

import numpy as np
import pytest

from perception.boxes import (
    NUM_REGRESSION,
    REGRESSION_CHANNELS,
    REGRESSION_SLICES,
    BoxCodec,
    DecodedBoxes,
    DetectionTargets,
    gather_regression,
)
from perception.heatmap import gaussian_radius
from perception.schema import DETECTION_CLASSES
from perception.geometry import BEVGrid
from perception.presets import PRESETS, get_preset

# Typical nuScenes (w, l, h) in metres per detection class (close to the dataset's class means).
CLASS_SIZES = {
    "car": (1.95, 4.62, 1.73),
    "truck": (2.51, 6.93, 2.84),
    "construction_vehicle": (2.85, 6.37, 3.19),
    "bus": (2.94, 10.5, 3.47),
    "trailer": (2.90, 12.29, 3.87),
    "barrier": (2.53, 0.50, 0.98),
    "motorcycle": (0.77, 2.11, 1.47),
    "bicycle": (0.60, 1.70, 1.28),
    "pedestrian": (0.67, 0.73, 1.77),
    "traffic_cone": (0.41, 0.41, 1.07),
}


def tiny_codec(**kw) -> BoxCodec:
    return BoxCodec.from_preset(get_preset("tiny"), **kw)


def random_boxes(rng: np.random.Generator, grid: BEVGrid, n: int, max_distance: float | None = None) -> dict:
    """n boxes of all classes spread over the grid, each centre in its own cell, some on the border."""
    X, Y = grid.shape
    res = grid.resolution
    cells = rng.choice(X * Y, size=4 * n, replace=False)
    rows, cols = cells // Y, cells % Y
    # Border cells first: the four corners and edge cells.
    rows[:4], cols[:4] = [0, 0, X - 1, X - 1], [0, Y - 1, 0, Y - 1]
    # Two objects of different classes in adjacent cells.
    rows[4:6], cols[4:6] = [X // 2 + 3, X // 2 + 4], [Y // 2 - 2, Y // 2 - 2]
    cells = rows * Y + cols
    _, first = np.unique(cells, return_index=True)
    pick = np.sort(first)[:n]
    rows, cols = rows[pick], cols[pick]
    frac = rng.uniform(0, 1, size=(n, 2))
    frac[:4] = [[0.0, 0.0], [0.0, 1 - 1e-6], [1 - 1e-6, 0.0], [1 - 1e-6, 1 - 1e-6]]  # on the very edge
    x = grid.x_min + (rows + frac[:, 0]) * res
    y = grid.y_min + (cols + frac[:, 1]) * res
    # The largest float inside the grid: (x - x_min) / res rounds to exactly X here.
    x[3], y[3] = np.nextafter(grid.x_max, -np.inf), np.nextafter(grid.y_max, -np.inf)
    if max_distance is not None:
        assert np.all(np.hypot(x[:4], y[:4]) > max_distance)  # callers turn max_distance off for this
    label = np.arange(n) % len(DETECTION_CLASSES)
    label[4:6] = [0, 8]  # car next to pedestrian
    size = np.array([CLASS_SIZES[DETECTION_CLASSES[k]] for k in label]) * rng.uniform(0.8, 1.2, (n, 3))
    yaw = rng.uniform(-np.pi, np.pi, n)
    yaw[6:10] = [np.pi, -np.pi, np.pi - 1e-7, -np.pi + 1e-7]
    z = rng.uniform(-1.0, 3.0, n)
    velocity = rng.normal(0, 5, (n, 2))
    return dict(center=np.stack([x, y, z], 1), size_wlh=size, yaw=yaw, velocity=velocity, label=label)


def dense_maps(codec: BoxCodec, t: DetectionTargets) -> tuple[np.ndarray, np.ndarray]:
    """(heatmap [C, X, Y], regression [10, X, Y]): each target row written at its cell."""
    X, Y = codec.grid.shape
    reg = np.zeros((NUM_REGRESSION, X * Y), dtype=np.float32)
    reg[:, t.indices[t.mask]] = t.regression[t.mask].T
    return t.heatmap, reg.reshape(NUM_REGRESSION, X, Y)


def angle_diff(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(np.angle(np.exp(1j * (a - b))))


def assert_recovered(dec: DecodedBoxes, boxes: dict, keep: np.ndarray) -> None:
    """Every kept input box is decoded once, with its class, centre, size, yaw and velocity."""
    assert len(dec) == len(keep)
    c = boxes["center"][keep]
    # Match by centre: nearest decoded box to each input box.
    d = np.linalg.norm(dec.center[None, :, :] - c[:, None, :], axis=2)
    j = d.argmin(axis=1)
    assert len(np.unique(j)) == len(keep)
    np.testing.assert_allclose(dec.center[j], c, atol=1e-5, rtol=0)
    np.testing.assert_allclose(dec.size[j], boxes["size_wlh"][keep], rtol=1e-5)
    assert angle_diff(dec.yaw[j], boxes["yaw"][keep]).max() < 1e-5
    np.testing.assert_allclose(dec.velocity[j], boxes["velocity"][keep], atol=1e-5)
    np.testing.assert_array_equal(dec.label[j], boxes["label"][keep])
    np.testing.assert_array_equal(dec.score, 1.0)


@pytest.mark.parametrize("name", ["tiny", "edge", "base"])
def test_round_trip_recovers_every_box(name):
    preset = PRESETS[name]
    codec = BoxCodec.from_preset(preset, max_distance=None)
    assert codec.grid == preset.det_grid and codec.classes == DETECTION_CLASSES
    boxes = random_boxes(np.random.default_rng(0), codec.grid, 60)
    t = codec.encode(**boxes)
    M = preset.tasks.max_objects
    assert t.heatmap.shape == (10, *preset.det_grid.shape) and t.heatmap.dtype == np.float32
    assert t.indices.shape == (M,) and t.indices.dtype == np.int64
    assert t.regression.shape == (M, 10) and t.regression.dtype == np.float32
    assert t.mask.dtype == bool and t.velocity_valid.dtype == bool and t.labels.dtype == np.int64
    assert t.num_objects == 60 and np.all(t.velocity_valid[:60]) and not np.any(t.mask[60:])
    np.testing.assert_array_equal(t.box_index[:60], np.arange(60))
    assert np.all(t.regression[:60, :2] >= 0) and np.all(t.regression[:60, :2] <= 1)
    assert t.indices[3] == t.heatmap[0].size - 1  # the last cell
    dec = codec.decode(*dense_maps(codec, t))
    assert_recovered(dec, boxes, np.arange(60))


def test_round_trip_on_a_non_square_off_centre_grid():
    codec = BoxCodec(BEVGrid(-20.0, 40.0, -12.0, 12.0, 0.6), DETECTION_CLASSES, max_objects=64)
    assert codec.grid.shape == (100, 40)
    boxes = random_boxes(np.random.default_rng(5), codec.grid, 40)
    t = codec.encode(**boxes)
    assert t.num_objects == 40 and t.indices.max() < 100 * 40
    assert_recovered(codec.decode(*dense_maps(codec, t)), boxes, np.arange(40))


def test_base_has_coarser_detection_grid():
    codec = BoxCodec.from_preset(get_preset("base"))
    assert codec.grid.resolution == 1.0 and codec.grid.shape == (100, 100)
    assert codec.max_objects == 500 and codec.max_distance == 60.0


def test_indices_and_offsets_follow_the_grid_layout():
    codec = tiny_codec()
    g = codec.grid  # 64 x 64 cells of 0.8 m from -25.6 m
    # x = 1.0 m -> row (1.0 + 25.6) / 0.8 = 33.25; y = -3.0 m -> col 28.25
    t = codec.encode([[1.0, -3.0, 0.5]], [[2.0, 4.0, 1.5]], [0.3], [[1.0, -2.0]], [3])
    assert t.indices[0] == 33 * 64 + 28
    np.testing.assert_allclose(t.regression[0], [0.25, 0.25, 0.5, np.log(2), np.log(4), np.log(1.5),
                                                 np.sin(0.3), np.cos(0.3), 1.0, -2.0], rtol=1e-6, atol=1e-6)
    assert t.heatmap[3, 33, 28] == 1.0 and t.heatmap.argmax() == 3 * 64 * 64 + 33 * 64 + 28
    assert g.shape == (64, 64)
    assert REGRESSION_CHANNELS[:2] == ("offset_row", "offset_col") and REGRESSION_CHANNELS[8:] == ("vx", "vy")
    assert REGRESSION_CHANNELS[REGRESSION_SLICES["size"]] == ("log_w", "log_l", "log_h")
    assert REGRESSION_CHANNELS[REGRESSION_SLICES["velocity"]] == ("vx", "vy")


def test_gaussian_radius_solves_the_three_cornernet_cases():
    o = 0.1
    for H, W in [(5.8, 2.4), (13.1, 3.7), (1.0, 1.0), (40.0, 2.0)]:
        r = float(gaussian_radius(H, W, o))
        iou_shift = (H - r) * (W - r) / (2 * H * W - (H - r) * (W - r))
        iou_shrink = (H - 2 * r) * (W - 2 * r) / (H * W)
        iou_grow = H * W / ((H + 2 * r) * (W + 2 * r))
        ious = np.array([iou_shift, iou_shrink, iou_grow])
        assert ious.min() == pytest.approx(o, abs=1e-9) and np.all(ious >= o - 1e-9)
        assert 0 < r < min(H, W) / 2


def test_heatmap_peak_radius_and_gaussian_values():
    codec = tiny_codec()
    t = codec.encode([[0.1, 0.1, 0.0]], [CLASS_SIZES["car"]], [0.0], [[0.0, 0.0]], [0])
    i, j = 32, 32
    r = int(codec.radius(np.array([CLASS_SIZES["car"]]))[0])
    assert r == 2  # small boxes hit the minimum radius
    sigma = (2 * r + 1) / 6
    h = t.heatmap[0]
    assert h[i, j] == 1.0 and np.count_nonzero(h == 1.0) == 1
    assert h[i + 1, j] == pytest.approx(np.exp(-1 / (2 * sigma**2)), rel=1e-6)
    assert h[i - 2, j + 2] == pytest.approx(np.exp(-8 / (2 * sigma**2)), rel=1e-6)
    assert h[i + 3, j] == 0 and h[i, j - 3] == 0 and np.count_nonzero(h) == (2 * r + 1) ** 2
    assert np.all(t.heatmap[1:] == 0)
    # A long trailer at fine resolution gets a larger radius than the minimum.
    fine = BoxCodec(BEVGrid(-10, 10, -10, 10, 0.1), DETECTION_CLASSES)
    assert fine.radius(np.array([CLASS_SIZES["trailer"]]))[0] > 2


def test_gaussians_max_combine_and_are_clipped_at_the_border():
    codec = tiny_codec()
    a = dict(center=[[0.1, 0.1, 0.0]], size_wlh=[[2.0, 4.0, 1.5]], yaw=[0.0], velocity=[[0, 0]], label=[0])
    b = dict(center=[[1.7, 0.9, 0.0]], size_wlh=[[2.0, 4.0, 1.5]], yaw=[0.0], velocity=[[0, 0]], label=[0])
    both = {k: np.concatenate([np.asarray(a[k]), np.asarray(b[k])]) for k in a}
    ha, hb, hab = (codec.encode(**x).heatmap for x in (a, b, both))
    assert np.count_nonzero((ha > 0) & (hb > 0)) > 0  # they overlap
    np.testing.assert_array_equal(hab, np.maximum(ha, hb))
    corner = codec.encode([[-25.6, 25.59, 0.0]], [[2.0, 4.0, 1.5]], [0.0], [[0, 0]], [5]).heatmap[5]
    assert corner[0, 63] == 1.0 and np.count_nonzero(corner) == 9  # 3 x 3 of the 5 x 5 window remain


def test_out_of_grid_ignored_and_far_boxes_are_dropped():
    codec = tiny_codec()  # grid [-25.6, 25.6) in x and y, max_distance 60 m (beyond the grid)
    below = np.nextafter(25.6, 0.0)  # (below + 25.6) / 0.8 rounds to exactly 64.0
    center = [[25.6, 0, 0], [-25.6 - 1e-9, 0, 0], [0, 25.6, 0], [0, -30, 0], [3, 3, 0], [4, 4, 0], [below, below, 0]]
    label = [0, 1, 2, 3, 4, -1, 6]
    t = codec.encode(center, np.ones((7, 3)), np.zeros(7), np.zeros((7, 2)), label)
    np.testing.assert_array_equal(t.box_index[: t.num_objects], [4, 6])
    np.testing.assert_array_equal(t.labels[:3], [4, 6, -1])
    assert t.indices[1] == 63 * 64 + 63  # a hair below x_max, y_max lands in the last cell
    assert t.heatmap[[0, 1, 2, 3, 5]].max() == 0
    near = BoxCodec(codec.grid, codec.classes, max_distance=5.0)
    t = near.encode([[3, 3, 0], [4, 4, 0]], np.ones((2, 3)), np.zeros(2), np.zeros((2, 2)), [0, 0])
    np.testing.assert_array_equal(t.box_index, np.r_[0, np.full(255, -1)])


def test_max_objects_keeps_the_nearest_in_input_order():
    codec = tiny_codec(max_objects=3)
    x = np.array([20.0, 2.0, -15.0, 1.0, 9.0, -3.0])
    center = np.stack([x, np.full(6, 0.5), np.zeros(6)], 1)
    t = codec.encode(center, np.ones((6, 3)), np.zeros(6), np.zeros((6, 2)), np.arange(6))
    np.testing.assert_array_equal(t.box_index, [1, 3, 5])
    np.testing.assert_array_equal(t.labels, [1, 3, 5])
    assert t.heatmap[[0, 2, 4]].max() == 0  # dropped boxes leave no heatmap either


def test_nan_velocity_is_masked_with_finite_zero_targets():
    codec = tiny_codec()
    vel = np.array([[1.0, 2.0], [np.nan, np.nan], [3.0, np.nan]])
    t = codec.encode(np.array([[0, 0, 0], [5, 5, 0], [-5, 5, 0]]), np.ones((3, 3)), np.zeros(3), vel, [0, 1, 2])
    np.testing.assert_array_equal(t.velocity_valid[:4], [True, False, False, False])
    assert np.all(np.isfinite(t.regression))
    np.testing.assert_array_equal(t.regression[1:3, 8:10], 0.0)
    np.testing.assert_array_equal(t.regression[0, 8:10], [1.0, 2.0])


def test_encode_empty_and_invalid_inputs():
    codec = tiny_codec()
    t = codec.encode(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), np.zeros((0, 2)), np.zeros(0, np.int64))
    assert t.num_objects == 0 and t.heatmap.max() == 0 and len(codec.decode(*dense_maps(codec, t))) == 0
    with pytest.raises(ValueError):
        codec.encode([[0, 0, 0]], [[1, 1, 1]], [0], [[0, 0]], [10])
    with pytest.raises(ValueError):
        codec.encode([[0, 0, 0]], [[0, 1, 1]], [0], [[0, 0]], [0])


def test_decode_threshold_topk_and_order():
    codec = tiny_codec()
    C, X, Y = codec.heatmap_shape
    heat = np.zeros((C, X, Y), dtype=np.float32)
    heat[2, 10, 10], heat[2, 10, 11] = 0.9, 0.5  # 0.5 is next to a higher cell: not a peak
    heat[0, 30, 40], heat[7, 0, 0], heat[9, 63, 63], heat[4, 20, 20] = 0.3, 0.6, 0.05, 0.1
    reg = np.zeros((NUM_REGRESSION, X, Y), dtype=np.float32)
    reg[7] = 1.0  # cos yaw
    dec = codec.decode(heat, reg)
    np.testing.assert_allclose(dec.score, [0.9, 0.6, 0.3], rtol=1e-6)  # 0.1 is not > 0.1
    np.testing.assert_array_equal(dec.label, [2, 7, 0])
    np.testing.assert_allclose(dec.center[:, :2], [[-25.6 + 8, -25.6 + 8], [-25.6, -25.6], [-25.6 + 24, -25.6 + 32]])
    np.testing.assert_allclose(dec.size, 1.0)
    assert len(codec.decode(heat, reg, score_threshold=0.0)) == 5
    top = codec.decode(heat, reg, max_detections=2)
    np.testing.assert_array_equal(top.label, [2, 7])


def test_decode_plateau_and_adjacent_classes():
    codec = tiny_codec()
    C, X, Y = codec.heatmap_shape
    heat = np.zeros((C, X, Y), dtype=np.float32)
    heat[1, 5, 5] = heat[1, 5, 6] = 0.8  # two equal adjacent cells: both peaks (as max-pool decoding)
    heat[3, 5, 7] = 0.95  # a different class next to them does not suppress them
    dec = codec.decode(heat, np.zeros((NUM_REGRESSION, X, Y), np.float32))
    np.testing.assert_array_equal(dec.label, [3, 1, 1])


def test_batched_decode_equals_per_sample_decode():
    codec = tiny_codec()
    rng = np.random.default_rng(3)
    heat = rng.uniform(0, 1, (3, *codec.heatmap_shape)).astype(np.float32) ** 4
    reg = rng.normal(0, 1, (3, NUM_REGRESSION, *codec.grid.shape)).astype(np.float32)
    batched = codec.decode_batch(heat, reg, score_threshold=0.3, max_detections=50)
    assert len(batched) == 3
    for b in range(3):
        single = codec.decode(heat[b], reg[b], score_threshold=0.3, max_detections=50)
        assert len(single) == 50
        for k, v in single.as_dict().items():
            np.testing.assert_array_equal(getattr(batched[b], k), v)
        assert np.all(np.diff(single.score) <= 0)


def test_gather_regression_reads_rows_at_indices():
    codec = tiny_codec()
    boxes = random_boxes(np.random.default_rng(1), codec.grid, 20)
    t = codec.encode(**boxes)
    _, reg = dense_maps(codec, t)
    got = gather_regression(reg, t.indices[t.mask])
    assert got.shape == (20, 10)
    np.testing.assert_array_equal(got, t.regression[t.mask])


def test_optional_circle_nms():
    codec = tiny_codec()
    C, X, Y = codec.heatmap_shape
    heat = np.zeros((C, X, Y), dtype=np.float32)
    heat[0, 10, 10], heat[0, 10, 12], heat[1, 10, 11], heat[0, 20, 20] = 0.9, 0.8, 0.7, 0.6
    reg = np.zeros((NUM_REGRESSION, X, Y), np.float32)
    assert len(codec.decode(heat, reg)) == 4  # off by default
    np.testing.assert_allclose(codec.decode(heat, reg, nms_radius=2.0).score, [0.9, 0.7, 0.6], rtol=1e-6)
    agnostic = codec.decode(heat, reg, nms_radius=2.0, nms_class_agnostic=True)
    np.testing.assert_allclose(agnostic.score, [0.9, 0.6], rtol=1e-6)  # 0.7 is 0.8 m from 0.9
    per_class = codec.decode(heat, reg, nms_radius=[1.0] + [5.0] * 9, nms_class_agnostic=True)
    np.testing.assert_allclose(per_class.score, [0.9, 0.8, 0.6], rtol=1e-6)  # the kept box's radius applies
    assert len(codec.decode(heat, reg, nms_radius=2.0, max_detections=1)) == 1


def test_decode_logits_is_decode_batch_of_the_sigmoid_for_arrays_and_tensors() -> None:
    import torch

    codec = BoxCodec.from_preset(get_preset("tiny"))
    rng = np.random.default_rng(3)
    X, Y = codec.grid.shape
    logits = rng.normal(-3.0, 2.0, (2, codec.num_classes, X, Y)).astype(np.float32)
    reg = rng.normal(0.0, 0.5, (2, 10, X, Y)).astype(np.float32)
    expected = codec.decode_batch(1.0 / (1.0 + np.exp(-logits)), reg, 0.3, 50)
    for out in ({"heatmap": logits, "regression": reg},
                {"heatmap": torch.from_numpy(logits), "regression": torch.from_numpy(reg)}):
        got = codec.decode_logits(out, 0.3, 50)
        assert len(got) == 2 and sum(len(b) for b in got) > 0
        for a, b in zip(got, expected):
            assert len(a) == len(b) and np.allclose(a.center, b.center) and np.allclose(a.score, b.score, atol=1e-6)
