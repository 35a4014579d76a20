"""Typed configuration of the model's parts (no torch: presets and checkpoints carry it)."""

from __future__ import annotations

from dataclasses import dataclass

from .depth_bins import DepthBins

VIEW_TRANSFORM_NAMES: tuple[str, ...] = ("transformer", "global_attention", "sampling", "lift_splat")
# Pixel normalization (RGB mean, std in [0, 1]) each backbone's ImageNet weights were trained with.
IMAGENET_NORMALIZATION = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
LITE0_NORMALIZATION = ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3)  # (x - 127) / 128, TF's EfficientNet-Lite


@dataclass(frozen=True)
class ModelConfig:
    """Which parts make up the BEV model, and their sizes."""

    backbone: str = "efficientnet_lite0"  # a key of perception.models.backbone.BACKBONES
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
