"""Sub-pixel markers for geometry tests: draw Gaussian dots at known pixels, find their centroids.

A dot is rendered analytically at pixel centres (cv2 convention: integer coordinates are pixel
centres), so its intensity centroid sits at the drawn sub-pixel position to ~0.02 px; resampling
with a symmetric kernel (INTER_AREA, INTER_LINEAR, a Gaussian blur) keeps it there.
"""

from __future__ import annotations

import numpy as np

BACKGROUND = 40.0  # grey level of the empty image (not 0, so photometric effects have work to do)
AMPLITUDE = 200.0  # peak above the background


def draw_markers(height: int, width: int, uv: np.ndarray, sigma: float) -> np.ndarray:
    """RGB uint8 [height, width, 3] with a Gaussian dot of std ``sigma`` px at each pixel uv [M, 2]."""
    img = np.full((height, width), BACKGROUND, dtype=np.float64)
    r = int(np.ceil(4 * sigma))
    for u, v in np.asarray(uv, dtype=np.float64).reshape(-1, 2):
        x0, x1 = max(0, int(u) - r), min(width, int(u) + r + 2)
        y0, y1 = max(0, int(v) - r), min(height, int(v) + r + 2)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        img[y0:y1, x0:x1] += AMPLITUDE * np.exp(-((xs - u) ** 2 + (ys - v) ** 2) / (2 * sigma**2))
    gray = np.clip(np.round(img), 0, 255).astype(np.uint8)
    return np.stack([gray, gray, gray], axis=-1)


def find_markers(image: np.ndarray, uv_guess: np.ndarray, radius: int = 4) -> np.ndarray:
    """Intensity centroids [M, 2] of the dots near each guessed pixel uv [M, 2] (NaN where none).

    The window is (2 * radius + 1)^2 around the rounded guess; its border median is the background.
    A guess off by more than ~radius finds no dot (NaN) or another one (far from the guess).
    """
    gray = np.asarray(image, dtype=np.float64)
    gray = gray.mean(axis=-1) if gray.ndim == 3 else gray
    H, W = gray.shape
    out = np.full((len(uv_guess), 2), np.nan)
    for k, (u, v) in enumerate(np.asarray(uv_guess, dtype=np.float64).reshape(-1, 2)):
        if not (np.isfinite(u) and np.isfinite(v)):
            continue
        cu, cv = int(round(u)), int(round(v))
        if cu - radius < 0 or cv - radius < 0 or cu + radius >= W or cv + radius >= H:
            continue
        win = gray[cv - radius : cv + radius + 1, cu - radius : cu + radius + 1]
        ring = np.concatenate([win[0], win[-1], win[1:-1, 0], win[1:-1, -1]])
        weight = win - np.median(ring)
        weight = np.clip(weight - 0.2 * weight.max(), 0, None)  # drop noise and faint tails
        if weight.sum() < 0.2 * AMPLITUDE:  # no dot here
            continue
        ys, xs = np.mgrid[cv - radius : cv + radius + 1, cu - radius : cu + radius + 1]
        out[k] = [(weight * xs).sum() / weight.sum(), (weight * ys).sum() / weight.sum()]
    return out


def well_separated(uv: np.ndarray, inside: np.ndarray, min_dist: float) -> np.ndarray:
    """bool [M]: inside and no other inside point within ``min_dist`` px."""
    uv = np.asarray(uv, dtype=np.float64)
    idx = np.flatnonzero(inside)
    keep = np.zeros(len(uv), dtype=bool)
    if len(idx) == 0:
        return keep
    d = np.linalg.norm(uv[idx, None, :] - uv[None, idx, :], axis=-1)
    np.fill_diagonal(d, np.inf)
    keep[idx] = d.min(axis=1) >= min_dist
    return keep
