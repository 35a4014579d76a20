"""The BEV encoder: residual 3x3 conv blocks at the BEV resolution (a bounded receptive field, so a
dead camera disturbs only cells near its field of view)."""

from __future__ import annotations

import torch
from torch import nn


class ResidualBlock(nn.Module):
    """[B, C, X, Y] -> [B, C, X, Y]: conv-BN-ReLU-conv-BN plus the input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels), nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False), nn.BatchNorm2d(channels),
        )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(x + self.body(x))


class BEVEncoder(nn.Module):
    """``blocks`` residual blocks: [B, C, X, Y] -> [B, C, X, Y]."""

    def __init__(self, channels: int, blocks: int):
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualBlock(channels) for _ in range(blocks)])
        self.channels = channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)
