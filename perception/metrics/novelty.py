"""Novelty of a frame: how far it lies from the frames a model was trained on, and the k-means
clustering the training set is summarised with. numpy only: export fits the indices, the edge runtime
scores with them, the data engine clusters with :func:`kmeans`.

An index holds the training vectors' mean and k-means centres of the normalised vectors: the model's
embedding centred and unit-normalised (what the scene holds), or the frame's appearance statistics
(:func:`appearance_features`: brightness, contrast, sharpness, colour) standardised per dimension.
A frame's novelty under an index is its distance to the nearest centre over the distance below which
95 % of held-out training frames fall: about 1 is the edge of the training set, 2 twice as far.
:class:`FrameNovelty` scores a frame with both and reports the larger, so a frame is novel when what it
shows or how it looks is new. The BEV embedding is built to ignore appearance (the same cars by day
and by night), which is why appearance has its own index.

    novelty = FrameNovelty.fit(train_embeddings, train_appearance)     # [N, E], [N, A]
    novelty.score(embedding, appearance)                                 # (novelty, {part: novelty})
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["APPEARANCE_FEATURES", "DIST_CHUNK", "FrameNovelty", "NoveltyIndex", "appearance_features", "kmeans",
           "kmeans_fit"]

DIST_CHUNK = 4_000_000  # float64 values per block of a distance matrix (32 MB): memory stays bounded for any pool


def _sq_norms(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


def _nearest_centers(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[N] index of the nearest row of centers [K, E] to each row of x [N, E] (squared Euclidean)."""
    out = np.empty(len(x), np.int64)
    cn = _sq_norms(centers)
    step = max(1, DIST_CHUNK // max(1, len(centers)))
    for i in range(0, len(x), step):
        part = x[i:i + step]
        out[i:i + step] = np.argmin(cn[None, :] - 2.0 * part @ centers.T, axis=1)  # |x|^2 is the same for every center
    return out


def kmeans_fit(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 50) -> tuple[np.ndarray, np.ndarray]:
    """(centers [k, E], cluster [N] (0..k-1) of each row) of x [N, E]: greedy k-means++ seeding with
    ``seed``, then Lloyd iterations until no assignment changes or ``max_iter``. A cluster may end
    empty (k > distinct rows); it keeps its seed as its center."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    x = np.asarray(x, np.float64)
    rng = np.random.default_rng(seed)
    xn = _sq_norms(x)
    centers = np.empty((k, x.shape[1]))
    first = int(rng.integers(n))
    centers[0] = x[first]
    d2 = np.maximum(xn + xn[first] - 2.0 * x @ x[first], 0.0)  # squared distance to the nearest center so far
    trials = 2 + int(np.log(k))  # greedy k-means++: the best of a few draws, fewer bad seeds
    for c in range(1, k):
        cum = np.cumsum(d2)
        if not cum[-1] > 0:  # every row is a center already: any row
            picks = rng.integers(n, size=1)
        else:  # rows drawn with probability proportional to d2
            picks = np.minimum(np.searchsorted(cum, rng.random(trials) * cum[-1], side="right"), n - 1)
        new_d2 = np.minimum(d2[:, None], np.maximum(xn[:, None] + xn[picks][None, :] - 2.0 * x @ x[picks].T, 0.0))
        best = int(np.argmin(new_d2.sum(axis=0)))
        centers[c], d2 = x[picks[best]], new_d2[:, best]
    assign = np.full(n, -1, np.int64)
    for _ in range(max_iter):
        new = _nearest_centers(x, centers)
        if np.array_equal(new, assign):
            break
        assign = new
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(centers)
        np.add.at(sums, assign, x)
        full = counts > 0  # an empty cluster keeps its center
        centers[full] = sums[full] / counts[full, None]
    return centers, assign


def kmeans(x: np.ndarray, k: int, seed: int = 0, max_iter: int = 50) -> np.ndarray:
    """[N] cluster (0..k-1) of each row of x [N, E] (:func:`kmeans_fit`)."""
    return kmeans_fit(x, k, seed, max_iter)[1]


def _normalised(x: np.ndarray, mean: np.ndarray, spread: np.ndarray | None) -> np.ndarray:
    """Rows of x [N, D] centred, then unit-normalised (spread None) or divided by ``spread`` [D]."""
    z = np.asarray(x, np.float64) - mean
    if spread is not None:
        return z / spread
    return z / np.maximum(np.linalg.norm(z, axis=-1, keepdims=True), 1e-12)


APPEARANCE_FEATURES = ("brightness", "contrast", "sharpness", "saturation")


def appearance_features(images: np.ndarray, cam_valid: np.ndarray) -> np.ndarray:
    """[A] float64 statistics of a frame's images uint8 RGB [N, 3, H, W] over its valid cameras [N]
    (every 4th pixel): mean and standard deviation of the luminance, mean absolute luminance gradient,
    mean colour saturation (max - min over channels), each in [0, 1]. NaN when no camera is valid."""
    imgs = np.asarray(images)[np.asarray(cam_valid, bool)][:, :, ::4, ::4].astype(np.float32) / 255.0
    if len(imgs) == 0:
        return np.full(len(APPEARANCE_FEATURES), np.nan)
    lum = 0.299 * imgs[:, 0] + 0.587 * imgs[:, 1] + 0.114 * imgs[:, 2]  # [N, h, w]
    grad = np.abs(np.diff(lum, axis=1)).mean(axis=(1, 2)) + np.abs(np.diff(lum, axis=2)).mean(axis=(1, 2))
    sat = (imgs.max(axis=1) - imgs.min(axis=1)).mean(axis=(1, 2))
    per_camera = np.stack([lum.mean(axis=(1, 2)), lum.std(axis=(1, 2)), grad, sat], axis=1)
    return per_camera.mean(axis=0).astype(np.float64)


def _pack(a: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(a, "<f2").tobytes()).decode("ascii")


def _unpack(text: Any, shape: tuple[int, ...], where: str) -> np.ndarray:
    try:
        raw = base64.b64decode(str(text), validate=True)
        arr = np.frombuffer(raw, "<f2").astype(np.float64)
    except (ValueError, TypeError):
        raise ValueError(f"{where} is not base64 float16 data") from None
    if arr.size != math.prod(shape) or not np.all(np.isfinite(arr)):
        raise ValueError(f"{where} holds {arr.size} values ({'finite' if np.all(np.isfinite(arr)) else 'some not finite'}), "
                         f"expected {math.prod(shape)} finite values {list(shape)}")
    return arr.reshape(shape)


@dataclass(frozen=True)
class NoveltyIndex:
    """The training set summarised for novelty scores (see the module docstring)."""

    mean: np.ndarray  # [E] mean training vector
    centers: np.ndarray  # [C, E] k-means centres of the normalised training vectors
    scale: float  # distance to the nearest centre below which `quantile` of held-out training frames fall
    quantile: float = 0.95
    fitted_on: str = ""  # what it was fitted on, e.g. "synth_train of data/synth: 380 frames"
    spread: np.ndarray | None = None  # [E] per-dimension standard deviation (standardised); None: unit rows

    @classmethod
    def fit(cls, embeddings: np.ndarray, centers: int = 64, holdout: float = 0.2, quantile: float = 0.95,
            seed: int = 0, fitted_on: str = "", standardise: bool = False) -> NoveltyIndex:
        """Fit on training vectors [N, E] (N >= 5): centres on a random (1 - holdout) share, the scale on
        the rest, so that a training frame the centres did not see reads about 1 or less. Rows are
        centred and unit-normalised, or with ``standardise`` divided by each dimension's spread."""
        x = np.asarray(embeddings, np.float64)
        if x.ndim != 2 or len(x) < 5 or not np.all(np.isfinite(x)):
            raise ValueError(f"NoveltyIndex.fit: expected >= 5 finite embeddings [N, E], got {list(x.shape)}")
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(x))
        n_hold = max(1, int(round(holdout * len(x))))
        fit_rows, held_rows = order[n_hold:], order[:n_hold]
        f16 = lambda a: a.astype(np.float16).astype(np.float64)  # noqa: E731 - stored as float16
        mean = f16(x[fit_rows].mean(axis=0))
        spread = f16(np.maximum(x[fit_rows].std(axis=0), 1e-3)) if standardise else None
        z = _normalised(x[fit_rows], mean, spread)
        c, _ = kmeans_fit(z, min(centers, len(z)), seed=seed)
        c = f16(c)
        dist = _nearest_distance(_normalised(x[held_rows], mean, spread), c)
        scale = float(np.quantile(dist, quantile))
        return cls(mean, c, max(scale, 1e-6), quantile, fitted_on, spread)

    def score(self, embeddings: np.ndarray) -> np.ndarray:
        """Novelty [B] of embeddings [B, E] (a single [E] gives [1])."""
        x = np.atleast_2d(np.asarray(embeddings, np.float64))
        if x.shape[1] != len(self.mean):
            raise ValueError(f"embeddings have {x.shape[1]} dims, the novelty index {len(self.mean)}")
        return _nearest_distance(_normalised(x, self.mean, self.spread), self.centers) / self.scale

    def to_json(self) -> dict[str, Any]:
        return {"method": "kmeans_nearest", "dim": int(len(self.mean)), "centers": int(len(self.centers)),
                "mean_f16": _pack(self.mean), "centers_f16": _pack(self.centers), "scale": self.scale,
                "quantile": self.quantile, "fitted_on": self.fitted_on,
                "spread_f16": None if self.spread is None else _pack(self.spread)}

    @classmethod
    def from_json(cls, data: Any, dim: int, where: str = "novelty") -> NoveltyIndex:
        """The inverse of :meth:`to_json` for embeddings of ``dim``; ValueError naming the field that is wrong."""
        if not isinstance(data, dict) or data.get("method") != "kmeans_nearest":
            raise ValueError(f"{where} is {str(data)[:80]!r}, expected an object with method 'kmeans_nearest'")
        if data.get("dim") != dim:
            raise ValueError(f"{where}.dim is {data.get('dim')!r}, expected the model's embedding size {dim}")
        n = data.get("centers")
        if not (isinstance(n, int) and not isinstance(n, bool) and n >= 1):
            raise ValueError(f"{where}.centers is {n!r}, expected a count >= 1")
        scale, q = data.get("scale"), data.get("quantile", 0.95)
        for name, v in (("scale", scale), ("quantile", q)):
            if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v > 0):
                raise ValueError(f"{where}.{name} is {v!r}, expected a positive number")
        return cls(_unpack(data.get("mean_f16"), (dim,), f"{where}.mean_f16"),
                   _unpack(data.get("centers_f16"), (n, dim), f"{where}.centers_f16"), float(scale), float(q),
                   str(data.get("fitted_on", "")),
                   None if data.get("spread_f16") is None else _unpack(data["spread_f16"], (dim,), f"{where}.spread_f16"))


@dataclass(frozen=True)
class FrameNovelty:
    """A frame's novelty from what it shows (the model's embedding) and how it looks (its appearance)."""

    embedding: NoveltyIndex  # over the model's frame embedding [E]
    appearance: NoveltyIndex  # over :func:`appearance_features` [A], standardised

    @classmethod
    def fit(cls, embeddings: np.ndarray, appearance: np.ndarray, fitted_on: str = "") -> FrameNovelty:
        """Both indices from the same training frames: embeddings [N, E], appearance [N, A]."""
        return cls(NoveltyIndex.fit(embeddings, fitted_on=fitted_on),
                   NoveltyIndex.fit(appearance, centers=16, fitted_on=fitted_on, standardise=True))

    @property
    def fitted_on(self) -> str:
        return self.embedding.fitted_on

    def score(self, embedding: np.ndarray, appearance: np.ndarray) -> tuple[float, dict[str, float]]:
        """(novelty, {"embedding": .., "appearance": ..}) of one frame: the larger of the two parts."""
        parts = {"embedding": float(self.embedding.score(embedding)[0]),
                 "appearance": float(self.appearance.score(appearance)[0])}
        return max(parts.values()), parts

    def to_json(self) -> dict[str, Any]:
        return {"embedding": self.embedding.to_json(), "appearance": self.appearance.to_json()}

    @classmethod
    def from_json(cls, data: Any, dim: int, where: str = "novelty") -> FrameNovelty:
        """The inverse of :meth:`to_json` for embeddings of ``dim``; ValueError naming the field that is wrong."""
        if not isinstance(data, dict):
            raise ValueError(f"{where} is {str(data)[:80]!r}, expected an object with embedding and appearance")
        return cls(NoveltyIndex.from_json(data.get("embedding"), dim, f"{where}.embedding"),
                   NoveltyIndex.from_json(data.get("appearance"), len(APPEARANCE_FEATURES), f"{where}.appearance"))


def _nearest_distance(x: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[N] Euclidean distance from each row of x [N, E] to its nearest row of centers [C, E]."""
    d2 = _sq_norms(x)[:, None] + _sq_norms(centers)[None, :] - 2.0 * x @ centers.T
    return np.sqrt(np.maximum(d2.min(axis=1), 0.0))
