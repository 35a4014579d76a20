"""`global_attention`: BEV queries cross-attend to every image token of the cameras their pillar
projects into, with learned positional encodings and no geometric seed. An ablation row: it starts
near-uniform over all tokens and must discover the geometry, which a CPU budget does not allow
(bench/ablation.py); the default `transformer` is the geometry-seeded spatial cross-attention.

- Queries sit on a grid ``query_stride`` times coarser than the BEV trunk's grid (upsampled after); each
  carries a learned embedding plus an encoding of its ego-frame position.
- Keys are the pixels of the FPN levels (``ModelConfig.levels``: strides 16 and 32). Each key carries a 3D ray
  encoding computed in the graph from K and ego_T_cam (the ray direction and the camera centre in
  the ego frame), a camera embedding and a level embedding, so a new rig is only new inputs.
- Each query attends only to the cameras its pillar (the query cell at ``z_levels``) projects into,
  and never to invalid cameras: a mask computed in the graph. A learned null token is always
  visible, so a query that no camera sees stays defined.
- Several layers of cross-attention (scaled_dot_product_attention) and a feed-forward block, with
  local mixing among queries by a depthwise 3x3 convolution (not global self-attention, so a dead
  camera disturbs only its own field of view).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import Preset
from .camera_geometry import bev_points, camera_rays, feature_pixels, project_to_cameras


class CrossAttentionLayer(nn.Module):
    """queries [B, Q, C] attend to tokens [B, T, C] under mask [B, Q, T] (True = may attend)."""

    def __init__(self, dim: int, heads: int, grid_hw: tuple[int, int]):
        super().__init__()
        self.heads = heads
        self.grid_hw = grid_hw
        self.norm_q = nn.LayerNorm(dim)
        self.norm_kv = nn.LayerNorm(dim)
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.mix = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)  # local mixing among neighbouring queries

    def forward(self, q: torch.Tensor, q_pos: torch.Tensor, tokens: torch.Tensor, key_pos: torch.Tensor,
                mask: torch.Tensor) -> torch.Tensor:
        B, Q, C = q.shape
        T = tokens.shape[1]
        h = self.heads
        kv = self.norm_kv(tokens)
        query = self.to_q(self.norm_q(q) + q_pos).reshape(B, Q, h, C // h).transpose(1, 2)  # [B, h, Q, d]
        key = self.to_k(kv + key_pos).reshape(B, T, h, C // h).transpose(1, 2)  # [B, h, T, d]
        value = self.to_v(kv).reshape(B, T, h, C // h).transpose(1, 2)
        attn = F.scaled_dot_product_attention(query, key, value, attn_mask=mask[:, None])  # [B, h, Q, d]
        q = q + self.proj(attn.transpose(1, 2).reshape(B, Q, C))
        q = q + self.ff(self.norm_ff(q))
        gx, gy = self.grid_hw
        grid = q.transpose(1, 2).reshape(B, C, gx, gy)
        return q + self.mix(grid).reshape(B, C, Q).transpose(1, 2)


class GlobalAttentionFusion(nn.Module):
    """feats per level [B, N, C, h, w] + geometry -> {"bev": [B, bev_channels, X, Y]}."""

    def __init__(self, preset: Preset, channels: list[int], strides: list[int]):
        super().__init__()
        cfg, grid = preset.model, preset.trunk_grid
        dim = channels[0]
        self.key_levels = tuple(range(len(channels)))  # every level the neck gives
        self.strides = list(strides)
        self.X, self.Y = grid.bev.shape
        s = cfg.query_stride
        if self.X % s or self.Y % s:
            raise ValueError(f"BEV trunk grid {self.X}x{self.Y} is not divisible by query_stride {s}")
        self.qx, self.qy = self.X // s, self.Y // s
        self.query_stride = s
        pillars = bev_points(grid.x_min, grid.x_max, grid.y_min, grid.y_max, self.qx, self.qy, list(cfg.z_levels))
        self.Z = len(cfg.z_levels)
        self.register_buffer("pillars", pillars.permute(1, 2, 0, 3).reshape(-1, 3), persistent=False)  # [Q*Z, 3]
        centres = pillars[0, ..., :2].reshape(-1, 2)
        scale = torch.tensor([max(abs(grid.x_min), abs(grid.x_max)), max(abs(grid.y_min), abs(grid.y_max))])
        self.register_buffer("query_xy", centres / scale, persistent=False)  # [Q, 2] in [-1, 1]
        self.query_embed = nn.Parameter(torch.randn(self.qx * self.qy, dim) * 0.02)
        self.query_pos = nn.Sequential(nn.Linear(2, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.ray_pos = nn.Sequential(nn.Linear(6, dim), nn.ReLU(inplace=True), nn.Linear(dim, dim))
        self.camera_embed = nn.Parameter(torch.zeros(len(preset.input.cameras), dim))
        self.level_embed = nn.Parameter(torch.zeros(len(channels), dim))
        self.null_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList([CrossAttentionLayer(dim, cfg.attn_heads, (self.qx, self.qy))
                                     for _ in range(cfg.attn_layers)])
        self.out = nn.Sequential(
            nn.Conv2d(dim, cfg.bev_channels, 3, padding=1, bias=False), nn.BatchNorm2d(cfg.bev_channels),
            nn.ReLU(inplace=True),
        )

    def forward(self, feats: list[torch.Tensor], K: torch.Tensor, ego_T_cam: torch.Tensor,
                cam_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        B, N = K.shape[:2]
        Q = self.qx * self.qy
        # Which cameras each query's pillar projects into: [B, Q, N].
        pix, depth = project_to_cameras(self.pillars[None].expand(B, -1, 3), K, ego_T_cam)  # [B, N, Q*Z, ...]
        tokens, key_pos, token_cam = [], [], []
        sees = None
        for li, (level, stride) in enumerate(zip(self.key_levels, self.strides)):
            f = feats[level]
            _, _, C, h, w = f.shape
            if sees is None:
                H, W = h * stride, w * stride
                inside = (depth > 0.1) & (pix[..., 0] >= -0.5) & (pix[..., 0] <= W - 0.5) & \
                    (pix[..., 1] >= -0.5) & (pix[..., 1] <= H - 0.5)
                sees = inside.reshape(B, N, Q, self.Z).any(dim=-1) & cam_valid[:, :, None]  # [B, N, Q]
            tokens.append(f.permute(0, 1, 3, 4, 2).reshape(B, N * h * w, C))
            dirs, centres = camera_rays(K, ego_T_cam, feature_pixels(h, w, stride, device=f.device))
            ray = torch.cat([dirs, centres[:, :, None, :].expand(-1, -1, h * w, -1) / 10.0], dim=-1)  # [B, N, hw, 6]
            pos = self.ray_pos(ray) + self.camera_embed[None, :N, None, :] + self.level_embed[li]
            key_pos.append(pos.reshape(B, N * h * w, C))
            token_cam.append(torch.arange(N, device=f.device).repeat_interleave(h * w))
        tokens_t = torch.cat(tokens + [self.null_token.expand(B, 1, -1)], dim=1)  # [B, T+1, C]
        key_pos_t = torch.cat(key_pos + [torch.zeros_like(self.null_token).expand(B, 1, -1)], dim=1)
        cam_of_token = torch.cat(token_cam)  # [T]
        assert sees is not None
        mask = sees.transpose(1, 2)[:, :, cam_of_token]  # [B, Q, T]
        mask = torch.cat([mask, torch.ones_like(mask[:, :, :1])], dim=-1)  # the null token is always visible
        q = self.query_embed[None].expand(B, -1, -1)
        q_pos = self.query_pos(self.query_xy)[None]
        for layer in self.layers:
            q = layer(q, q_pos, tokens_t, key_pos_t, mask)
        C = q.shape[-1]
        grid = q.transpose(1, 2).reshape(B, C, self.qx, self.qy)
        if self.query_stride > 1:
            grid = F.interpolate(grid, scale_factor=self.query_stride, mode="bilinear", align_corners=False)
        return {"bev": self.out(grid)}
