"""Strategies for low label budgets and rare classes, fitted to the run's labeled frames in
:meth:`~data_engine.mining.strategy_base.Strategy.prepare` (listed in :mod:`.builtin_strategies`):

- ``rare:CLASS@fire=R``: the ``rare`` trigger with its threshold calibrated on the labeled frames, so
  that it fires on a fraction R of those without CLASS (:func:`calibrated_rare`);
- ``query:CLASS[@K]``: query by example, frames like the labeled frames holding CLASS and unlike the
  labeled frames without it (:func:`query_strategy`);
- ``typical[:K]``: TypiClust, the densest frame of each cluster no labeled frame covers
  (:func:`typical_strategy`, clustering with :func:`kmeans`).

They need no catalog: a caller that holds embeddings and scores builds a
:class:`~data_engine.mining.strategy_base.RunContext`, calls ``prepare`` and then scores.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from perception.metrics.novelty import DIST_CHUNK as _CHUNK
from perception.metrics.novelty import kmeans
from perception.schema import DETECTION_CLASSES

from .strategy_base import (
    FrameOutput,
    RunContext,
    RunStrategy,
    Strategy,
    StrategyError,
    centered,
    cosine_distances,
    int_arg,
)

__all__ = ["calibrated_rare", "kmeans", "query_strategy", "typical_strategy"]



class _CalibratedRare(Strategy):
    """The highest heatmap probability of a class; fires at the (1 - R) quantile of its scores on the
    labeled frames without the class (all labeled frames when their labels are not known), set by
    :meth:`prepare`."""

    trigger = True
    needs_reference = True  # the labeled frames are scored too: they calibrate the threshold
    needs_reference_labels = True  # on those that lack the class
    calibrated = False

    def __init__(self, cls: str, fire_rate: float) -> None:
        super().__init__("rare")
        self.cls, self.fire_rate = cls, fire_rate
        self.threshold: float | None = None  # set by prepare()

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        if self.cls not in out.class_names:
            raise StrategyError(f"{self.name}: the model has no class {self.cls!r} "
                                f"(classes: {', '.join(out.class_names)})")
        p = float(out.heatmap[out.class_names.index(self.cls)].max())
        details: dict[str, Any] = {"max_prob": round(p, 4)}
        if self.threshold is not None:
            details["threshold"] = round(self.threshold, 4)
        return p, details

    def prepare(self, context: RunContext) -> None:
        values = np.asarray(context.reference_scores.get(self.name, np.zeros(0)), np.float64)
        keep = np.isfinite(values)
        if len(context.reference_classes) == len(values):
            # Calibrate on the labeled frames without the class: the trigger fires on a fraction R of them
            # (its false-alarm rate on labeled data), however many labeled frames hold the class. Over all
            # labeled frames, the threshold would climb as mining fills the labeled set with the class.
            lacking = np.array([self.cls not in c for c in context.reference_classes], dtype=bool)
            if (keep & lacking).any():
                keep &= lacking
        values = values[keep]
        if values.size == 0:
            raise StrategyError(f"{self.name}: no labeled frame of the run holds a score to calibrate the threshold on "
                                f"(index a labeled dataset, or give an absolute threshold: rare:{self.cls}@T)")
        self.threshold = float(np.quantile(values, 1.0 - self.fire_rate))
        self.calibrated = True

    def fired(self, score: float, details: dict[str, Any]) -> bool:
        if self.threshold is None:
            raise StrategyError(f"{self.name}: not calibrated; prepare() sets its threshold from the labeled "
                                "frames' scores")
        return score >= self.threshold


def calibrated_rare(cls: str, arg: str) -> Strategy:
    """``rare:CLASS@fire=R``: ``arg`` is the part after ``@`` ("fire=R", R in (0, 1))."""
    text = arg.removeprefix("fire=")
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not 0.0 < rate < 1.0:
        raise StrategyError(f"rare: expected rare:{cls}@fire=R with R the fraction of labeled frames to fire on, "
                            f"in (0, 1), e.g. fire=0.1; got {arg!r}")
    return _CalibratedRare(cls, rate)


def _top_similarity(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    """[N]: mean of the k largest cosine similarities of each row of a [N, E] to the rows of b [M, E] (k <= M)."""
    out = np.zeros(len(a))
    step = max(1, _CHUNK // max(1, len(b)))
    for i in range(0, len(a), step):
        sim = 1.0 - cosine_distances(a[i:i + step], b)
        out[i:i + step] = np.partition(sim, len(b) - k, axis=1)[:, len(b) - k:].mean(axis=1)
    return out


class _Query(RunStrategy):
    """Nearest-neighbour margin: similarity to the exemplars of a class minus similarity to labeled
    frames without it (mean of the top ``neighbours`` cosine similarities each)."""

    needs_reference = True
    needs_reference_labels = True
    neighbours = 3
    offset = 2.0  # added to the margin (in [-2, 2]) so every frame has a positive, rankable score

    def __init__(self, cls: str, k: int | None) -> None:
        super().__init__("query")
        self.query_class, self.k = cls, k
        self._classes: tuple[frozenset[str], ...] | None = None  # set by prepare()

    def prepare(self, context: RunContext) -> None:
        self._classes = context.reference_classes
        self._split(len(self._classes))  # no exemplar: say so before any ranking

    def _split(self, m: int) -> tuple[np.ndarray, np.ndarray]:
        """(exemplar rows, negative rows) of the reference [M]."""
        if self._classes is None:
            raise StrategyError(f"{self.name}: call prepare() with the labeled frames' classes before score_run")
        if len(self._classes) != m:
            raise StrategyError(f"{self.name}: prepare() saw {len(self._classes)} labeled frames, score_run {m}")
        holds = np.array([self.query_class in c for c in self._classes], dtype=bool)
        exemplars = np.flatnonzero(holds)
        if len(exemplars) == 0:
            raise StrategyError(f"{self.name}: no labeled frame holds {self.query_class!r}; label a few exemplars "
                                f"of it, or mine with rare:{self.query_class}@fire=R")
        return exemplars[:self.k] if self.k else exemplars, np.flatnonzero(~holds)

    def score_run(self, embeddings: np.ndarray, reference: np.ndarray) -> list[tuple[float, dict[str, Any]]]:
        exemplars, negatives = self._split(len(reference))
        emb, ref = centered(embeddings, reference)
        like = _top_similarity(emb, ref[exemplars], min(self.neighbours, len(exemplars)))
        unlike = (_top_similarity(emb, ref[negatives], min(self.neighbours, len(negatives))) if len(negatives)
                  else np.zeros(len(emb)))
        margin = like - unlike
        return [(float(m + self.offset), {"margin": round(float(m), 4), "exemplar_similarity": round(float(p), 4),
                                          "negative_similarity": round(float(q), 4)})
                for m, p, q in zip(margin, like, unlike)]


def query_strategy(arg: str | None) -> Strategy:
    """``query:CLASS[@K]``: query by example with the first K (default all) labeled frames holding CLASS."""
    if not arg:
        raise StrategyError("query: name the class, e.g. query:trailer or query:trailer@20 "
                            f"({', '.join(DETECTION_CLASSES)})")
    cls, at, k = arg.partition("@")
    if cls not in DETECTION_CLASSES:
        raise StrategyError(f"query: unknown class {cls!r}; expected one of {', '.join(DETECTION_CLASSES)}")
    if at and not k:
        raise StrategyError(f"query: expected query:{cls}@K with K the number of exemplars, got {arg!r}")
    return _Query(cls, int_arg("query", k, 1) if k else None)


def _most_typical(points: np.ndarray, neighbours: int, max_rows: int = 2000) -> tuple[int, float]:
    """(row, typicality) of the most typical of points [S, E] (unit rows): typicality is 1 / the mean
    cosine distance to its min(neighbours, S - 1) nearest other points. Large clusters: only the
    ``max_rows`` points nearest the centroid are candidates (the densest point is among them)."""
    s = len(points)
    if s == 1:
        return 0, 0.0
    nb = min(neighbours, s - 1)
    rows = np.arange(s)
    if s > max_rows:
        rows = np.argsort(-(points @ points.mean(axis=0)), kind="stable")[:max_rows]
    typicality = np.empty(len(rows))
    step = max(1, _CHUNK // s)
    for i in range(0, len(rows), step):
        part = rows[i:i + step]
        d = np.clip(1.0 - points[part] @ points.T, 0.0, 2.0)  # [P, S] cosine distances
        d[np.arange(len(part)), part] = np.inf  # not its own neighbour
        typicality[i:i + step] = 1.0 / np.maximum(np.partition(d, nb - 1, axis=1)[:, :nb].mean(axis=1), 1e-6)
    best = int(np.argmax(typicality))
    return int(rows[best]), float(typicality[best])


class _Typical(RunStrategy):
    """TypiClust: k-means over the candidates and the labeled frames; in each cluster without a labeled
    frame, the most typical candidate scores the cluster's size, every other candidate 0."""

    needs_reference = True
    neighbours = 20  # for typicality
    seed = 0

    def __init__(self, k: int | None) -> None:
        super().__init__("typical")
        self.k = k
        self._budget: int | None = None  # set by prepare()

    def prepare(self, context: RunContext) -> None:
        self._budget = context.budget

    def score_run(self, embeddings: np.ndarray, reference: np.ndarray) -> list[tuple[float, dict[str, Any]]]:
        n, m = len(embeddings), len(reference)
        if n == 0:
            return []
        if self.k is None and self._budget is None:
            raise StrategyError(f"{self.name}: the number of clusters defaults to the labeled frames plus the budget; "
                                "call prepare() first, or give it: typical:K")
        k = min(self.k if self.k is not None else m + int(self._budget or 0), n + m)
        emb, ref = centered(embeddings, reference)
        x = np.concatenate([emb, ref]) if m else emb
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        assign = kmeans(x, max(1, k), seed=self.seed)
        sizes = np.bincount(assign, minlength=k)
        covered = np.zeros(k, dtype=bool)
        covered[assign[n:]] = True
        out: list[tuple[float, dict[str, Any]]] = [
            (0.0, {"cluster": int(c), "size": int(sizes[c]), "covered": bool(covered[c])}) for c in assign[:n]]
        order = np.argsort(assign[:n], kind="stable")
        groups = np.split(order, np.cumsum(np.bincount(assign[:n], minlength=k))[:-1])
        for c, members in enumerate(groups):
            if covered[c] or len(members) == 0:
                continue
            row, typ = _most_typical(x[members], self.neighbours)
            j = int(members[row])
            out[j] = (float(sizes[c]) + min(typ, 999.0) / 1e3,  # the tie-break never outweighs one frame of size
                      {**out[j][1], "typicality": round(typ, 4)})
        return out


def typical_strategy(arg: str | None) -> Strategy:
    """``typical[:K]``: TypiClust with K clusters (default: the labeled frames plus the budget)."""
    return _Typical(int_arg("typical", arg, 1) if arg else None)
