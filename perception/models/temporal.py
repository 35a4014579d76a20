"""The video module: the previous BEV state warped into the current ego frame and fused by a ConvGRU.

The warp samples the previous state at ``prev_T_curr @ (x, y, 0)`` of every current cell centre (a
4-D grid_sample, zeros outside), so the state follows the ego's motion. The time step ``dt`` enters
the gates as an input channel, so one model runs at 2 Hz keyframes and at the camera rate; at a
clip's first frame the caller passes a zero state and dt = 0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import Preset
from .camera_geometry import bev_points

DT_SCALE = 0.5  # s: dt is fed as dt / DT_SCALE (1 at 2 Hz keyframes)


class VideoModule(nn.Module):
    """bev [B, C, X, Y], prev_state [B, C, X, Y], prev_T_curr [B, 4, 4], dt [B] -> (fused, state), both [B, C, X, Y]."""

    def __init__(self, preset: Preset, channels: int):
        super().__init__()
        g = preset.trunk_grid
        self.X, self.Y = g.bev.shape
        cells = bev_points(g.x_min, g.x_max, g.y_min, g.y_max, self.X, self.Y, [0.0])[0]  # [X, Y, 3]
        self.register_buffer("cells", cells.reshape(-1, 3), persistent=False)
        self.bounds = (g.x_min, g.x_max, g.y_min, g.y_max)
        self.gates = nn.Conv2d(2 * channels + 1, 2 * channels, 3, padding=1)
        self.candidate = nn.Conv2d(2 * channels + 1, channels, 3, padding=1)

    def warp(self, prev_state: torch.Tensor, prev_T_curr: torch.Tensor) -> torch.Tensor:
        """The previous state resampled at the current cells: [B, C, X, Y]."""
        B = prev_state.shape[0]
        pts = torch.einsum("bij,pj->bpi", prev_T_curr[:, :3, :3], self.cells) + prev_T_curr[:, None, :3, 3]
        x_min, x_max, y_min, y_max = self.bounds
        # grid_sample's x indexes the last axis (Y, columns) and its y the rows (X).
        gx = (pts[..., 1] - y_min) / (y_max - y_min) * 2 - 1
        gy = (pts[..., 0] - x_min) / (x_max - x_min) * 2 - 1
        grid = torch.stack([gx, gy], dim=-1).reshape(B, self.X, self.Y, 2)
        return F.grid_sample(prev_state, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    def forward(self, bev: torch.Tensor, prev_state: torch.Tensor, prev_T_curr: torch.Tensor,
                dt: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        B, C, X, Y = bev.shape
        hidden = self.warp(prev_state, prev_T_curr)
        dt_map = (dt / DT_SCALE).to(bev.dtype).reshape(B, 1, 1, 1).expand(B, 1, X, Y)
        z, r = torch.sigmoid(self.gates(torch.cat([bev, hidden, dt_map], dim=1))).chunk(2, dim=1)
        n = torch.tanh(self.candidate(torch.cat([bev, r * hidden, dt_map], dim=1)))
        state = (1 - z) * hidden + z * n
        return bev + state, state
