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
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception.boxes import BoxCodec
from perception.geometry import BEVGrid
from perception.metrics.calibration import ScoreCalibration
from perception.metrics.novelty import FrameNovelty
from perception.presets import Preset, PresetError, is_json_of_type, preset_from_dict, preset_to_dict
from perception.errors import BevStackError
from perception.specs import MODEL_INPUT_NAMES, MODEL_OUTPUT_NAMES

__all__ = ["FORMAT_VERSION", "INPUT_NAMES", "METADATA_KEY", "OUTPUT_NAMES", "PRECISIONS", "RIG_INPUTS",
           "MetadataError", "ModelMetadata"]

FORMAT_VERSION = 1
METADATA_KEY = "bevstack.metadata"
VERSION_KEY = "bevstack.format_version"
INPUT_NAMES: tuple[str, ...] = MODEL_INPUT_NAMES
RIG_INPUTS: tuple[str, ...] = ("K", "ego_T_cam")  # folded into constants by --fixed-rig
OUTPUT_NAMES: tuple[str, ...] = MODEL_OUTPUT_NAMES
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
    calibration: dict[str, Any] | None = None  # ScoreCalibration.to_json(), fitted on the val split; None: raw
    novelty: dict[str, Any] | None = None  # FrameNovelty.to_json() of the train split; None: no novelty score
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

    def score_calibration(self) -> ScoreCalibration | None:
        """The detection and segmentation calibration the runtime applies, or None."""
        return None if self.calibration is None else ScoreCalibration.from_json(self.calibration)

    def novelty_index(self) -> FrameNovelty | None:
        """The training set's novelty indices, or None."""
        return None if self.novelty is None else FrameNovelty.from_json(self.novelty, self.embedding_dim)

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
    def from_props(cls, props: Mapping[str, str], source: str | Path = "<model>") -> ModelMetadata:
        """Read and check the metadata of a model (``props``: its ``metadata_props`` as a dict).

        Everything a runtime reads is checked here, so that a model whose metadata was edited, cut or
        written by another tool is a :class:`MetadataError` naming the field, never a crash later on.
        """
        if VERSION_KEY not in props or METADATA_KEY not in props:
            raise MetadataError(f"{source}: not a bevstack model (no {VERSION_KEY!r} / {METADATA_KEY!r} in its "
                                "metadata); export it with `perception export`")
        raw_version, raw_body = props[VERSION_KEY], props[METADATA_KEY]
        if not isinstance(raw_version, str) or not isinstance(raw_body, str):
            raise MetadataError(f"{source}: {VERSION_KEY} and {METADATA_KEY} must be strings (ONNX metadata_props)")
        try:
            version = int(raw_version)
        except ValueError:
            raise MetadataError(f"{source}: {VERSION_KEY} is {raw_version!r}, not an integer") from None
        if version != FORMAT_VERSION:
            raise MetadataError(f"{source}: model format version {version}, this runtime reads version "
                                f"{FORMAT_VERSION}; re-export the checkpoint with this version's `perception export`")
        try:
            body = json.loads(raw_body)
        except RecursionError:
            raise MetadataError(f"{source}: {METADATA_KEY} is nested too deeply to read") from None
        except ValueError as exc:  # not JSON, or an integer of more digits than int() converts
            raise MetadataError(f"{source}: {METADATA_KEY} is not valid JSON ({exc})") from None
        if not isinstance(body, dict):
            raise MetadataError(f"{source}: {METADATA_KEY} must be a JSON object, got {type(body).__name__}")
        missing = [f for f in ("preset", "precision", "checkpoint_sha256", "state_shape", "embedding_dim")
                   if f not in body]
        if missing:
            raise MetadataError(f"{source}: metadata lacks {', '.join(missing)}")
        preset = _read_preset(body["preset"], source)

        def bad(name: str, expected: str) -> MetadataError:
            return MetadataError(f"{source}: metadata {name} is {_short(body.get(name))}, expected {expected}")

        if body["precision"] not in PRECISIONS:
            raise bad("precision", f"one of {', '.join(PRECISIONS)}")
        if not isinstance(body["checkpoint_sha256"], str):
            raise bad("checkpoint_sha256", "a hex digest")
        if not is_json_of_type(body["state_shape"], tuple[int, int, int]) or tuple(body["state_shape"]) != preset.state_shape:
            raise bad("state_shape", f"the preset's {list(preset.state_shape)} (C, X, Y)")
        if not is_json_of_type(body["embedding_dim"], int) or body["embedding_dim"] != preset.model.embedding_dim:
            raise bad("embedding_dim", f"the preset's {preset.model.embedding_dim}")
        static_batch = body.get("static_batch")
        if static_batch is not None and not (is_json_of_type(static_batch, int) and static_batch >= 1):
            raise bad("static_batch", "null (any batch) or a batch size >= 1")
        exporter = body.get("exporter", {})
        if not isinstance(exporter, dict):
            raise bad("exporter", "an object")
        if body.get("format_version", version) != version:
            raise bad("format_version", f"{version}, as {VERSION_KEY}")
        calibration, novelty = body.get("calibration"), body.get("novelty")
        try:  # parsed here so that a bad table is an error on load, not on the first frame
            if calibration is not None:
                ScoreCalibration.from_json(calibration)
            if novelty is not None:
                FrameNovelty.from_json(novelty, body["embedding_dim"])
        except ValueError as exc:
            raise MetadataError(f"{source}: metadata {exc}") from None
        return cls(preset=preset_to_dict(preset), precision=body["precision"],
                   checkpoint_sha256=body["checkpoint_sha256"], state_shape=preset.state_shape,
                   embedding_dim=body["embedding_dim"], static_batch=static_batch,
                   fixed_rig=_read_rig(body.get("fixed_rig"), len(preset.input.cameras), source),
                   exporter=exporter, calibration=calibration, novelty=novelty, format_version=version)


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _read_preset(data: Any, source: str | Path) -> Preset:
    """The preset of the metadata, every field of the type its dataclass declares, and valid."""
    try:
        preset = preset_from_dict(data)
        BoxCodec.from_preset(preset)  # the runtime's decoder of this preset's heads
    except (PresetError, ValueError, ArithmeticError) as exc:
        raise MetadataError(f"{source}: the metadata's {exc}" if isinstance(exc, PresetError)
                            else f"{source}: the preset in the metadata is unreadable ({exc})") from None
    return preset


def _read_rig(rig: Any, cameras: int, source: str | Path) -> dict[str, list] | None:
    """The fixed rig as nested lists of finite floats: K [N][3][3] and ego_T_cam [N][4][4]."""
    if rig is None:
        return None
    if not isinstance(rig, dict):
        raise MetadataError(f"{source}: the metadata's fixed_rig is {_short(rig)}, expected null or an object "
                            "with K and ego_T_cam")
    out = {}
    for key, shape in (("K", (cameras, 3, 3)), ("ego_T_cam", (cameras, 4, 4))):
        try:
            arr = np.asarray(rig[key], dtype=np.float64)
        except (KeyError, TypeError, ValueError, OverflowError):
            arr = None
        if arr is None or arr.shape != shape or not np.all(np.isfinite(arr)):
            raise MetadataError(f"{source}: the metadata's fixed_rig.{key} is {_short(rig.get(key))}, expected "
                                f"{' x '.join(map(str, shape))} finite numbers (one matrix per camera)")
        out[key] = arr.tolist()
    return out
