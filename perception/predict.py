"""Pictures and videos of a model's predictions: `perception predict`.

For each frame of a scene (run in time order with the video state carried): the six cameras with the
predicted boxes (dashed, with their score) drawn on the recorded images, beside two BEV panels on the
model's grid, "prediction" (predicted segmentation overlay and boxes) and "ground truth" (target
rasters and annotated boxes), as :func:`perception.vis.compose_sample_view` lays a sample out.
With ``video`` the frames also go into one MP4.

    written = predict("runs/train/x/best.pt", "data/synth", "runs/predict/x", scene="scene-0001", video=True)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .boxes import DecodedBoxes
from .schema import DETECTION_CLASSES
from .device import select_device
from .geometry import BEVGrid, invert_3x3
from .vis import BEVView, BoxLayer, compose_sample_view, draw_bev, draw_boxes_on_image
from perception.errors import BevStackError

if TYPE_CHECKING:
    import torch

    from .data.nuscenes import NuScenesDataset
    from .presets import Preset

__all__ = ["SEG_COLORS", "PredictError", "PredictOutput", "bev_panel", "predict", "seg_overlay"]

# BGR colour of each BEV segmentation class in the overlays.
SEG_COLORS: dict[str, tuple[int, int, int]] = {
    "drivable_area": (110, 110, 110),
    "lane_divider": (0, 220, 255),
    "vehicle": (255, 140, 30),
    "pedestrian": (0, 200, 0),
}
_OTHER_SEG_COLOR = (200, 60, 200)


class PredictError(BevStackError):
    """A scene, checkpoint or output that cannot be used; the message names it."""


@dataclass
class PredictOutput:
    """What :func:`predict` wrote."""

    scene: str  # scene name
    frames: list[Path] = field(default_factory=list)  # one PNG per frame, in time order
    video: Path | None = None  # the MP4, when asked for
    frame_size: tuple[int, int] = (0, 0)  # (H, W) of every picture


def _det_to_schema(classes: Sequence[str], label: np.ndarray) -> np.ndarray:
    """Preset class indices -> DETECTION_CLASSES indices (the colours of perception.vis); -1 if none."""
    lut = np.array([DETECTION_CLASSES.index(c) if c in DETECTION_CLASSES else -1 for c in classes] + [-1])
    label = np.asarray(label, dtype=np.int64)
    return lut[np.where(label >= 0, label, len(classes))]


def pred_layer(boxes: DecodedBoxes, classes: Sequence[str]) -> BoxLayer:
    """Decoded boxes (ego frame) as a "pred" layer with scores."""
    return BoxLayer(center=boxes.center, size=boxes.size, yaw=boxes.yaw, label=_det_to_schema(classes, boxes.label),
                    score=boxes.score, velocity=boxes.velocity, style="pred")


def grid_view(grid: BEVGrid, pixels: int = 480) -> BEVView:
    """A BEV picture covering exactly ``grid``, about ``pixels`` pixels along its longer side."""
    ppm = pixels / max(grid.x_max - grid.x_min, grid.y_max - grid.y_min)
    return BEVView(forward=grid.x_max, backward=-grid.x_min, left=grid.y_max, right=-grid.y_min, pixels_per_metre=ppm)


def seg_overlay(image: np.ndarray, view: BEVView, grid: BEVGrid, masks: np.ndarray, classes: Sequence[str],
                valid: np.ndarray | None = None, alpha: float = 0.55) -> np.ndarray:
    """``image`` (the BEV picture of ``view``) with the BEV masks [S, X, Y] (bool, on ``grid``) blended in,
    classes in order (later ones on top); classes with ``valid`` False are skipped."""
    out = image.copy()
    mask_T_img = grid.cv_T_ego @ invert_3x3(view.img_T_ego)
    H, W = view.shape
    for s, name in enumerate(classes):
        if valid is not None and not valid[s]:
            continue
        m = cv2.warpAffine(np.ascontiguousarray(masks[s]).astype(np.uint8), mask_T_img[:2], (W, H),
                           flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=0) > 0
        color = np.array(SEG_COLORS.get(name, _OTHER_SEG_COLOR), np.float32)
        out[m] = (out[m] * (1 - alpha) + color * alpha).astype(np.uint8)
    return out


def bev_panel(view: BEVView, grid: BEVGrid, masks: np.ndarray, classes: Sequence[str], valid: np.ndarray | None,
              layers: Sequence[BoxLayer], title: str) -> np.ndarray:
    """One BEV panel: segmentation overlay under the boxes, the ego, and a title."""
    base = draw_bev(view, boxes=(), draw_ego=True)
    boxed = draw_bev(view, boxes=layers, draw_ego=True)
    drawn = np.any(boxed != base, axis=2)  # pixels of the boxes, kept on top of the overlay
    out = seg_overlay(base, view, grid, masks, classes, valid)
    out[drawn] = boxed[drawn]
    cv2.putText(out, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(out, title, (8, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def render_frame(reader, sample, preset, boxes: DecodedBoxes, seg_prob: np.ndarray, seg_gt: np.ndarray,
                 seg_valid: np.ndarray, gt_boxes: np.ndarray, gt_labels: np.ndarray, tile_width: int = 480) -> np.ndarray:
    """The picture of one frame: cameras with predictions, BEV prediction | BEV ground truth."""
    from .data.sensor_files import read_image

    classes = tuple(preset.tasks.det_classes)
    seg_classes = tuple(preset.tasks.seg_classes)
    layer = pred_layer(boxes, classes)
    images = {}
    for ch in preset.input.cameras:
        cam = sample.cameras[ch]
        images[ch] = draw_boxes_on_image(read_image(cam.path, (cam.height, cam.width)), cam.K, sample.cam_T_ref(ch), layer)
    grid = preset.bev
    view = grid_view(grid)
    real = gt_labels >= 0
    gt_layer = BoxLayer(center=gt_boxes[real, :3], size=gt_boxes[real, 3:6], yaw=gt_boxes[real, 6],
                        label=_det_to_schema(classes, gt_labels[real]), velocity=gt_boxes[real, 7:9], style="gt")
    pred_panel = bev_panel(view, grid, seg_prob > 0.5, seg_classes, None, [layer], "prediction")
    gt_panel = bev_panel(view, grid, seg_gt > 0, seg_classes, seg_valid, [gt_layer], "ground truth")
    gap = np.full((pred_panel.shape[0], 4, 3), 255, np.uint8)
    bev = np.concatenate([pred_panel, gap, gt_panel], axis=1)
    scene = reader.scene_of(sample)
    title = f"{scene.name} | frame {sample.scene_index + 1}/{len(scene.sample_tokens)} | {scene.description} | " \
            f"{len(boxes)} boxes"
    return compose_sample_view(images, bev, title, tile_width=tile_width)


def predict(checkpoint: str | Path, data: str | Path, out: str | Path, scene: str | None = None, *,
            video: bool = False, max_frames: int | None = None, score_threshold: float = 0.3,
            device: str | None = None, tile_width: int = 480, fps: float = 2.0) -> PredictOutput:
    """Write one PNG per frame of ``scene`` (default: the first scene of the val split, else of the
    dataset) to ``out``, and with ``video`` an MP4 of those frames (the first ``max_frames``; all by
    default), with the model a checkpoint holds (see :func:`predict_model`)."""
    from .checkpoint import load_model_from_checkpoint
    from .data.nuscenes import load_dataset

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise PredictError(f"{checkpoint}: checkpoint file missing")
    reader = load_dataset(data)
    model, preset, _ = load_model_from_checkpoint(checkpoint)
    return predict_model(model, preset, reader, out, scene, video=video, max_frames=max_frames,
                         score_threshold=score_threshold, device=device, tile_width=tile_width, fps=fps)


def predict_model(model: torch.nn.Module, preset: Preset, reader: NuScenesDataset, out: str | Path, scene: str | None = None, *,
                  video: bool = False, max_frames: int | None = None, score_threshold: float = 0.3,
                  device: str | None = None, tile_width: int = 480, fps: float = 2.0) -> PredictOutput:
    """:func:`predict` with a model in memory (training's validation draws with it): the model runs
    over the frames of ``scene`` of ``reader`` in order, with the video state carried."""
    import torch

    from .data.dataset import DatasetConfig, MultiCamDataset
    from .evaluate import default_split, run_model

    if max_frames is not None and max_frames < 1:
        raise PredictError(f"--max-frames must be >= 1, got {max_frames}")
    if scene is None:
        split = default_split(reader)
        chosen = reader.scenes_of_split(split)[0] if split else reader.scenes[0]
    else:
        found = [s for s in reader.scenes if scene in (s.name, s.token)]
        if not found:
            names = [s.name for s in reader.scenes]
            raise PredictError(f"{reader.root}: unknown scene {scene!r} (scenes: {', '.join(names[:10])}"
                               f"{', ...' if len(names) > 10 else ''})")
        chosen = found[0]
    dev = select_device(device)
    model.to(dev)
    dataset = MultiCamDataset(reader, preset, DatasetConfig(split=None))
    start = dataset.indices.index(reader.sample(chosen.sample_tokens[0]).index)
    clip = list(range(start, start + len(chosen.sample_tokens)))[:max_frames]

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = PredictOutput(scene=chosen.name)
    writer = None
    video_path = out / f"{chosen.name}.mp4"
    try:
        for batch, outputs in run_model(model, dataset, [clip], 1, dev):
            decoded = dataset.codec.decode_logits(outputs, score_threshold)[0]
            sample = reader.samples[int(batch.sample_index[0])]
            picture = render_frame(reader, sample, preset, decoded, torch.sigmoid(outputs["seg"][0]).numpy(),
                                   batch.seg[0].numpy(), batch.seg_valid[0].numpy(), batch.gt_boxes[0].numpy(),
                                   batch.gt_labels[0].numpy(), tile_width)
            H, W = picture.shape[:2]
            picture = np.pad(picture, ((0, H % 2), (0, W % 2), (0, 0)))  # even sizes for video codecs
            path = out / f"{chosen.name}_{sample.scene_index:04d}.png"
            if not cv2.imwrite(str(path), picture):
                raise PredictError(f"{path}: cannot write the image")
            result.frames.append(path)
            result.frame_size = picture.shape[:2]
            if video:
                if writer is None:
                    writer = cv2.VideoWriter(str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), fps,
                                             (picture.shape[1], picture.shape[0]))
                    if not writer.isOpened():
                        raise PredictError(f"{video_path}: cannot open an MP4 writer (OpenCV without mp4v?)")
                writer.write(picture)
    finally:
        if writer is not None:
            writer.release()
    if video:
        if not video_path.is_file() or video_path.stat().st_size == 0:
            raise PredictError(f"{video_path}: the video writer wrote nothing")
        result.video = video_path
    return result
