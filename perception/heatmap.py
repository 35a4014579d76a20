"""Heatmaps on the detection grid: Gaussian targets drawn into them, their peaks, and NMS of the peaks.

Numpy only, shared by the box codec (:mod:`perception.boxes`), the edge runtime and the data
engine. Maps are laid out on a :class:`~perception.geometry.BEVGrid` as ``[..., X, Y]`` (row i grows
with ego x, column j with ego y); radii are in cells, except in :func:`circle_nms`, which works in
ego metres.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

__all__ = ["circle_nms", "draw_gaussian", "gaussian_radius", "heatmap_peaks"]


def gaussian_radius(length: np.ndarray | float, width: np.ndarray | float, min_overlap: float) -> np.ndarray:
    """CornerNet radius (in cells) of a footprint ``length x width`` (cells), for IoU >= min_overlap.

    The largest r such that a box whose two opposite corners each move by up to r (per axis) keeps
    IoU >= ``min_overlap`` with the true box; the minimum over the three worst cases, with
    H = length, W = width, o = min_overlap, S = H + W, A = H * W:

    - same-size box shifted by (r, r): I = (H-r)(W-r), U = 2A - I, and I/U >= o gives
      r^2 - S r + A (1-o)/(1+o) >= 0, so r <= (S - sqrt(S^2 - 4A(1-o)/(1+o))) / 2;
    - box shrunk by r at both corners: (H-2r)(W-2r)/A >= o gives
      r <= (S - sqrt(S^2 - 4A(1-o))) / 4;
    - box grown by r at both corners: A/((H+2r)(W+2r)) >= o gives
      r <= (sqrt(S^2 + 4A(1-o)/o) - S) / 4.

    These are the smallest non-negative roots. (The CenterNet/CenterPoint code, which we do not copy,
    takes other roots and drops the 1/(2a) of two cases, which yields larger radii for big boxes.)
    """
    h = np.asarray(length, dtype=np.float64)
    w = np.asarray(width, dtype=np.float64)
    o = float(min_overlap)
    s, a = h + w, h * w
    r_shift = (s - np.sqrt(np.maximum(s * s - 4.0 * a * (1.0 - o) / (1.0 + o), 0.0))) / 2.0
    r_shrink = (s - np.sqrt(np.maximum(s * s - 4.0 * a * (1.0 - o), 0.0))) / 4.0
    r_grow = (np.sqrt(s * s + 4.0 * a * (1.0 - o) / o) - s) / 4.0
    return np.minimum(np.minimum(r_shift, r_shrink), r_grow)


@lru_cache(maxsize=64)
def _gaussian_kernel(radius: int, sigma_ratio: float) -> np.ndarray:
    """[2r+1, 2r+1] float32 Gaussian, exactly 1.0 at the centre, sigma = (2r+1) * sigma_ratio."""
    sigma = (2 * radius + 1) * sigma_ratio
    d = np.arange(-radius, radius + 1, dtype=np.float64)
    kernel = np.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2.0 * sigma * sigma)).astype(np.float32)
    kernel.setflags(write=False)
    return kernel


def draw_gaussian(channel: np.ndarray, i: int, j: int, radius: int, sigma_ratio: float) -> None:
    """Max-combine a Gaussian of ``radius`` cells centred on cell (i, j) into channel [X, Y], in place.

    The Gaussian is :func:`_gaussian_kernel` (peak exactly 1.0, sigma = (2 * radius + 1) * sigma_ratio),
    cut where it leaves the map.
    """
    X, Y = channel.shape
    kernel = _gaussian_kernel(radius, sigma_ratio)
    i0, i1 = max(i - radius, 0), min(i + radius + 1, X)
    j0, j1 = max(j - radius, 0), min(j + radius + 1, Y)
    window = kernel[i0 - i + radius : i1 - i + radius, j0 - j + radius : j1 - j + radius]
    np.maximum(channel[i0:i1, j0:j1], window, out=channel[i0:i1, j0:j1])


def heatmap_peaks(heatmap: np.ndarray) -> np.ndarray:
    """bool [..., X, Y]: cells equal to the 3x3 max of their [X, Y] map (outside the map is -inf)."""
    X, Y = heatmap.shape[-2:]
    lead = [(0, 0)] * (heatmap.ndim - 2)
    padded = np.pad(heatmap, [*lead, (1, 1), (1, 1)], constant_values=-np.inf)
    hmax = padded[..., 1:1 + X, 1:1 + Y].copy()
    for di in range(3):
        for dj in range(3):
            np.maximum(hmax, padded[..., di:di + X, dj:dj + Y], out=hmax)
    return heatmap == hmax


def circle_nms(
    xy: np.ndarray,
    label: np.ndarray,
    radius: float | Sequence[float],
    num_classes: int,
    class_agnostic: bool,
    max_keep: int,
) -> np.ndarray:
    """Indices kept by greedy BEV-distance suppression of detections sorted by score.

    xy [K, 2] ego metres, label [K] class index, ``radius`` m (one value or one per class, the kept
    detection's class radius applies) -> int64 indices into the K detections, in score order.

    Stops after ``max_keep`` detections (the greedy result up to there does not depend on the rest).
    """
    radii = np.broadcast_to(np.asarray(radius, dtype=np.float64), (num_classes,))
    suppressed = np.zeros(len(xy), dtype=bool)
    keep = []
    for k in range(len(xy)):
        if len(keep) >= max_keep:
            break
        if suppressed[k]:
            continue
        keep.append(k)
        rest = slice(k + 1, None)
        near = np.hypot(xy[rest, 0] - xy[k, 0], xy[rest, 1] - xy[k, 1]) < radii[label[k]]
        if not class_agnostic:
            near &= label[rest] == label[k]
        suppressed[rest] |= near
    return np.asarray(keep, dtype=np.int64)
