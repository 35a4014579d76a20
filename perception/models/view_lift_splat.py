"""`lift_splat`: per-pixel categorical depth, lifted and splatted into BEV as in Lift-Splat-Shoot.

Each feature pixel predicts a distribution over ``depth_bins`` depths and a context vector; their
outer product is placed at the 3D points of the pixel's ray at each depth (computed in the graph
from K and ego_T_cam) and sum-pooled into the BEV cell below each point. The pooling is an
``index_add`` over flattened cell indices (ONNX ScatterND with add), so it exports; points outside
the grid or from invalid cameras go to a discarded extra cell.
"""

from __future__ import annotations

import torch
from torch import nn

from ..presets import Preset
from .neck import merge_to_finest
from .camera_geometry import feature_pixels, invert_intrinsics


class LiftSplat(nn.Module):
    """feats per level [B, N, C, h, w] + geometry -> {"bev": [B, bev_channels, X, Y],
    "depth_logits": [B, N, D, h, w]}."""

    def __init__(self, preset: Preset, channels: list[int], strides: list[int]):
        super().__init__()
        cfg, grid = preset.model, preset.trunk_grid
        self.stride = strides[0]  # the finest level, with the coarser ones merged in
        self.X, self.Y = grid.bev.shape
        self.grid = grid
        self.D = cfg.depth_bins
        self.Cb = cfg.bev_channels
        self.register_buffer("depths", torch.tensor(cfg.depth.centers, dtype=torch.float32), persistent=False)
        c = channels[0]
        self.head = nn.Sequential(
            nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(inplace=True),
            nn.Conv2d(c, self.D + self.Cb, 1),
        )
        self.out = nn.Sequential(
            nn.Conv2d(self.Cb, self.Cb, 3, padding=1, bias=False), nn.BatchNorm2d(self.Cb), nn.ReLU(inplace=True),
        )

    def forward(self, feats: list[torch.Tensor], K: torch.Tensor, ego_T_cam: torch.Tensor,
                cam_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        f = merge_to_finest(feats)
        B, N, C, h, w = f.shape
        D, Cb, X, Y = self.D, self.Cb, self.X, self.Y
        x = self.head(f.reshape(B * N, C, h, w))  # [B*N, D+Cb, h, w]
        depth_logits = x[:, :D]
        depth = depth_logits.softmax(dim=1)
        context = x[:, D:]
        # Lifted features [B*N, D, h, w, Cb].
        lifted = depth[:, :, :, :, None] * context.permute(0, 2, 3, 1)[:, None]
        # The 3D point of every (camera, depth bin, pixel), in the ego frame: [B, N, D, h*w, 3].
        pix = feature_pixels(h, w, self.stride, device=f.device)  # [h*w, 2]
        hom = torch.cat([pix, torch.ones_like(pix[:, :1])], dim=-1)
        rays = torch.einsum("bnij,pj->bnpi", invert_intrinsics(K), hom)  # camera frame, z = 1
        cam_pts = rays[:, :, None] * self.depths[None, None, :, None, None]  # [B, N, D, P, 3]
        ego = torch.einsum("bnij,bndpj->bndpi", ego_T_cam[..., :3, :3], cam_pts) + ego_T_cam[:, :, None, None, :3, 3]
        g = self.grid
        ix = torch.floor((ego[..., 0] - g.x_min) / g.resolution).long()
        iy = torch.floor((ego[..., 1] - g.y_min) / g.resolution).long()
        inside = (ix >= 0) & (ix < X) & (iy >= 0) & (iy < Y) & (ego[..., 2] >= g.z_min) & (ego[..., 2] <= g.z_max)
        inside = inside & cam_valid[:, :, None, None]
        batch = torch.arange(B, device=f.device).reshape(B, 1, 1, 1)
        flat = batch * (X * Y) + ix.clamp(0, X - 1) * Y + iy.clamp(0, Y - 1)
        flat = torch.where(inside, flat, torch.full_like(flat, B * X * Y))  # the discard cell
        pooled = torch.zeros(B * X * Y + 1, Cb, dtype=lifted.dtype, device=f.device)
        pooled = pooled.index_add(0, flat.reshape(-1), lifted.reshape(-1, Cb))
        bev = pooled[: B * X * Y].reshape(B, X, Y, Cb).permute(0, 3, 1, 2)
        return {"bev": self.out(bev), "depth_logits": depth_logits.reshape(B, N, D, h, w)}
