"""Strategies fitted to the labeled frames (rare@fire, query, typical) and selection without a catalog,
on synthetic embeddings and scores where the right answer is known."""

from __future__ import annotations

import numpy as np
import pytest

from data_engine.mining.selection import SelectionConfig, select_frames
from data_engine.mining.strategies import FrameOutput, RunContext, StrategyError, make_strategy
from data_engine.mining.targeted_strategies import kmeans
from perception.boxes import DecodedBoxes
from perception.geometry import BEVGrid
from perception.schema import DETECTION_CLASSES


def context(budget: int = 3, emb: np.ndarray | None = None, classes: tuple[frozenset[str], ...] = (),
            scores: dict[str, np.ndarray] | None = None) -> RunContext:
    return RunContext(budget, np.zeros((0, 8)) if emb is None else emb, classes, scores or {})


def heatmap_output(p: float) -> FrameOutput:
    """A frame whose only detection is a trailer of probability p."""
    grid = BEVGrid(-25.6, 25.6, -25.6, 25.6, 0.8)
    X, Y = grid.shape
    heat = np.zeros((len(DETECTION_CLASSES), X, Y), np.float32)
    heat[DETECTION_CLASSES.index("trailer"), 3, 4] = p
    none = DecodedBoxes(center=np.zeros((0, 3)), size=np.zeros((0, 3)), yaw=np.zeros(0), velocity=np.zeros((0, 2)),
                        label=np.zeros(0, np.int64), score=np.zeros(0))
    return FrameOutput(token="t", timestamp=0.0, global_T_ego=np.eye(4), boxes=none, class_names=DETECTION_CLASSES,
                       heatmap=heat, seg_prob=np.zeros((1, X, Y), np.float32), seg_classes=("drivable_area",),
                       embedding=np.zeros(8, np.float32), det_grid=grid)


def test_rare_fire_calibrates_on_the_labeled_frames() -> None:
    rare = make_strategy("rare:trailer@fire=0.2")
    assert rare.trigger and rare.needs_reference and not rare.calibrated
    score, details = rare.score(heatmap_output(0.42), None)
    assert score == pytest.approx(0.42) and "fired" not in details  # unknown until calibrated
    with pytest.raises(StrategyError, match=r"rare:trailer@fire=0.2: not calibrated"):
        rare.fired(score, details)
    with pytest.raises(StrategyError, match=r"rare:trailer@fire=0.2: no labeled frame .* rare:trailer@T"):
        rare.prepare(context(scores={"other": np.ones(3)}))
    with pytest.raises(StrategyError, match="no labeled frame"):
        rare.prepare(context(scores={rare.name: np.full(4, np.nan)}))
    ref = np.random.default_rng(0).beta(1, 8, size=1000)
    ref_with_gaps = np.concatenate([ref, [np.nan, np.nan]])  # frames the strategy did not score are left out
    rare.prepare(context(scores={rare.name: ref_with_gaps}))
    assert rare.calibrated and rare.threshold == pytest.approx(np.quantile(ref, 0.8))
    rate = np.mean([rare.fired(float(v), {}) for v in ref])
    assert rate == pytest.approx(0.2, abs=0.002)
    assert rare.fired(rare.threshold, {}) and not rare.fired(rare.threshold - 1e-6, {})
    assert rare.score(heatmap_output(0.42), None)[1]["threshold"] == pytest.approx(rare.threshold, abs=1e-4)
    # An absolute threshold is not calibrated and fires as before.
    fixed = make_strategy("rare:trailer@0.4")
    assert fixed.calibrated and fixed.fired(0.42, {}) and not fixed.needs_reference


def blob(rng: np.random.Generator, n: int, axis: int, sign: float = 1.0, dim: int = 8) -> np.ndarray:
    """n points around 5 * sign * e_axis (noise 0.5)."""
    centre = np.zeros(dim)
    centre[axis] = 5.0 * sign
    return centre + 0.5 * rng.normal(size=(n, dim))


def test_query_ranks_frames_like_the_exemplars_first() -> None:
    rng = np.random.default_rng(1)
    # Labeled: 3 trailers in blob A, then 3 trailers in blob C, then 10 frames without one in blob B.
    ref = np.concatenate([blob(rng, 3, 0), blob(rng, 3, 1), blob(rng, 10, 0, -1.0)])
    classes = tuple([frozenset({"trailer", "car"})] * 6 + [frozenset({"car"})] * 10)
    near_a, near_c, near_b = blob(rng, 5, 0), blob(rng, 5, 1), blob(rng, 5, 0, -1.0)
    cand = np.concatenate([near_b[:2], near_a, near_b[2:], near_c])  # A: 2..6, B: 0, 1, 7, 8, 9; C: 10..14
    query = make_strategy("query:trailer")
    assert query.needs_reference and query.needs_reference_labels
    with pytest.raises(StrategyError, match="call prepare"):
        query.score_run(cand, ref)
    query.prepare(context(emb=ref, classes=classes))
    scores = query.score_run(cand, ref)
    values = np.array([s for s, _ in scores])
    assert set(np.argsort(-values)[:10]) == set(range(2, 7)) | set(range(10, 15))  # like an exemplar
    assert (values > 0).all()  # every frame is ranked, even those whose margin is negative
    margins = np.array([d["margin"] for _, d in scores])
    assert (margins[2:7] > 0).all() and (margins[[0, 1, 7, 8, 9]] < 0).all()
    assert values == pytest.approx(margins + 2.0, abs=1e-4)
    # K = 3: only the first three exemplars (blob A) count; frames near C lose their exemplars.
    first = make_strategy("query:trailer@3")
    first.prepare(context(emb=ref, classes=classes))
    scores3 = first.score_run(cand, ref)
    values3 = np.array([s for s, _ in scores3])
    assert set(np.argsort(-values3)[:5]) == set(range(2, 7))
    assert all(scores3[i][1]["exemplar_similarity"] < scores[i][1]["exemplar_similarity"] - 0.3 for i in range(10, 15))
    # No negatives: the margin is the similarity to the exemplars alone.
    alone = make_strategy("query:trailer")
    alone.prepare(context(emb=ref[:6], classes=classes[:6]))
    assert all(d["negative_similarity"] == 0.0 for _, d in alone.score_run(cand, ref[:6]))
    # A mismatch between prepare and score_run is refused.
    with pytest.raises(StrategyError, match=r"prepare\(\) saw 16 labeled frames, score_run 6"):
        query.score_run(cand, ref[:6])


def test_query_without_exemplars_says_what_to_do() -> None:
    query = make_strategy("query:construction_vehicle")
    with pytest.raises(StrategyError, match=r"query:construction_vehicle: no labeled frame holds 'construction_vehicle'"
                                            r".*rare:construction_vehicle@fire=R"):
        query.prepare(context(emb=np.ones((3, 8)), classes=(frozenset({"car"}), frozenset(), frozenset({"bus"}))))


def separated_clusters(rng: np.random.Generator, sizes: list[int],
                       dim: int = 16) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Clusters along orthogonal axes: in each, a tight core of 5 frames and a loose halo.
    Returns (points [N, dim], cluster of each [N], core mask [N])."""
    pts, label, core = [], [], []
    for c, n in enumerate(sizes):
        centre = np.zeros(dim)
        centre[c] = 10.0
        spread = np.where(np.arange(n) < 5, 0.05, 1.5)[:, None]
        pts.append(centre + spread * rng.normal(size=(n, dim)))
        label += [c] * n
        core += [i < 5 for i in range(n)]
    return np.concatenate(pts), np.array(label), np.array(core)


def test_kmeans_recovers_separated_clusters() -> None:
    x, label, _ = separated_clusters(np.random.default_rng(2), [20, 30, 25, 15])
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    assign = kmeans(x, 4, seed=0)
    assert len(set(zip(assign.tolist(), label.tolist()))) == 4  # one cluster per blob, no mixing
    assert np.array_equal(assign, kmeans(x, 4, seed=0))  # deterministic
    assert np.array_equal(kmeans(np.ones((5, 3)), 3), kmeans(np.ones((5, 3)), 3))  # fewer distinct rows than k
    with pytest.raises(ValueError, match="k must be"):
        kmeans(x, 0)


def test_typical_picks_the_dense_centre_of_each_uncovered_cluster() -> None:
    rng = np.random.default_rng(3)
    x, label, core = separated_clusters(rng, [40, 30, 20, 25])
    ref_idx = np.flatnonzero(label == 3)[:2]  # two labeled frames cover cluster 3
    ref = x[ref_idx]
    cand_mask = np.ones(len(x), bool)
    cand_mask[ref_idx] = False
    cand, cand_label, cand_core = x[cand_mask], label[cand_mask], core[cand_mask]
    typical = make_strategy("typical")
    with pytest.raises(StrategyError, match="call prepare"):
        typical.score_run(cand, ref)
    typical.prepare(context(budget=2, emb=ref))  # k = 2 labeled + 2 = 4 clusters
    scores = typical.score_run(cand, ref)
    values = np.array([s for s, _ in scores])
    chosen = np.flatnonzero(values > 0)
    assert sorted(cand_label[chosen].tolist()) == [0, 1, 2]  # one per uncovered cluster, none in the covered one
    assert cand_core[chosen].all()  # the densest frame of its cluster
    assert [int(cand_label[i]) for i in chosen[np.argsort(-values[chosen])]] == [0, 1, 2]  # largest cluster first
    assert values[chosen] == pytest.approx([40, 30, 20], abs=1.0)
    d = scores[int(chosen[0])][1]
    assert d["size"] == 40 and d["typicality"] > 0 and not d["covered"]
    assert all(d["covered"] for (_, d), lab in zip(scores, cand_label) if lab == 3)
    # Through selection, the budget goes to the largest uncovered clusters.
    picks = select_frames(cand, np.arange(len(cand)), np.zeros(len(cand)), {typical.name: values}, [typical], 2,
                          SelectionConfig(diversity=0.0, dedup=0.0, min_gap=0.0), ref)
    assert [int(cand_label[j]) for j, _, _ in picks] == [0, 1]
    # An explicit K needs no prepare.
    assert len(make_strategy("typical:4").score_run(cand, ref)) == len(cand)


def test_select_frames_without_a_catalog() -> None:
    rng = np.random.default_rng(4)
    emb = rng.normal(size=(8, 6))
    scene = np.array(["a"] * 4 + ["b"] * 4, dtype=object)
    time_s = np.array([0.0, 0.5, 1.0, 5.0] * 2)
    det = make_strategy("det_entropy")
    rare = make_strategy("rare:trailer@0.5")
    scores = {"det_entropy": np.arange(8, dtype=float), "rare:trailer@0.5": np.array([0, 0, 0.9, 0, 0, 0, 0, 0.2])}
    cfg = SelectionConfig(diversity=0.0, dedup=0.0, min_gap=1.5)
    picks = select_frames(emb, scene, time_s, scores, [det, rare], 4, cfg, np.zeros((0, 6)))
    # Combined = mean of the ranks among the fired frames: frame 2 (det_entropy 2/7, the trigger 1) = 0.64,
    # 7 = 0.5, 6 = 0.43; then 4 and 5 are within 1.5 s of 6, 0 and 1 of 2: frame 3.
    assert [j for j, _, _ in picks] == [2, 7, 6, 3]
    assert picks[0][1] == pytest.approx((2 / 7 + 1) / 2)
    assert "rare:trailer@0.5 fired (0.900 >= 0.500)" in picks[0][2]
    blocked = np.zeros(8, bool)
    blocked[2] = True
    assert [j for j, _, _ in select_frames(emb, scene, time_s, scores, [det, rare], 1, cfg, np.zeros((0, 6)),
                                           blocked)] == [7]
    assert select_frames(np.zeros((0, 6)), scene[:0], time_s[:0], {}, [det], 3, cfg, np.zeros((0, 6))) == []
    with pytest.raises(ValueError, match="time_s has 7 entries for 8 candidates"):
        select_frames(emb, scene, time_s[:7], scores, [det], 3, cfg, np.zeros((0, 6)))


@pytest.mark.parametrize(("spec", "message"), [
    ("rare:trailer@fire=1.5", r"rare:trailer@fire=R .* in \(0, 1\).*got 'fire=1.5'"),
    ("rare:trailer@fire=0", r"in \(0, 1\)"),
    ("rare:trailer@fire=lots", r"got 'fire=lots'"),
    ("rare:trailer@fire", r"expected rare:trailer@fire=R"),
    ("rare:spaceship@fire=0.1", "unknown class 'spaceship'"),
    ("query", "query: name the class"),
    ("query:spaceship", "query: unknown class 'spaceship'"),
    ("query:trailer@0", "query: the argument must be >= 1"),
    ("query:trailer@many", "query: expected an integer argument, got 'many'"),
    ("query:trailer@", "query: expected query:trailer@K"),
    ("typical:0", "typical: the argument must be >= 1"),
    ("typical:some", "typical: expected an integer argument"),
])
def test_bad_specs_are_named(spec: str, message: str) -> None:
    with pytest.raises(StrategyError, match=message):
        make_strategy(spec)


def test_rare_fire_calibrates_on_the_labeled_frames_without_the_class() -> None:
    """With labels known, the threshold is the quantile over the frames lacking the class: a labeled set
    that mining has filled with trailers does not raise it."""
    rng = np.random.default_rng(1)
    negatives, positives = rng.beta(1, 8, size=300), rng.beta(8, 1, size=300)
    scores = np.concatenate([negatives, positives])
    classes = tuple(frozenset({"car"}) for _ in negatives) + tuple(frozenset({"trailer", "car"}) for _ in positives)
    rare = make_strategy("rare:trailer@fire=0.1")
    assert rare.needs_reference_labels
    rare.prepare(context(classes=classes, scores={rare.name: scores}))
    assert rare.threshold == pytest.approx(np.quantile(negatives, 0.9))
    assert np.mean([rare.fired(float(v), {}) for v in negatives]) == pytest.approx(0.1, abs=0.01)
    unlabeled = make_strategy("rare:trailer@fire=0.1")
    unlabeled.prepare(context(scores={unlabeled.name: scores}))  # labels unknown: every labeled frame counts
    assert unlabeled.threshold == pytest.approx(np.quantile(scores, 0.9)) and unlabeled.threshold > rare.threshold
