"""Drawing for the whole stack (numpy + cv2 only): 3D boxes in camera images, a bird's-eye view with
the drivable area, lidar points and boxes, and the six cameras laid out beside the BEV panel.

Inputs are arrays and geometry, never reader objects, so ground truth, predictions, training
visualizations and the data engine all draw with the same functions. Boxes are in an ego frame
(x forward, y left, z up), with size (w, l, h) and yaw as in :mod:`perception.geometry`; a
:class:`BoxLayer` holds B boxes drawn in one style: ground truth solid, predictions dashed with their
score. Images are BGR uint8 [H, W, 3]; functions return a new image and leave their input alone.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

from perception.schema import DETECTION_CLASSES
from perception.box_geometry import BOX_EDGES, box_corners, clip_segments_at_near
from perception.geometry import invert_3x3, project, transform_points

__all__ = [
    "CAMERA_LAYOUT",
    "CLASS_COLORS",
    "OTHER_COLOR",
    "BEVView",
    "BoxLayer",
    "class_color",
    "compose_sample_view",
    "draw_bev",
    "draw_boxes_on_image",
]

# BGR, one clearly different hue per detection class (schema.DETECTION_CLASSES order).
CLASS_COLORS: dict[str, tuple[int, int, int]] = {
    "car": (255, 158, 0),
    "truck": (80, 127, 255),
    "construction_vehicle": (0, 215, 255),
    "bus": (60, 20, 220),
    "trailer": (130, 0, 75),
    "barrier": (180, 180, 110),
    "motorcycle": (203, 192, 255),
    "bicycle": (180, 105, 255),
    "pedestrian": (0, 230, 0),
    "traffic_cone": (0, 140, 255),
}
OTHER_COLOR: tuple[int, int, int] = (170, 170, 170)  # categories outside the 10 detection classes
# How nuScenes shows a sample: front row left to right, back row as seen looking backwards.
CAMERA_LAYOUT: tuple[tuple[str, ...], ...] = (
    ("CAM_FRONT_LEFT", "CAM_FRONT", "CAM_FRONT_RIGHT"),
    ("CAM_BACK_LEFT", "CAM_BACK", "CAM_BACK_RIGHT"),
)
_FRONT_DIAGONALS = ((0, 7), (3, 4))  # an X across the front face (corners 0, 3, 4, 7 have +x)
_FONT = cv2.FONT_HERSHEY_SIMPLEX


def class_color(label: int) -> tuple[int, int, int]:
    """BGR colour of a label (index into DETECTION_CLASSES; -1 or out of range -> OTHER_COLOR)."""
    return CLASS_COLORS[DETECTION_CLASSES[label]] if 0 <= label < len(DETECTION_CLASSES) else OTHER_COLOR


@dataclass(frozen=True, eq=False)
class BoxLayer:
    """B boxes in an ego frame, drawn in one style ("gt": solid; "pred": dashed, with score)."""

    center: np.ndarray  # [B, 3] metres
    size: np.ndarray  # [B, 3] (w, l, h) metres
    yaw: np.ndarray  # [B] radians about +z
    label: np.ndarray  # [B] int, index into DETECTION_CLASSES, -1 for other categories
    score: np.ndarray | None = None  # [B] confidence, written beside each box when given
    velocity: np.ndarray | None = None  # [B, 2] (vx, vy) m/s, drawn in BEV as 1 s of motion when finite
    style: Literal["gt", "pred"] = "gt"

    def __post_init__(self) -> None:
        B = len(np.asarray(self.yaw).reshape(-1))
        shapes = {"center": (B, 3), "size": (B, 3), "yaw": (B,), "label": (B,)}
        if self.score is not None:
            shapes["score"] = (B,)
        if self.velocity is not None:
            shapes["velocity"] = (B, 2)
        for name, shape in shapes.items():
            arr = np.asarray(getattr(self, name))
            if arr.size != int(np.prod(shape)):
                raise ValueError(f"BoxLayer.{name} has shape {arr.shape}, expected {shape}")
            object.__setattr__(self, name, arr.reshape(shape))
        if self.style not in ("gt", "pred"):
            raise ValueError(f"BoxLayer.style must be 'gt' or 'pred', got {self.style!r}")

    def __len__(self) -> int:
        return len(self.yaw)


def _thickness(image: np.ndarray) -> int:
    return max(1, int(round(min(image.shape[:2]) / 225)))


def _line(image: np.ndarray, p0: np.ndarray, p1: np.ndarray, color: tuple[int, int, int], thickness: int, dashed: bool) -> None:
    """A line between float pixels, clipped to the image; dashed lines alternate 8 px on, 6 px off."""
    h, w = image.shape[:2]
    limit = 1e6  # keep coordinates well inside int32 before clipping
    a = tuple(int(round(v)) for v in np.clip(p0, -limit, limit))
    b = tuple(int(round(v)) for v in np.clip(p1, -limit, limit))
    inside, a, b = cv2.clipLine((0, 0, w, h), a, b)
    if not inside:
        return
    if not dashed:
        cv2.line(image, a, b, color, thickness, cv2.LINE_AA)
        return
    a_f, b_f = np.asarray(a, float), np.asarray(b, float)
    length = float(np.linalg.norm(b_f - a_f))
    for start in np.arange(0.0, max(length, 1.0), 14.0):
        end = min(start + 8.0, length)
        q0 = a_f + (b_f - a_f) * (start / max(length, 1e-9))
        q1 = a_f + (b_f - a_f) * (end / max(length, 1e-9))
        cv2.line(image, tuple(int(round(v)) for v in q0), tuple(int(round(v)) for v in q1), color, thickness, cv2.LINE_AA)


def _text(image: np.ndarray, text: str, org: tuple[int, int], scale: float, color: tuple[int, int, int]) -> None:
    """Text with a dark outline, readable on any background."""
    thick = max(1, int(round(scale * 2)))
    cv2.putText(image, text, org, _FONT, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
    cv2.putText(image, text, org, _FONT, scale, color, thick, cv2.LINE_AA)


def draw_boxes_on_image(
    image: np.ndarray, K: np.ndarray, cam_T_ego: np.ndarray, boxes: BoxLayer, near: float = 0.1
) -> np.ndarray:
    """Draw 3D boxes projected into a camera image; returns a new image.

    image: BGR uint8 [H, W, 3] taken with intrinsics K [3, 3]; cam_T_ego [4, 4] maps the boxes' ego
    frame into the optical camera frame. Each box shows its 12 edges and an X across its front face.
    Edges crossing the plane z_cam = ``near`` are clipped there (only the part in front is drawn);
    edges entirely behind it are skipped.
    """
    out = image.copy()
    if len(boxes) == 0:
        return out
    thickness = _thickness(out) if boxes.style == "gt" else max(1, _thickness(out) - 1)
    corners = transform_points(cam_T_ego, box_corners(boxes.center, boxes.size, boxes.yaw))  # [B, 8, 3] camera frame
    pairs = np.asarray(BOX_EDGES + _FRONT_DIAGONALS)  # [E, 2]
    a_clip, b_clip, visible = clip_segments_at_near(corners[:, pairs[:, 0]], corners[:, pairs[:, 1]], near)  # [B, E]
    uv_a, _ = project(K, a_clip, eps=near * 0.5)
    uv_b, _ = project(K, b_clip, eps=near * 0.5)
    for i in range(len(boxes)):
        color = class_color(int(boxes.label[i]))
        for e in np.flatnonzero(visible[i]):
            _line(out, uv_a[i, e], uv_b[i, e], color, thickness, dashed=boxes.style == "pred")
        if boxes.score is not None and np.all(corners[i, :, 2] > near):
            uv, _ = project(K, corners[i])
            org = (int(np.clip(uv[:, 0].min(), 0, out.shape[1] - 40)), int(np.clip(uv[:, 1].min() - 4, 12, out.shape[0] - 2)))
            _text(out, f"{float(boxes.score[i]):.2f}", org, 0.4 * thickness, color)
    return out


@dataclass(frozen=True)
class BEVView:
    """The pixel frame of a BEV picture around the ego: forward is up, left is left.

    Pixel (u, v) = (column, row) with cv2's convention (pixel centres at integers):
    u = (left - y) * ppm - 0.5, v = (forward - x) * ppm - 0.5.
    """

    forward: float = 50.0  # metres shown ahead of the ego origin
    backward: float = 50.0  # metres shown behind it
    left: float = 50.0  # metres shown to the left (and the same to the right, see ``right``)
    right: float = 50.0
    pixels_per_metre: float = 6.0

    @property
    def shape(self) -> tuple[int, int]:
        """(H, W) of the picture in pixels."""
        ppm = self.pixels_per_metre
        return int(round((self.forward + self.backward) * ppm)), int(round((self.left + self.right) * ppm))

    @property
    def img_T_ego(self) -> np.ndarray:
        """[3, 3] affine map of ego (x, y, 1) metres to pixel (u, v, 1)."""
        ppm = self.pixels_per_metre
        return np.array([[0.0, -ppm, self.left * ppm - 0.5], [-ppm, 0.0, self.forward * ppm - 0.5], [0.0, 0.0, 1.0]])

    def to_pixels(self, xy_ego: np.ndarray) -> np.ndarray:
        """Ego (x, y) [..., 2] metres -> pixel (u, v) [..., 2] (floats)."""
        xy = np.asarray(xy_ego, dtype=np.float64)
        return xy @ self.img_T_ego[:2, :2].T + self.img_T_ego[:2, 2]


def draw_bev(
    view: BEVView,
    *,
    map_mask: np.ndarray | None = None,
    pix_T_ego: np.ndarray | None = None,
    points_ego: np.ndarray | None = None,
    boxes: Sequence[BoxLayer] = (),
    draw_ego: bool = True,
) -> np.ndarray:
    """A BEV picture [H, W, 3] BGR uint8 (H, W = view.shape) in the ego frame, forward up.

    map_mask: [Hm, Wm] uint8 raster, non-zero where drivable; pix_T_ego [4, 4] maps ego metres to its
    (col, row) pixels (for nuScenes: ``MapMask.pix_T_global @ global_T_ego``). The ground plane z = 0
    of the ego frame is resampled into the view with one cv2.warpAffine.
    points_ego: [M, >=3] lidar points in the ego frame, shaded by height.
    boxes: layers drawn in order: footprint, heading line to the front edge, velocity (1 s) if given.
    """
    H, W = view.shape
    out = np.full((H, W, 3), 28, np.uint8)
    if map_mask is not None:
        if pix_T_ego is None:
            raise ValueError("draw_bev: map_mask needs pix_T_ego")
        P = np.asarray(pix_T_ego, dtype=np.float64)
        map_T_ego = np.array([[P[0, 0], P[0, 1], P[0, 3]], [P[1, 0], P[1, 1], P[1, 3]], [0.0, 0.0, 1.0]])  # z = 0
        map_T_img = map_T_ego @ invert_3x3(view.img_T_ego)
        drivable = cv2.warpAffine(
            np.ascontiguousarray(map_mask), map_T_img[:2], (W, H), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT, borderValue=0,
        )
        out[drivable > 0] = (72, 72, 72)
    centre = tuple(int(round(v)) for v in view.to_pixels(np.zeros(2)))
    ppm = view.pixels_per_metre
    for r in range(10, int(max(view.forward, view.backward, view.left, view.right) * 1.5) + 1, 10):
        cv2.circle(out, centre, int(round(r * ppm)), (52, 52, 52), 1, cv2.LINE_AA)  # range rings every 10 m
    if points_ego is not None and len(points_ego):
        pts = np.asarray(points_ego, dtype=np.float64)
        uv = np.round(view.to_pixels(pts[:, :2])).astype(np.int64)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < W) & (uv[:, 1] >= 0) & (uv[:, 1] < H)
        shade = np.clip((pts[ok, 2] + 1.0) / 4.0, 0.0, 1.0)[:, None]  # 0 at z = -1 m, 1 at z = 3 m
        out[uv[ok, 1], uv[ok, 0]] = (np.array([140, 140, 100]) + shade * np.array([115, 115, 0])).astype(np.uint8)
    for layer in boxes:
        _draw_bev_boxes(out, view, layer)
    if draw_ego:  # a 4.5 x 1.9 m car from 1 m behind to 3.5 m ahead of the rear axle, and its nose
        body = view.to_pixels(np.array([[3.5, 0.95], [-1.0, 0.95], [-1.0, -0.95], [3.5, -0.95]]))
        cv2.fillConvexPoly(out, np.round(body).astype(np.int32), (235, 235, 235), cv2.LINE_AA)
        nose = view.to_pixels(np.array([[3.5, 0.8], [4.6, 0.0], [3.5, -0.8]]))
        cv2.fillConvexPoly(out, np.round(nose).astype(np.int32), (0, 0, 255), cv2.LINE_AA)
    return out


def _draw_bev_boxes(image: np.ndarray, view: BEVView, layer: BoxLayer) -> None:
    if len(layer) == 0:
        return
    dashed = layer.style == "pred"
    thickness = 2 if layer.style == "gt" else 1
    footprint = view.to_pixels(box_corners(layer.center, layer.size, layer.yaw)[:, :4, :2])  # [B, 4, 2] bottom corners
    centre = view.to_pixels(layer.center[:, :2])
    front = (footprint[:, 0] + footprint[:, 3]) / 2  # corners 0 and 3 are the front-bottom ones
    for i in range(len(layer)):
        color = class_color(int(layer.label[i]))
        for k in range(4):
            _line(image, footprint[i, k], footprint[i, (k + 1) % 4], color, thickness, dashed)
        _line(image, centre[i], front[i], color, thickness, dashed=False)
        if layer.velocity is not None and np.all(np.isfinite(layer.velocity[i])):
            tip = view.to_pixels(layer.center[i, :2] + layer.velocity[i])
            if np.linalg.norm(tip - centre[i]) >= 2:
                cv2.arrowedLine(image, tuple(np.round(centre[i]).astype(int)), tuple(np.round(tip).astype(int)),
                                (255, 255, 255), 1, cv2.LINE_AA, tipLength=0.25)
        if layer.score is not None:
            org = tuple(int(v) for v in np.round(footprint[i].min(axis=0)) + np.array([0, -3]))
            _text(image, f"{float(layer.score[i]):.2f}", org, 0.35, color)


def compose_sample_view(
    images: Mapping[str, np.ndarray],
    bev: np.ndarray,
    title: str,
    *,
    tile_width: int = 480,
    title_height: int = 36,
    layout: Sequence[Sequence[str]] = CAMERA_LAYOUT,
) -> np.ndarray:
    """Cameras in rows (``layout``, nuScenes style by default) with the BEV panel on the right and a
    title line on top; returns BGR uint8 [title_height + R * th, C * tile_width + bw, 3].

    images: channel -> BGR image (any size; a channel missing from the mapping gets a dark tile).
    Tiles are tile_width wide and th = round(tile_width * h / w) high, h / w taken from the first
    image found (9 / 16 if none); the BEV is resized to the tiles' total height keeping its aspect.
    """
    first = next((images[c] for row in layout for c in row if c in images), None)
    aspect = first.shape[0] / first.shape[1] if first is not None else 9 / 16
    th = int(round(tile_width * aspect))
    rows, cols = len(layout), max(len(r) for r in layout)
    panel_h = rows * th
    bev_w = int(round(panel_h * bev.shape[1] / bev.shape[0]))
    out = np.zeros((title_height + panel_h, cols * tile_width + bev_w, 3), np.uint8)
    for r, row in enumerate(layout):
        for c, channel in enumerate(row):
            y0, x0 = title_height + r * th, c * tile_width
            if channel in images:
                tile = cv2.resize(images[channel], (tile_width, th), interpolation=cv2.INTER_AREA)
            else:
                tile = np.full((th, tile_width, 3), 20, np.uint8)
                _text(tile, "missing", (10, th // 2), 0.6, (0, 0, 255))
            _text(tile, channel, (6, 18), 0.5, (255, 255, 255))
            out[y0:y0 + th, x0:x0 + tile_width] = tile
    out[title_height:, cols * tile_width:] = cv2.resize(bev, (bev_w, panel_h), interpolation=cv2.INTER_AREA)
    _text(out, title, (8, int(title_height * 0.7)), title_height / 50.0, (255, 255, 255))
    return out
