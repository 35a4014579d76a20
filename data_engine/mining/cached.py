"""Mining on cached features: the data engine's registered strategies and its selection run on what a
light-heads learner (:mod:`perception.training.head_learner`) says about frames whose frozen BEV
features are cached (:mod:`perception.training.feature_cache`), instead of on an exported model's
outputs. It is how ``data-engine loop`` mines in its heads-only mode and how the active-learning
benchmark's mining arms pick; `data-engine mine` on an exported model stays the product's path.

The frame embedding is the cache's pooled BEV features (mean and max over the grid), so ``query`` and
``typical`` rank on the pooled features themselves.

    frames = CachedFrames.of([(seed_cache, seed_positions), (pool_cache, None)])
    found = pick_on_heads(["rare:trailer@fire=0.1"], frames, heads, labeled, budget=40)
    found.picks: [(index into frames, combined score, reasons), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from perception.boxes import BoxCodec, sigmoid
from perception.data.nuscenes import load_dataset
from perception.training.feature_cache import FeatureCache
from perception.training.head_learner import LightHeads, predict_heads

from .selection import SelectionConfig, near_in_time, select_frames
from .strategies import FrameOutput, RunContext, RunStrategy, make_strategy

__all__ = ["CachedFrames", "HeadsPicks", "pick_on_heads", "with_exemplars"]


@dataclass
class CachedFrames:
    """Frames of one or more feature caches (of the same model), in order, as the strategies see them:
    per frame its cache and position there, time (s), pose, scene, embedding [2C] and detection classes."""

    parts: list[tuple[FeatureCache, np.ndarray]]  # (cache, positions in it), in frame order
    time_s: np.ndarray  # [N]
    global_T_ego: list[np.ndarray]  # [N] of [4, 4]
    scene: np.ndarray  # [N] scene tokens
    embedding: np.ndarray  # float32 [N, 2C]
    classes: list[frozenset[str]]  # [N] classes with an object on the detection grid (from the cache's labels)
    tokens: list[str]  # [N] sample tokens

    @classmethod
    def of(cls, parts: Sequence[tuple[FeatureCache, Sequence[int] | np.ndarray | None]]) -> CachedFrames:
        """Frames of ``(cache, positions)`` pairs (positions None: every frame of the cache)."""
        if not parts:
            raise ValueError("CachedFrames needs at least one cache")
        presets = {p[0].preset.name for p in parts}
        if len(presets) != 1:
            raise ValueError(f"CachedFrames: the caches are of different presets {sorted(presets)}")
        fixed: list[tuple[FeatureCache, np.ndarray]] = []
        time_s: list[float] = []
        poses: list[np.ndarray] = []
        scene: list[str] = []
        emb: list[np.ndarray] = []
        classes: list[frozenset[str]] = []
        tokens: list[str] = []
        for cache, positions in parts:
            idx = np.arange(len(cache)) if positions is None else np.asarray(positions, dtype=np.int64)
            reader = load_dataset(cache.data)
            samples = [reader.sample(cache.tokens[int(i)]) for i in idx]
            fixed.append((cache, idx))
            time_s += [s.timestamp / 1e6 for s in samples]
            poses += [s.global_T_ego for s in samples]
            scene += [cache.scenes[int(i)] for i in idx]
            emb.append(np.asarray(cache.embedding[idx], dtype=np.float32))
            classes += [cache.classes[int(i)] for i in idx]
            tokens += [cache.tokens[int(i)] for i in idx]
        return cls(fixed, np.array(time_s), poses, np.array(scene, dtype=object), np.concatenate(emb), classes, tokens)

    def __len__(self) -> int:
        return len(self.tokens)

    def outputs(self, heads: LightHeads) -> list[FrameOutput]:
        """What the learner says about every frame, as the strategies read a model's outputs."""
        codec = BoxCodec.from_preset(self.parts[0][0].preset)
        out: list[FrameOutput] = []
        for cache, idx in self.parts:
            pred = predict_heads(heads, cache, idx)
            prob = sigmoid(pred["heatmap"]).astype(np.float32)
            boxes = codec.decode_batch(prob, pred["regression"], 0.1, 100)
            empty_seg = np.zeros((0, *prob.shape[2:]), np.float32)
            for j in range(len(idx)):
                i = len(out)
                out.append(FrameOutput(token=self.tokens[i], timestamp=float(self.time_s[i]),
                                       global_T_ego=self.global_T_ego[i], boxes=boxes[j], class_names=codec.classes,
                                       heatmap=prob[j], seg_prob=empty_seg, seg_classes=(), embedding=self.embedding[i],
                                       det_grid=codec.grid))
        return out

    def blocked(self, labeled: np.ndarray, min_gap: float) -> np.ndarray:
        """bool [N]: frames less than ``min_gap`` s from a labeled frame of their scene (temporal suppression)."""
        out = np.zeros(len(self), dtype=bool)
        for j in np.flatnonzero(labeled):
            out |= near_in_time(self.scene, self.time_s, self.scene[j], self.time_s[j], min_gap)
        return out


def with_exemplars(specs: Sequence[str], held: set[str]) -> list[str]:
    """``query:CLASS`` needs a labeled exemplar of CLASS; until one is labeled, the class's calibrated
    trigger (``rare:CLASS@fire=0.1``) stands in for it, the alternative `data-engine mine` names."""
    out = []
    for spec in specs:
        name, _, arg = spec.partition(":")
        cls = arg.partition("@")[0]
        out.append(f"rare:{cls}@fire=0.1" if name == "query" and cls not in held else spec)
    return out


@dataclass
class HeadsPicks:
    """What mining on the heads found: the picks, and what it read to pick them."""

    picks: list[tuple[int, float, list[str]]]  # (index into the frames, combined score, reasons), in rank order
    outputs: list[FrameOutput]  # [N] the heads' outputs per frame
    scores: dict[str, np.ndarray]  # strategy -> [N] raw scores (a run strategy's: 0 on labeled frames)


def pick_on_heads(specs: Sequence[str], frames: CachedFrames, heads: LightHeads, labeled: np.ndarray, budget: int,
                  selection: SelectionConfig | None = None) -> HeadsPicks:
    """Up to ``budget`` of the unlabeled ``frames`` (``labeled`` bool [N] marks the others), picked by the
    strategies ``specs`` on ``heads``' outputs with the data engine's selection. The labeled frames are
    the reference (exemplars, calibrations, diversity)."""
    labeled = np.asarray(labeled, dtype=bool)
    if labeled.shape != (len(frames),):
        raise ValueError(f"pick_on_heads: labeled has shape {labeled.shape}, expected ({len(frames)},)")
    candidates = np.flatnonzero(~labeled)
    ref = np.flatnonzero(labeled)
    strategies = [make_strategy(s) for s in specs]
    outs = frames.outputs(heads)
    scores: dict[str, np.ndarray] = {}
    for s in strategies:
        if not isinstance(s, RunStrategy):
            scores[s.name] = np.array([float(s.score(o, None)[0]) for o in outs])
    context = RunContext(budget=budget, reference_embeddings=frames.embedding[ref],
                         reference_classes=tuple(frames.classes[int(i)] for i in ref),
                         reference_scores={k: v[ref] for k, v in scores.items()})
    for s in strategies:
        s.prepare(context)
    for s in strategies:
        if isinstance(s, RunStrategy):
            values = np.zeros(len(frames))
            values[candidates] = [v for v, _ in s.score_run(frames.embedding[candidates], frames.embedding[ref])]
            scores[s.name] = values
    cfg = selection or SelectionConfig()
    picks = select_frames(frames.embedding[candidates], frames.scene[candidates], frames.time_s[candidates],
                          {k: v[candidates] for k, v in scores.items()}, strategies, budget, cfg,
                          reference=frames.embedding[ref], blocked=frames.blocked(labeled, cfg.min_gap)[candidates])
    return HeadsPicks([(int(candidates[p]), float(score), list(reasons)) for p, score, reasons in picks], outs, scores)
