"""The active-learning benchmark's arms: how each picks the next frames to label from the cached pool.

A mining arm runs the data engine's own registered strategies (``data_engine.mining.strategies``)
and its selection (:func:`data_engine.mining.selection.select_frames`, with the default
``SelectionConfig``) on what the current learner says about every pool frame, as ``data-engine mine``
does on an exported model's outputs. The frame embedding is the cache's pooled BEV features (mean
and max over the grid); the product embeds the same pooled features, normalised, and through a
fixed random projection for checkpoints trained before it embedded them directly (as the edge
model measured here was), so query and typical rank on the pooled features themselves here. Two arms are the benchmark's own: ``random`` (the baseline) and
``oracle`` (picks frames that truly hold a rare class: the skyline that shows how much room
selection has; no strategy can know this).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from data_engine.mining.selection import SelectionConfig, near_in_time, select_frames
from data_engine.mining.strategies import FrameOutput, RunContext, RunStrategy, make_strategy
from perception.boxes import BoxCodec, sigmoid
from perception.data.nuscenes import load_dataset
from perception.schema import RARE_CLASSES
from perception.training.feature_cache import FeatureCache
from perception.training.head_learner import LightHeads, predict_heads

__all__ = ["ARMS", "Arm", "Pool", "pick"]


@dataclass(frozen=True)
class Arm:
    name: str
    strategies: tuple[str, ...] = ()  # registered strategy specs (mining arms)
    kind: str = "mine"  # "mine", "random" or "oracle"


ARMS: tuple[Arm, ...] = (
    Arm("random", kind="random"),
    Arm("oracle", kind="oracle"),
    Arm("query", tuple(f"query:{c}" for c in RARE_CLASSES)),
    Arm("rare", tuple(f"rare:{c}@fire=0.1" for c in RARE_CLASSES)),
    Arm("typical", ("typical",)),
    Arm("uncertainty", ("det_entropy",)),
)


class Pool:
    """The pool as the strategies see it: per frame its time, pose, scene and embedding; and, for
    the benchmark's bookkeeping only, whether it truly holds a rare class."""

    def __init__(self, cache: FeatureCache) -> None:
        reader = load_dataset(cache.data)
        samples = [reader.sample(t) for t in cache.tokens]
        self.cache = cache
        self.time_s = np.array([s.timestamp / 1e6 for s in samples])
        self.global_T_ego = [s.global_T_ego for s in samples]
        self.scene = np.array(cache.scenes, dtype=object)
        self.embedding = np.asarray(cache.embedding, dtype=np.float32)
        self.classes = cache.classes
        self.rare = np.array([bool(c & set(RARE_CLASSES)) for c in cache.classes])
        self.codec = BoxCodec.from_preset(cache.preset)

    def __len__(self) -> int:
        return len(self.scene)

    def outputs(self, heads: LightHeads) -> list[FrameOutput]:
        """What the learner says about every pool frame, as the strategies read a model's outputs."""
        out = predict_heads(heads, self.cache)
        prob = sigmoid(out["heatmap"]).astype(np.float32)
        boxes = self.codec.decode_batch(prob, out["regression"], 0.1, 100)
        X, Y = prob.shape[2:]
        empty_seg = np.zeros((0, X, Y), np.float32)
        return [FrameOutput(token=self.cache.tokens[i], timestamp=float(self.time_s[i]),
                            global_T_ego=self.global_T_ego[i], boxes=boxes[i], class_names=self.codec.classes,
                            heatmap=prob[i], seg_prob=empty_seg, seg_classes=(), embedding=self.embedding[i],
                            det_grid=self.codec.grid)
                for i in range(len(self))]

    def blocked(self, labeled: np.ndarray, min_gap: float) -> np.ndarray:
        """bool [N]: frames less than ``min_gap`` s from a labeled frame of their scene (temporal suppression)."""
        out = np.zeros(len(self), dtype=bool)
        for j in np.flatnonzero(labeled):
            out |= near_in_time(self.scene, self.time_s, self.scene[j], self.time_s[j], min_gap)
        return out


def _with_exemplars(spec: str, held: set[str]) -> str:
    """``query:CLASS`` needs a labeled exemplar of CLASS; until one is labeled, the class's calibrated
    trigger stands in (what a user would run: ``data-engine mine`` names the alternative)."""
    name, _, arg = spec.partition(":")
    cls = arg.partition("@")[0]
    return f"rare:{cls}@fire=0.1" if name == "query" and cls not in held else spec


def pick(arm: Arm, pool: Pool, heads: LightHeads | None, labeled: np.ndarray, budget: int,
         rng: np.random.Generator) -> list[int]:
    """The pool positions ``arm`` picks next (``budget`` of them) given the labeled mask [N]."""
    candidates = np.flatnonzero(~labeled)
    if arm.kind == "random":
        return [int(i) for i in rng.choice(candidates, size=min(budget, len(candidates)), replace=False)]
    if arm.kind == "oracle":
        rare = candidates[pool.rare[candidates]]
        first = rng.permutation(rare)[:budget]
        rest = rng.permutation(np.setdiff1d(candidates, first))[:budget - len(first)]
        return [int(i) for i in np.concatenate([first, rest])]
    if heads is None:
        raise ValueError(f"arm {arm.name}: mining needs the current model")
    ref = np.flatnonzero(labeled)
    held = set().union(*(pool.classes[int(i)] for i in ref)) if len(ref) else set()
    strategies = [make_strategy(_with_exemplars(s, held)) for s in arm.strategies]
    outs = pool.outputs(heads)
    scores: dict[str, np.ndarray] = {}
    for s in strategies:
        if not isinstance(s, RunStrategy):
            scores[s.name] = np.array([float(s.score(o, None)[0]) for o in outs])
    context = RunContext(budget=budget, reference_embeddings=pool.embedding[ref],
                         reference_classes=tuple(pool.classes[int(i)] for i in ref),
                         reference_scores={k: v[ref] for k, v in scores.items()})
    for s in strategies:
        s.prepare(context)
    for s in strategies:
        if isinstance(s, RunStrategy):
            values = np.zeros(len(pool))
            values[candidates] = [v for v, _ in s.score_run(pool.embedding[candidates], pool.embedding[ref])]
            scores[s.name] = values
    cfg = SelectionConfig()
    picks = select_frames(pool.embedding[candidates], pool.scene[candidates], pool.time_s[candidates],
                          {k: v[candidates] for k, v in scores.items()}, strategies, budget, cfg,
                          reference=pool.embedding[ref], blocked=pool.blocked(labeled, cfg.min_gap)[candidates])
    return [int(candidates[p]) for p, _, _ in picks]
