"""BEV segmentation targets: drivable area and lane dividers from the map rasters, vehicles and
pedestrians from the boxes (the LSS / Simple-BEV protocol: objects at least 40 % visible).

Numpy and cv2 only. Rasters are laid out on a :class:`~perception.geometry.BEVGrid` as [X, Y]
(rows along ego x forward, columns along ego y left); cell (i, j) is cv2 pixel (col=j, row=i).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..box_geometry import box_corners, points_in_boxes
from ..geometry import BEVGrid, invert_3x3, invert_transform
from ..presets import SEG_PEDESTRIAN_PREFIX, SEG_VEHICLE_PREFIX
from .sensor_files import MapMask, read_map_mask

LANE_DIVIDER_SUFFIX = ".lane_divider.png"


def lane_divider_path(map_path: Path) -> Path:
    """Where the lane-divider raster of a map lives (written by `data-engine synth`; real nuScenes
    keeps lane dividers in its vector map expansion instead, which this reader does not use)."""
    name = map_path.name[: -len(".png")] if map_path.name.endswith(".png") else map_path.stem
    return map_path.with_name(name + LANE_DIVIDER_SUFFIX)


def read_lane_dividers(map_mask: MapMask) -> MapMask | None:
    """The lane-divider raster beside a map, or None when the dataset has none."""
    path = lane_divider_path(map_mask.path)
    if not path.is_file():
        return None
    return read_map_mask(map_mask.token, path, map_mask.resolution)


def _planar(T: np.ndarray) -> np.ndarray:
    """The x-y part of a 4x4 transform that keeps z separate: [[a, b, tx], [c, d, ty], [0, 0, 1]]."""
    return np.array([[T[0, 0], T[0, 1], T[0, 3]], [T[1, 0], T[1, 1], T[1, 3]], [0.0, 0.0, 1.0]])


def map_to_bev(raster: MapMask, grid: BEVGrid, global_T_ego: np.ndarray) -> np.ndarray:
    """Resample a global map raster into the BEV grid of an ego pose: uint8 [X, Y] (1 on the mask).

    ``global_T_ego`` may include a BEV augmentation (``global_T_ego @ inv(aug_T_ego)``), reflections
    and scaling included.
    """
    X, Y = grid.shape
    # cv2 dst pixel (u, v) -> bev cell -> ego -> global -> map pixel.
    mappix_T_cv = _planar(raster.pix_T_global) @ _planar(global_T_ego) @ invert_3x3(grid.cv_T_ego)
    out = cv2.warpAffine(raster.mask, mappix_T_cv[:2], (Y, X), flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return (out > 0).astype(np.uint8)  # threshold the small output, never the whole map


def boxes_to_bev(grid: BEVGrid, center: np.ndarray, size: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Rasterise the footprints of ego-frame boxes: uint8 [X, Y], 1 where the cell centre lies inside
    a box's footprint (exact, no rasteriser bias)."""
    X, Y = grid.shape
    out = np.zeros((X, Y), np.uint8)
    if len(center) == 0:
        return out
    corners = box_corners(center, size, yaw)[:, :4, :2]  # bottom face [B, 4, 2], ego x, y
    cells = grid.to_cells(corners)  # continuous (row, col)
    centres = grid.cell_centers()  # [X, Y, 2]
    for b in range(len(center)):
        lo = np.maximum(np.floor(cells[b].min(axis=0)).astype(int), 0)
        hi = np.minimum(np.ceil(cells[b].max(axis=0)).astype(int), [X, Y])
        if np.any(hi <= lo):
            continue
        xy = centres[lo[0]:hi[0], lo[1]:hi[1]].reshape(-1, 2)
        pts = np.concatenate([xy, np.full((len(xy), 1), center[b, 2])], axis=1)  # at the box's height
        inside = points_in_boxes(pts, center[b], size[b], yaw[b])[0]
        out[lo[0]:hi[0], lo[1]:hi[1]] |= inside.reshape(hi[0] - lo[0], hi[1] - lo[1]).astype(np.uint8)
    return out


@dataclass(frozen=True)
class SegTargets:
    """BEV segmentation targets of one frame."""

    masks: np.ndarray  # uint8 [S, X, Y], one channel per preset.tasks.seg_classes
    valid: np.ndarray  # bool [S], False where the dataset has no source for that class (no lane raster)


def segmentation_targets(seg_classes: tuple[str, ...], grid: BEVGrid, *, global_T_ego: np.ndarray,
                         aug_T_ego: np.ndarray, drivable: MapMask | None, lane_dividers: MapMask | None,
                         center: np.ndarray, size: np.ndarray, yaw: np.ndarray, categories: tuple[str, ...],
                         visibility: tuple[str, ...], min_visibility: str = "2") -> SegTargets:
    """Rasterise each segmentation class.

    Boxes are in the augmented ego frame; ``aug_T_ego`` (identity without BEV augmentation) maps
    the recorded ego frame to it, so map rasters are sampled at ``global_T_ego @ inv(aug_T_ego)``.
    ``categories`` are the boxes' nuScenes category names: as LSS and Simple-BEV, every ``vehicle.*``
    category is a vehicle (emergency vehicles too) and every ``human.pedestrian.*`` a pedestrian; they
    count when their visibility token is >= ``min_visibility``.
    """
    X, Y = grid.shape
    masks = np.zeros((len(seg_classes), X, Y), np.uint8)
    valid = np.zeros(len(seg_classes), bool)
    global_T_aug = global_T_ego @ invert_transform(aug_T_ego)
    visible = np.array([v >= min_visibility for v in visibility], bool) if len(visibility) else np.zeros(0, bool)
    cats = list(categories)
    for s, cls in enumerate(seg_classes):
        if cls == "drivable_area":
            if drivable is not None:
                masks[s], valid[s] = map_to_bev(drivable, grid, global_T_aug), True
        elif cls == "lane_divider":
            if lane_dividers is not None:
                masks[s], valid[s] = map_to_bev(lane_dividers, grid, global_T_aug), True
        elif cls in ("vehicle", "pedestrian"):
            prefix = SEG_VEHICLE_PREFIX if cls == "vehicle" else SEG_PEDESTRIAN_PREFIX
            keep = visible & np.array([c.startswith(prefix) for c in cats], bool) if cats else np.zeros(0, bool)
            masks[s], valid[s] = boxes_to_bev(grid, center[keep], size[keep], yaw[keep]), True
        else:
            raise ValueError(f"unknown segmentation class {cls!r}")
    return SegTargets(masks, valid)
