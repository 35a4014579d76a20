"""Road layouts of the synthetic world: roads as centre-line paths, lanes, sidewalks, crossings, and
the map raster (drivable area) and ground texture painted from them.

All coordinates are in the global (map) frame, metres, x east and y north, origin at the bottom-left
corner of the map raster, as nuScenes map masks have it: pixel ``(col, row) = (x * ppm, H - y * ppm)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

MAP_PPM = 10.0  # map raster pixels per metre (nuScenes map masks are 10 px/m)


@dataclass(frozen=True)
class Path:
    """A polyline parametrised by arc length ``s``; poses beyond either end extrapolate straight."""

    points: np.ndarray  # [N, 2] global x, y, metres

    @property
    def cumlen(self) -> np.ndarray:
        seg = np.linalg.norm(np.diff(self.points, axis=0), axis=1)
        return np.concatenate([[0.0], np.cumsum(seg)])

    @property
    def length(self) -> float:
        return float(self.cumlen[-1])

    def pose(self, s: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """Position [..., 2] and heading [...] (rad) at arc length ``s``."""
        s = np.asarray(s, dtype=np.float64)
        cum = self.cumlen
        idx = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, len(cum) - 2)
        p0, p1 = self.points[idx], self.points[idx + 1]
        seg = np.maximum(cum[idx + 1] - cum[idx], 1e-9)
        frac = (s - cum[idx]) / seg  # may be < 0 or > 1 at the ends: straight extrapolation
        xy = p0 + (p1 - p0) * frac[..., None]
        d = p1 - p0
        return xy, np.arctan2(d[..., 1], d[..., 0])

    def offset(self, lateral: float) -> "Path":
        """The parallel path ``lateral`` metres to the left (+) or right (-)."""
        d = np.gradient(self.points, axis=0)
        d /= np.maximum(np.linalg.norm(d, axis=1, keepdims=True), 1e-9)
        left = np.stack([-d[:, 1], d[:, 0]], axis=1)
        return Path(self.points + lateral * left)

    def reversed(self) -> "Path":
        return Path(self.points[::-1].copy())

    def project(self, xy: np.ndarray) -> float:
        """Arc length of the path point nearest to ``xy`` (to the nearest vertex; paths are dense)."""
        i = int(np.argmin(np.linalg.norm(self.points - np.asarray(xy)[None], axis=1)))
        return float(self.cumlen[i])


@dataclass(frozen=True)
class Road:
    """A two-way road: ``lanes`` per direction, a parking strip and a sidewalk on each side."""

    center: Path
    lanes: int = 2  # driving lanes per direction
    lane_width: float = 3.5  # m
    parking_width: float = 2.5  # m, the strip outside the driving lanes (part of the drivable area)
    sidewalk_width: float = 3.5  # m
    center_line: str = "double_yellow"  # or "dashed_white"

    @property
    def half_width(self) -> float:
        """Distance from the centre line to the curb, metres."""
        return self.lanes * self.lane_width + self.parking_width

    def lane_path(self, lane: int, direction: int) -> Path:
        """Centre of driving lane ``lane`` (0 = innermost) travelling with (+1) or against (-1) the
        centre line's direction; traffic keeps right."""
        offset = -(lane + 0.5) * self.lane_width
        if direction > 0:
            return self.center.offset(offset)
        return self.center.reversed().offset(offset)

    def strip_path(self, direction: int, inset: float) -> Path:
        """A path in the parking strip on the right of travel, ``inset`` metres from the curb."""
        base = self.center if direction > 0 else self.center.reversed()
        return base.offset(-(self.half_width - inset))

    def sidewalk_path(self, side: int, fraction: float = 0.5) -> Path:
        """A path along the sidewalk on the left (+1) or right (-1) side of the centre line."""
        return self.center.offset(side * (self.half_width + fraction * self.sidewalk_width))


@dataclass
class Layout:
    """One scene's road network and where the ego drives."""

    kind: str  # "straight", "curve" or "intersection"
    size_m: float  # the map is a square of this side, metres
    roads: list[Road]
    ego_road: int = 0
    crossings: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)  # (centre xy, direction)
    junction: np.ndarray | None = None  # centre xy of the intersection, if any
    junction_radius: float = 0.0


def make_layout(rng: np.random.Generator, kind: str, size_m: float) -> Layout:
    """A random layout of the given kind centred in a square map of ``size_m`` metres."""
    centre = np.array([size_m / 2, size_m / 2])
    heading = rng.uniform(-np.pi, np.pi)
    lanes = int(rng.choice([1, 2, 2, 3]))
    lane_width = float(rng.uniform(3.2, 3.7))
    sidewalk = float(rng.uniform(2.5, 4.5))
    parking = float(rng.uniform(2.2, 2.8))
    center_line = "double_yellow" if rng.random() < 0.6 else "dashed_white"
    half_len = size_m * 0.75

    def straight(h: float) -> Path:
        s = np.arange(-half_len, half_len + 1e-6, 1.0)
        return Path(centre[None] + s[:, None] * np.array([np.cos(h), np.sin(h)])[None])

    if kind == "straight":
        roads = [Road(straight(heading), lanes, lane_width, parking, sidewalk, center_line)]
        return Layout(kind, size_m, roads)
    if kind == "curve":
        # Heading changes smoothly by a total turn of 40-100 degrees across the middle of the road.
        turn = float(rng.uniform(0.7, 1.75)) * rng.choice([-1.0, 1.0])
        s = np.arange(-half_len, half_len + 1e-6, 1.0)
        span = float(rng.uniform(60.0, 120.0))
        h = heading + turn * 0.5 * (1 + np.tanh(s / (span / 3)))
        pts = np.cumsum(np.stack([np.cos(h), np.sin(h)], axis=1), axis=0)
        pts = pts - pts[len(pts) // 2] + centre
        roads = [Road(Path(pts), lanes, lane_width, parking, sidewalk, center_line)]
        return Layout(kind, size_m, roads)
    if kind == "intersection":
        cross_heading = heading + np.pi / 2 + rng.uniform(-0.25, 0.25)
        lanes2 = int(rng.choice([1, 2]))
        roads = [
            Road(straight(heading), lanes, lane_width, parking, sidewalk, center_line),
            Road(straight(cross_heading), lanes2, lane_width, parking, sidewalk, "dashed_white"),
        ]
        radius = max(r.half_width for r in roads) + 1.0
        crossings = []
        for road, other in ((roads[0], roads[1]), (roads[1], roads[0])):
            _, h0 = road.center.pose(road.center.length / 2)
            d = np.array([np.cos(float(h0)), np.sin(float(h0))])
            for sign in (-1, 1):  # a zebra crossing on each arm, just outside the junction
                crossings.append((centre + sign * d * (other.half_width + 3.5), d))
        return Layout(kind, size_m, roads, crossings=crossings, junction=centre, junction_radius=radius)
    raise ValueError(f"unknown layout kind {kind!r}; expected straight, curve or intersection")


# --------------------------------------------------------------------------------------------------
# Rasters
# --------------------------------------------------------------------------------------------------


def _px(points: np.ndarray, size_px: int, ppm: float) -> np.ndarray:
    """Global metres [N, 2] -> cv2 pixel coordinates with 2 fractional bits (shift=2)."""
    cols = points[:, 0] * ppm
    rows = size_px - points[:, 1] * ppm
    return np.round(np.stack([cols, rows], axis=1) * 4).astype(np.int32)


def _thick(img: np.ndarray, path: Path, width_m: float, value, ppm: float) -> None:
    cv2.polylines(img, [_px(path.points, img.shape[0], ppm)], False, value,
                  thickness=max(1, int(round(width_m * ppm))), lineType=cv2.LINE_AA, shift=2)


def _dashed(img: np.ndarray, path: Path, width_m: float, value, ppm: float, on: float, off: float,
            skip: tuple[np.ndarray, float] | None) -> None:
    s_all = np.arange(0.0, path.length, 0.5)
    xy, _ = path.pose(s_all)
    keep = ((s_all % (on + off)) < on) if off > 0 else np.ones(len(s_all), bool)
    if skip is not None:
        keep &= np.linalg.norm(xy - skip[0][None], axis=1) > skip[1]
    # Split into runs of kept samples and draw each run as one polyline.
    edges = np.flatnonzero(np.diff(np.concatenate([[0], keep.astype(np.int8), [0]])))
    size_px = img.shape[0]
    thickness = max(1, int(round(width_m * ppm)))
    runs = [_px(xy[a:b], size_px, ppm) for a, b in zip(edges[::2], edges[1::2]) if b - a >= 2]
    if runs:
        cv2.polylines(img, runs, False, value, thickness=thickness, lineType=cv2.LINE_AA, shift=2)


def drivable_mask(layout: Layout, ppm: float = MAP_PPM) -> np.ndarray:
    """The drivable area as a uint8 raster (255 drivable), nuScenes map-mask layout, [H, W]."""
    size_px = int(round(layout.size_m * ppm))
    mask = np.zeros((size_px, size_px), np.uint8)
    for road in layout.roads:
        _thick(mask, road.center, 2 * road.half_width, 255, ppm)
    if layout.junction is not None:
        cv2.circle(mask, tuple(int(v) for v in _px(layout.junction[None], size_px, ppm)[0]),
                   int(layout.junction_radius * ppm * 4), 255, -1, cv2.LINE_AA, shift=2)
    return np.where(mask >= 128, 255, 0).astype(np.uint8)


def paved_mask(layout: Layout, ppm: float = MAP_PPM) -> np.ndarray:
    """Roads and sidewalks (where scenery must not stand), uint8 [H, W], 255 paved."""
    size_px = int(round(layout.size_m * ppm))
    mask = np.zeros((size_px, size_px), np.uint8)
    for road in layout.roads:
        _thick(mask, road.center, 2 * (road.half_width + road.sidewalk_width) + 1.0, 255, ppm)
    return mask


def lane_divider_mask(layout: Layout, ppm: float = MAP_PPM) -> np.ndarray:
    """Lane dividers and the centre line as a uint8 raster (255 on a line), [H, W]."""
    size_px = int(round(layout.size_m * ppm))
    mask = np.zeros((size_px, size_px), np.uint8)
    for road in layout.roads:
        skip = (layout.junction, layout.junction_radius + 1.0) if layout.junction is not None else None
        for k in range(-road.lanes + 1, road.lanes):
            _dashed(mask, road.center.offset(k * road.lane_width), 0.3, 255, ppm, 1e9, 0.0, skip)
    return mask


def paint_ground(layout: Layout, rng: np.random.Generator, ppm: float = MAP_PPM) -> np.ndarray:
    """The ground texture (BGR uint8 [H, W, 3]): terrain, sidewalks, asphalt, marks, crossings."""
    size_px = int(round(layout.size_m * ppm))
    # Terrain: grass, dry grass, dirt or gravel, with low-frequency blotches.
    terrain = np.array(
        [[60, 110, 70], [70, 130, 140], [80, 105, 120], [120, 125, 125]][int(rng.integers(4))], np.float32
    ) * rng.uniform(0.8, 1.15)
    tex = np.empty((size_px, size_px, 3), np.float32)
    tex[:] = terrain
    tex *= _blotches(rng, size_px, 0.18)[..., None]
    walk_colour = np.array(rng.choice([[170, 170, 165], [150, 160, 175], [185, 180, 170], [140, 140, 140]]), np.float32)
    asphalt = float(rng.uniform(55, 95))
    for road in layout.roads:
        _thick(tex, road.center, 2 * (road.half_width + road.sidewalk_width), walk_colour.tolist(), ppm)
    for road in layout.roads:
        _thick(tex, road.center, 2 * road.half_width + 0.4, [120, 120, 120], ppm)  # curb stones
    road_mask = drivable_mask(layout, ppm)
    road_shade = asphalt * _blotches(rng, size_px, 0.12)
    # Patches and repairs on the asphalt: darker and lighter ellipses.
    for _ in range(int(layout.size_m / 6)):
        road = layout.roads[int(rng.integers(len(layout.roads)))]
        xy, h = road.center.pose(rng.uniform(0, road.center.length))
        off = rng.uniform(-road.half_width, road.half_width)
        c = xy + off * np.array([-np.sin(h), np.cos(h)])
        axes = (int(rng.uniform(0.5, 3.0) * ppm), int(rng.uniform(0.3, 1.5) * ppm))
        centre_px = tuple(int(v) for v in _px(c[None], size_px, ppm)[0] // 4)
        cv2.ellipse(road_shade, centre_px, axes, float(rng.uniform(0, 180)), 0, 360,
                    float(asphalt * rng.uniform(0.7, 1.25)), -1)
    on_road = road_mask > 0
    tex[on_road] = road_shade[on_road][:, None] * np.array([1.0, 1.0, 1.02], np.float32)
    paint = np.array([235, 235, 235], np.float32) * rng.uniform(0.8, 1.0)
    yellow = np.array([40, 190, 230], np.float32) * rng.uniform(0.8, 1.0)
    skip = (layout.junction, layout.junction_radius + 1.0) if layout.junction is not None else None
    for road in layout.roads:
        for side in (-1, 1):
            _dashed(tex, road.center.offset(side * (road.lanes * road.lane_width)), 0.15, paint.tolist(), ppm, 1e9, 0.0, skip)
            for k in range(1, road.lanes):
                _dashed(tex, road.center.offset(side * k * road.lane_width), 0.15, paint.tolist(), ppm, 3.0, 6.0, skip)
        if road.center_line == "double_yellow":
            for side in (-1, 1):
                _dashed(tex, road.center.offset(side * 0.15), 0.12, yellow.tolist(), ppm, 1e9, 0.0, skip)
        else:
            _dashed(tex, road.center, 0.15, paint.tolist(), ppm, 3.0, 6.0, skip)
    for centre, direction in layout.crossings:
        # Zebra stripes parallel to the road direction, spanning the crossed road.
        road = max(layout.roads, key=lambda r: abs(np.dot(direction, _road_dir(r))))  # the road it spans
        across = np.array([-direction[1], direction[0]])
        n = int(2 * road.half_width / 1.0)
        for i in range(n):
            c = centre + across * (-road.half_width + 0.5 + i * 1.0)
            seg = Path(np.stack([c - direction * 1.5, c + direction * 1.5]))
            if i % 2 == 0:
                _thick(tex, seg, 0.5, paint.tolist(), ppm)
    noise = rng.normal(0.0, 6.0, size=(size_px, size_px, 1)).astype(np.float32)
    tex += noise
    return np.clip(tex, 0, 255).astype(np.uint8)


def _road_dir(road: Road) -> np.ndarray:
    _, h = road.center.pose(road.center.length / 2)
    return np.array([np.cos(float(h)), np.sin(float(h))])


def _blotches(rng: np.random.Generator, size_px: int, amplitude: float) -> np.ndarray:
    """Smooth multiplicative noise around 1 at a few scales, [size_px, size_px] float32."""
    out = np.ones((size_px, size_px), np.float32)
    for cells in (6, 24, 96):
        small = rng.normal(0.0, 1.0, size=(cells, cells)).astype(np.float32)
        out += amplitude / 3 * cv2.resize(small, (size_px, size_px), interpolation=cv2.INTER_CUBIC)
    return np.clip(out, 0.5, 1.5)


def global_T_tex(size_px: int, ppm: float = MAP_PPM) -> np.ndarray:
    """3x3 mapping texture pixel coordinates (col, row, 1) to global ground (x, y, 1) in metres."""
    return np.array([[1.0 / ppm, 0.0, 0.0], [0.0, -1.0 / ppm, size_px / ppm], [0.0, 0.0, 1.0]])
