"""The torch Dataset of multi-camera frames (torch is imported here and in batch.py only).

A frame is read through the nuScenes reader, decoded and preprocessed with the one preprocessing
function the edge runtime also uses, augmented with geometry kept true (training only), and turned
into targets: BEV segmentation rasters and CenterPoint detection targets from the one box codec.

Frames are addressed by :class:`FrameRef` ``(index, step, seed)``: ``index`` is the sample's
position in the reader, ``step`` its position in the clip being sampled (0 resets the video state),
and ``seed`` seeds the clip's augmentation, so every frame of a clip shares one BEV augmentation.
:class:`ClipBatchSampler` yields such references; a plain integer index means a clip of one frame.
"""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..specs import DatasetConfig
from .augment import apply_bev, augment_cameras, augment_ego_motion, drop_cameras, sample_aug_T_ego
from ..boxes import BoxCodec
from ..geometry import invert_rigid, invert_transform, project, transform_points
from ..preprocess import ImageDecodeError, auto_reduce, load_camera
from ..presets import Preset
from .batch import FrameItem, FrameRef, collate_frames  # noqa: F401  (re-exported for DataLoader users)
from .nuscenes import DatasetError, NuScenesDataset, Sample, load_dataset, load_lidar_points
from .sensor_files import MapMask
from ..schema import DETECTION_CLASSES
from .targets import read_lane_dividers, segmentation_targets


class BadImageError(DatasetError):
    """A camera image is missing or cannot be decoded; the message names the file. Like every
    :class:`DatasetError`, it keeps its message when raised in a DataLoader worker process."""


class MultiCamDataset(Dataset):
    """Multi-camera frames of a nuScenes-format dataset as training examples of a preset."""

    def __init__(self, data: str | Path | NuScenesDataset, preset: Preset, config: DatasetConfig = DatasetConfig()):
        if config.on_bad_image not in ("raise", "skip"):
            raise ValueError(f"on_bad_image must be 'raise' or 'skip', got {config.on_bad_image!r}")
        self.reader = data if isinstance(data, NuScenesDataset) else load_dataset(data)
        self.preset = preset
        self.config = config
        self.codec = BoxCodec.from_preset(preset)
        missing = [c for c in preset.input.cameras if c not in self.reader.camera_channels]
        if missing:
            raise DatasetError(f"{self.reader.root}: preset {preset.name!r} needs cameras {missing}, "
                               f"the dataset has {list(self.reader.camera_channels)}")
        if config.split is None:
            scenes = self.reader.scenes
        else:
            scenes = self.reader.scenes_of_split(config.split)
        # Samples of the chosen scenes, scene by scene in time order.
        self.indices: list[int] = [self.reader.sample(tok).index for sc in scenes for tok in sc.sample_tokens]
        self.scene_ids = {sc.token: i for i, sc in enumerate(self.reader.scenes)}
        self.scenes = list(scenes)
        self.epoch = 0
        classes = preset.tasks.det_classes  # DETECTION_CLASSES index -> preset class index, -1 last
        self._label_lut = np.array([classes.index(c) if c in classes else -1 for c in DETECTION_CLASSES] + [-1], np.int64)
        self._lanes: dict[str, MapMask | None] = {}  # map token -> lane-divider raster (read once)

    def __len__(self) -> int:
        return len(self.indices)

    def set_epoch(self, epoch: int) -> None:
        """Draw new augmentations for plain integer indices (a :class:`ClipBatchSampler` seeds its
        clips itself, through its own ``set_epoch``). Call before creating the epoch's iterator."""
        self.epoch = epoch

    def clips(self) -> list[list[int]]:
        """Positions (into this dataset) of each scene's frames in time order."""
        out, pos = [], 0
        for sc in self.scenes:
            out.append(list(range(pos, pos + len(sc.sample_tokens))))
            pos += len(sc.sample_tokens)
        return out

    def __getitem__(self, ref: int | FrameRef | Sequence[int]) -> FrameItem:
        # A plain index is a clip of one frame whose augmentation is seeded by the index and the epoch.
        if isinstance(ref, (tuple, list)):
            ref = FrameRef(*ref)
        else:
            ref = FrameRef(int(ref), 0, zlib.crc32(f"{self.epoch}/{int(ref)}".encode()))
        sample = self.reader.samples[self.indices[ref.index]]
        return self.load(sample, step=ref.step, seed=ref.seed)

    # ---------------------------------------------------------------------------------------------

    def load(self, sample: Sample, step: int = 0, seed: int = 0) -> FrameItem:
        """Read, preprocess, augment and encode one frame."""
        cfg, preset = self.config, self.preset
        H, W = preset.input.height, preset.input.width
        N = len(preset.input.cameras)
        bev_rng = np.random.default_rng([seed, 1])  # the same for every frame of a clip
        img_rng = np.random.default_rng([seed, 2, step])

        images = np.zeros((N, H, W, 3), np.uint8)
        K = np.zeros((N, 3, 3))
        ego_T_cam = np.zeros((N, 4, 4))
        cam_valid = np.ones(N, bool)
        ref_T_global = invert_rigid(sample.global_T_ego)
        for n, ch in enumerate(preset.input.cameras):
            frame = sample.cameras[ch]
            # Cameras fire at their own times: express them in the sample's reference ego frame.
            ego_T_cam[n] = ref_T_global @ frame.global_T_ego @ frame.ego_T_cam
            try:
                # The edge runtime decodes the same way: reduced JPEG decoding chosen from the sizes.
                known = frame.height > 0 and frame.width > 0  # sample_data records the recorded size
                jpeg = frame.path.suffix.lower() in (".jpg", ".jpeg")
                reduce = auto_reduce((frame.height, frame.width), (H, W)) if known and jpeg else 1
                images[n], K[n] = load_camera(frame.path, frame.K, (H, W), reduce,
                                              (frame.height, frame.width) if known else None)
            except ImageDecodeError as exc:
                if cfg.on_bad_image == "raise":
                    raise BadImageError(str(exc)) from None
                warnings.warn(f"{exc}; camera {ch} of sample {sample.token} marked invalid", stacklevel=2)
                cam_valid[n] = False
                K[n] = np.diag([frame.K[0, 0], frame.K[1, 1], 1.0])  # well defined; the camera is masked anyway
                K[n, :2, 2] = (W / 2, H / 2)
        boxes = self.reader.box_set(sample)
        center, size, yaw, velocity = boxes.center, boxes.size, boxes.yaw, boxes.velocity
        label = boxes.label
        points = None
        if cfg.with_depth:
            pts = load_lidar_points(sample.lidar.path)[:, :3].astype(np.float64)
            points = transform_points(sample.lidar.ego_T_lidar, pts)

        aug_T_ego = np.eye(4)
        if cfg.augment.enabled:
            cams = augment_cameras(images, K, img_rng, cfg.augment)
            images, K = cams.images, cams.K
            aug_T_ego = sample_aug_T_ego(bev_rng, cfg.augment)
            bev = apply_bev(aug_T_ego, ego_T_cam, center, size, yaw, velocity, points)
            ego_T_cam, center, size, yaw, velocity, points = bev.ego_T_cam, bev.center, bev.size, bev.yaw, \
                bev.velocity, bev.points
            images, cam_valid = drop_cameras(images, cam_valid, img_rng, cfg.augment)

        # Targets.
        scene = self.reader.scene(sample.scene_token)
        drivable = lanes = None
        if scene.map_token is not None:
            drivable = self.reader.map_mask(scene.map_token)
            if scene.map_token not in self._lanes:
                if len(self._lanes) >= 8:  # keep a few maps: a worker reads scenes in runs
                    self._lanes.pop(next(iter(self._lanes)))
                self._lanes[scene.map_token] = read_lane_dividers(drivable)
            lanes = self._lanes[scene.map_token]
        near = np.linalg.norm(center[:, :2], axis=1) <= preset.tasks.det_max_distance if len(center) else np.zeros(0, bool)
        seg = segmentation_targets(preset.tasks.seg_classes, preset.bev, global_T_ego=sample.global_T_ego,
                                   aug_T_ego=aug_T_ego, drivable=drivable, lane_dividers=lanes, center=center,
                                   size=size, yaw=yaw, categories=boxes.categories, visibility=boxes.visibility,
                                   min_visibility=preset.tasks.seg_min_visibility)
        det_label = np.where(near, self._det_label(label), -1)
        det = self.codec.encode(center, size, yaw, velocity, det_label)

        # Ego motion from the previous key frame (in the clip's augmented frame), and the time step.
        prev_T_curr, dt = np.eye(4), 0.0
        if step > 0 and sample.prev:
            prev = self.reader.sample(sample.prev)
            prev_T_curr = invert_rigid(prev.global_T_ego) @ sample.global_T_ego
            prev_T_curr = augment_ego_motion(prev_T_curr, aug_T_ego)
            dt = (sample.timestamp - prev.timestamp) / 1e6

        depth = None
        if points is not None:
            depth = _sparse_depth(points, K, ego_T_cam, H, W)
            depth[~cam_valid] = 0.0  # no supervision from a dropped or unreadable camera

        # Ground truth boxes for evaluation (augmented ego frame), padded.
        G = cfg.max_gt_boxes
        order = np.argsort(np.linalg.norm(center[:, :2], axis=1))[:G] if len(center) else np.zeros(0, int)
        gt = np.zeros((G, 9), np.float32)
        gt_label = np.full(G, -1, np.int64)
        k = len(order)
        if k:
            gt[:k, :3], gt[:k, 3:6], gt[:k, 6] = center[order], size[order], yaw[order]
            gt[:k, 7:9] = velocity[order]  # NaN where unknown (an object seen in one keyframe)
            gt_label[:k] = self._det_label(label[order])
        return FrameItem(
            images=images.transpose(0, 3, 1, 2).copy(), K=K.astype(np.float32), ego_T_cam=ego_T_cam.astype(np.float32),
            cam_valid=cam_valid, seg=seg.masks, seg_valid=seg.valid, heatmap=det.heatmap, det_indices=det.indices,
            det_mask=det.mask, det_regression=det.regression, det_velocity_valid=det.velocity_valid,
            det_labels=det.labels, prev_T_curr=prev_T_curr.astype(np.float32), dt=np.float32(dt),
            is_first=step == 0 or not sample.prev, sequence_id=self.scene_ids[sample.scene_token],
            frame_index=sample.scene_index, sample_index=sample.index, gt_boxes=gt, gt_labels=gt_label,
            aug_T_ego=aug_T_ego.astype(np.float32), depth=depth,
        )

    def _det_label(self, label: np.ndarray) -> np.ndarray:
        """Map DETECTION_CLASSES indices to the preset's class order (-1 when not detected)."""
        return self._label_lut[np.where(label >= 0, label, len(DETECTION_CLASSES))]


def _sparse_depth(points_ego: np.ndarray, K: np.ndarray, ego_T_cam: np.ndarray, H: int, W: int) -> np.ndarray:
    """Lidar points projected into each camera: depth [N, H, W] float32 (metres, 0 where no point);
    the nearest point wins a pixel."""
    N = K.shape[0]
    out = np.zeros((N, H, W), np.float32)
    for n in range(N):
        cam = transform_points(invert_transform(ego_T_cam[n]), points_ego)
        uv, depth = project(K[n], cam[cam[:, 2] > 0.5])
        u = np.round(uv[:, 0]).astype(np.int64)
        v = np.round(uv[:, 1]).astype(np.int64)
        ok = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        z = depth[ok].astype(np.float32)
        order = np.argsort(-z)  # far first, so the nearest is written last
        out[n, v[ok][order], u[ok][order]] = z[order]
    return out


__all__ = ["BadImageError", "DatasetConfig", "FrameRef", "MultiCamDataset", "collate_frames", "torch"]
