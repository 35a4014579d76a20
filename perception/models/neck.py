"""The neck: a feature pyramid (torchvision.ops.FeaturePyramidNetwork) over the backbone's levels."""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


class Neck(nn.Module):
    """Backbone levels [C_l x h_l x w_l] -> the chosen ``levels`` as [out_channels x h_l x w_l], same strides."""

    def __init__(self, in_channels: list[int], strides: list[int], out_channels: int, levels: tuple[int, ...]):
        super().__init__()
        if not levels or any(not 0 <= lv < len(in_channels) for lv in levels):
            raise ValueError(f"neck levels {levels} must index the backbone's {len(in_channels)} levels")
        self.levels = tuple(sorted(levels))
        self.fpn = FeaturePyramidNetwork([in_channels[lv] for lv in self.levels], out_channels)
        self.channels = [out_channels] * len(self.levels)
        self.strides = [strides[lv] for lv in self.levels]

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = self.fpn(OrderedDict((str(i), feats[lv]) for i, lv in enumerate(self.levels)))
        return list(out.values())


def merge_to_finest(feats: list[torch.Tensor]) -> torch.Tensor:
    """Sum of all levels [B, N, C, h_l, w_l], upsampled bilinearly to the finest: [B, N, C, h_0, w_0]."""
    out = feats[0]
    B, N, C, h, w = out.shape
    for f in feats[1:]:
        up = F.interpolate(f.reshape(B * N, C, *f.shape[-2:]), size=(h, w), mode="bilinear", align_corners=False)
        out = out + up.reshape(B, N, C, h, w)
    return out
