"""Render one sample of a nuScenes-format dataset: six cameras with projected boxes beside a BEV
panel (drivable area, lidar, boxes, ego), as ``data-engine show`` writes it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from perception.data.nuscenes import NuScenesDataset, Sample, load_dataset, load_lidar_points, read_image
from perception.geometry import transform_points
from perception.vis import BEVView, BoxLayer, compose_sample_view, draw_bev, draw_boxes_on_image

__all__ = ["parse_sample_ref", "render_sample", "sample_title", "show_sample"]


def parse_sample_ref(ref: str) -> str | int:
    """A ``--sample`` argument: a short integer (position in the dataset, negative from the end) or a
    token (nuScenes tokens are 32 hex digits, so a long all-digit string is still a token)."""
    stripped = ref.strip()
    if len(stripped) < 16 and stripped.lstrip("-").isdigit():
        return int(stripped)
    return stripped


def sample_title(dataset: NuScenesDataset, sample: Sample) -> str:
    """``scene-0001 | sample 2/3 (#1) | night, rain``: scene name, position in the scene (and in
    the dataset), scene description."""
    scene = dataset.scene_of(sample)
    parts = [scene.name, f"sample {sample.scene_index + 1}/{len(scene.sample_tokens)} (#{sample.index})"]
    if scene.description:
        parts.append(scene.description)
    return " | ".join(parts)


def render_sample(
    dataset: NuScenesDataset, sample: Sample, *, tile_width: int = 480, view: BEVView | None = None
) -> np.ndarray:
    """The sample view as BGR uint8 (see :func:`perception.vis.compose_sample_view` for the layout).

    Ground-truth boxes are drawn in every camera (through ``sample.cam_T_ref``, which accounts for
    the ego motion between the camera's and the lidar's timestamps) and in the BEV, which shows the
    map's drivable area and the LIDAR_TOP points in the sample's reference ego frame.
    Raises DatasetError naming the file when an image, the point cloud or the map is unreadable.
    """
    view = view or BEVView()
    gt = dataset.box_set(sample)
    layer = BoxLayer(center=gt.center, size=gt.size, yaw=gt.yaw, label=gt.label, velocity=gt.velocity, style="gt")
    images = {
        channel: draw_boxes_on_image(read_image(cam.path, (cam.height, cam.width)), cam.K, sample.cam_T_ref(channel), layer)
        for channel, cam in sample.cameras.items()
    }
    points = load_lidar_points(sample.lidar.path)
    points_ego = transform_points(sample.lidar.ego_T_lidar, points[:, :3].astype(np.float64))
    scene = dataset.scene_of(sample)
    map_mask, pix_T_ego = None, None
    if scene.map_token is not None:
        mm = dataset.map_mask(scene.map_token)
        map_mask, pix_T_ego = mm.mask, mm.pix_T_global @ sample.global_T_ego
    bev = draw_bev(view, map_mask=map_mask, pix_T_ego=pix_T_ego, points_ego=points_ego, boxes=[layer])
    return compose_sample_view(images, bev, sample_title(dataset, sample), tile_width=tile_width)


def show_sample(
    dataset_root: str | Path, sample_ref: str | int, out: str | Path, *, version: str | None = None, tile_width: int = 480
) -> Path:
    """Load the dataset, render sample ``sample_ref`` (token or index) and write it as an image to ``out``."""
    dataset = load_dataset(dataset_root, version)
    sample = dataset.sample(parse_sample_ref(sample_ref) if isinstance(sample_ref, str) else sample_ref)
    picture = render_sample(dataset, sample, tile_width=tile_width)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = cv2.imwrite(str(out), picture)
    except cv2.error as exc:  # e.g. an extension OpenCV has no encoder for
        raise OSError(f"{out}: cannot write the image ({exc.err})") from exc
    if not written:
        raise OSError(f"{out}: cannot write the image")
    return out
