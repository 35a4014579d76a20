"""Torch-free specs: the typed configs of the model, augmentation, data and losses, the depth bins
shared by the lift-splat and its loss, the names of the backbones, and the channel order of the box
regression. ``perception.config`` parses an experiment
YAML from these alone, so reading or checking a config never imports torch.

The modules that act on a spec import it from here: ``presets`` (ModelConfig), ``augment`` (AugmentConfig), ``data.dataset``
(DatasetConfig), ``training.criterion`` (LossConfig), ``models.backbone`` (BACKBONE_NAMES, the keys of
its registry), ``boxes`` (REGRESSION_CHANNELS).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

__all__ = ["AugmentConfig", "BACKBONE_NAMES", "DatasetConfig", "DepthBins", "IMAGENET_NORMALIZATION",
           "LITE0_NORMALIZATION", "MODEL_INPUT_NAMES", "MODEL_OUTPUT_NAMES", "LossConfig", "ModelConfig", "NUM_REGRESSION", "REGRESSION_CHANNELS", "TASKS",
           "VIEW_TRANSFORM_NAMES"]

# The model's inputs and outputs: the arguments of BEVModel.forward and the keys of what it returns,
# which are also the names of the exported ONNX graph's inputs and outputs.
MODEL_INPUT_NAMES: tuple[str, ...] = ("images", "K", "ego_T_cam", "cam_valid", "prev_state", "prev_T_curr", "dt")
MODEL_OUTPUT_NAMES: tuple[str, ...] = ("heatmap", "regression", "seg", "state", "embedding")

# The backbones `models.backbone.build_backbone` builds (a test checks its registry has exactly these).
BACKBONE_NAMES: tuple[str, ...] = ("efficientnet_lite0", "resnet18", "resnet34", "resnet50", "regnety_400mf",
                                   "regnety_800mf")

# Channel order of the regression head, targets and losses (the model head and losses read this).
REGRESSION_CHANNELS: tuple[str, ...] = (
    "offset_row",  # cells, in [0, 1]: continuous row of the centre minus the row index of its cell
    "offset_col",  # cells, in [0, 1]: continuous column of the centre minus the column index
    "z",  # m, ego-frame height of the box centre
    "log_w",  # log of the width (m)
    "log_l",  # log of the length (m)
    "log_h",  # log of the height (m)
    "sin_yaw",  # sin(yaw)
    "cos_yaw",  # cos(yaw)
    "vx",  # m/s, ego frame (0 in targets where velocity_valid is False)
    "vy",  # m/s
)
NUM_REGRESSION = len(REGRESSION_CHANNELS)


@dataclass(frozen=True)
class AugmentConfig:
    """Every probability and range of the augmentation; ``enabled=False`` turns all of it off."""

    enabled: bool = True  # master switch: False makes every function an identity (validation, export)
    # Photometric, per camera (albumentations; pixels do not move).
    low_light_p: float = 0.0  # MultiplicativeNoise, one factor per image: a darker exposure (night, tunnels)
    low_light_range: tuple[float, float] = (0.25, 0.6)  # pixel multiplier
    rain_p: float = 0.0  # RandomRain: near-vertical streaks (slant up to 2 px), a 3 px blur, 0.8 of the light
    rain_drop_length: float = 0.03  # streak length, fraction of the image height
    brightness_contrast_p: float = 0.5  # RandomBrightnessContrast
    brightness_limit: float = 0.2  # +- fraction of the max value
    contrast_limit: float = 0.2  # +- contrast factor around 1
    hue_saturation_p: float = 0.3  # HueSaturationValue
    hue_shift_limit: float = 8.0  # +- hue shift
    sat_shift_limit: float = 20.0  # +- saturation shift
    val_shift_limit: float = 10.0  # +- value shift
    gamma_p: float = 0.2  # RandomGamma
    gamma_limit: tuple[float, float] = (80.0, 120.0)  # gamma x 100
    noise_p: float = 0.2  # GaussNoise
    noise_std_range: tuple[float, float] = (0.01, 0.04)  # noise std as a fraction of 255
    blur_p: float = 0.1  # GaussianBlur (a symmetric kernel: content does not move)
    blur_sigma_range: tuple[float, float] = (0.3, 1.2)  # px
    jpeg_p: float = 0.2  # ImageCompression (JPEG artefacts)
    jpeg_quality_range: tuple[int, int] = (40, 95)
    # Geometric, per camera (albumentations; K follows).
    scale_crop_p: float = 0.5  # one Affine warp: zoom about the centre, then shift the (H, W) crop window
    scale_range: tuple[float, float] = (0.9, 1.1)  # zoom factor; (1, 1) for crop shifts only
    crop_shift: tuple[float, float] = (0.05, 0.05)  # max |shift| of the window, fraction of (W, H); whole px
    flip_p: float = 0.5  # HorizontalFlip (K gets a negative fx)
    # BEV, per sample (moves the world: ego_T_cam, boxes, velocities, points).
    bev_rotate_p: float = 1.0  # rotation about ego z
    bev_rotate_deg: float = 22.5  # +- degrees
    bev_scale_p: float = 1.0  # uniform scale of the world about the ego origin
    bev_scale_range: tuple[float, float] = (0.95, 1.05)
    bev_flip_p: float = 0.5  # y -> -y (a reflection)
    # Camera dropout, per sample.
    dropout_p: float = 0.1  # probability that some cameras are dropped from a sample
    dropout_cameras: int = 1  # how many (never the last valid one)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.endswith("_p") and not 0.0 <= value <= 1.0:
                raise ValueError(f"AugmentConfig.{f.name} is a probability, got {value}")
            if f.name.endswith(("_range", "_limit")) and isinstance(value, tuple) and value[0] > value[1]:
                raise ValueError(f"AugmentConfig.{f.name} must be (low, high), got {value}")
        if self.scale_range[0] <= 0 or self.bev_scale_range[0] <= 0:
            raise ValueError("AugmentConfig scale ranges must be > 0")
        if not 0.0 < self.rain_drop_length < 0.5:
            raise ValueError(f"AugmentConfig.rain_drop_length is a fraction of the image height in (0, 0.5), "
                             f"got {self.rain_drop_length}")
        if self.dropout_cameras < 1:
            raise ValueError(f"AugmentConfig.dropout_cameras must be >= 1, got {self.dropout_cameras}")

    @classmethod
    def identity(cls) -> AugmentConfig:
        """Enabled, but every probability 0: switch single augmentations on with ``dataclasses.replace``."""
        return replace(cls(), **{f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")})




TASKS: tuple[str, ...] = ("heatmap", "regression", "seg", "depth")

# CenterPoint's code weights: 1 for every box channel, 0.2 for velocity (channels of REGRESSION_CHANNELS).
_CENTERPOINT_CHANNEL_WEIGHTS: tuple[float, ...] = (1.0,) * 8 + (0.2, 0.2)


@dataclass(frozen=True)
class LossConfig:
    """Loss terms and their weights. A task weight of 0 switches the task off (it is not computed)."""

    weighting: Literal["fixed", "uncertainty"] = "fixed"  # fixed weights, or learned uncertainty weighting
    heatmap_weight: float = 1.0  # focal heatmap loss
    regression_weight: float = 0.25  # box regression L1 (CenterPoint's 0.25)
    seg_weight: float = 1.0  # segmentation (BCE + dice)
    depth_weight: float = 1.0  # depth cross-entropy, used only when the model returns depth_logits
    focal_alpha: float = 2.0  # focal exponent on the prediction error
    focal_beta: float = 4.0  # penalty reduction of negatives near centres: (1 - target)^beta
    regression_channel_weights: tuple[float, ...] = _CENTERPOINT_CHANNEL_WEIGHTS  # one per REGRESSION_CHANNELS
    seg_bce_weight: float = 1.0  # weight of BCE inside the seg task
    seg_dice_weight: float = 1.0  # weight of dice inside the seg task
    seg_pos_weight: float | tuple[float, ...] | None = None  # BCE positive weight, one value or one per seg class
    dice_smooth: float = 1.0  # additive smoothing of the dice ratio (cells)
    depth_stride: int | None = None  # image px per depth_logits px; None: inferred from the shapes
    uncertainty_init: float = 0.0  # initial log-variance s_i of every task ("uncertainty" weighting)
    sync_num_objects: bool = True  # under torch.distributed, normalise by the mean object count over ranks (DETR)

    def __post_init__(self) -> None:
        if self.weighting not in ("fixed", "uncertainty"):
            raise ValueError(f"unknown weighting {self.weighting!r}; expected 'fixed' or 'uncertainty'")
        if len(self.regression_channel_weights) != NUM_REGRESSION:
            raise ValueError(f"regression_channel_weights needs {NUM_REGRESSION} values, "
                             f"got {len(self.regression_channel_weights)}")
        weights = (*self.task_weights().values(), self.seg_bce_weight, self.seg_dice_weight,
                   *self.regression_channel_weights)
        if any(w < 0 for w in weights):
            raise ValueError("loss weights must be >= 0")
        if self.depth_stride is not None and self.depth_stride < 1:
            raise ValueError(f"depth_stride must be >= 1, got {self.depth_stride}")

    def task_weights(self) -> dict[str, float]:
        """Task name (:data:`TASKS`) -> fixed weight."""
        return {"heatmap": self.heatmap_weight, "regression": self.regression_weight,
                "seg": self.seg_weight, "depth": self.depth_weight}




@dataclass(frozen=True)
class DatasetConfig:
    """How frames are read and turned into training examples."""

    split: str | None = None  # a split of splits.json (e.g. synth_train); None: every scene
    augment: AugmentConfig = AugmentConfig(enabled=False)  # geometry-true augmentation (training)
    with_depth: bool = False  # also project the lidar into each camera as sparse depth targets
    on_bad_image: str = "raise"  # "raise": error naming the file; "skip": warn and mark the camera invalid
    max_gt_boxes: int = 256  # ground-truth boxes kept per frame for evaluation (padded)


@dataclass(frozen=True)
class DepthBins:
    """``count`` linearly spaced depth bins whose centres run from ``d_min`` to ``d_max`` (inclusive).

    Bin k has centre ``d_min + k * step`` (``step = (d_max - d_min) / (count - 1)``) and covers depths
    ``[centre - step / 2, centre + step / 2)``; together the bins cover ``[d_min - step/2, d_max + step/2)``.
    ``d_min``, ``d_max`` and ``count`` mean what ``ModelConfig.depth_min``, ``depth_max`` and
    ``depth_bins`` mean: ``DepthBins(cfg.depth_min, cfg.depth_max, cfg.depth_bins)``.
    """

    d_min: float  # m, centre of the nearest bin (> 0)
    d_max: float  # m, centre of the farthest bin (> d_min)
    count: int  # number of bins D (>= 2)

    def __post_init__(self) -> None:
        if self.count < 2:
            raise ValueError(f"DepthBins needs count >= 2, got {self.count}")
        if not 0.0 < self.d_min < self.d_max:
            raise ValueError(f"DepthBins needs 0 < d_min < d_max, got d_min={self.d_min}, d_max={self.d_max}")

    @property
    def step(self) -> float:
        """m between neighbouring bin centres (the width of every bin)."""
        return (self.d_max - self.d_min) / (self.count - 1)

    @property
    def lower(self) -> float:
        """m, the nearest depth any bin covers (inclusive)."""
        return self.d_min - 0.5 * self.step

    @property
    def upper(self) -> float:
        """m, the farthest depth any bin covers (exclusive)."""
        return self.d_max + 0.5 * self.step

    @property
    def centers(self) -> tuple[float, ...]:
        """The D bin centres in metres, nearest first."""
        return tuple(self.d_min + k * self.step for k in range(self.count))


VIEW_TRANSFORM_NAMES: tuple[str, ...] = ("transformer", "global_attention", "sampling", "lift_splat")
# Pixel normalization (RGB mean, std in [0, 1]) each backbone's ImageNet weights were trained with.
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE0_NORMALIZATION = ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)  # (x - 127) / 128, TF's EfficientNet-Lite


@dataclass(frozen=True)
class ModelConfig:
    """Which parts make up the BEV model, and their sizes."""

    backbone: str = "efficientnet_lite0"  # one of BACKBONE_NAMES
    pretrained: str | None = "imagenet"  # "imagenet" (offline weights: efficientnet_lite0), a local file, or None
    frozen_stages: int = 1  # with pretrained weights: the stem and this many stages stay frozen (stride <= 4)
    neck_channels: int = 64  # FPN output channels, the same at every level
    view_transform: str = "transformer"  # transformer | global_attention | sampling | lift_splat
    bev_channels: int = 64  # channels of the BEV feature map
    bev_stride: int = 1  # the view transform, video module and BEV encoder run on the grid coarsened by this;
    #                      the heads upsample to the full grid (segmentation) or to the detection grid
    z_levels: tuple[float, ...] = (-0.5, 0.5, 1.5, 2.5)  # pillar heights (m) the transformer and the lifts sample
    feature_levels: tuple[int, ...] = ()  # backbone levels (0: stride 8, 1: 16, 2: 32) the FPN takes; () = by view
    attn_layers: int = 2  # transformer, global_attention: cross-attention layers
    attn_heads: int = 4  # transformer, global_attention: attention heads
    attn_points: int = 1  # transformer: sampling points per head, camera and height
    attn_cameras: int = 2  # transformer: cameras sampled per pillar point (the first that see it)
    query_stride: int = 2  # global_attention: trunk cells per query cell along each axis (queries are upsampled)
    depth_min: float = 1.0  # lift_splat: nearest depth bin centre (m)
    depth_max: float = 50.0  # lift_splat: farthest depth bin centre (m)
    depth_bins: int = 40  # lift_splat: categorical depth bins
    temporal: bool = True  # carry a BEV state across frames (ConvGRU over the warped previous state)
    encoder_blocks: int = 2  # residual blocks of the BEV encoder
    embedding_dim: int = 128  # size of the pooled per-frame embedding for the data engine

    @property
    def depth(self) -> DepthBins:
        """The lift-splat's depth bins, shared with the depth loss."""
        return DepthBins(self.depth_min, self.depth_max, self.depth_bins)

    @property
    def levels(self) -> tuple[int, ...]:
        """The backbone levels the neck and view transform use: global attention's keys are the coarse
        levels (strides 16 and 32); the transformer and the lifts read stride 8 with the coarser
        levels merged in."""
        if self.feature_levels:
            return self.feature_levels
        return (1, 2) if self.view_transform == "global_attention" else (0, 1, 2)

    @property
    def normalization(self) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
        """(mean, std) of the pixels the backbone's pretrained weights expect."""
        return LITE0_NORMALIZATION if self.backbone.startswith("efficientnet_lite") else IMAGENET_NORMALIZATION

    def __post_init__(self) -> None:
        if self.view_transform not in VIEW_TRANSFORM_NAMES:
            raise ValueError(f"unknown view_transform {self.view_transform!r}; expected one of "
                             f"{', '.join(VIEW_TRANSFORM_NAMES)}")
        if self.bev_channels < 1 or self.neck_channels < 1 or self.attn_heads < 1:
            raise ValueError("channel counts and attention heads must be positive")
        if self.neck_channels % self.attn_heads:
            raise ValueError(f"neck_channels {self.neck_channels} must be divisible by attn_heads {self.attn_heads}")
        if self.frozen_stages < 0:
            raise ValueError(f"frozen_stages must be >= 0, got {self.frozen_stages}")
        if self.bev_stride < 1 or self.attn_points < 1 or self.attn_cameras < 1 or self.attn_layers < 1 or self.query_stride < 1:
            raise ValueError("bev_stride, attn_points, attn_cameras, attn_layers and query_stride must be >= 1")
        if any(not 0 <= lv <= 2 for lv in self.feature_levels) or len(set(self.feature_levels)) != len(self.feature_levels):
            raise ValueError(f"feature_levels {self.feature_levels}: distinct levels among 0, 1, 2")
