"""HeatmapAP: cell-level average precision of the detection heatmaps, against exact answers (fast)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from perception.heatmap import draw_gaussian
from perception.metrics import HeatmapAP


def exact_ap(scores: np.ndarray, labels: np.ndarray) -> float:
    """sklearn's average_precision_score: sum over distinct thresholds, descending, of (R_n - R_n-1) * P_n."""
    order = np.argsort(-scores, kind="stable")
    s, hit = scores[order], labels[order]
    tp, fp = np.cumsum(hit), np.cumsum(~hit)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last cell of each distinct score
    recall = tp[last] / hit.sum()
    precision = tp[last] / (tp[last] + fp[last])
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def gaussian_targets(rng: np.random.Generator, K: int, X: int, Y: int, objects: int) -> np.ndarray:
    """[K, X, Y] float32 targets with ``objects`` Gaussians per class, drawn as the training targets are."""
    target = np.zeros((K, X, Y), dtype=np.float32)
    for k in range(K):
        for _ in range(objects):
            draw_gaussian(target[k], int(rng.integers(X)), int(rng.integers(Y)), int(rng.integers(1, 4)), 1 / 6)
    return target


def test_perfect_prediction_scores_one():
    target = gaussian_targets(np.random.default_rng(0), 2, 32, 40, 5)
    hap = HeatmapAP(("car", "pedestrian"))
    hap.update(target, target)  # the skirt is ignored, so predicting the target itself is perfect
    assert hap.compute() == {"car": 1.0, "pedestrian": 1.0}
    hap = HeatmapAP(("car", "pedestrian"))
    hap.update((target >= 1).astype(np.float32), target)
    assert hap.compute() == {"car": 1.0, "pedestrian": 1.0}


def test_constant_prediction_scores_the_positive_fraction():
    target = gaussian_targets(np.random.default_rng(1), 1, 50, 50, 12)
    hap = HeatmapAP(("car",))
    hap.update(np.full_like(target, 0.3), target)
    positives, negatives = (target >= 1).sum(), (target == 0).sum()
    assert hap.compute()["car"] == pytest.approx(positives / (positives + negatives), abs=1e-12)


def test_ignored_cells_do_not_count():
    target = np.zeros((1, 8, 8), dtype=np.float32)
    target[0, 2, 2] = 1.0
    target[0, 5:8, 5:8] = 0.5  # the skirt of a Gaussian
    prob = np.full_like(target, 0.1)
    prob[0, 2, 2] = 0.6
    hap = HeatmapAP(("car",))
    hap.update(prob, target)
    assert hap.compute()["car"] == 1.0
    prob[0, 5:8, 5:8] = 0.9  # confident on the skirt: still no false alarm
    hap.reset()
    hap.update(prob, target)
    assert hap.compute()["car"] == 1.0
    target[0, 5:8, 5:8] = 0.0  # the same cells as negatives: 9 false alarms above the centre
    hap.reset()
    hap.update(prob, target)
    assert hap.compute()["car"] == pytest.approx(1 / 10)


def test_class_without_positives_is_nan():
    target = np.zeros((2, 6, 6), dtype=np.float32)
    target[0, 1, 1] = 1.0
    target[1, 3, 3] = 0.7  # a skirt but no centre
    hap = HeatmapAP(("car", "trailer"))
    hap.update(np.random.default_rng(2).random((2, 6, 6)), target)
    out = hap.compute()
    assert not math.isnan(out["car"]) and math.isnan(out["trailer"])


def test_agrees_with_exact_ap_on_random_data():
    rng = np.random.default_rng(3)
    K, X, Y = 3, 48, 48
    targets = [gaussian_targets(rng, K, X, Y, 10) for _ in range(4)]
    # Probabilities that lean towards the target, plus noise: APs well inside (0, 1).
    probs = [np.clip(0.3 * t + 0.7 * rng.random(t.shape), 0, 1).astype(np.float32) for t in targets]
    hap = HeatmapAP(("a", "b", "c"))
    for p, t in zip(probs, targets):
        hap.update(p, t)
    out = hap.compute()
    P, T = np.stack(probs), np.stack(targets)  # [B, K, X, Y]
    for k, name in enumerate(hap.class_names):
        scored = (T[:, k] >= 1) | (T[:, k] == 0)
        exact = exact_ap(P[:, k][scored].astype(np.float64), T[:, k][scored] >= 1)
        assert 0.05 < exact < 0.95
        assert out[name] == pytest.approx(exact, abs=0.01), name


def test_batched_and_unbatched_updates_agree():
    rng = np.random.default_rng(4)
    target = np.stack([gaussian_targets(rng, 2, 20, 24, 4) for _ in range(3)])  # [B, K, X, Y]
    prob = rng.random(target.shape).astype(np.float32)
    one, batched = HeatmapAP(("car", "bus")), HeatmapAP(("car", "bus"))
    for p, t in zip(prob, target):
        one.update(p, t)
    batched.update(prob, target)
    np.testing.assert_array_equal(one.positives, batched.positives)
    np.testing.assert_array_equal(one.negatives, batched.negatives)
    assert one.compute() == batched.compute()
    assert int(one.positives.sum()) == int((target >= 1).sum())


def test_input_checks():
    hap = HeatmapAP(("car",))
    with pytest.raises(ValueError, match="K = 1"):
        hap.update(np.zeros((2, 4, 4)), np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        hap.update(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match="sigmoid"):
        hap.update(np.full((1, 4, 4), 2.0), np.zeros((1, 4, 4)))
    with pytest.raises(ValueError, match="sigmoid"):
        hap.update(np.full((1, 4, 4), np.nan), np.zeros((1, 4, 4)))
