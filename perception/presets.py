"""Presets: typed configs naming input size, backbone, BEV grid, classes and tasks.

Nothing else in the stack declares sizes or class lists: the dataset, the model, export, the edge
runtime and the data engine all read them from a preset (or from a checkpoint that carries one).
Numpy only; no torch.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
from dataclasses import dataclass, field
from typing import Any, Union, get_args, get_origin, get_type_hints

from .schema import CAMERA_NAMES, DETECTION_CLASSES
from .errors import BevStackError
from .geometry import BEVGrid
from .specs import ModelConfig

SEG_CLASSES: tuple[str, ...] = ("drivable_area", "lane_divider", "vehicle", "pedestrian")
# nuScenes categories that count as "vehicle" and "pedestrian" in BEV segmentation (LSS / Simple-BEV):
# every category under these prefixes (vehicle.emergency.* included).
SEG_VEHICLE_PREFIX = "vehicle."
SEG_PEDESTRIAN_PREFIX = "human.pedestrian."


@dataclass(frozen=True)
class InputConfig:
    """What the model sees: N cameras, each resized (and cropped) to height x width."""

    height: int  # px after preprocessing
    width: int  # px after preprocessing
    cameras: tuple[str, ...] = CAMERA_NAMES  # camera order of the N axis
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)  # RGB mean, applied inside the model graph
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)  # RGB std, applied inside the model graph

    def __post_init__(self) -> None:
        if self.height % 32 or self.width % 8:
            raise ValueError(f"input {self.height}x{self.width}: height must be a multiple of 32 and width of 8")


@dataclass(frozen=True)
class GridConfig:
    """The BEV grid around the ego, and the height range the view transforms lift into."""

    x_min: float  # m, rear edge
    x_max: float  # m, front edge
    y_min: float  # m, right edge
    y_max: float  # m, left edge
    resolution: float  # m per cell
    z_min: float = -2.0  # m, lowest point lifted into BEV (ego frame, ground at 0)
    z_max: float = 4.0  # m, highest point lifted into BEV

    @property
    def bev(self) -> BEVGrid:
        return BEVGrid(self.x_min, self.x_max, self.y_min, self.y_max, self.resolution)


@dataclass(frozen=True)
class TaskConfig:
    """The heads' targets."""

    det_classes: tuple[str, ...] = DETECTION_CLASSES  # detection classes, in head channel order
    seg_classes: tuple[str, ...] = SEG_CLASSES  # BEV segmentation classes, in head channel order
    det_stride: int = 1  # BEV cells per detection heatmap cell
    max_objects: int = 256  # boxes per frame kept as regression targets
    seg_min_visibility: str = "2"  # nuScenes visibility token: objects at least 40 % visible (LSS protocol)
    det_max_distance: float = 60.0  # m, boxes farther from the ego than this are not targets


@dataclass(frozen=True)
class Preset:
    """One named configuration of the whole stack's shapes."""

    name: str
    input: InputConfig
    grid: GridConfig
    tasks: TaskConfig = field(default_factory=TaskConfig)
    model: ModelConfig = field(default_factory=ModelConfig)

    @property
    def bev(self) -> BEVGrid:
        return self.grid.bev

    @property
    def det_grid(self) -> BEVGrid:
        """The detection heatmap's grid (the BEV grid coarsened by ``tasks.det_stride``)."""
        g = self.grid
        return BEVGrid(g.x_min, g.x_max, g.y_min, g.y_max, g.resolution * self.tasks.det_stride)

    @property
    def trunk_grid(self) -> GridConfig:
        """The grid the view transform, the video module and the BEV encoder run on: the BEV grid
        coarsened by ``model.bev_stride``."""
        return dataclasses.replace(self.grid, resolution=self.grid.resolution * self.model.bev_stride)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """(C, X, Y) of the video state (``prev_state`` / ``state``)."""
        return (self.model.bev_channels, *self.trunk_grid.bev.shape)

    def __post_init__(self) -> None:
        X, Y = self.bev.shape
        s, d = self.model.bev_stride, self.tasks.det_stride
        if X % s or Y % s or X % d or Y % d:
            raise ValueError(f"preset {self.name}: BEV grid {X}x{Y} must be divisible by model.bev_stride {s} "
                             f"and tasks.det_stride {d}")
        if max(s, d) % min(s, d):
            raise ValueError(f"preset {self.name}: model.bev_stride {s} and tasks.det_stride {d} must divide one another")


def with_backbone_normalization(preset: Preset) -> Preset:
    """``preset`` with the pixel normalization its backbone's pretrained weights expect (the model
    normalizes inside its graph; the ONNX metadata records it)."""
    mean, std = preset.model.normalization
    return dataclasses.replace(preset, input=dataclasses.replace(preset.input, mean=mean, std=std))


PRESETS: dict[str, Preset] = {p.name: with_backbone_normalization(p) for p in (
    # For tests and CPU experiments: small images, a +-25.6 m grid at 0.8 m (64 x 64) for segmentation
    # and detection, the BEV trunk at 1.6 m (32 x 32); ImageNet EfficientNet-Lite0.
    Preset("tiny", InputConfig(96, 176), GridConfig(-25.6, 25.6, -25.6, 25.6, 0.8),
           model=ModelConfig("efficientnet_lite0", "imagenet", neck_channels=64, bev_channels=64, bev_stride=2)),
    # For edge devices: 224 x 400 images, a +-25 m grid at 0.5 m (100 x 100) for segmentation; the
    # BEV trunk and detection at 1 m (50 x 50); ImageNet EfficientNet-Lite0 to stride 16 (strides 8
    # and 16 feed the view transform); the transformer samples one camera per pillar point (the
    # first that sees it): 1.17x the INT8 frame rate of two, for 0.9 points of vehicle IoU and 0.002
    # mAP in one retrained run each (docs/results.md).
    Preset("edge", InputConfig(224, 400), GridConfig(-25.0, 25.0, -25.0, 25.0, 0.5), TaskConfig(det_stride=2),
           model=ModelConfig("efficientnet_lite0", "imagenet", neck_channels=64, bev_channels=64, bev_stride=2,
                             feature_levels=(0, 1), attn_cameras=1)),
    # The nuScenes BEV standard: 448 x 800 images, +-50 m at 0.5 m (200 x 200), detection at 1 m.
    # For GPUs; set model.pretrained to a local torchvision/timm ResNet-50 file.
    Preset("base", InputConfig(448, 800), GridConfig(-50.0, 50.0, -50.0, 50.0, 0.5),
           TaskConfig(det_stride=2, max_objects=500),
           ModelConfig("resnet50", None, neck_channels=128, bev_channels=128, bev_stride=2, attn_heads=8)),
)}


def get_preset(name: str) -> Preset:
    """The preset called ``name``; unknown names are an error that lists the known ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}") from None


def preset_to_dict(preset: Preset) -> dict[str, Any]:
    """A preset as plain JSON-able data (tuples become lists): what checkpoints and ONNX metadata carry."""
    return json.loads(json.dumps(dataclasses.asdict(preset)))


class PresetError(BevStackError):
    """A preset (as a plain dict, from a checkpoint or model metadata) that cannot be read; the message
    names the field as ``preset.SECTION.FIELD``."""


# The sections of a preset dict and the dataclass each is read into.
PRESET_SECTIONS: dict[str, type] = {"input": InputConfig, "grid": GridConfig, "tasks": TaskConfig, "model": ModelConfig}


def preset_from_dict(data: Any) -> Preset:
    """The inverse of :func:`preset_to_dict`: every field of the type its dataclass declares, then the
    dataclasses' own checks; :class:`PresetError` otherwise."""
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        raise PresetError(f"preset must be an object with a name and the sections {', '.join(PRESET_SECTIONS)}")
    sections = {}
    for section, config in PRESET_SECTIONS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            raise PresetError(f"preset.{section} is {_short(values)}, expected an object")
        hints = get_type_hints(config)
        names = {f.name for f in dataclasses.fields(config)}
        unknown = sorted(set(values) - names, key=str)
        if unknown:
            raise PresetError(f"preset.{section} has unknown field(s) {unknown}")
        for name, value in values.items():
            if not is_json_of_type(value, hints[name]):
                raise PresetError(f"preset.{section}.{name} is {_short(value)}, expected {hints[name]}")
        sections[section] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    try:
        return Preset(name=data["name"], input=InputConfig(**sections["input"]), grid=GridConfig(**sections["grid"]),
                      tasks=TaskConfig(**sections["tasks"]), model=ModelConfig(**sections["model"]))
    except (TypeError, ValueError, ArithmeticError) as exc:  # a missing field, the dataclasses' own checks
        raise PresetError(f"preset {data['name']!r}: {exc}") from None


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def is_json_of_type(value: Any, tp: Any) -> bool:
    """Whether JSON ``value`` is of field type ``tp`` (int, finite float, bool, str, None, unions and
    tuples of those; a tuple is a JSON list)."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return any(is_json_of_type(value, arg) for arg in get_args(tp))
    if origin is tuple:
        args = get_args(tp)
        if not isinstance(value, (list, tuple)):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(is_json_of_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(is_json_of_type(v, a) for v, a in zip(value, args))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        try:
            return math.isfinite(value)
        except OverflowError:  # an int beyond the float range
            return False
    if tp is str:
        return isinstance(value, str)
    return False
