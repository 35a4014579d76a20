"""The built-in mining strategies: :data:`BUILTIN_STRATEGIES`, their factories by name.

All read the BEV outputs, which already fuse every camera, so each score is per frame:

- ``det_entropy[:K]``: mean binary entropy (bits) of the K (10) most uncertain detection peaks.
- ``det_margin[:K]``: mean of 1 - (top-1 - top-2 probability) at the K (10) most ambiguous peaks,
  where the alternatives are the other classes and "no object".
- ``seg_entropy``: mean binary entropy (bits) of the BEV segmentation over cells and classes.
- ``flicker[:T]``: objects (score >= T, default 0.3) that appear, vanish or switch class between
  consecutive frames of a scene, after warping the previous frame's boxes by the ego motion;
  objects near the edge of the grid are ignored (they may simply enter or leave the view).
- ``rare:CLASS[@T]``: a trigger; the highest heatmap probability of CLASS, fired at >= T (0.3).
- ``rare:CLASS@fire=R``: the same trigger with its threshold calibrated on the labeled frames without
  CLASS: the (1 - R) quantile of their scores, so that it fires on a fraction R of them.
- ``novelty[:K]``: mean cosine distance of the frame embedding to its K (5) nearest labeled frames
  (embeddings centred on the run's mean, :func:`centered`).
- ``disagreement[:T]``: label QA on labeled frames; the model's confident boxes (score >= T, 0.3)
  that the labels lack, label another class at the same place, or hold shifted by 1-4 m.
- ``random[:SEED]``: a uniform score from the frame's token (the baseline every strategy must beat).
- ``lens[:T]``: a trigger on the camera images rather than the BEV: the worst camera's blocked-lens score
  from the edge runtime's lens monitor (:mod:`export.runtime.lens_monitor`, with its memory across the
  frames of a scene), fired at >= T; without T, the score is the worst camera's alarm level (its score
  against the threshold the monitor held it to), fired exactly when the monitor flags a camera. The
  details name that camera and every camera flagged.
- ``query:CLASS[@K]``: query by example; mean cosine similarity to the 3 nearest of the (first K)
  labeled frames holding CLASS, minus that to the 3 nearest labeled frames without it (plus 2).
- ``typical[:K]``: TypiClust; k-means of the frames and the labeled frames into K clusters (default:
  the labeled frames plus the budget); the densest frame of each cluster without a labeled frame
  scores the cluster's size, the others 0.

The strategies fitted to the labeled frames (``rare@fire``, ``query``, ``typical``) live in
:mod:`.targeted_strategies`.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.boxes import sigmoid
from perception.geometry import BEVGrid, invert_rigid, transform_points
from perception.metrics.calibration import logit
from perception.schema import DETECTION_CLASSES

from .strategy_base import (
    FrameOutput,
    RunStrategy,
    Strategy,
    StrategyError,
    StrategyFactory,
    binary_entropy,
    centered,
    cosine_distances,
    int_arg,
)
from .targeted_strategies import calibrated_rare, query_strategy, typical_strategy

if TYPE_CHECKING:
    from export.runtime.lens_monitor import CameraHealth

__all__ = ["BUILTIN_STRATEGIES"]

def _float_arg(name: str, arg: str | None, default: float) -> float:
    try:
        value = float(arg) if arg else default
    except ValueError:
        raise StrategyError(f"{name}: expected a number argument, got {arg!r}") from None
    if not 0.0 <= value <= 1.0:
        raise StrategyError(f"{name}: the threshold must be in [0, 1], got {value}")
    return value


def _top_mean(values: np.ndarray, k: int) -> float:
    """Mean of the k largest values, counting missing ones as 0 (a frame with fewer peaks is calmer)."""
    if values.size == 0:
        return 0.0
    top = np.sort(values)[::-1][:k]
    return float(top.sum() / k)


class _DetEntropy(Strategy):
    def __init__(self, k: int) -> None:
        super().__init__("det_entropy")
        self.k = k

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        p = out.heatmap[out.peaks & (out.heatmap >= 0.05)]
        h = binary_entropy(p)
        return _top_mean(h, self.k), {"peaks": int(p.size), "max": float(h.max()) if h.size else 0.0}


class _DetMargin(Strategy):
    def __init__(self, k: int) -> None:
        super().__init__("det_margin")
        self.k = k

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        cells = (out.peaks & (out.heatmap >= 0.1)).any(axis=0)  # [Xd, Yd]
        if not cells.any():
            return 0.0, {"peaks": 0}
        probs = out.heatmap[:, cells].T.astype(np.float64)  # [P, K]
        background = 1.0 - probs.max(axis=1, keepdims=True)
        ranked = np.sort(np.concatenate([probs, background], axis=1), axis=1)[:, ::-1]
        ambiguity = 1.0 - (ranked[:, 0] - ranked[:, 1])
        return _top_mean(ambiguity, self.k), {"peaks": int(cells.sum())}


class _SegEntropy(Strategy):
    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        h = binary_entropy(out.seg_prob).mean(axis=(1, 2))  # per class
        return float(h.mean()), {c: round(float(v), 4) for c, v in zip(out.seg_classes, h)}


def _inside(grid: BEVGrid, xy: np.ndarray, margin: float) -> np.ndarray:
    return ((xy[:, 0] > grid.x_min + margin) & (xy[:, 0] < grid.x_max - margin)
            & (xy[:, 1] > grid.y_min + margin) & (xy[:, 1] < grid.y_max - margin))


def _greedy_pairs(a: np.ndarray, b: np.ndarray, max_dist: float) -> list[tuple[int, int]]:
    """Closest-first one-to-one pairs (i in a, j in b) of BEV points [N, 2] / [M, 2] within max_dist."""
    if len(a) == 0 or len(b) == 0:
        return []
    d = np.linalg.norm(a[:, None, :] - b[None, :, :], axis=2)
    pairs, used_a, used_b = [], set(), set()
    for flat in np.argsort(d, axis=None, kind="stable"):
        i, j = divmod(int(flat), d.shape[1])
        if d[i, j] >= max_dist:
            break
        if i in used_a or j in used_b:
            continue
        pairs.append((i, j))
        used_a.add(i)
        used_b.add(j)
    return pairs


class _Flicker(Strategy):
    match_distance = 2.0  # m
    edge_margin = 2.0  # m
    max_gap = 2.0  # s between frames; a longer gap is a new clip

    def __init__(self, threshold: float) -> None:
        super().__init__("flicker")
        self.threshold = threshold

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        if prev is None or not 0 < out.timestamp - prev.timestamp <= self.max_gap:
            return 0.0, {"appear": 0, "vanish": 0, "switch": 0}
        cur = out.boxes.select(out.boxes.score >= self.threshold)
        old = prev.boxes.select(prev.boxes.score >= self.threshold)
        curr_T_prev = invert_rigid(out.global_T_ego) @ prev.global_T_ego
        old_xy = transform_points(curr_T_prev, old.center)[:, :2] if len(old) else np.zeros((0, 2))
        cur_xy = cur.center[:, :2]
        cur_in, old_in = _inside(out.det_grid, cur_xy, self.edge_margin), _inside(out.det_grid, old_xy, self.edge_margin)
        pairs = _greedy_pairs(cur_xy, old_xy, self.match_distance)
        matched_cur, matched_old = {i for i, _ in pairs}, {j for _, j in pairs}
        appear = [i for i in range(len(cur)) if i not in matched_cur and cur_in[i]]
        vanish = [j for j in range(len(old)) if j not in matched_old and old_in[j]]
        switch = [(i, j) for i, j in pairs if cur.label[i] != old.label[j] and cur_in[i]]
        score = (float(cur.score[appear].sum()) + float(old.score[vanish].sum())
                 + sum(2.0 * min(float(cur.score[i]), float(old.score[j])) for i, j in switch))
        return score, {"appear": len(appear), "vanish": len(vanish), "switch": len(switch)}


class _Rare(Strategy):
    trigger = True

    def __init__(self, cls: str, threshold: float) -> None:
        super().__init__("rare")
        self.cls, self.threshold = cls, threshold

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        if self.cls not in out.class_names:
            raise StrategyError(f"{self.name}: the model has no class {self.cls!r} (classes: {', '.join(out.class_names)})")
        p = float(out.heatmap[out.class_names.index(self.cls)].max())
        return p, {"max_prob": round(p, 4), "fired": p >= self.threshold}

    def fired(self, score: float, details: dict[str, Any]) -> bool:
        return score >= self.threshold


class _Novelty(RunStrategy):
    needs_reference = True

    def __init__(self, k: int) -> None:
        super().__init__("novelty")
        self.k = k

    def score_run(self, embeddings: np.ndarray, reference: np.ndarray) -> list[tuple[float, dict[str, Any]]]:
        if len(reference) == 0:
            raise StrategyError(f"{self.name}: no labeled frames were embedded; index a labeled dataset first")
        emb, ref = centered(embeddings, reference)
        k = min(self.k, len(ref))
        out: list[tuple[float, dict[str, Any]]] = []
        for i in range(0, len(emb), 4096):  # rows in chunks: memory stays bounded for any pool
            d = cosine_distances(emb[i:i + 4096], ref)
            near = np.sort(np.partition(d, k - 1, axis=1)[:, :k], axis=1)
            out += [(float(row.mean()), {"nearest": round(float(row[0]), 4)}) for row in near]
        return out


class _Disagreement(Strategy):
    target = "labeled"
    needs_labels = True
    match_distance = 1.0  # m: a label and a box this close are the same object
    shift_range = (1.0, 4.0)  # m: a same-class box this far from its label suggests a shifted label

    def __init__(self, threshold: float) -> None:
        super().__init__("disagreement")
        self.threshold = threshold

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        if out.labels is None:
            raise StrategyError(f"{self.name}: frame {out.token} has no labels to compare with")
        pred = out.boxes.select(out.boxes.score >= self.threshold)
        names = np.array([out.class_names[i] for i in pred.label], dtype=object)
        gt_xy, gt_names = out.labels.center[:, :2], np.array(out.labels.names, dtype=object)
        pred_xy = pred.center[:, :2]
        in_grid = _inside(out.det_grid, pred_xy, 1.0)
        d = (np.linalg.norm(pred_xy[:, None] - gt_xy[None], axis=2) if len(pred) and len(gt_xy)
             else np.full((len(pred), len(gt_xy)), np.inf))
        missing = wrong = shifted = 0
        score = 0.0
        for i in range(len(pred)):
            if not in_grid[i]:
                continue
            same = gt_names == names[i]
            near_same = d[i][same].min() if same.any() else np.inf
            near_any = d[i].min() if d.shape[1] else np.inf
            if near_same < self.match_distance:
                continue  # agrees with a label
            if near_any < self.match_distance:
                wrong += 1  # a label of another class where the model sees this class
            elif self.shift_range[0] <= near_same < self.shift_range[1]:
                shifted += 1
            else:
                missing += 1
            score += float(pred.score[i])
        return score, {"missing": missing, "wrong_class": wrong, "shifted": shifted}


class _Random(Strategy):
    def __init__(self, seed: int) -> None:
        super().__init__("random")
        self.seed = seed

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        digest = hashlib.sha256(f"{self.seed}:{out.token}".encode()).digest()
        return int.from_bytes(digest[:8], "big") / 2.0**64, {}


class _Lens(Strategy):
    """The frame's most blocked-looking camera. ``lens``: its alarm level, the runtime's blocked score
    (with the stream's memory) against the threshold the monitor held it to, ``sigmoid(logit(score) -
    logit(threshold))``, so it fires (>= 0.5) exactly when the monitor flags a camera; ``lens:T``: its
    blocked score, fired at >= T."""

    trigger = True

    def __init__(self, threshold: float | None) -> None:
        super().__init__("lens")
        self.threshold = threshold

    def _level(self, h: CameraHealth) -> float:
        if self.threshold is not None:
            return h.blocked_score
        return float(sigmoid(logit(h.blocked_score) - logit(h.blocked_threshold)))

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        if not out.camera_health:
            raise StrategyError(f"{self.name}: frame {out.token} has no camera health (the edge runtime's lens "
                                "monitor did not run on it)")
        level = {n: self._level(h) for n, h in out.camera_health.items() if h.assessed}
        if not level:
            return 0.0, {"camera": None, "blocked": [], "dirty": [], "fired": False}
        camera = max(level, key=lambda n: level[n])
        score = float(level[camera])
        blocked = sorted(n for n, v in level.items() if self.fired(v, {}))
        dirty = sorted(n for n, h in out.camera_health.items() if h.assessed and h.dirty)
        return score, {"camera": camera, "blocked_score": out.camera_health[camera].blocked_score, "blocked": blocked,
                       "dirty": dirty, "fired": self.fired(score, {})}

    def fired(self, score: float, details: dict[str, Any]) -> bool:
        return score >= (0.5 if self.threshold is None else self.threshold)


def _rare(arg: str | None) -> Strategy:
    if not arg:
        raise StrategyError("rare: name the class, e.g. rare:trailer, rare:trailer@0.4 or rare:trailer@fire=0.1 "
                            f"({', '.join(DETECTION_CLASSES)})")
    cls, _, thr = arg.partition("@")
    if cls not in DETECTION_CLASSES:
        raise StrategyError(f"rare: unknown class {cls!r}; expected one of {', '.join(DETECTION_CLASSES)}")
    if thr.startswith("fire"):
        return calibrated_rare(cls, thr)
    return _Rare(cls, _float_arg("rare", thr or None, 0.3))


BUILTIN_STRATEGIES: dict[str, StrategyFactory] = {
    "det_entropy": lambda arg: _DetEntropy(int_arg("det_entropy", arg, 10)),
    "det_margin": lambda arg: _DetMargin(int_arg("det_margin", arg, 10)),
    "seg_entropy": lambda arg: _SegEntropy("seg_entropy"),
    "flicker": lambda arg: _Flicker(_float_arg("flicker", arg, 0.3)),
    "rare": _rare,
    "novelty": lambda arg: _Novelty(int_arg("novelty", arg, 5)),
    "disagreement": lambda arg: _Disagreement(_float_arg("disagreement", arg, 0.3)),
    "random": lambda arg: _Random(int_arg("random", arg, 1) if arg else 0),
    "lens": lambda arg: _Lens(_float_arg("lens", arg, 0.0) if arg else None),
    "query": query_strategy,
    "typical": typical_strategy,
}
