"""Unclipped AP and recall at a score threshold, on hand-made cases (fast)."""

from __future__ import annotations

import math

import pytest

from perception.metrics import DetectionConfig, DetectionEvaluator, DetectionMetrics, EvalBoxes, unclipped


def trailers(*boxes: tuple[float, float, float]) -> EvalBoxes:
    """Trailer boxes from (x, y, score) (m, m, confidence), 10 points each."""
    n = len(boxes)
    return EvalBoxes.create(
        center=[(x, y, 1.0) for x, y, _ in boxes], size=[(2.9, 12.0, 3.8)] * n, yaw=[0.0] * n,
        names=["trailer"] * n, velocity=[(0.0, 0.0)] * n, attributes=["vehicle.parked"] * n,
        score=[s for _, _, s in boxes], num_pts=[10] * n,
    )


def evaluate(gt: EvalBoxes, pred: EvalBoxes, config: DetectionConfig | None = None) -> DetectionMetrics:
    ev = DetectionEvaluator(config)
    ev.add_sample("s0", gt, pred)
    return ev.compute()


def test_unclipped_config():
    official = DetectionConfig.cvpr_2019()
    cfg = unclipped(official)
    assert cfg.name == "detection_cvpr_2019_unclipped"
    assert (cfg.min_recall, cfg.min_precision) == (0.0, 0.0)
    assert cfg.class_range == official.class_range and cfg.dist_ths == official.dist_ths
    assert (official.min_recall, official.min_precision) == (0.1, 0.1)  # the original is left alone


def test_weak_detector_scores_zero_officially_and_above_zero_unclipped():
    # One trailer, found only after 20 better-scored false alarms 20 m away: precision 1/21 at recall 1.
    gt = trailers((10.0, 0.0, -1.0))
    pred = trailers(*[(30.0, -10.0 + i, 0.9 - 0.01 * i) for i in range(20)], (10.0, 0.0, 0.5))
    official = evaluate(gt, pred)
    assert official.label_aps["trailer"] == pytest.approx({0.5: 0.0, 1.0: 0.0, 2.0: 0.0, 4.0: 0.0}, abs=0)
    m = evaluate(gt, pred, unclipped(DetectionConfig.cvpr_2019()))
    # The interpolated precision rises linearly from 0 at recall 0 to 1/21 at recall 1:
    # AP = mean over r = 0.01..1 of r / 21 = 0.505 / 21.
    for t in m.config.dist_ths:
        assert m.label_aps["trailer"][t] == pytest.approx(0.505 / 21, abs=1e-12)
    assert m.to_devkit_json()["meta"]["eval_config"] == "detection_cvpr_2019_unclipped"
    assert m.to_devkit_json()["cfg"]["min_precision"] == 0.0


def test_unclipped_ap_of_a_perfect_detector_is_one():
    gt = trailers((10.0, 0.0, -1.0), (25.0, 5.0, -1.0))
    m = evaluate(gt, trailers((10.0, 0.0, 0.8), (25.0, 5.0, 0.7)), unclipped(DetectionConfig.cvpr_2019()))
    assert m.mean_dist_aps["trailer"] == pytest.approx(1.0, abs=1e-12)


def test_recall_at_a_score():
    # 4 trailers; true positives scored 0.9, 0.5 and 0.2, a false alarm at 0.7; the 0.2 one is 0.7 m off.
    gt = trailers((10.0, 0.0, -1.0), (20.0, 0.0, -1.0), (30.0, 0.0, -1.0), (40.0, 0.0, -1.0))
    pred = trailers((10.0, 0.0, 0.9), (20.0, 0.0, 0.5), (30.7, 0.0, 0.2), (15.0, 20.0, 0.7))
    m = evaluate(gt, pred)
    assert m.recall_at("trailer", 0.3) == 0.5  # the 101-point curve interpolates 0.66 here
    assert m.recall_at("trailer", 0.5) == 0.5  # score >= threshold
    assert m.recall_at("trailer", 0.51) == 0.25
    assert m.recall_at("trailer", 0.95) == 0.0
    assert m.recall_at("trailer", 0.0) == 0.75
    assert m.recall_at("trailer", 0.0, dist_th=0.5) == 0.5  # 0.7 m is no match at 0.5 m
    assert m.recall_at("trailer", 0.0, dist_th=4) == 0.75
    assert math.isnan(m.recall_at("bus", 0.3))  # no ground truth
    with pytest.raises(KeyError, match="3 m"):
        m.recall_at("trailer", 0.3, dist_th=3.0)
    with pytest.raises(KeyError, match="animal"):
        m.recall_at("animal", 0.3)
