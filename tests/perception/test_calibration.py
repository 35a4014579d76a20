"""Reliability histograms, ECE, Platt scaling, the per-class calibration and the novelty index (numpy only)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception.metrics.calibration import (
    ece_noise_floor,
    PlattScaling,
    ReliabilityHistogram,
    ScoreCalibration,
    expected_calibration_error,
    fit_calibration,
    logit,
)
from perception.metrics.novelty import FrameNovelty, NoveltyIndex, appearance_features, kmeans, kmeans_fit


def _overconfident(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits z whose true probability is sigmoid(0.5 z - 1): a model twice as sharp and biased."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 3.0, n)
    y = rng.random(n) < 1.0 / (1.0 + np.exp(-(0.5 * z - 1.0)))
    return z, y


def test_ece_is_zero_when_frequencies_match_and_counts_the_gap() -> None:
    # Two bins: 100 samples at p = 0.2 with 20 positives, 100 at p = 0.9 with 90: perfectly calibrated.
    p = np.r_[np.full(100, 0.2), np.full(100, 0.9)]
    y = np.r_[np.arange(100) < 20, np.arange(100) < 90]
    assert expected_calibration_error(p, y) == pytest.approx(0.0, abs=1e-12)
    # Same probabilities, but the p = 0.9 bin is right only half the time: gap 0.4 on half the samples.
    y2 = np.r_[np.arange(100) < 20, np.arange(100) < 50]
    assert expected_calibration_error(p, y2) == pytest.approx(0.2)
    assert math.isnan(ReliabilityHistogram().ece)


def test_the_ece_noise_floor_shrinks_with_samples_and_flags_real_miscalibration() -> None:
    rng = np.random.default_rng(3)
    small, large = rng.uniform(0.0, 0.6, 150), rng.uniform(0.0, 0.6, 15000)
    f_small, f_large = ece_noise_floor(small), ece_noise_floor(large)
    assert 0.0 < f_small["p5"] <= f_small["mean"] <= f_small["p95"]
    assert f_large["mean"] < 0.25 * f_small["mean"]  # ~ 1 / sqrt(n)
    # A calibrated sample reads inside its floor; one whose frequencies are half the scores does not.
    calibrated = expected_calibration_error(small, rng.random(small.size) < small)
    assert calibrated <= 1.5 * f_small["p95"]
    halved = expected_calibration_error(large, rng.random(large.size) < 0.5 * large)
    assert halved > 5 * f_large["p95"]
    assert math.isnan(ece_noise_floor(np.zeros(0))["mean"])


def test_histogram_accumulates_like_one_pass_and_masks() -> None:
    rng = np.random.default_rng(1)
    p, y = rng.random(1000), rng.random(1000) < 0.3
    one = ReliabilityHistogram()
    one.update(p, y)
    parts = ReliabilityHistogram()
    parts.update(p[:400], y[:400])
    parts.update(p[400:], y[400:])
    assert parts.ece == pytest.approx(one.ece)
    masked = ReliabilityHistogram()
    masked.update(p, y, mask=np.arange(1000) < 400)
    assert masked.total == 400
    curve = one.curve()
    assert sum(curve["count"]) == 1000 and len(curve["confidence"]) == 15
    with pytest.raises(ValueError, match="prob has 3 values, label 2"):
        one.update(np.zeros(3), np.zeros(2))


def test_platt_recovers_the_true_scaling_and_lowers_the_ece() -> None:
    z, y = _overconfident(20000)
    fit = PlattScaling.fit(z, y)
    assert fit.a == pytest.approx(0.5, abs=0.05) and fit.b == pytest.approx(-1.0, abs=0.1)
    z2, y2 = _overconfident(20000, seed=1)  # held out
    raw = expected_calibration_error(1 / (1 + np.exp(-z2)), y2)
    calibrated = expected_calibration_error(fit.prob(z2), y2)
    assert raw > 0.1 and calibrated < 0.02
    # Monotone: the ranking (and so every AP) is unchanged.
    assert np.array_equal(np.argsort(z2, kind="stable"), np.argsort(fit.prob(z2), kind="stable"))
    assert PlattScaling.fit(z, np.ones_like(y)) == PlattScaling()  # one label only: identity


def test_calibration_per_class_with_pooled_fallback_and_json_round_trip() -> None:
    z, y = _overconfident(5000)
    few_z, few_y = z[:10], y[:10]  # too few samples for a class of its own
    cal = fit_calibration({"car": (z, y), "trailer": (few_z, few_y)}, {"vehicle": (z, y)}, "test")
    pooled = PlattScaling.fit(np.r_[z, few_z], np.r_[y, few_y])
    assert cal.detection["trailer"] == pooled and cal.detection["car"] != pooled
    back = ScoreCalibration.from_json(cal.to_json())
    assert back == cal
    scores = 1 / (1 + np.exp(-z[:6]))
    labels = np.array([0, 1, 0, 1, 0, 2])  # class 2 has no scaling: kept
    out = cal.detection_scores(scores, labels, ("car", "trailer", "bus"))
    assert out[0] == pytest.approx(cal.detection["car"].prob(logit(scores[:1]))[0])
    assert out[1] == pytest.approx(cal.detection["trailer"].prob(logit(scores[1:2]))[0])
    assert out[5] == scores[5]
    seg = cal.segmentation_probs(np.zeros((2, 1, 3, 3), np.float32), ("vehicle",))
    assert seg.shape == (2, 1, 3, 3) and seg.dtype == np.float32
    assert np.allclose(seg, cal.segmentation["vehicle"].prob(0.0))


@pytest.mark.parametrize("bad, field", [({"method": "isotonic"}, "method 'platt'"),
                                        ({"method": "platt", "detection": {"car": [0.0, 1.0]}, "segmentation": {}},
                                         "calibration.detection.car"),
                                        ({"method": "platt", "detection": {}, "segmentation": {"v": [1, "x"]}},
                                         "calibration.segmentation.v")])
def test_bad_calibration_json_names_the_field(bad: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ScoreCalibration.from_json(bad)


def test_kmeans_fit_centres_match_the_assignment() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(c, 0.1, (30, 2)) for c in ((0, 0), (5, 0), (0, 5))])
    centers, assign = kmeans_fit(x, 3)
    assert np.array_equal(assign, kmeans(x, 3))
    for k in range(3):
        assert np.allclose(centers[k], x[assign == k].mean(axis=0))


def test_novelty_separates_an_unseen_cluster_and_round_trips() -> None:
    rng = np.random.default_rng(0)
    directions = rng.normal(size=(4, 32))
    train = np.concatenate([d + rng.normal(0, 0.3, (100, 32)) for d in directions])
    index = NoveltyIndex.fit(train, centers=16)
    seen = np.concatenate([d + rng.normal(0, 0.3, (20, 32)) for d in directions])
    unseen = rng.normal(size=32) * 1.0 + rng.normal(0, 0.3, (40, 32))
    s_seen, s_unseen = index.score(seen), index.score(unseen)
    assert np.median(s_seen) < 1.1 and np.median(s_unseen) > 1.5
    assert (s_unseen.min() > np.quantile(s_seen, 0.9))
    back = NoveltyIndex.from_json(index.to_json(), 32)
    assert np.allclose(back.score(seen), s_seen)
    with pytest.raises(ValueError, match="novelty.dim is 32, expected the model's embedding size 16"):
        NoveltyIndex.from_json(index.to_json(), 16)
    broken = {**index.to_json(), "centers_f16": "AAAAAA=="}  # two float16 values
    with pytest.raises(ValueError, match="novelty.centers_f16 holds"):
        NoveltyIndex.from_json(broken, 32)
    with pytest.raises(ValueError, match="embeddings have 8 dims"):
        index.score(np.zeros((1, 8)))


def test_appearance_features_and_frame_novelty() -> None:
    rng = np.random.default_rng(0)
    day = rng.integers(60, 220, (6, 3, 64, 96), dtype=np.uint8)
    f = appearance_features(day, np.ones(6, bool))
    assert f.shape == (4,) and np.all((f > 0) & (f < 1))
    night = (day // 6).astype(np.uint8)
    g = appearance_features(night, np.ones(6, bool))
    assert g[0] < f[0] / 4 and g[1] < f[1] and g[2] < f[2]  # darker, flatter, less sharp
    half = appearance_features(np.concatenate([day[:3], night[3:]]), np.r_[np.ones(3, bool), np.zeros(3, bool)])
    assert np.allclose(half, appearance_features(day[:3], np.ones(3, bool)))  # masked cameras do not count
    assert np.all(np.isnan(appearance_features(day, np.zeros(6, bool))))
    # The appearance part flags a look the training frames never had, though the embedding is familiar.
    emb = rng.normal(size=(200, 8))
    look = np.column_stack([rng.normal(0.5, 0.05, 200), rng.normal(0.2, 0.02, 200), rng.normal(0.1, 0.01, 200),
                            rng.normal(0.3, 0.03, 200)])
    novelty = FrameNovelty.fit(emb, look, "train")
    familiar, parts = novelty.score(emb[0], look[0])
    assert familiar < 1.5 and familiar == max(parts.values())
    dark, parts = novelty.score(emb[0], np.array([0.08, 0.05, 0.02, 0.05]))
    assert parts["appearance"] > 3 and dark == parts["appearance"]
    assert parts["embedding"] == pytest.approx(float(novelty.embedding.score(emb[0])[0]))
    back = FrameNovelty.from_json(novelty.to_json(), 8)
    assert back.score(emb[1], look[1])[0] == pytest.approx(novelty.score(emb[1], look[1])[0])
    with pytest.raises(ValueError, match="novelty.appearance"):
        FrameNovelty.from_json({**novelty.to_json(), "appearance": None}, 8)
