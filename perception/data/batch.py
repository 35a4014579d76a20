"""The typed batch of multi-camera frames, and the collate function that builds it.

:class:`FrameItem` is one frame as numpy arrays (what a Dataset worker returns); :func:`collate_frames`
stacks frames into a :class:`MultiCamBatch` of torch tensors, B frames of N cameras.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np
import torch


class FrameRef(NamedTuple):
    """Which frame a Dataset loads, and its place in a clip."""

    index: int  # position in the dataset
    step: int = 0  # position in its clip; 0 is the first frame (video state reset)
    seed: int = 0  # seeds the clip's augmentation (one BEV augmentation per clip)


@dataclass
class FrameItem:
    """One frame (numpy). Shapes: N cameras, S seg classes, C det classes, M max objects, G gt boxes."""

    images: np.ndarray  # uint8 [N, 3, H, W] RGB
    K: np.ndarray  # float32 [N, 3, 3] intrinsics after resize, crop and augmentation
    ego_T_cam: np.ndarray  # float32 [N, 4, 4] camera -> (augmented) ego frame of the sample
    cam_valid: np.ndarray  # bool [N]
    seg: np.ndarray  # uint8 [S, X, Y] BEV segmentation targets
    seg_valid: np.ndarray  # bool [S] classes with a source in this dataset
    heatmap: np.ndarray  # float32 [C, Xd, Yd] detection heatmap targets
    det_indices: np.ndarray  # int64 [M] flat heatmap index of each target box
    det_mask: np.ndarray  # bool [M]
    det_regression: np.ndarray  # float32 [M, R] (boxes.REGRESSION_CHANNELS)
    det_velocity_valid: np.ndarray  # bool [M]
    det_labels: np.ndarray  # int64 [M]
    prev_T_curr: np.ndarray  # float32 [4, 4] current ego frame -> previous ego frame (identity at a clip start)
    dt: np.float32  # seconds since the previous frame (0 at a clip start)
    is_first: bool  # the first frame of its clip: the video state starts from zeros
    sequence_id: int  # scene index in the reader
    frame_index: int  # position in its scene
    sample_index: int  # position in the reader's samples
    gt_boxes: np.ndarray  # float32 [G, 9] x, y, z, w, l, h, yaw, vx, vy (ego frame), zero padded; v NaN if unknown
    gt_labels: np.ndarray  # int64 [G] class index, -1 for padding and non-detection categories
    aug_T_ego: np.ndarray  # float32 [4, 4] the BEV augmentation applied (identity when none)
    depth: np.ndarray | None = None  # float32 [N, H, W] sparse lidar depth, 0 where none


@dataclass
class MultiCamBatch:
    """B frames of N cameras, as torch tensors (field meanings as in :class:`FrameItem`).

    images [B, N, 3, H, W] uint8, K [B, N, 3, 3], ego_T_cam [B, N, 4, 4], cam_valid [B, N] bool,
    seg [B, S, X, Y] uint8, seg_valid [B, S], heatmap [B, C, Xd, Yd], det_indices [B, M],
    det_mask [B, M], det_regression [B, M, R], det_velocity_valid [B, M], det_labels [B, M],
    prev_T_curr [B, 4, 4], dt [B], is_first [B] bool, sequence_id [B], frame_index [B],
    sample_index [B], gt_boxes [B, G, 9], gt_labels [B, G], aug_T_ego [B, 4, 4],
    depth [B, N, H, W] or None.
    """

    images: torch.Tensor
    K: torch.Tensor
    ego_T_cam: torch.Tensor
    cam_valid: torch.Tensor
    seg: torch.Tensor
    seg_valid: torch.Tensor
    heatmap: torch.Tensor
    det_indices: torch.Tensor
    det_mask: torch.Tensor
    det_regression: torch.Tensor
    det_velocity_valid: torch.Tensor
    det_labels: torch.Tensor
    prev_T_curr: torch.Tensor
    dt: torch.Tensor
    is_first: torch.Tensor
    sequence_id: torch.Tensor
    frame_index: torch.Tensor
    sample_index: torch.Tensor
    gt_boxes: torch.Tensor
    gt_labels: torch.Tensor
    aug_T_ego: torch.Tensor
    depth: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def model_inputs(self, prev_state: torch.Tensor) -> dict[str, torch.Tensor]:
        """The model's inputs, keyed by :data:`perception.specs.MODEL_INPUT_NAMES` (the ONNX input names):
        this batch's images and rig with ``prev_state`` [B, C, X, Y] zeroed in the slots where a clip starts."""
        first = self.is_first.bool().to(prev_state.device).view(-1, *([1] * (prev_state.dim() - 1)))
        state = torch.where(first, torch.zeros_like(prev_state), prev_state)  # zeros even where the state is not finite
        return {"images": self.images, "K": self.K, "ego_T_cam": self.ego_T_cam, "cam_valid": self.cam_valid,
                "prev_state": state, "prev_T_curr": self.prev_T_curr, "dt": self.dt}

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "MultiCamBatch":
        """Move every tensor to ``device`` (non_blocking pairs with pinned memory on CUDA)."""
        return MultiCamBatch(**{f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
                                for f in fields(self) for v in [getattr(self, f.name)]})

    def pin_memory(self) -> "MultiCamBatch":
        """Called by DataLoader(pin_memory=True) on CUDA machines."""
        return MultiCamBatch(**{f.name: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
                                for f in fields(self) for v in [getattr(self, f.name)]})


def collate_frames(frames: list[FrameItem]) -> MultiCamBatch:
    """Stack frames into a :class:`MultiCamBatch`."""
    if not frames:
        raise ValueError("cannot collate an empty list of frames")
    out = {}
    for f in fields(FrameItem):
        values = [getattr(fr, f.name) for fr in frames]
        if f.name == "depth":
            out[f.name] = None if any(v is None for v in values) else torch.from_numpy(np.stack(values))
        else:
            out[f.name] = torch.from_numpy(np.stack([np.asarray(v) for v in values]))
    return MultiCamBatch(**out)
