"""`sampling`: the parameter-free bilinear lift of Simple-BEV.

A 3D grid of points (every cell of the BEV trunk's grid at each of ``z_levels`` heights) is projected into every camera;
each point takes the bilinear sample of the feature map where it lands (4-D grid_sample), and the
samples are averaged over the cameras that see the point (in front, inside the image, camera
valid). The Z levels are stacked as channels and compressed to the BEV width by a small conv.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import Preset
from .neck import merge_to_finest
from .camera_geometry import bev_points, sampling_grid


def compress_heights(cin: int, cout: int) -> nn.Sequential:
    """[B, C*Z, X, Y] (heights stacked as channels) -> [B, cout, X, Y]: 1x1 and 3x3 conv-BN-ReLU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
    )


class SamplingLift(nn.Module):
    """feats per level [B, N, C, h, w] + geometry -> BEV features [B, bev_channels, X, Y]."""

    def __init__(self, preset: Preset, channels: list[int], strides: list[int]):
        super().__init__()
        cfg, grid = preset.model, preset.trunk_grid
        self.stride = strides[0]  # the finest level, with the coarser ones merged in
        self.X, self.Y = grid.bev.shape
        self.Z = len(cfg.z_levels)
        pts = bev_points(grid.x_min, grid.x_max, grid.y_min, grid.y_max, self.X, self.Y, list(cfg.z_levels))
        self.register_buffer("points", pts.reshape(-1, 3), persistent=False)  # [Z*X*Y, 3] ego frame
        self.compress = compress_heights(channels[0] * self.Z, cfg.bev_channels)

    def forward(self, feats: list[torch.Tensor], K: torch.Tensor, ego_T_cam: torch.Tensor,
                cam_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        f = merge_to_finest(feats)
        B, N, C, h, w = f.shape
        P = self.points.shape[0]
        grid, valid = sampling_grid(self.points[None].expand(B, P, 3), K, ego_T_cam, cam_valid, h, w, self.stride)
        # Points a camera does not see are sent far outside its map, where zero padding makes their
        # bilinear sample exactly 0: the same as masking the samples, without a pass over them.
        grid = torch.where(valid[..., None], grid, torch.full_like(grid, -4.0)).reshape(B * N, 1, P, 2)
        sampled = F.grid_sample(f.reshape(B * N, C, h, w), grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # [B*N, C, 1, P], 0 where not valid
        weight = valid.to(f.dtype)  # [B, N, P]
        mean = sampled.reshape(B, N, C, P).sum(dim=1) / weight.sum(dim=1).clamp_min(1.0)[:, None, :]  # [B, C, P]
        bev = mean.reshape(B, C, self.Z, self.X, self.Y).reshape(B, C * self.Z, self.X, self.Y)
        return {"bev": self.compress(bev)}
