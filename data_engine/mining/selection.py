"""Choosing which scored frames to label: a budget spent on high scores, spread out, without repeats.

Each strategy's scores are made comparable by their rank among the candidates (a percentile in
(0, 1]; 0 for a frame the strategy gave nothing, or whose trigger did not fire) and combined with
the strategy weights. Picks are then made one at a time (greedy), each maximizing

    (1 - diversity) * combined score + diversity * distance to the nearest labeled or picked frame

where the distance is the cosine distance of the frame embeddings (centred on the run's mean), scaled
by its largest value (k-center greedy at ``diversity`` = 1, pure score ranking at 0). After each pick,
frames closer to it than ``dedup`` times the median nearest-neighbour distance (near-duplicates) and
frames of the same scene less than
``min_gap`` seconds from it (temporal suppression) can no longer be picked. Every pick records why.

:func:`select_frames` selects from arrays (no catalog: a benchmark calls it); :func:`select` reads a
mining run's frames, scores and labeled frames from the catalog and calls it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..catalog import Catalog
from .strategies import Strategy, centered, cosine_distances

__all__ = ["Pick", "SelectionConfig", "near_in_time", "nearest_frames", "rank_normalize", "select", "select_frames"]


@dataclass
class SelectionConfig:
    weights: dict[str, float] = field(default_factory=dict)  # strategy spec -> weight (default 1)
    diversity: float = 0.3  # 0: by score alone; 1: k-center greedy alone
    dedup: float = 0.25  # near-duplicates: closer than this fraction of the median nearest-neighbour distance
    min_gap: float = 2.0  # s: no two picks from one scene closer in time than this

    def __post_init__(self) -> None:
        if not 0.0 <= self.diversity <= 1.0:
            raise ValueError(f"diversity must be in [0, 1], got {self.diversity}")
        if self.dedup < 0 or self.min_gap < 0:
            raise ValueError("dedup and min_gap must be >= 0")
        bad = {k: w for k, w in self.weights.items() if not w >= 0}
        if bad:
            raise ValueError(f"strategy weights must be >= 0, got {bad}")


@dataclass(frozen=True)
class Pick:
    frame_id: int
    token: str
    score: float  # the combined score
    reasons: list[str]


def rank_normalize(values: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Percentile rank in (0, 1] of each active value among the active ones (ties share their mean
    rank); 0 for inactive ones."""
    out = np.zeros(len(values))
    idx = np.flatnonzero(active)
    if len(idx) == 0:
        return out
    v = values[idx]
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # rank of the last of each tie group (ranks start at 1)
    mean_rank = last - (counts - 1) / 2.0  # ties share their mean rank
    out[idx] = mean_rank[inverse] / len(v)
    return out


def _min_distances(a: np.ndarray, b: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """For each row of a [N, E], the cosine distance to its nearest row of b [M, E] (inf if M = 0)."""
    out = np.full(len(a), np.inf)
    if len(b) == 0 or len(a) == 0:
        return out
    for i in range(0, len(a), chunk):
        out[i:i + chunk] = cosine_distances(a[i:i + chunk], b).min(axis=1)
    return out


def _median_nn_distance(emb: np.ndarray, sample: int = 500, among: int = 50_000) -> float:
    """The median cosine distance of a frame to its nearest other frame, estimated on ``sample`` frames
    against up to ``among`` others (in chunks: memory stays bounded for any pool)."""
    if len(emb) < 2:
        return 0.0
    rows = emb[np.linspace(0, len(emb) - 1, min(sample, len(emb))).astype(np.int64)]
    others = emb[np.linspace(0, len(emb) - 1, min(among, len(emb))).astype(np.int64)]
    nn = []
    for i in range(0, len(rows), 50):
        d = cosine_distances(rows[i:i + 50], others)
        d[d <= 1e-12] = np.inf  # the frame itself (and exact copies)
        nn.append(d.min(axis=1))
    near = np.concatenate(nn)
    near = near[np.isfinite(near)]
    return float(np.median(near)) if near.size else 0.0


def near_in_time(scene: np.ndarray, time_s: np.ndarray, anchor_scene: object, anchor_time: float,
                 min_gap: float) -> np.ndarray:
    """bool [N]: the frames of ``anchor_scene`` less than ``min_gap`` s from ``anchor_time`` (temporal suppression)."""
    return (scene == anchor_scene) & (np.abs(time_s - anchor_time) < min_gap)


def select_frames(emb: np.ndarray, scene: np.ndarray, time_s: np.ndarray, scores: Mapping[str, np.ndarray],
                  strategies: Sequence[Strategy], budget: int, cfg: SelectionConfig,
                  reference: np.ndarray, blocked: np.ndarray | None = None) -> list[tuple[int, float, list[str]]]:
    """Pick up to ``budget`` candidate frames (see the module doc), without a catalog.

    emb [N, E] the candidates' embeddings; scene [N] their scene tokens (any objects comparable with ==);
    time_s [N] their times in seconds; scores: strategy name -> [N] raw scores (0 for a frame a strategy
    did not score; a strategy missing from it scored nothing); reference [M, E] the labeled frames'
    embeddings; blocked [N] frames that may not be picked (the neighbours in time of frames labeled or
    queued before). Triggers must be ready to say whether they fired (prepared, when they calibrate).
    Returns (position in the candidate arrays, combined score, reasons) per pick, in pick order.
    """
    n = len(emb)
    if n == 0:
        return []
    for key, arr in {"scene": scene, "time_s": time_s, **{f"scores[{k!r}]": v for k, v in scores.items()},
                     **({} if blocked is None else {"blocked": blocked})}.items():
        if len(arr) != n:
            raise ValueError(f"select_frames: {key} has {len(arr)} entries for {n} candidates")
    scene = np.asarray(scene, dtype=object)
    time_s = np.asarray(time_s, np.float64)
    norm: dict[str, np.ndarray] = {}
    values: dict[str, np.ndarray] = {}
    fired: dict[str, np.ndarray] = {}
    for s in strategies:
        v = np.asarray(scores[s.name], np.float64) if s.name in scores else np.zeros(n)
        on = np.array([s.fired(float(x), {}) for x in v], dtype=bool)
        values[s.name], fired[s.name] = v, on
        norm[s.name] = rank_normalize(v, on)
    weights = {s.name: float(cfg.weights.get(s.name, 1.0)) for s in strategies}
    total_w = sum(weights.values()) or 1.0
    combined = sum(weights[k] * norm[k] for k in norm) / total_w

    emb, ref = centered(emb, reference)
    dist = _min_distances(emb, ref)
    dedup_distance = cfg.dedup * _median_nn_distance(emb)
    available = dist >= dedup_distance  # near-duplicates of labeled frames are not worth a label
    if blocked is not None:
        available &= ~np.asarray(blocked, dtype=bool)
    picks: list[tuple[int, float, list[str]]] = []
    while len(picks) < budget and available.any():
        finite = dist[np.isfinite(dist)]
        scale = float(finite.max()) if finite.size and finite.max() > 0 else 1.0
        spread = np.where(np.isfinite(dist), dist / scale, 1.0)
        value = (1.0 - cfg.diversity) * combined + cfg.diversity * spread
        value = np.where(available, value, -np.inf)
        j = int(np.argmax(value))
        reasons = []
        for s in strategies:
            if s.trigger and fired[s.name][j]:
                threshold = getattr(s, "threshold", None)  # a calibrated one is worth seeing
                at = f" >= {threshold:.3f}" if isinstance(threshold, float) else ""
                reasons.append(f"{s.name} fired ({values[s.name][j]:.3f}{at})")
            elif not s.trigger and norm[s.name][j] >= 0.8:
                reasons.append(f"{s.name} {values[s.name][j]:.4g} (top {100 * (1 - norm[s.name][j]) + 100 / n:.0f}%)")
        if cfg.diversity > 0:
            reasons.append("diversity: the first pick, nothing labeled or picked to compare with"
                           if not np.isfinite(dist[j]) else
                           f"diversity: embedding distance {dist[j]:.3f} to the nearest labeled or picked frame")
        if not reasons:
            reasons.append(f"combined score {combined[j]:.3f}")
        picks.append((j, float(combined[j]), reasons))
        available[j] = False
        d_new = cosine_distances(emb, emb[j:j + 1])[:, 0]
        dist = np.minimum(dist, d_new)
        available &= d_new >= dedup_distance  # near-duplicates of the pick
        available &= ~near_in_time(scene, time_s, scene[j], time_s[j], cfg.min_gap)  # temporal suppression
    return picks


def select(cat: Catalog, run_id: int, strategies: Sequence[Strategy], budget: int, target: str,
           cfg: SelectionConfig) -> list[Pick]:
    """Pick up to ``budget`` of the run's scored frames in label state ``target`` (see the module doc):
    :func:`select_frames` on the run's embeddings and scores in the catalog."""
    ids, emb = cat.run_embeddings(run_id, [target])
    if len(ids) == 0:
        return []
    rows = {int(i): (str(s), int(t), str(tok)) for i, s, t, tok in cat.conn.execute(
        "SELECT f.id, f.scene_token, f.timestamp, f.sample_token FROM frames f JOIN frame_results r"
        " ON r.frame_id = f.id AND r.run_id = ? AND r.status = 'scored'", (run_id,))}
    scene = np.array([rows[int(i)][0] for i in ids], dtype=object)
    time_s = np.array([rows[int(i)][1] / 1e6 for i in ids])
    raw = cat.run_scores(run_id)
    scores = {s.name: np.array([raw.get(s.name, {}).get(int(i), 0.0) for i in ids]) for s in strategies}
    _, ref = cat.run_embeddings(run_id, ["labeled"]) if target == "unlabeled" else (None, np.zeros((0, emb.shape[1])))
    blocked = np.zeros(len(ids), dtype=bool)
    if target == "unlabeled":  # frames next to ones labeled or queued before, in their scene
        for sc, ts in cat.conn.execute(
                "SELECT f.scene_token, f.timestamp FROM frames f JOIN frame_results r ON r.frame_id = f.id"
                " AND r.run_id = ? WHERE f.label_state IN ('queued', 'labeled')", (run_id,)):
            blocked |= near_in_time(scene, time_s, sc, ts / 1e6, cfg.min_gap)
    picks = select_frames(emb, scene, time_s, scores, strategies, budget, cfg, ref, blocked)
    return [Pick(int(ids[j]), rows[int(ids[j])][2], score, reasons) for j, score, reasons in picks]


def nearest_frames(cat: Catalog, run_id: int, frame_id: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` frames of the run nearest to ``frame_id`` in embedding space: (frame id, cosine distance)."""
    ids, emb = cat.run_embeddings(run_id)
    (emb,) = centered(emb)
    where = np.flatnonzero(ids == frame_id)
    if len(where) == 0:
        raise ValueError(f"frame {frame_id} has no embedding in this run (it was not scored, or failed)")
    d = cosine_distances(emb, emb[where[0]:where[0] + 1])[:, 0]
    d[where[0]] = np.inf
    order = np.argsort(d, kind="stable")[:k]
    return [(int(ids[i]), float(d[i])) for i in order if np.isfinite(d[i])]
