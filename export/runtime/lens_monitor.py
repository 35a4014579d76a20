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
the edge preset's 224 x 400 input. On the held-out world it flags 91 % of the blocked camera-frames at
1.1 % false alarms (bench/results/lens_monitor.json): a camera facing a near, featureless surface (the
side of a truck, a wall) is what it takes for a blocked lens, and dirt is mostly missed. Each frame is
judged alone (no memory across frames). A masked camera is not assessed: NaN scores, flags False.

    health = camera_health(prepared.images, prepared.cam_valid)      # list of CameraHealth, per camera
    [h.blocked_score for h in health], [h.blocked for h in health]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .cameras import RuntimeInputError

__all__ = ["FEATURE_NAMES", "CameraHealth", "LensMonitorConfig", "camera_health", "frame_health", "lens_features",
           "lens_scores"]

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
    # clear camera-frames of the calibration world (seed 7, scenes from 300000). All four chosen by
    # `PYTHONPATH=. python -m bench.lens_monitor` (it says whether these defaults still match).
    blocked_weights: tuple[float, ...] = (1.432, 2.033, 0.5995, 3.87, 2.235, 13.28, -5.379)
    dirty_weights: tuple[float, ...] = (0.2883, -1.297, -0.9396, -15.61, 4.487, 26.15, -1.51)
    blocked_threshold: float = 0.797217  # blocked when blocked_score >= this
    dirty_threshold: float = 0.975346  # dirty when dirty_score >= this

    def __post_init__(self) -> None:
        for name in ("blocked_weights", "dirty_weights"):
            if len(getattr(self, name)) != len(FEATURE_NAMES) + 1:
                raise ValueError(f"LensMonitorConfig.{name}: expected {len(FEATURE_NAMES) + 1} numbers "
                                 f"(one per {', '.join(FEATURE_NAMES)}, then the bias)")


@dataclass(frozen=True)
class CameraHealth:
    """One camera's lens in one frame. Scores are in [0, 1]; NaN when the camera was not assessed (masked)."""

    blocked_score: float  # how much the view looks blocked by something on the lens
    dirty_score: float  # how much it looks smudged with dirt
    blocked: bool  # blocked_score >= the config's blocked_threshold (False when not assessed)
    dirty: bool  # dirty_score >= the config's dirty_threshold (False when not assessed)

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


def camera_health(images: np.ndarray, cam_valid: np.ndarray,
                  config: LensMonitorConfig | None = None) -> list[CameraHealth]:
    """Per camera of one frame (in the order of ``images``, uint8 RGB [N, 3, H, W] with ``cam_valid``
    bool [N]): its blocked and dirty scores and flags at the config's thresholds."""
    cfg = config or LensMonitorConfig()
    blocked, dirty = lens_scores(lens_features(images, cam_valid, cfg), cfg)
    return [CameraHealth(float(b), float(d), bool(b >= cfg.blocked_threshold), bool(d >= cfg.dirty_threshold))
            for b, d in zip(blocked, dirty)]


def lens_scores(features: np.ndarray, config: LensMonitorConfig | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(blocked, dirty) scores [...] in [0, 1] of statistics [..., len(FEATURE_NAMES)] (NaN stays NaN)."""
    cfg = config or LensMonitorConfig()
    feats = np.asarray(features, np.float64)
    return _logistic(feats, cfg.blocked_weights), _logistic(feats, cfg.dirty_weights)


def frame_health(names: Sequence[str], images: np.ndarray, cam_valid: np.ndarray,
                 config: LensMonitorConfig | None = None) -> dict[str, CameraHealth]:
    """:func:`camera_health` by camera name (``names`` [N], the order of ``images``)."""
    return dict(zip(names, camera_health(images, cam_valid, config), strict=True))


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
    """For each row of [V, ...], the median of the other rows (the row itself when it is alone)."""
    if len(x) < 2:
        return x.copy()
    return np.stack([np.median(np.delete(x, i, axis=0), axis=0) for i in range(len(x))])


def _logistic(features: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """sigmoid(features [..., D] . weights[:D] + weights[D]) [...]; NaN rows stay NaN."""
    w = np.asarray(weights, np.float64)
    z = np.clip(features @ w[:-1] + w[-1], -60.0, 60.0)
    return 1.0 / (1.0 + np.exp(-z))
