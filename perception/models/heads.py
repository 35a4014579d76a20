"""The multi-task heads: BEV segmentation, CenterPoint detection (decoded by perception.boxes), and a
pooled per-frame embedding for the data engine."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..boxes import NUM_REGRESSION
from ..presets import Preset

HEATMAP_PRIOR = 0.1  # initial heatmap probability (CenterNet's bias init: -log((1 - p) / p))


def _conv_block(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout),
                         nn.ReLU(inplace=True))


class Heads(nn.Module):
    """bev [B, C, Xt, Yt] (the trunk grid, ``model.bev_stride`` times coarser than the BEV grid) ->
    {"seg": [B, S, X, Y] logits on the BEV grid, "heatmap": [B, K, Xd, Yd] logits and "regression":
    [B, 10, Xd, Yd] (boxes.REGRESSION_CHANNELS) on the detection grid, "embedding": [B, E] unit vectors}.

    Segmentation on a coarser trunk is upsampled (bilinear) and refined by a 3x3 conv at full
    resolution; detection strides down or upsamples from the trunk to its grid."""

    def __init__(self, preset: Preset, channels: int):
        super().__init__()
        tasks = preset.tasks
        s, d = preset.model.bev_stride, tasks.det_stride
        S = len(tasks.seg_classes)
        if s == 1:
            self.seg = nn.Sequential(_conv_block(channels, channels), nn.Conv2d(channels, S, 1))
        else:
            half = max(channels // 2, 8)
            self.seg = nn.Sequential(_conv_block(channels, channels), nn.Upsample(scale_factor=s, mode="bilinear"),
                                     _conv_block(channels, half), nn.Conv2d(half, S, 1))
        det_stride = max(d // s, 1)  # trunk cells per detection cell
        det_up = max(s // d, 1)  # detection cells per trunk cell
        self.det_trunk = nn.Sequential(nn.Upsample(scale_factor=det_up, mode="bilinear") if det_up > 1 else nn.Identity(),
                                       _conv_block(channels, channels, stride=det_stride))
        self.heatmap = nn.Sequential(_conv_block(channels, channels), nn.Conv2d(channels, len(tasks.det_classes), 1))
        self.regression = nn.Sequential(_conv_block(channels, channels), nn.Conv2d(channels, NUM_REGRESSION, 1))
        nn.init.constant_(self.heatmap[-1].bias, -math.log((1 - HEATMAP_PRIOR) / HEATMAP_PRIOR))
        # The embedding is the pooled BEV features themselves (the mean and the max of each channel over
        # the grid: what the trained trunk sees anywhere in the frame) when the preset's embedding_dim is
        # 2 x channels, else a fixed random projection of them (distances kept, Johnson-Lindenstrauss).
        # No loss trains it. The buffer is saved with the weights, so a checkpoint keeps the embedding
        # its exports were mined with.
        E = preset.model.embedding_dim
        if E == 2 * channels:
            proj = torch.eye(E)
        else:
            proj = torch.randn(2 * channels, E, generator=torch.Generator().manual_seed(0)) / math.sqrt(E)
        self.register_buffer("embed_proj", proj)

    def forward(self, bev: torch.Tensor) -> dict[str, torch.Tensor]:
        det = self.det_trunk(bev)
        pooled = torch.cat([bev.mean(dim=(2, 3)), bev.amax(dim=(2, 3))], dim=1)  # [B, 2C]
        return {
            "seg": self.seg(bev),
            "heatmap": self.heatmap(det),
            "regression": self.regression(det),
            "embedding": F.normalize(pooled @ self.embed_proj, dim=1),
        }
