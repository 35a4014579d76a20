"""Image-space passes that turn rendered radiance into a camera image under a scene's conditions:
sky, exposure (day, dusk, night with headlights), fog that grows with depth, rain, sun glare, a dirty
or blocked lens, vignetting and sensor noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np

from .render import CameraImage


@dataclass(frozen=True)
class Conditions:
    """A scene's conditions; ``description()`` is what scene.description records."""

    time_of_day: str = "day"  # day, dusk or night
    rain: bool = False
    fog: bool = False
    glare: bool = False
    lens: str = "clean"  # clean, dirty or blocked
    lens_camera: str = ""  # the camera with the dirty or blocked lens
    fog_density: float = 0.0  # 1/m
    sun_azimuth: float = 0.0  # rad, global frame
    sun_elevation: float = 0.8  # rad

    def description(self) -> str:
        words = [self.time_of_day]
        if self.rain:
            words.append("rain")
        if self.fog:
            words.append("fog")
        if self.glare:
            words.append("glare")
        if self.lens == "dirty":
            words.append(f"dirty_lens {self.lens_camera}")
        if self.lens == "blocked":
            words.append(f"blocked_lens {self.lens_camera}")
        return ", ".join(words)

    @property
    def sun_dir(self) -> np.ndarray:
        ce = np.cos(self.sun_elevation)
        return np.array([ce * np.cos(self.sun_azimuth), ce * np.sin(self.sun_azimuth), np.sin(self.sun_elevation)])

    @property
    def lighting(self) -> tuple[float, float]:
        """(ambient, diffuse) light levels."""
        if self.time_of_day == "night":
            return 0.07, 0.0
        if self.time_of_day == "dusk":
            return 0.45, 0.45
        return (0.75, 0.3) if (self.rain or self.fog) else (0.55, 0.6)


_SKY = {"day": ((0.95, 0.80, 0.60), (0.85, 0.75, 0.70)), "dusk": ((0.55, 0.45, 0.45), (0.45, 0.6, 0.85)),
        "night": ((0.08, 0.05, 0.04), (0.10, 0.08, 0.08))}


def headlight(points_ego: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Irradiance added by the ego's low beams at ego-frame points [H, W, 3]: [H, W]."""
    x, y, z = points_ego[..., 0] - 2.0, points_ego[..., 1], points_ego[..., 2]
    dist = np.sqrt(x * x + y * y) + 1e-3
    angle = np.abs(np.arctan2(y, np.maximum(x, 1e-3)))
    beam = np.exp(-(angle / 0.45) ** 2) * (x > 0) * (z < 2.0)
    out = 1.3 * beam / (1.0 + (dist / 14.0) ** 2)
    out[sky] = 0.0
    return out.astype(np.float32)


def finish(img: CameraImage, cond: Conditions, camera: str, rays_ego: np.ndarray, cam_pos_ego: np.ndarray,
           sun_in_cam: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Radiance -> BGR uint8 image under the conditions.

    rays_ego: [H, W, 3] ray directions (camera z = 1) in the ego frame, for headlights and fog.
    sun_in_cam: pixel position of the sun when it lies in front of this camera, else None.
    """
    h, w = img.depth.shape
    light = img.light
    if cond.time_of_day == "night":
        depth = np.where(img.sky, 0.0, img.depth)[..., None]
        points = cam_pos_ego[None, None] + rays_ego * depth
        light = light + headlight(points, img.sky)
    radiance = img.albedo * light[..., None]
    if cond.rain:
        radiance *= 0.8
    # Sky: a vertical gradient from the horizon colour to the zenith colour.
    np.copyto(radiance, _sky(h, w, cond.time_of_day, cond.rain or cond.fog), where=img.sky[..., None])
    # Fog: attenuation grows with depth towards a flat fog colour; also haze at long range.
    beta = cond.fog_density if cond.fog else 0.0025
    depth = np.where(img.sky, 1e4, img.depth)
    trans = np.exp(-beta * depth)[..., None].astype(np.float32)
    fog_col = np.float32({"day": 0.72, "dusk": 0.45, "night": 0.06}[cond.time_of_day])
    radiance *= trans
    radiance += fog_col * (1 - trans)
    # Glare: a bright halo and streak around the sun when it stands in front of this camera.
    if cond.glare and sun_in_cam is not None:
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        r = np.hypot(xx - sun_in_cam[0], yy - sun_in_cam[1]) / max(h, w)
        halo = 1.6 * np.exp(-(r / 0.12) ** 2) + 0.35 * np.exp(-(r / 0.45) ** 2)
        streak = 0.5 * np.exp(-((yy - sun_in_cam[1]) / (0.01 * h)) ** 2) * np.exp(-np.abs(xx - sun_in_cam[0]) / (0.5 * w))
        radiance = radiance + (halo + streak)[..., None] * np.array([0.85, 0.95, 1.0], np.float32)
    # Exposure: the camera brightens night and dusk images, which also amplifies noise.
    gain = {"day": 1.0, "dusk": 1.35, "night": 2.2}[cond.time_of_day]
    if cond.time_of_day == "dusk":
        radiance = radiance * np.array([0.8, 0.92, 1.1], np.float32)
    img8 = radiance * (_vignette(h, w) * np.float32(255.0 * gain))[..., None]
    if cond.rain:
        img8 = _rain(img8, rng)
    if cond.lens != "clean" and camera == cond.lens_camera:
        img8 = _lens(img8, rng, blocked=cond.lens == "blocked")
    sigma = {"day": 2.0, "dusk": 3.5, "night": 6.0}[cond.time_of_day]
    # Sensor noise: a window of a fixed bank of Gaussian noise at a random offset per frame.
    bank = _noise_bank(h, w)
    oy, ox = int(rng.integers(0, bank.shape[0] - h + 1)), int(rng.integers(0, bank.shape[1] - w + 1))
    img8 += bank[oy:oy + h, ox:ox + w] * np.float32(sigma)
    return np.clip(img8, 0, 255).astype(np.uint8)


@lru_cache(maxsize=4)
def _noise_bank(h: int, w: int) -> np.ndarray:
    """Unit Gaussian noise [h + 64, w + 64, 3], the same in every process (seeded by the size)."""
    return np.random.default_rng([h, w]).standard_normal((h + 64, w + 64, 3), dtype=np.float32)


@lru_cache(maxsize=16)
def _sky(h: int, w: int, time_of_day: str, overcast: bool) -> np.ndarray:
    """Sky radiance [h, w, 3]: a vertical gradient from the zenith to the horizon colour."""
    top, horizon = (np.array(c, np.float32) for c in _SKY[time_of_day])
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    col = top * (1 - t) + horizon * t
    if overcast:
        col = col * 0.3 + np.float32(0.62 if time_of_day == "day" else 0.25) * 0.7
    return np.ascontiguousarray(np.broadcast_to(col, (h, w, 3)))


@lru_cache(maxsize=8)
def _vignette(h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    return 1.0 - 0.25 * (((xx - w / 2) / (w / 2)) ** 2 + ((yy - h / 2) / (h / 2)) ** 2) / 2


def _rain(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Rain streaks and out-of-focus drops on the lens."""
    h, w = img.shape[:2]
    streaks = np.zeros((h, w), np.float32)
    n = int(0.002 * h * w)
    x0 = rng.uniform(0, w, n)
    y0 = rng.uniform(0, h, n)
    length = rng.uniform(0.02, 0.06, n) * h
    slant = rng.normal(0.15, 0.05)
    for a, b, L in zip(x0, y0, length):
        cv2.line(streaks, (int(a), int(b)), (int(a + slant * L), int(b + L)), 1.0, 1, cv2.LINE_AA)
    img = img * (1 - 0.25 * streaks[..., None]) + 200.0 * 0.25 * streaks[..., None]
    drops = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(5, 20))):
        cv2.circle(drops, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), int(rng.uniform(0.01, 0.04) * w), 1.0, -1)
    drops = cv2.GaussianBlur(drops, (0, 0), 0.01 * w + 1)[..., None]
    blurred = cv2.GaussianBlur(img, (0, 0), 0.008 * w + 1)
    return img * (1 - drops) + blurred * drops


def _lens(img: np.ndarray, rng: np.random.Generator, blocked: bool) -> np.ndarray:
    """Dirt smudges on the lens, or an object blocking most of it."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.float32)
    if blocked:
        cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
        cv2.ellipse(mask, (int(cx), int(cy)), (int(rng.uniform(0.5, 0.8) * w), int(rng.uniform(0.5, 0.8) * h)),
                    float(rng.uniform(0, 180)), 0, 360, 1.0, -1)
        mask = cv2.GaussianBlur(mask, (0, 0), 0.05 * w)[..., None]
        colour = np.array(rng.choice([[20, 25, 30], [40, 60, 80], [90, 90, 90]]), np.float32)
        return img * (1 - 0.97 * mask) + colour * 0.97 * mask
    for _ in range(int(rng.integers(4, 12))):
        cv2.ellipse(mask, (int(rng.uniform(0, w)), int(rng.uniform(0, h))),
                    (int(rng.uniform(0.03, 0.12) * w), int(rng.uniform(0.03, 0.1) * h)), float(rng.uniform(0, 180)),
                    0, 360, float(rng.uniform(0.4, 0.9)), -1)
    mask = cv2.GaussianBlur(mask, (0, 0), 0.02 * w)[..., None]
    dirt = np.array([40, 70, 95], np.float32)
    blurred = cv2.GaussianBlur(img, (0, 0), 0.01 * w + 1)
    return blurred * mask * 0.4 + dirt * mask * 0.6 + img * (1 - mask)
