"""Typed configuration of the model's parts (no torch: presets and checkpoints carry it)."""

from __future__ import annotations

from dataclasses import dataclass

from .depth_bins import DepthBins


@dataclass(frozen=True)
class ModelConfig:
    """Which parts make up the BEV model, and their sizes."""

    backbone: str = "resnet18"  # a key of perception.models.backbone.BACKBONES
    pretrained: str | None = None  # local state dict for the backbone (torchvision or timm layout)
    neck_channels: int = 64  # FPN output channels, the same at every level
    view_transform: str = "transformer"  # transformer | sampling | lift_splat
    bev_channels: int = 64  # channels of the BEV feature map
    z_levels: tuple[float, ...] = (-0.5, 0.5, 1.5, 2.5)  # heights (m) the sampling lift and the pillar mask use
    feature_levels: tuple[int, ...] = ()  # backbone levels (0: stride 8, 1: 16, 2: 32) the FPN takes; () = by view
    query_stride: int = 4  # transformer: BEV cells per query cell along each axis (queries are upsampled)
    attn_layers: int = 2  # transformer: cross-attention layers
    attn_heads: int = 4  # transformer: attention heads
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
        """The backbone levels the neck and view transform use: the transformer's keys are the
        coarse levels (strides 16 and 32); the lifts read stride 8 with the coarser levels merged in."""
        if self.feature_levels:
            return self.feature_levels
        return (1, 2) if self.view_transform == "transformer" else (0, 1, 2)

    def __post_init__(self) -> None:
        if self.view_transform not in ("transformer", "sampling", "lift_splat"):
            raise ValueError(f"unknown view_transform {self.view_transform!r}; "
                             "expected transformer, sampling or lift_splat")
        if self.bev_channels < 1 or self.neck_channels < 1 or self.attn_heads < 1:
            raise ValueError("channel counts and attention heads must be positive")
        if self.neck_channels % self.attn_heads:
            raise ValueError(f"neck_channels {self.neck_channels} must be divisible by attn_heads {self.attn_heads}")
