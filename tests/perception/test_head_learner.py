"""The frozen-feature cache and the label-limited head learner of the active-learning benchmark."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model_inputs import random_tiny_checkpoint
from perception.metrics import HeatmapAP
from perception.boxes import sigmoid
from perception.training.feature_cache import FeatureCache, build_feature_cache, pooled_embedding
from perception.training.head_learner import HeadEvaluator, HeadLearnerConfig, init_heads, predict_heads, train_heads


@pytest.fixture(scope="module")
def cached(synth_world, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("features")
    ckpt, model = random_tiny_checkpoint(tmp / "ckpt.pt")
    return ckpt, model, build_feature_cache(ckpt, synth_world, tmp / "cache", progress=False)


def test_cache_holds_the_heads_input_with_the_video_state_carried(cached, synth_world):
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.evaluate import run_model

    _, model, cache = cached
    n = len(cache)
    assert n == 6 and cache.features.dtype == np.float16
    assert cache.embedding.shape == (n, 2 * cache.features.shape[1])
    np.testing.assert_allclose(cache.embedding, pooled_embedding(cache.features), rtol=1e-6)
    dataset = MultiCamDataset(cache.data, cache.preset, DatasetConfig())
    checked = 0
    for batch, out in run_model(model, dataset, dataset.clips()):
        i = cache.tokens.index(dataset.reader.samples[int(batch.sample_index[0])].token)
        with torch.no_grad():  # the model's own heads on the cached features give the model's outputs
            again = model.heads(torch.from_numpy(np.asarray(cache.features[i:i + 1], np.float32)))
        np.testing.assert_allclose(again["heatmap"].numpy(), out["heatmap"].numpy(), atol=2e-2)
        np.testing.assert_array_equal(cache.heatmap[i], batch.heatmap[0].numpy().astype(np.float16))
        mask = batch.det_mask[0].numpy().astype(bool)
        names = {cache.preset.tasks.det_classes[int(c)] for c in batch.det_labels[0].numpy()[mask]}
        assert cache.classes[i] == frozenset(names)
        checked += 1
    assert checked == n
    assert any(cache.classes) and cache.holds("car").dtype == bool


def test_cache_is_reused_for_the_same_checkpoint_and_rebuilt_for_another(cached, synth_world, tmp_path):
    ckpt, _, cache = cached
    stamp = (cache.root / "features.npy").stat().st_mtime_ns
    again = build_feature_cache(ckpt, synth_world, cache.root, progress=False)
    assert (again.root / "features.npy").stat().st_mtime_ns == stamp
    other, _ = random_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    copy = tmp_path / "cache"
    build_feature_cache(ckpt, synth_world, copy, progress=False)
    rebuilt = build_feature_cache(other, synth_world, copy, progress=False)
    assert not np.array_equal(np.asarray(rebuilt.features), np.asarray(cache.features))
    assert not (tmp_path / "cache.partial").exists()


def test_a_directory_that_is_not_a_cache_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a feature cache"):
        FeatureCache.load(tmp_path)


def _planted(cache: FeatureCache) -> FeatureCache:
    """The cache with its features replaced by noise plus the heatmap targets planted in channels 0..K-1
    (upsampling aside): a learner that learns must find them."""
    rng = np.random.default_rng(0)
    f = rng.normal(size=cache.features.shape).astype(np.float32)
    K, Xt = cache.heatmap.shape[1], cache.features.shape[2]
    s = cache.heatmap.shape[2] // Xt
    target = np.asarray(cache.heatmap, np.float32)[:, :, ::s, ::s]
    f[:, :K] += 4.0 * target
    return dataclasses.replace(cache, features=f.astype(np.float16))


@pytest.mark.slow
def test_the_learner_finds_planted_evidence_and_starts_from_the_same_init(cached):
    _, _, cache = cached
    planted = _planted(cache)
    cfg = HeadLearnerConfig(epochs=200, min_steps=150, batch_size=4)
    assert cfg.steps(6) == 300 and HeadLearnerConfig(epochs=40, min_steps=200).steps(10) == 200
    everything = np.arange(len(planted))
    untrained = train_heads(planted, everything, dataclasses.replace(cfg, epochs=0, min_steps=1))
    trained = train_heads(planted, everything, cfg)

    def car_ap(heads) -> float:
        hap = HeatmapAP(planted.preset.tasks.det_classes)
        hap.update(sigmoid(predict_heads(heads, planted)["heatmap"]), np.asarray(planted.heatmap, np.float32))
        return hap.compute()["car"]

    assert car_ap(trained) > 0.5 > car_ap(untrained) + 0.2
    for a, b in zip(init_heads(planted, cfg).state_dict().values(), init_heads(cache, cfg).state_dict().values()):
        assert torch.equal(a, b)  # every training starts from the same heads
    short = dataclasses.replace(cfg, epochs=0, min_steps=20)
    for a, b in zip(train_heads(planted, everything, short).state_dict().values(),
                    train_heads(planted, everything, short).state_dict().values()):
        assert torch.equal(a, b)  # the same labels and seed give the same heads


def test_the_evaluator_scores_rare_classes_with_and_without_clipping(cached):
    _, _, cache = cached
    heads = train_heads(cache, np.arange(len(cache)), HeadLearnerConfig(epochs=1, min_steps=5))
    scores = HeadEvaluator(cache).score(heads)
    assert scores.num_gt["car"] > 0
    for c, ap in scores.ap.items():
        assert 0.0 <= ap <= scores.ap_unclipped[c] + 1e-9 <= 1.0 + 1e-9
    assert set(scores.to_dict()) >= {"mAP", "ap_unclipped", "heatmap_ap", "recall"}
    from perception.metrics import DetectionEvaluator, EvalBoxes, unclipped  # the same as a whole unclipped evaluation

    evaluator = HeadEvaluator(cache)
    ev = DetectionEvaluator(unclipped(evaluator.config))
    decoded = evaluator.codec.decode_logits(predict_heads(heads, cache), evaluator.score_threshold)
    for token, gt, boxes in zip(cache.tokens, evaluator.gt, decoded):
        ev.add_sample(token, gt, EvalBoxes.from_decoded(boxes, evaluator.codec.classes))
    for c, ap in ev.compute().mean_dist_aps.items():
        assert scores.ap_unclipped[c] == pytest.approx(ap, abs=1e-12)
    assert np.isfinite(scores.mAP)
