"""The active-learning benchmark's arms: how each picks the next frames to label from the cached pool.

A mining arm runs the data engine's own registered strategies and selection on what the current
learner says about every pool frame (:func:`data_engine.mining.cached.pick_on_heads`, the mining of
`data-engine loop`'s heads-only mode, with the default ``SelectionConfig``). The frame embedding is
the cache's pooled BEV features (mean and max over the grid); the product embeds the same pooled
features, normalised, and through a fixed random projection for checkpoints trained before it
embedded them directly (as the edge model measured here was), so query and typical rank on the pooled
features themselves here. Two arms are the benchmark's own: ``random`` (the baseline) and ``oracle``
(picks frames that truly hold a rare class: the skyline that shows how much room selection has; no
strategy can know this).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from data_engine.mining.cached import CachedFrames, pick_on_heads, with_exemplars
from perception.schema import RARE_CLASSES
from perception.training.feature_cache import FeatureCache
from perception.training.head_learner import LightHeads

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


class Pool(CachedFrames):
    """The pool's frames as the strategies see them and, for the benchmark's bookkeeping only, whether
    each truly holds a rare class."""

    def __init__(self, cache: FeatureCache) -> None:
        frames = CachedFrames.of([(cache, None)])
        super().__init__(**{f.name: getattr(frames, f.name) for f in dataclasses.fields(CachedFrames)})
        self.cache = cache
        self.rare = np.array([bool(c & set(RARE_CLASSES)) for c in self.classes])


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
    held = set().union(*(pool.classes[int(i)] for i in np.flatnonzero(labeled)))
    return [i for i, _, _ in pick_on_heads(with_exemplars(arm.strategies, held), pool, heads, labeled, budget).picks]
