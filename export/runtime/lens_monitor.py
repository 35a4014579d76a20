"""A blocked or dirty lens monitor: per camera of a frame, how likely its lens is blocked or dirty, from
cheap statistics of the images the model takes.

numpy and cv2 only (the edge runtime never imports torch). Input: one frame's preprocessed images,
uint8 RGB [N, 3, H, W] at the model's input size (as :func:`~export.runtime.cameras.prepare_cameras`
makes them), and ``cam_valid`` bool [N]. Each valid camera is area-averaged to a small grey image
(``coarse_height`` rows, where sensor noise averages out) and described by six numbers
(:data:`FEATURE_NAMES`), most of them relative to the other cameras of the same frame, since night
and fog darken or flatten every camera at once while a blocked lens is one camera:

- ``structure_loss``: how much less local structure (mean squared gradient per tile of a 6 x 8
  grid, over the frame's noise floor) the tiles of this camera hold than the same tiles of the other
  cameras (their median); log ratio, weighted to the centre of the view.
- ``centre_flatness``: this camera's structure at the periphery minus at the centre (log ratio): an
  occluder on the lens covers the middle of the view.
- ``brightness_shift``: the centre's log brightness minus that of the other cameras at the same tiles.
- ``soft_edges``: the square root of the fraction of the view on wide, smooth brightness ramps (a
  strong gradient at a 3 px scale of the grey image with no sharper edge within 5 px): the blurred
  rim of an occluder far out of focus, where near objects filling the view have sharp outlines.
- ``fine_soft_edges``: the same at a finer scale (smudges of dirt); ``fine_soft_edges_rel``: it minus
  the other cameras' median.

A score is logistic in them, ``sigmoid(weights . features + bias)`` in [0, 1]; the weights and the
thresholds of :class:`LensMonitorConfig` are fitted on a lens-enriched synthetic world and tested on
another by ``python -m bench.lens_monitor`` (thresholds at <= 1 % false alarms on clear cameras), for
the edge preset's 224 x 400 input. On the held-out world's 2.5 s clips it flags 96.7 % of the blocked
camera-frames at 0.7 % false alarms with its memory, 94.3 % at 0.9 % judging each frame alone
(bench/results/lens_monitor.json): a camera facing a near, featureless surface (the side of a truck,
a wall) is what it takes for a blocked lens, and dirt is mostly missed.

Memory across frames: a blocked lens stays blocked, a passing truck passes. Given a stream's
:class:`LensMemory`, each camera's score is a moving average in time of its per-frame logits (time
constant ``memory_s``), and its threshold slides from the single-frame one (``blocked_threshold``, at
the first frame of a clip) towards the settled one (``blocked_settled_threshold``) as the memory
fills: ``logit(threshold) = settled + (first - settled) * exp(-span / memory_s)``, span the seconds of
evidence behind the score. Without a memory each frame is judged alone. A masked camera is not
assessed: NaN scores, flags False, its memory kept for its next frame.

    health = camera_health(prepared.images, prepared.cam_valid)      # list of CameraHealth, per camera
    memory = LensMemory()                                             # one per stream, then per frame:
    health = camera_health(prepared.images, prepared.cam_valid, memory=memory, timestamp=t)
    [h.blocked_score for h in health], [h.blocked for h in health], [h.memory_s for h in health]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from perception.boxes import sigmoid
from perception.metrics.calibration import logit

from .cameras import RuntimeInputError

__all__ = ["FEATURE_NAMES", "CameraHealth", "LensMemory", "LensMonitorConfig", "camera_health", "frame_health", "judge",
           "lens_features", "lens_scores"]

FEATURE_NAMES: tuple[str, ...] = ("structure_loss", "centre_flatness", "brightness_shift", "soft_edges",
                                  "fine_soft_edges", "fine_soft_edges_rel")

# Soft-edge detectors on the log grey image (coarse px): (fine blur sigma, coarse blur sigma, window of
# the sharp-edge search, min coarse slope in log units per px, max fine / coarse gradient ratio).
_SOFT = (1.0, 3.0, 11, 0.04, 2.0)
_FINE_SOFT = (0.5, 1.5, 5, 0.02, 1.5)
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grey


@dataclass(frozen=True)
class LensMonitorConfig:
    """What the monitor measures (the statistics are defined in the module docstring) and where it flags."""

    coarse_height: int = 48  # rows of the grey image the statistics are taken on (the width keeps the aspect)
    grid: tuple[int, int] = (6, 8)  # tile rows and columns of the structure and brightness statistics
    # the tiles' centre weight: a Gaussian of sigma (rows, cols), in fractions of the image height and width
    centre_sigma: tuple[float, float] = (0.4, 0.25)
    noise_percentile: float = 10.0  # the frame's noise floor: this percentile of its valid cameras' tile energies
    # Logistic weights, one per FEATURE_NAMES, then the bias; and the thresholds, each flagging <= 1 % of the
    # clear camera-frames of the calibration world (seed 7, scenes from 300000). All of them, and the memory
    # below, chosen by `PYTHONPATH=. python -m bench.lens_monitor` (it says whether these defaults still match).
    blocked_weights: tuple[float, ...] = (1.634, 1.462, 1.236, 5.301, 5.366, 5.129, -5.424)
    dirty_weights: tuple[float, ...] = (0.06076, -0.2529, -0.6593, -11.7, 4.06, 21.43, -0.9256)
    blocked_threshold: float = 0.777268  # blocked when blocked_score >= this, on a frame judged alone
    dirty_threshold: float = 0.962393  # dirty when dirty_score >= this, on a frame judged alone
    # With a memory (LensMemory): the time constant of the moving average (s), and the thresholds the
    # flags slide to as the memory fills (module docstring).
    memory_s: float = 1.0
    blocked_settled_threshold: float = 0.455936
    dirty_settled_threshold: float = 0.945743

    def __post_init__(self) -> None:
        for name in ("blocked_weights", "dirty_weights"):
            if len(getattr(self, name)) != len(FEATURE_NAMES) + 1:
                raise ValueError(f"LensMonitorConfig.{name}: expected {len(FEATURE_NAMES) + 1} numbers "
                                 f"(one per {', '.join(FEATURE_NAMES)}, then the bias)")
        for name in ("blocked_threshold", "dirty_threshold", "blocked_settled_threshold", "dirty_settled_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"LensMonitorConfig.{name}: expected a probability in (0, 1), got {getattr(self, name)}")
        if not self.memory_s > 0.0:
            raise ValueError(f"LensMonitorConfig.memory_s: expected seconds > 0, got {self.memory_s}")

    def thresholds(self, span_s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(blocked, dirty) logit thresholds after ``span_s`` [...] seconds of memory (0: a frame alone)."""
        fade = np.exp(-np.asarray(span_s, np.float64) / self.memory_s)
        out = []
        for first, settled in ((self.blocked_threshold, self.blocked_settled_threshold),
                               (self.dirty_threshold, self.dirty_settled_threshold)):
            lo, hi = logit(settled), logit(first)
            out.append(lo + (hi - lo) * fade)
        return out[0], out[1]


@dataclass(frozen=True)
class CameraHealth:
    """One camera's lens in one frame. Scores are in [0, 1]; NaN when the camera was not assessed (masked)."""

    blocked_score: float  # how much the view looks blocked by something on the lens
    dirty_score: float  # how much it looks smudged with dirt
    blocked: bool  # blocked_score at or over the config's threshold for memory_s (False when not assessed)
    dirty: bool  # the same for dirty_score
    memory_s: float = 0.0  # seconds of evidence behind the scores (0: this frame alone)
    blocked_threshold: float = math.nan  # what blocked_score was held against (it slides with memory_s)
    dirty_threshold: float = math.nan  # what dirty_score was held against

    @property
    def assessed(self) -> bool:
        """False for a masked camera (no image to judge)."""
        return not math.isnan(self.blocked_score)


def lens_features(images: np.ndarray, cam_valid: np.ndarray, config: LensMonitorConfig | None = None) -> np.ndarray:
    """The monitor's statistics of one frame: float32 [N, len(FEATURE_NAMES)], NaN rows for masked cameras.

    images: uint8 RGB [N, 3, H, W] as the model takes them; cam_valid: bool [N]. Relative statistics
    compare a camera with the other valid cameras; with no other valid camera they are 0.
    """
    cfg = config or LensMonitorConfig()
    images, valid = _checked(images, cam_valid)
    out = np.full((images.shape[0], len(FEATURE_NAMES)), np.nan, np.float32)
    idx = np.flatnonzero(valid)
    if idx.size == 0:
        return out
    grey = np.stack([_grey(images[i], cfg.coarse_height) for i in idx])  # [V, h, w], 0..255
    energy = _tile_means(_grad_sq(grey), cfg.grid)  # [V, T] mean squared gradient per tile
    floor = float(np.percentile(energy, cfg.noise_percentile))
    log_e = np.log((energy + 1e-3) / (floor + 1e-3))  # [V, T] structure over the noise floor
    log_b = np.log(_tile_means(grey, cfg.grid) + 5.0)  # [V, T] brightness
    centre, border = _tile_weights(cfg.grid, cfg.centre_sigma)  # [T] each, summing to 1
    log_grey = np.log(grey + 4.0)
    soft = np.sqrt([_soft_fraction(g, *_SOFT) for g in log_grey])  # [V]
    fine = np.sqrt([_soft_fraction(g, *_FINE_SOFT) for g in log_grey])  # [V]
    out[idx] = np.stack([
        (_others_median(log_e) - log_e) @ centre,
        log_e @ border - log_e @ centre,
        (log_b - _others_median(log_b)) @ centre,
        soft,
        fine,
        fine - _others_median(fine),
    ], axis=1)
    return out


@dataclass
class LensMemory:
    """One stream's lens evidence per camera (empty at the start of a clip): moving averages in time of
    the per-frame blocked and dirty logits, and since when each camera has evidence."""

    blocked: np.ndarray | None = None  # float64 [N] running blocked logit (NaN: no frame assessed yet)
    dirty: np.ndarray | None = None  # float64 [N] running dirty logit
    first: np.ndarray | None = None  # [N] s, the time of each camera's first assessed frame
    last: np.ndarray | None = None  # [N] s, the time of its last assessed frame

    def update(self, blocked: np.ndarray, dirty: np.ndarray, timestamp: float, memory_s: float
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fold one frame's logits [N] (NaN: camera not assessed, its memory kept) at ``timestamp`` (s)
        into the averages (weight ``1 - exp(-dt / memory_s)`` for dt since the camera's last frame);
        returns the (blocked, dirty) running logits [N] (NaN where not assessed) and their spans [N] (s)."""
        n = len(blocked)
        if self.blocked is None or len(self.blocked) != n:
            self.blocked, self.dirty = np.full(n, np.nan), np.full(n, np.nan)
            self.first, self.last = np.full(n, np.nan), np.full(n, np.nan)
        assert self.dirty is not None and self.first is not None and self.last is not None
        seen = np.isfinite(blocked) & np.isfinite(dirty)
        new = seen & ~np.isfinite(self.blocked)
        self.blocked[new], self.dirty[new], self.first[new], self.last[new] = blocked[new], dirty[new], timestamp, timestamp
        old = seen & ~new
        rate = 1.0 - np.exp(-np.maximum(timestamp - self.last[old], 0.0) / memory_s)
        self.blocked[old] += rate * (blocked[old] - self.blocked[old])
        self.dirty[old] += rate * (dirty[old] - self.dirty[old])
        self.last[old] = timestamp
        span = np.where(seen, timestamp - self.first, np.nan)
        return np.where(seen, self.blocked, np.nan), np.where(seen, self.dirty, np.nan), span


def camera_health(images: np.ndarray, cam_valid: np.ndarray, config: LensMonitorConfig | None = None,
                  memory: LensMemory | None = None, timestamp: float = 0.0) -> list[CameraHealth]:
    """Per camera of one frame (in the order of ``images``, uint8 RGB [N, 3, H, W] with ``cam_valid``
    bool [N]): its blocked and dirty scores and flags. With a stream's ``memory`` the frame at
    ``timestamp`` (s) is folded into it and the scores are its running averages."""
    cfg = config or LensMonitorConfig()
    blocked, dirty = (logit(p) for p in lens_scores(lens_features(images, cam_valid, cfg), cfg))
    blocked, dirty, span, blocked_th, dirty_th = judge(blocked, dirty, cfg, memory, timestamp)
    probs = sigmoid(np.stack([blocked, dirty, blocked_th, dirty_th]))  # [4, N]
    return [CameraHealth(float(pb), float(pd), bool(b >= tb), bool(d >= td), float(np.nan_to_num(s)), float(ptb),
                         float(ptd))
            for b, d, tb, td, s, (pb, pd, ptb, ptd) in zip(blocked, dirty, blocked_th, dirty_th, span, probs.T)]


def judge(blocked: np.ndarray, dirty: np.ndarray, config: LensMonitorConfig, memory: LensMemory | None = None,
          timestamp: float = 0.0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One frame's blocked and dirty logits [N] (NaN: not assessed) -> (blocked, dirty) logits the flags
    read (the memory's running averages, with one), the seconds of evidence behind them [N], and their
    (blocked, dirty) logit thresholds [N]: a camera is flagged where its logit >= its threshold."""
    span = np.where(np.isfinite(blocked), 0.0, np.nan)
    if memory is not None:
        blocked, dirty, span = memory.update(blocked, dirty, float(timestamp), config.memory_s)
    blocked_th, dirty_th = config.thresholds(np.nan_to_num(span))
    return blocked, dirty, span, blocked_th, dirty_th


def lens_scores(features: np.ndarray, config: LensMonitorConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(blocked, dirty) scores [...] in [0, 1] of statistics [..., len(FEATURE_NAMES)] (NaN stays NaN)."""
    cfg = config or LensMonitorConfig()
    feats = np.asarray(features, np.float64)
    return _logistic(feats, cfg.blocked_weights), _logistic(feats, cfg.dirty_weights)


def frame_health(names: Sequence[str], images: np.ndarray, cam_valid: np.ndarray,
                 config: LensMonitorConfig | None = None, memory: LensMemory | None = None,
                 timestamp: float = 0.0) -> dict[str, CameraHealth]:
    """:func:`camera_health` by camera name (``names`` [N], the order of ``images``)."""
    return dict(zip(names, camera_health(images, cam_valid, config, memory, timestamp), strict=True))


# -- the statistics -----------------------------------------------------------------------------------
def _checked(images: np.ndarray, cam_valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise RuntimeInputError(f"lens monitor: expected uint8 images [N, 3, H, W], got {images.dtype} "
                                f"{list(images.shape)}")
    valid = np.asarray(cam_valid)
    if valid.shape != images.shape[:1] or valid.dtype != np.bool_:
        raise RuntimeInputError(f"lens monitor: expected cam_valid bool [{images.shape[0]}], got {valid.dtype} "
                                f"{list(valid.shape)}")
    return images, valid


def _grey(image: np.ndarray, height: int) -> np.ndarray:
    """uint8 RGB [3, H, W] -> float32 grey [height, W * height / H], area-averaged."""
    _, H, W = image.shape
    width = max(1, round(W * height / H))
    grey = cv2.addWeighted(image[0], _LUMA[0], image[1], _LUMA[1], 0.0, dtype=cv2.CV_32F)
    grey = cv2.addWeighted(grey, 1.0, image[2], _LUMA[2], 0.0, dtype=cv2.CV_32F)
    return cv2.resize(grey, (width, height), interpolation=cv2.INTER_AREA)


def _grad_sq(x: np.ndarray) -> np.ndarray:
    """Squared gradient magnitude [..., h, w] by central differences (0 on the border)."""
    gx = np.zeros_like(x)
    gy = np.zeros_like(x)
    gx[..., :, 1:-1] = (x[..., :, 2:] - x[..., :, :-2]) / 2
    gy[..., 1:-1, :] = (x[..., 2:, :] - x[..., :-2, :]) / 2
    return gx * gx + gy * gy


def _tile_means(x: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Means of [V, h, w] over a grid of R x C tiles: [V, R * C], row-major."""
    (R, C), (V, h, w) = grid, x.shape
    rows = np.linspace(0, h, R + 1).round().astype(int)
    cols = np.linspace(0, w, C + 1).round().astype(int)
    sums = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=1), cols[:-1], axis=2)  # [V, R, C]
    return (sums / np.outer(np.diff(rows), np.diff(cols))).reshape(V, R * C)


def _tile_weights(grid: tuple[int, int], sigma: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Centre and periphery weights of the tiles [R * C] (each sums to 1)."""
    R, C = grid
    cy = (np.arange(R) + 0.5) / R - 0.5
    cx = (np.arange(C) + 0.5) / C - 0.5
    centre = np.exp(-0.5 * (cy[:, None] / sigma[0]) ** 2 - 0.5 * (cx[None, :] / sigma[1]) ** 2).ravel()
    border = 1.0 - centre / centre.max()
    return centre / centre.sum(), border / border.sum()


def _soft_fraction(log_grey: np.ndarray, fine: float, coarse: float, window: int, min_slope: float,
                   max_ratio: float) -> float:
    """Fraction of the pixels of [h, w] on a smooth ramp: gradient >= min_slope at the coarse scale and
    no gradient above max_ratio times it at the fine scale within ``window`` px."""
    g_fine = np.sqrt(_grad_sq(cv2.GaussianBlur(log_grey, (0, 0), fine)))
    g_coarse = np.sqrt(_grad_sq(cv2.GaussianBlur(log_grey, (0, 0), coarse)))
    sharp = cv2.dilate(g_fine, np.ones((window, window), np.uint8))
    return float(np.mean((g_coarse > min_slope) & (sharp < max_ratio * g_coarse)))


def _others_median(x: np.ndarray) -> np.ndarray:
    """For each row of [V, ...], the median of the other rows (the row itself when it is alone): from one
    sort, the k-th smallest of the others is the sorted k-th below the row's rank, the (k + 1)-th above."""
    V = len(x)
    if V < 2:
        return x.copy()
    order = np.argsort(x, axis=0, kind="stable")
    ranked = np.take_along_axis(x, order, axis=0)
    rank = np.empty_like(order)
    np.put_along_axis(rank, order, np.broadcast_to(np.arange(V).reshape((V,) + (1,) * (x.ndim - 1)), x.shape), axis=0)

    def kth(k: int) -> np.ndarray:
        return np.where(k < rank, ranked[k], ranked[k + 1])

    m = V - 1
    return kth(m // 2) if m % 2 else 0.5 * (kth(m // 2 - 1) + kth(m // 2))


def _logistic(features: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """sigmoid(features [..., D] . weights[:D] + weights[D]) [...]; NaN rows stay NaN."""
    w = np.asarray(weights, np.float64)
    z = np.clip(features @ w[:-1] + w[-1], -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))
