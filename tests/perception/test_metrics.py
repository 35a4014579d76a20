"""perception.metrics on hand-made cases whose answers are worked out by hand (fast).

The agreement with the official devkit on realistic predictions is tests/perception/test_metrics_devkit.py.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from perception.schema import DETECTION_CLASSES
from perception.geometry import BEVGrid
from perception.metrics import (
    BEVIoU,
    DetectionConfig,
    DetectionEvaluator,
    DetectionMetrics,
    EvalBoxes,
    range_capped,
    range_capped_to_grid,
)
from perception.metrics.detection_boxes import attributes_from_velocity

ATTR = {"car": "vehicle.moving", "truck": "vehicle.parked", "bus": "vehicle.moving", "trailer": "vehicle.parked",
        "construction_vehicle": "vehicle.parked", "pedestrian": "pedestrian.standing",
        "motorcycle": "cycle.with_rider", "bicycle": "cycle.without_rider", "traffic_cone": "", "barrier": ""}


def make(*boxes: dict) -> EvalBoxes:
    """EvalBoxes from dicts: name, x, y (m) and optional size, yaw, vel, attr, score, pts."""
    return EvalBoxes.create(
        center=[(b["x"], b.get("y", 0.0), 1.0) for b in boxes],
        size=[b.get("size", (2.0, 4.0, 1.5)) for b in boxes],
        yaw=[b.get("yaw", 0.3) for b in boxes],
        names=[b["name"] for b in boxes],
        velocity=[b.get("vel", (1.0, -0.5)) for b in boxes],
        attributes=[b["attr"] if "attr" in b else ATTR[b["name"]] for b in boxes],
        score=[b.get("score", 0.5) for b in boxes],
        num_pts=[b.get("pts", 10) for b in boxes],
    )


def evaluate(*samples: tuple, config: DetectionConfig | None = None) -> DetectionMetrics:
    """Score samples given as (gt, pred) or (gt, pred, ego_xy)."""
    ev = DetectionEvaluator(config)
    for i, (gt, pred, *ego) in enumerate(samples):
        ev.add_sample(f"s{i}", gt, pred, *ego)
    return ev.compute()


def one_of_each(dx: float = 0.0, **changes) -> tuple[list[dict], list[dict]]:
    """GT with one box of each class at 10..28 m, and predictions equal to it (shifted by dx m)."""
    gt = [dict(name=c, x=10.0 + 2 * i, y=5.0) for i, c in enumerate(DETECTION_CLASSES)]
    pred = [dict(g, x=g["x"] + dx, score=0.9 - 0.01 * i, **changes) for i, g in enumerate(gt)]
    return gt, pred


# --------------------------------------------------------------------------------------------------
# Detection
# --------------------------------------------------------------------------------------------------


def test_perfect_predictions_score_one():
    gt, pred = one_of_each()
    m = evaluate((make(*gt), make(*pred)), (make(*gt[:4]), make(*pred[:4])))
    assert m.mean_ap == pytest.approx(1.0, abs=1e-12)
    assert m.nd_score == pytest.approx(1.0, abs=1e-12)
    for name, err in m.tp_errors.items():
        assert err == pytest.approx(0.0, abs=1e-12), name
    assert math.isnan(m.label_tp_errors["traffic_cone"]["orient_err"])
    assert math.isnan(m.label_tp_errors["barrier"]["vel_err"])
    assert not math.isnan(m.label_tp_errors["barrier"]["orient_err"])


def test_offset_of_0_7_m_matches_from_1_m_on():
    m = evaluate((make(dict(name="car", x=10.0, y=3.0)), make(dict(name="car", x=10.7, y=3.0))))
    assert m.label_aps["car"] == pytest.approx({0.5: 0.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0})
    assert m.mean_dist_aps["car"] == pytest.approx(0.75)
    assert m.label_tp_errors["car"]["trans_err"] == pytest.approx(0.7, abs=1e-9)
    assert m.label_tp_errors["car"]["scale_err"] == pytest.approx(0.0, abs=1e-12)
    # A class without ground truth has AP 0 and TP errors 1; the mean runs over all 10 classes.
    assert m.mean_ap == pytest.approx(0.075)
    assert m.label_tp_errors["truck"]["trans_err"] == 1.0
    assert m.tp_errors["trans_err"] == pytest.approx((0.7 + 9) / 10)


def test_match_threshold_is_strict():
    # Offset exactly 1 m (exact in floating point): no match at 1 m, a match at 2 m.
    m = evaluate((make(dict(name="car", x=10.0)), make(dict(name="car", x=11.0))))
    assert m.label_aps["car"] == pytest.approx({0.5: 0.0, 1.0: 0.0, 2.0: 1.0, 4.0: 1.0})


def test_nds_clips_each_mean_tp_error_at_one():
    # Car AVE 5 m/s; the 7 other classes with velocity have no ground truth (error 1): mAVE = 12 / 8.
    gt = make(dict(name="car", x=10.0, vel=(0.0, 0.0)))
    m = evaluate((gt, make(dict(name="car", x=10.0, vel=(3.0, 4.0)))))
    assert m.tp_errors["vel_err"] == pytest.approx(12 / 8)
    assert m.tp_scores["vel_err"] == 0.0
    # mAP = 0.1 (car AP 1 of 10 classes); TP errors: car 0 and 9 classes at 1 (cone/barrier NaN where undefined).
    assert m.tp_scores["trans_err"] == pytest.approx(1 - 9 / 10)
    expected = (5 * 0.1 + (1 - 9 / 10) + (1 - 9 / 10) + (1 - 8 / 9) + 0.0 + (1 - 7 / 8)) / 10
    assert m.nd_score == pytest.approx(expected, abs=1e-12)


def test_scale_error_is_one_minus_aligned_iou():
    # GT 2 x 4 x 1.5 (12 m3), prediction 2.5 x 4 x 1 (10 m3): aligned intersection 2 x 4 x 1 = 8 m3.
    gt = make(dict(name="truck", x=20.0, size=(2.0, 4.0, 1.5), yaw=0.0))
    pred = make(dict(name="truck", x=20.0, size=(2.5, 4.0, 1.0), yaw=1.0))  # heading does not enter ASE
    m = evaluate((gt, pred))
    assert m.label_tp_errors["truck"]["scale_err"] == pytest.approx(1 - 8 / (12 + 10 - 8), abs=1e-12)


@pytest.mark.parametrize(
    "name, yaw_error, expected",
    [("car", math.pi / 2, math.pi / 2), ("car", -math.pi / 2, math.pi / 2), ("car", math.pi, math.pi),
     ("car", 2 * math.pi - 0.1, 0.1), ("barrier", math.pi, 0.0), ("barrier", 0.75 * math.pi, 0.25 * math.pi),
     ("barrier", math.pi / 2, math.pi / 2)],
)
def test_orientation_error(name, yaw_error, expected):
    m = evaluate((make(dict(name=name, x=12.0, yaw=3.0)), make(dict(name=name, x=12.0, yaw=3.0 + yaw_error))))
    assert m.label_tp_errors[name]["orient_err"] == pytest.approx(expected, abs=1e-9)


def test_velocity_and_attribute_errors():
    gt = make(dict(name="car", x=10.0, vel=(1.0, 0.0), attr="vehicle.moving"),
              dict(name="pedestrian", x=-10.0, vel=(np.nan, np.nan)))  # velocity unknown
    pred = make(dict(name="car", x=10.0, vel=(1.0, 3.0), attr="vehicle.parked"),
                dict(name="pedestrian", x=-10.0, vel=(5.0, 5.0)))
    m = evaluate((gt, pred))
    assert m.label_tp_errors["car"]["vel_err"] == pytest.approx(3.0)
    assert m.label_tp_errors["car"]["attr_err"] == pytest.approx(1.0)
    assert m.label_tp_errors["pedestrian"]["vel_err"] == 1.0  # only unknown velocities: error 1
    assert m.label_tp_errors["pedestrian"]["attr_err"] == 0.0


def test_unknown_velocities_are_skipped_in_the_running_mean():
    # Matches in score order: unknown GT velocity, then an error of 2 m/s. The running mean is 0 before
    # the first known value and 2 after it; read at scores falling linearly from 0.9 to 0.8 over recalls
    # 0.5..1, the curve is 0 up to recall 0.5 and rises linearly to 2: AVE = sum(2k/50, k=1..50) / 90.
    gt = make(dict(name="car", x=10.0, vel=(np.nan, np.nan)), dict(name="car", x=-10.0, vel=(0.0, 0.0)))
    pred = make(dict(name="car", x=10.0, vel=(1.0, 1.0), score=0.9), dict(name="car", x=-10.0, vel=(0.0, 2.0), score=0.8))
    assert evaluate((gt, pred)).label_tp_errors["car"]["vel_err"] == pytest.approx(51 / 90, abs=1e-12)
    # The other way round, the unknown velocity leaves the running mean at 2 throughout.
    pred = make(dict(name="car", x=10.0, vel=(1.0, 1.0), score=0.8), dict(name="car", x=-10.0, vel=(0.0, 2.0), score=0.9))
    assert evaluate((gt, pred)).label_tp_errors["car"]["vel_err"] == pytest.approx(2.0, abs=1e-12)


def test_equal_scores_visit_the_later_prediction_first():
    # As the devkit's sort: (score, index) descending. The exact box, added second, takes the car.
    gt = make(dict(name="car", x=10.0))
    pred = make(dict(name="car", x=10.3, score=0.5), dict(name="car", x=10.0, score=0.5))
    m = evaluate((gt, pred))
    assert m.label_tp_errors["car"]["trans_err"] == pytest.approx(0.0, abs=1e-12)
    # Across samples too: the later sample's prediction goes first.
    m = evaluate((gt, make(dict(name="car", x=10.0, score=0.5))), (gt, make(dict(name="car", x=10.4, score=0.5))))
    assert m.curves[("car", 2.0)].errors["trans_err"][11] == pytest.approx(0.4)


def test_duplicates_are_false_positives():
    gt = make(dict(name="car", x=10.0), dict(name="car", x=-10.0))
    unique = make(dict(name="car", x=10.0, score=0.9), dict(name="car", x=-10.0, score=0.7))
    duplicated = make(dict(name="car", x=10.0, score=0.9), dict(name="car", x=10.1, score=0.8),
                      dict(name="car", x=-10.0, score=0.7))
    assert evaluate((gt, unique)).mean_dist_aps["car"] == pytest.approx(1.0)
    m = evaluate((gt, duplicated))
    assert m.num_pred["car"] == 3
    for t in m.config.dist_ths:
        curves = m.curves[("car", t)]
        assert curves.precision[-1] == pytest.approx(2 / 3)  # 2 true positives, 1 false positive
        assert m.label_aps["car"][t] < 1.0
    # The duplicate matched nothing: translation error stays that of the exact boxes.
    assert m.label_tp_errors["car"]["trans_err"] == pytest.approx(0.0, abs=1e-12)


def test_average_precision_of_a_hand_computed_ranking():
    # 3 GT cars; predictions by score: TP, FP, TP, FP, TP. Precision after each: 1, 1/2, 2/3, 1/2, 3/5
    # at recall 1/3, 1/3, 2/3, 2/3, 1. Linear interpolation at recall r = i/100 (no recall point
    # falls on 1/3 or 2/3): 1 below 1/3; from (1/3, 1/2) to (2/3, 2/3); from (2/3, 1/2) to (1, 3/5).
    gt = make(*[dict(name="car", x=x) for x in (10.0, 20.0, 30.0)])
    pred = make(dict(name="car", x=10.0, score=0.9), dict(name="car", x=-15.0, score=0.8),
                dict(name="car", x=20.0, score=0.7), dict(name="car", x=-25.0, score=0.6),
                dict(name="car", x=30.0, score=0.5))
    r = np.arange(101) / 100
    p = np.where(r < 1 / 3, 1.0, np.where(r < 2 / 3, 0.5 + (r - 1 / 3) * 0.5, 0.5 + (r - 2 / 3) * 0.3))
    expected = np.mean(np.clip(p[11:] - 0.1, 0, None)) / 0.9
    m = evaluate((gt, pred))
    np.testing.assert_allclose(m.curves[("car", 2.0)].precision, p, atol=1e-12)
    assert m.label_aps["car"][2.0] == pytest.approx(expected, abs=1e-12)
    assert expected == pytest.approx(0.641568, abs=1e-6)


def test_partial_recall():
    # 2 GT, one perfect prediction: precision 1 up to recall 0.5, then 0. AP = 40 of 90 points = 4/9.
    gt = make(dict(name="bus", x=10.0), dict(name="bus", x=-20.0))
    m = evaluate((gt, make(dict(name="bus", x=10.3, score=0.4))))
    assert m.label_aps["bus"][2.0] == pytest.approx(4 / 9, abs=1e-12)
    assert m.label_tp_errors["bus"]["trans_err"] == pytest.approx(0.3, abs=1e-9)  # over recalls 0.11..0.5


def test_tp_errors_stop_at_the_highest_recall_reached():
    # 3 GT, 2 matches (errors 0.2 then 0.6 m), recall 2/3. The running mean (0.2, 0.4) read at scores
    # falling from 0.9 to 0.8 over recalls 1/3..2/3; averaged over recalls 0.11..0.66 only.
    gt = make(*[dict(name="car", x=x) for x in (10.0, 20.0, 30.0)])
    pred = make(dict(name="car", x=10.2, score=0.9), dict(name="car", x=20.6, score=0.8))
    r = np.arange(11, 67) / 100
    expected = np.where(r <= 1 / 3, 0.2, 0.2 + (r - 1 / 3) * 3 * 0.2).mean()
    m = evaluate((gt, pred))
    assert m.curves[("car", 2.0)].max_recall_index == 66
    assert m.label_tp_errors["car"]["trans_err"] == pytest.approx(expected, abs=1e-12)


def test_class_range_filter_applies_to_ground_truth_and_predictions():
    # Pedestrians count within 40 m of the ego (strictly), cones within 30 m.
    gt = make(dict(name="pedestrian", x=39.0, y=5.0), dict(name="pedestrian", x=40.0, y=0.0),  # 39.3 m, 40 m
              dict(name="traffic_cone", x=0.0, y=-29.0), dict(name="traffic_cone", x=0.0, y=-31.0))
    pred = make(dict(name="pedestrian", x=39.0, y=5.0), dict(name="traffic_cone", x=0.0, y=-29.0),
                dict(name="pedestrian", x=-45.0), dict(name="traffic_cone", x=30.5))  # outside: not FPs
    m = evaluate((gt, pred))
    assert (m.num_gt["pedestrian"], m.num_gt["traffic_cone"], m.num_pred["pedestrian"]) == (1, 1, 1)
    assert m.mean_dist_aps["pedestrian"] == pytest.approx(1.0) and m.mean_dist_aps["traffic_cone"] == pytest.approx(1.0)
    # Distances run from the ego position: the same scene in a frame where the ego sits at (100, -50).
    shift = np.array([100.0, -50.0, 0.0])
    moved = [EvalBoxes.create(b.center + shift, b.size, b.yaw, b.names, b.velocity, b.attributes, b.score, b.num_pts)
             for b in (gt, pred)]
    m2 = evaluate((*moved, (100.0, -50.0)))
    assert m2.to_devkit_json()["label_aps"] == m.to_devkit_json()["label_aps"]
    assert m2.num_gt == m.num_gt and m2.num_pred == m.num_pred


def test_range_capped_config():
    cfg = range_capped(DetectionConfig.cvpr_2019(), 35.0)
    assert cfg.name == "detection_cvpr_2019_capped_35m"
    assert dict(cfg.class_range) == {"car": 35, "truck": 35, "bus": 35, "trailer": 35, "construction_vehicle": 35,
                                     "pedestrian": 35, "motorcycle": 35, "bicycle": 35, "traffic_cone": 30,
                                     "barrier": 30}
    assert range_capped_to_grid(DetectionConfig.cvpr_2019(), BEVGrid(-25.6, 25.6, -20.0, 25.6, 0.8)).class_range["car"] == 20
    gt = make(dict(name="car", x=30.0), dict(name="car", x=40.0))
    pred = make(dict(name="car", x=30.0))
    assert evaluate((gt, pred), config=cfg).mean_dist_aps["car"] == pytest.approx(1.0)
    assert evaluate((gt, pred)).mean_dist_aps["car"] == pytest.approx(4 / 9)
    summary = evaluate((gt, pred), config=cfg)
    assert "capped_35m" in summary.summary_table() and summary.to_devkit_json()["meta"]["eval_config"] == cfg.name


def test_zero_point_ground_truth_is_removed():
    gt = make(dict(name="car", x=10.0), dict(name="car", x=20.0, pts=0))
    m = evaluate((gt, make(dict(name="car", x=10.0, score=0.9))))
    assert m.num_gt["car"] == 1 and m.mean_dist_aps["car"] == pytest.approx(1.0)
    # A prediction on the removed box is a false positive (the devkit does the same).
    m = evaluate((gt, make(dict(name="car", x=10.0, score=0.9), dict(name="car", x=20.0, score=0.95))))
    assert m.mean_dist_aps["car"] < 1.0


def test_empty_predictions():
    gt, _ = one_of_each()
    m = evaluate((make(*gt), EvalBoxes.empty()))
    assert m.mean_ap == 0.0 and all(ap == 0.0 for ap in m.mean_dist_aps.values())
    assert all(e == 1.0 for e in m.tp_errors.values())
    assert m.nd_score == 0.0


def test_matching_is_greedy_by_score():
    # Cars at 10 m and 11.5 m. The better-scored prediction (10.6 m) takes the nearest car (0.6 m
    # away), then the exact one (10 m) is left with the car 1.5 m away: greedy, not optimal.
    gt = make(dict(name="car", x=10.0), dict(name="car", x=11.5))
    pred = make(dict(name="car", x=10.6, score=0.9), dict(name="car", x=10.0, score=0.8))
    m = evaluate((gt, pred))
    assert m.label_aps["car"][2.0] == pytest.approx(1.0) and m.label_aps["car"][4.0] == pytest.approx(1.0)
    assert m.label_aps["car"][1.0] < 1.0  # TP then FP
    # At 0.5 m: FP (0.6 m) then TP; precision rises linearly from (0, 0) to (1/2, 1/2), then 0:
    # AP = sum over r = 0.11..0.50 of (r - 0.1) / 90 / 0.9 = 8.2 / 81.
    assert m.label_aps["car"][0.5] == pytest.approx(8.2 / 81, abs=1e-12)
    # TP errors at 2 m: running mean 0.6, then (0.6 + 1.5) / 2, read at the interpolated scores, which
    # fall linearly from 0.9 to 0.8 over recalls 0.5..1: 0.6 up to r = 0.5, then linear to 1.05.
    r = np.arange(11, 101) / 100
    expected = np.where(r <= 0.5, 0.6, 0.6 + (r - 0.5) / 0.5 * 0.45).mean()
    assert m.label_tp_errors["car"]["trans_err"] == pytest.approx(expected, abs=1e-12)


def test_devkit_json_layout_and_table():
    gt, pred = one_of_each(dx=0.2)
    m = evaluate((make(*gt), make(*pred)))
    out = json.loads(json.dumps(m.to_devkit_json()))
    assert set(out) == {"label_aps", "mean_dist_aps", "mean_ap", "label_tp_errors", "tp_errors", "tp_scores",
                        "nd_score", "eval_time", "cfg", "meta"}
    assert list(out["label_aps"]) == list(DetectionConfig.cvpr_2019().class_range)  # devkit class order
    assert set(out["label_aps"]["car"]) == {"0.5", "1.0", "2.0", "4.0"}
    assert out["cfg"]["dist_fcn"] == "center_distance" and out["cfg"]["mean_ap_weight"] == 5
    assert m.summary()["NDS"] == pytest.approx(out["nd_score"])
    table = m.summary_table()
    assert "traffic_cone" in table and "n/a" in table and "NDS" in table


def test_input_checks():
    ev = DetectionEvaluator()
    many = make(*[dict(name="car", x=float(i % 40), y=float(i // 40)) for i in range(501)])
    with pytest.raises(ValueError, match="at most 500"):
        ev.add_sample("a", EvalBoxes.empty(), many)
    ev.add_sample("a", EvalBoxes.empty(), EvalBoxes.empty())
    with pytest.raises(ValueError, match="twice"):
        ev.add_sample("a", EvalBoxes.empty(), EvalBoxes.empty())
    with pytest.raises(ValueError, match="unknown detection classes"):
        make(dict(name="animal", x=0.0, attr=""))
    with pytest.raises(ValueError, match="sizes must be > 0"):
        make(dict(name="car", x=0.0, size=(0.0, 1.0, 1.0)))
    with pytest.raises(ValueError, match="unknown attributes"):
        make(dict(name="car", x=0.0, attr="vehicle.flying"))


def test_attributes_from_velocity():
    names = ["car", "car", "bus", "pedestrian", "bicycle", "barrier"]
    vel = np.array([[1.0, 0.0], [0.0, 0.1], [0.0, 0.0], [0.0, 0.0], [2.0, 0.0], [0.0, 0.0]])
    assert attributes_from_velocity(names, vel) == (
        "vehicle.moving", "vehicle.parked", "vehicle.stopped", "pedestrian.standing", "cycle.with_rider", "")


def test_results_json_round_trip_and_ground_truth_scores_one(tmp_path):
    from nuscenes_fixture import write_nuscenes_fixture

    from perception.data.nuscenes import load_dataset
    from perception.metrics.nuscenes_io import evaluate_split, ground_truth, load_results, results_json, split_samples

    write_nuscenes_fixture(tmp_path, images=False)
    ds = load_dataset(tmp_path)
    split = sorted(ds.splits)[0]
    samples = split_samples(ds, split)
    preds = {}
    for s in samples:
        gt = ground_truth(ds, s)
        gt = gt.select(gt.num_pts != 0)
        preds[s.token] = EvalBoxes.create(gt.center, gt.size, gt.yaw, gt.names, np.nan_to_num(gt.velocity),
                                          gt.attributes, score=np.linspace(0.9, 0.5, len(gt)))
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results_json(preds, ds)))
    back, meta = load_results(path, ds, samples)
    assert meta["use_camera"] is True
    for token, boxes in preds.items():
        np.testing.assert_allclose(back[token].center, boxes.center, atol=1e-9)
        np.testing.assert_allclose(np.cos(back[token].yaw - boxes.yaw), 1.0, atol=1e-9)
        np.testing.assert_allclose(back[token].velocity, boxes.velocity, atol=1e-9)
        assert back[token].names == boxes.names
    m = evaluate_split(ds, path, split)
    present = [c for c, n in m.num_gt.items() if n]
    assert present and all(m.mean_dist_aps[c] == pytest.approx(1.0) for c in present)
    assert all(m.label_tp_errors[c]["trans_err"] == pytest.approx(0.0, abs=1e-9) for c in present)


# --------------------------------------------------------------------------------------------------
# BEV IoU
# --------------------------------------------------------------------------------------------------


def test_bev_iou_accumulates_over_frames_and_skips_invalid_classes():
    iou = BEVIoU(("vehicle", "drivable_area"))
    pred = np.zeros((2, 4, 4))
    target = np.zeros((2, 4, 4), dtype=np.uint8)
    # Frame 1. vehicle: predicted cells (0,0),(0,1) and (0,2) at exactly 0.5 (negative); target (0,1),(1,1).
    pred[0, 0, 0], pred[0, 0, 1], pred[0, 0, 2] = 0.9, 0.6, 0.5
    target[0, 0, 1] = target[0, 1, 1] = 1
    # drivable: 8 predicted, 8 in the target, 6 shared.
    pred[1, :2] = 0.8
    target[1, :2, :3] = 1
    target[1, 2, :2] = 1
    iou.update(pred, target, np.array([True, True]))
    # Frame 2 (as a batch of one): vehicle has 1 cell right out of 1; drivable is invalid (no map).
    pred2, target2 = np.zeros((1, 2, 4, 4)), np.zeros((1, 2, 4, 4), dtype=np.uint8)
    pred2[0, 0, 3, 3], target2[0, 0, 3, 3] = 0.7, 1
    pred2[0, 1] = 1.0  # would be 16 false positives if it counted
    iou.update(pred2, target2, np.array([[True, False]]))
    result = iou.compute()
    # vehicle: intersection 1 + 1, union 3 + 1 (summed, not a mean of 1/3 and 1).
    assert result["vehicle"] == pytest.approx(2 / 4)
    assert result["drivable_area"] == pytest.approx(6 / 10)
    assert iou.frames.tolist() == [2, 1]


def test_bev_iou_threshold_empty_union_and_checks():
    iou = BEVIoU(("a", "b"), threshold=0.3)
    pred = np.full((2, 3, 3), 0.4)
    target = np.ones((2, 3, 3), dtype=np.uint8)
    target[1] = 0
    iou.update(pred, target, valid=np.array([True, False]))
    out = iou.compute()
    assert out["a"] == 1.0 and math.isnan(out["b"])
    other = BEVIoU(("a", "b"), threshold=0.3)
    other.update(np.zeros((2, 3, 3)), target)  # 9 misses for a; b valid but empty everywhere
    iou.merge(other)
    assert iou.compute()["a"] == pytest.approx(9 / 18) and math.isnan(iou.compute()["b"])
    with pytest.raises(ValueError):
        iou.update(np.zeros((3, 3, 3)), np.zeros((3, 3, 3)))
