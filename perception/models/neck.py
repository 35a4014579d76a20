"""The neck: a feature pyramid (torchvision.ops.FeaturePyramidNetwork) over the backbone's levels."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.ops import FeaturePyramidNetwork


class Neck(nn.Module):
    """[C_l x h_l x w_l per level] -> [out_channels x h_l x w_l per level], same strides."""

    def __init__(self, in_channels: list[int], strides: list[int], out_channels: int):
        super().__init__()
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels)
        self.channels = [out_channels] * len(in_channels)
        self.strides = list(strides)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        out = self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))
        return list(out.values())
