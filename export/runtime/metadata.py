"""The metadata every exported .onnx carries, and its check on load (numpy only, no torch).

Stored as ONNX ``metadata_props``: ``bevstack.format_version`` (an integer) and ``bevstack.metadata``
(JSON of :class:`ModelMetadata`). A model without them, or of another format version, is refused
with a message that names the file and both versions.

The input and output contract (B batch, N cameras; DESIGN section 5):

    images       uint8   [B, N, 3, H, W]   RGB, normalized inside the graph
    K            float32 [B, N, 3, 3]      intrinsics of the H x W images   (absent with a fixed rig)
    ego_T_cam    float32 [B, N, 4, 4]      camera -> ego                     (absent with a fixed rig)
    cam_valid    bool    [B, N]            False masks a missing or stale camera
    prev_state   float32 [B, C, X, Y]      the previous frame's ``state`` (zeros at a clip's start)
    prev_T_curr  float32 [B, 4, 4]         current ego frame -> previous ego frame
    dt           float32 [B]               s since the previous frame

    heatmap      float32 [B, K, Xd, Yd]    detection logits (decoded by perception.boxes)
    regression   float32 [B, 10, Xd, Yd]   box regression, channels boxes.REGRESSION_CHANNELS
    seg          float32 [B, S, X, Y]      BEV segmentation logits
    state        float32 [B, C, X, Y]      the next frame's prev_state
    embedding    float32 [B, E]            pooled frame embedding (the data engine's)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception.geometry import BEVGrid
from perception.presets import Preset, preset_from_dict
from perception.errors import BevStackError

__all__ = ["FORMAT_VERSION", "INPUT_NAMES", "METADATA_KEY", "OUTPUT_NAMES", "PRECISIONS", "RIG_INPUTS",
           "MetadataError", "ModelMetadata"]

FORMAT_VERSION = 1
METADATA_KEY = "bevstack.metadata"
VERSION_KEY = "bevstack.format_version"
INPUT_NAMES: tuple[str, ...] = ("images", "K", "ego_T_cam", "cam_valid", "prev_state", "prev_T_curr", "dt")
RIG_INPUTS: tuple[str, ...] = ("K", "ego_T_cam")  # folded into constants by --fixed-rig
OUTPUT_NAMES: tuple[str, ...] = ("heatmap", "regression", "seg", "state", "embedding")
PRECISIONS: tuple[str, ...] = ("fp32", "fp16", "int8")


class MetadataError(BevStackError):
    """A model file whose metadata is missing, of another format version, or inconsistent."""


@dataclass(frozen=True)
class ModelMetadata:
    """What a runtime needs to feed and read an exported model, without the checkpoint."""

    preset: dict[str, Any]  # the full preset (perception.presets.preset_to_dict)
    precision: str  # "fp32", "fp16" or "int8"
    checkpoint_sha256: str  # digest of the checkpoint file the model was exported from
    state_shape: tuple[int, int, int]  # (C, X, Y) of prev_state / state
    embedding_dim: int  # E
    static_batch: int | None = None  # the batch size of a static-shape model; None: dynamic batch
    fixed_rig: dict[str, list] | None = None  # {"K": [N][3][3], "ego_T_cam": [N][4][4]} at the input size
    exporter: dict[str, Any] = field(default_factory=dict)  # opset, torch and onnx versions
    format_version: int = FORMAT_VERSION

    # -- what the preset says, by name -----------------------------------------------------------
    @property
    def preset_obj(self) -> Preset:
        return preset_from_dict(self.preset)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(self.preset["input"]["cameras"])

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.preset["input"]["height"]), int(self.preset["input"]["width"])

    @property
    def class_names(self) -> tuple[str, ...]:
        """Detection classes, in heatmap channel order."""
        return tuple(self.preset["tasks"]["det_classes"])

    @property
    def seg_classes(self) -> tuple[str, ...]:
        return tuple(self.preset["tasks"]["seg_classes"])

    @property
    def bev_grid(self) -> BEVGrid:
        return self.preset_obj.bev

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(n for n in INPUT_NAMES if self.fixed_rig is None or n not in RIG_INPUTS)

    def rig_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """The fixed rig's (K [N, 3, 3], ego_T_cam [N, 4, 4]) at the input size."""
        if self.fixed_rig is None:
            raise MetadataError("the model has no fixed rig")
        return np.asarray(self.fixed_rig["K"], np.float64), np.asarray(self.fixed_rig["ego_T_cam"], np.float64)

    # -- storage -----------------------------------------------------------------------------------
    def to_props(self) -> dict[str, str]:
        """The ONNX ``metadata_props`` entries: key -> string. Readable fields are written out beside
        the preset so that a model inspector shows them."""
        body = asdict(self)
        body.update(class_names=list(self.class_names), seg_classes=list(self.seg_classes),
                    camera_names=list(self.camera_names), input_hw=list(self.input_hw),
                    normalization={"mean": list(self.preset["input"]["mean"]), "std": list(self.preset["input"]["std"]),
                                   "scale": 255.0, "layout": "RGB uint8 in, (x / scale - mean) / std in the graph"},
                    bev_grid={k: self.preset["grid"][k] for k in ("x_min", "x_max", "y_min", "y_max", "resolution")})
        return {VERSION_KEY: str(self.format_version), METADATA_KEY: json.dumps(body)}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str | Path = "<model>") -> ModelMetadata:
        """Read and check the metadata of a model (``props``: its ``metadata_props`` as a dict)."""
        if VERSION_KEY not in props or METADATA_KEY not in props:
            raise MetadataError(f"{source}: not a bevstack model (no {VERSION_KEY!r} / {METADATA_KEY!r} in its "
                                "metadata); export it with `perception export`")
        try:
            version = int(props[VERSION_KEY])
        except ValueError:
            raise MetadataError(f"{source}: {VERSION_KEY} is {props[VERSION_KEY]!r}, not an integer") from None
        if version != FORMAT_VERSION:
            raise MetadataError(f"{source}: model format version {version}, this runtime reads version "
                                f"{FORMAT_VERSION}; re-export the checkpoint with this version's `perception export`")
        try:
            body = json.loads(props[METADATA_KEY])
        except json.JSONDecodeError as exc:
            raise MetadataError(f"{source}: {METADATA_KEY} is not valid JSON ({exc})") from None
        known = {f for f in cls.__dataclass_fields__}
        missing = [f for f in ("preset", "precision", "checkpoint_sha256", "state_shape", "embedding_dim")
                   if f not in body]
        if missing:
            raise MetadataError(f"{source}: metadata lacks {', '.join(missing)}")
        meta = cls(**{k: v for k, v in body.items() if k in known})
        meta = cls(**{**asdict(meta), "state_shape": tuple(int(v) for v in meta.state_shape)})
        if meta.precision not in PRECISIONS:
            raise MetadataError(f"{source}: precision {meta.precision!r}, expected one of {PRECISIONS}")
        try:
            _ = meta.preset_obj
        except (KeyError, TypeError, ValueError) as exc:
            raise MetadataError(f"{source}: the preset in the metadata is unreadable ({exc})") from None
        return meta
