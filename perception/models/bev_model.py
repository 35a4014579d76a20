"""The BEV model, composed from parts passed in (as DETR and torchvision's GeneralizedRCNN are).

``forward`` takes the ONNX contract's inputs and returns a flat dict of tensors, the same in train
and eval. Camera geometry is an input, never baked in. Names are looked up only in
:func:`build_model`, through one small registry per family.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..presets import Preset
from .backbone import Backbone, build_backbone
from .bev_encoder import BEVEncoder
from .heads import Heads
from .neck import Neck
from .temporal import VideoModule
from .view_lift_splat import LiftSplat
from .view_sampling import SamplingLift
from .view_global_attention import GlobalAttentionFusion
from .view_transformer import TransformerFusion

VIEW_TRANSFORMS: dict[str, Callable[[Preset, list[int], list[int]], nn.Module]] = {
    "transformer": TransformerFusion,
    "global_attention": GlobalAttentionFusion,
    "sampling": SamplingLift,
    "lift_splat": LiftSplat,
}


class BEVModel(nn.Module):
    """Multi-camera frames -> BEV detection, segmentation, video state and a frame embedding."""

    def __init__(self, backbone: Backbone, neck: Neck, view_transform: nn.Module, temporal: VideoModule | None,
                 bev_encoder: BEVEncoder, heads: Heads, mean: tuple[float, float, float],
                 std: tuple[float, float, float]):
        super().__init__()
        self.backbone = backbone
        self.neck = neck
        self.view_transform = view_transform
        self.temporal = temporal
        self.bev_encoder = bev_encoder
        self.heads = heads
        self.register_buffer("pixel_mean", torch.tensor(mean).reshape(1, 3, 1, 1) * 255.0, persistent=False)
        self.register_buffer("pixel_std", torch.tensor(std).reshape(1, 3, 1, 1) * 255.0, persistent=False)

    def forward(self, images: torch.Tensor, K: torch.Tensor, ego_T_cam: torch.Tensor, cam_valid: torch.Tensor,
                prev_state: torch.Tensor, prev_T_curr: torch.Tensor, dt: torch.Tensor) -> dict[str, torch.Tensor]:
        """One frame of B samples of N cameras.

        images uint8 [B, N, 3, H, W] RGB (normalized here, inside the graph); K float [B, N, 3, 3]
        (intrinsics of these H x W images); ego_T_cam float [B, N, 4, 4]; cam_valid bool [B, N];
        prev_state float [B, C, Xt, Yt] (zeros at a clip's first frame); prev_T_curr float [B, 4, 4]
        (current ego frame -> previous); dt float [B] (s since the previous frame).

        Returns heatmap [B, K, Xd, Yd] and regression [B, 10, Xd, Yd] (detection, before sigmoid;
        decoded by perception.boxes), seg [B, S, X, Y] logits, state [B, C, Xt, Yt] (the next frame's
        prev_state, on the trunk grid: ``Preset.state_shape``), embedding [B, E]; lift_splat adds
        depth_logits [B, N, D, h, w].
        """
        B, N, _, H, W = images.shape
        x = (images.reshape(B * N, 3, H, W).float() - self.pixel_mean) / self.pixel_std  # [B*N, 3, H, W]
        feats = self.neck(self.backbone(x))  # per level [B*N, C, h, w]
        feats = [f.reshape(B, N, *f.shape[1:]) for f in feats]  # per level [B, N, C, h, w]
        lifted = self.view_transform(feats, K.float(), ego_T_cam.float(), cam_valid.bool())
        bev = lifted["bev"]  # [B, C, Xt, Yt], the trunk grid
        if self.temporal is not None:
            bev, state = self.temporal(bev, prev_state.to(bev.dtype), prev_T_curr.float(), dt.float())
        else:
            state = bev
        out = self.heads(self.bev_encoder(bev))
        out["state"] = state
        if "depth_logits" in lifted:
            out["depth_logits"] = lifted["depth_logits"]
        return out

    def initial_state(self, batch: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """The zero video state [B, C, Xt, Yt] of a clip's first frame."""
        return torch.zeros(batch, *self.state_shape, device=device)

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """(C, Xt, Yt) of the video state: the BEV trunk's channels and grid."""
        vt = self.view_transform
        return self.bev_encoder.channels, int(vt.X), int(vt.Y)


def build_model(preset: Preset) -> BEVModel:
    """The model a preset names (its ``model`` config): backbone, FPN, view transform, video module,
    BEV encoder and heads."""
    cfg = preset.model
    backbone = build_backbone(cfg.backbone, cfg.pretrained, levels=max(cfg.levels) + 1,
                              frozen_stages=cfg.frozen_stages)
    neck = Neck(backbone.channels, backbone.strides, cfg.neck_channels, cfg.levels)
    try:
        view_transform = VIEW_TRANSFORMS[cfg.view_transform](preset, neck.channels, neck.strides)
    except KeyError:
        raise ValueError(f"unknown view transform {cfg.view_transform!r}; known: {', '.join(VIEW_TRANSFORMS)}") from None
    temporal = VideoModule(preset, cfg.bev_channels) if cfg.temporal else None
    return BEVModel(backbone, neck, view_transform, temporal, BEVEncoder(cfg.bev_channels, cfg.encoder_blocks),
                    Heads(preset, cfg.bev_channels), preset.input.mean, preset.input.std)
