"""`transformer` (the default view transform): geometry-seeded spatial cross-attention, BEVFormer's
spatial cross-attention (SCA) written as the Deformable-DETR decomposition in plain ops.

- One query per cell of the BEV trunk's grid. Its pillar (the cell centre at each of ``z_levels``) is
  projected into every camera in the graph (K and ego_T_cam are inputs): the reference points.
- Each layer projects the image features to values (1x1 conv, split into heads) and samples them with
  4-D ``grid_sample`` at the reference points plus learned offsets (per head, height and point, from
  the query); a softmax over cameras and points (per head and height), computed from the query with
  cameras that do not see the point masked, weighs the samples. Heights stay apart as channels and a
  1x1 conv mixes them, as in the sampling lift.
- Layer 1's query is a learned embedding plus an encoding of the cell's position, and its output goes
  through the sampling lift's compression (:func:`~.view_sampling.compress_heights`). Later layers
  take the BEV features so far as their query (content-conditioned offsets and weights) and add
  their result through a zero-initialised projection and feed-forward block (residual).

Initialisation makes step 0 exactly the sampling lift (Simple-BEV's masked camera mean): value
projections are the identity, offset and weight heads are zero (so the softmax is the mean over the
cameras that see each point), and the later layers add zero. The model starts on the lift's learning
curve and learns where else to look. That holds with ``attn_cameras`` >= 2 (a point is seen by at most
two cameras of a ring); with 1 (the edge preset: half the sampling) a point two cameras see starts
from the first of them alone. Offsets train at :data:`OFFSET_LR_SCALE` of the learning rate
(Deformable DETR). Standard ONNX ops only; the INT8 export quantizes convolutions, so the grid
coordinates, the softmax and the normalization stay in float.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..presets import Preset
from .camera_geometry import bev_points, sampling_grid
from .neck import merge_to_finest
from .view_sampling import compress_heights

OFFSET_LR_SCALE = 0.1  # learning-rate multiplier of the sampling-offset heads (parameters named "*.offsets.*")
MASK_LOGIT = 1e4  # subtracted from the attention logits of points a camera does not see


class SpatialCrossAttention(nn.Module):
    """One SCA sampling step: queries [B, Q, D] sample feats [B, N, C, h, w] around their reference
    points -> [B, C*Z, Q] (heights stacked as channels, channel c*Z + z as the sampling lift's).

    Only the first ``sampled_cameras`` (K) cameras that see a point are sampled (a point around a ring
    of cameras is seen by at most two): the cameras' value maps are tiled side by side along the
    width, with a zero column between them, so one 4-D ``grid_sample`` reads every chosen camera
    (BEVFormer's "hit cameras only", without a gather of feature maps)."""

    def __init__(self, query_dim: int, channels: int, heads: int, cameras: int, heights: int, points: int,
                 sampled_cameras: int):
        super().__init__()
        self.M, self.N, self.Z, self.P, self.K = heads, cameras, heights, points, min(sampled_cameras, cameras)
        self.value_proj = nn.Conv2d(channels, channels, 1)
        self.offsets = nn.Linear(query_dim, heads * heights * points * 2)  # feature-map pixels (x, y)
        self.weights = nn.Linear(query_dim, heads * cameras * heights * points)
        nn.init.eye_(self.value_proj.weight[:, :, 0, 0])
        nn.init.zeros_(self.value_proj.bias)
        nn.init.zeros_(self.offsets.weight)
        nn.init.zeros_(self.weights.weight)
        nn.init.zeros_(self.weights.bias)
        with torch.no_grad():  # points of a head start on a ring of radius <= 0.5 px (none for one point)
            angle = torch.arange(points, dtype=torch.float32) * (2 * torch.pi / points)
            ring = 0.5 * torch.stack([angle.cos(), angle.sin()], dim=-1) * (points > 1)  # [P, 2]
            self.offsets.bias.copy_(ring.expand(heads, heights, points, 2).reshape(-1))

    def forward(self, q: torch.Tensor, feats: torch.Tensor, ref: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """q [B, Q, D]; feats [B, N, C, h, w]; ref [B, N, Z, Q, 2] (grid_sample coordinates of each
        camera's map); valid [B, N, Z, Q] -> [B, C*Z, Q].

        Per-sample tensors keep the queries on the last axis ([B, M, Z, K, P, Q]): elementwise ops
        broadcast over a long innermost axis (onnxruntime is ~100x slower on a trailing axis of 1)."""
        B, N, C, h, w = feats.shape
        Q = q.shape[1]
        M, Z, P, K = self.M, self.Z, self.P, self.K
        d = C // M
        # Values of every camera tiled along the width, a zero column each side: [B*M, d, h, N*(w+2)].
        value = self.value_proj(feats.reshape(B * N, C, h, w)).reshape(B, N, M, d, h, w)
        value = F.pad(value, [1, 1]).permute(0, 2, 3, 4, 1, 5).reshape(B * M, d, h, N * (w + 2))
        # The K first cameras that see each (height, query): their index and whether they do see it.
        order = valid.to(q.dtype) * (N - torch.arange(N, device=q.device, dtype=q.dtype))[None, :, None, None]
        seen, cam = order.topk(K, dim=1)  # [B, K, Z, Q]
        seen = (seen > 0).to(q.dtype).transpose(1, 2)[:, None, :, :, None]  # [B, 1, Z, K, 1, Q]
        cam = cam.transpose(1, 2)  # [B, Z, K, Q]
        pick = lambda t: t.transpose(1, 2).gather(2, cam)[:, None, :, :, None]  # noqa: E731  [B, N, Z, Q] -> [B, 1, Z, K, 1, Q]
        # Reference pixels in the chosen camera's own map, plus the learned offsets (pixels), kept
        # within the camera's tile, then as coordinates of the tiled map.
        u = (pick(ref[..., 0]) + 1) * (w / 2) - 0.5
        v = (pick(ref[..., 1]) + 1) * (h / 2) - 0.5
        off = self.offsets(q).transpose(1, 2).reshape(B, M, Z, P, 2, Q)
        u = (u + off[:, :, :, None, :, 0]).clamp(-1.0, float(w))  # [B, M, Z, K, P, Q]
        v = (v + off[:, :, :, None, :, 1]).clamp(-1.0, float(h))
        tile = cam.to(q.dtype)[:, None, :, :, None] * (w + 2) + 1  # [B, 1, Z, K, 1, Q]
        gx = (u + tile + 0.5) * (2.0 / (N * (w + 2))) - 1
        gy = (v + 0.5) * (2.0 / h) - 1
        grid = torch.stack([gx, gy], dim=-1).reshape(B * M, Z, K * P * Q, 2)
        sampled = F.grid_sample(value, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        sampled = sampled.reshape(B, M, d, Z, K * P, Q)  # [B*M, d, Z, K*P*Q] unpacked
        # Softmax over (chosen camera, point) per head and height, from the query's logits of those
        # cameras; cameras that do not see the point are masked, and a point none sees weighs 0.
        logits = self.weights(q).transpose(1, 2).reshape(B, M, N, Z, P, Q).transpose(2, 3)  # [B, M, Z, N, P, Q]
        index = cam[:, None, :, :, None, :].expand(B, M, Z, K, P, Q)
        logits = logits.gather(3, index) + (seen - 1.0) * MASK_LOGIT  # [B, M, Z, K, P, Q]
        attn = logits.reshape(B, M, Z, K * P, Q).softmax(dim=3) * seen.expand(B, 1, Z, K, P, Q).reshape(B, 1, Z, K * P, Q)
        out = (sampled * attn[:, :, None]).sum(dim=4)  # [B, M, d, Z, Q]
        return out.reshape(B, C * Z, Q)


class TransformerFusion(nn.Module):
    """feats per level [B, N, C, h, w] + geometry -> {"bev": [B, bev_channels, X, Y]} on the trunk grid."""

    def __init__(self, preset: Preset, channels: list[int], strides: list[int]):
        super().__init__()
        cfg, grid = preset.model, preset.trunk_grid
        C, D = channels[0], cfg.bev_channels
        self.stride = strides[0]  # the finest level, with the coarser ones merged in
        self.X, self.Y = grid.bev.shape
        self.Z = len(cfg.z_levels)
        N = len(preset.input.cameras)
        pillars = bev_points(grid.x_min, grid.x_max, grid.y_min, grid.y_max, self.X, self.Y, list(cfg.z_levels))
        self.register_buffer("pillars", pillars.reshape(-1, 3), persistent=False)  # [Z*Q, 3]
        half = torch.tensor([max(abs(grid.x_min), abs(grid.x_max)), max(abs(grid.y_min), abs(grid.y_max))])
        self.register_buffer("query_xy", pillars[0, ..., :2].reshape(-1, 2) / half, persistent=False)  # [Q, 2]
        self.query_embed = nn.Parameter(torch.zeros(self.X * self.Y, D))
        self.query_pos = nn.Sequential(nn.Linear(2, D), nn.ReLU(inplace=True), nn.Linear(D, D))
        sca = lambda: SpatialCrossAttention(D, C, cfg.attn_heads, N, self.Z, cfg.attn_points,  # noqa: E731
                                            cfg.attn_cameras)
        self.first = sca()
        self.compress = compress_heights(C * self.Z, D)
        self.layers = nn.ModuleList([RefineLayer(sca(), C * self.Z, D) for _ in range(cfg.attn_layers - 1)])

    def forward(self, feats: list[torch.Tensor], K: torch.Tensor, ego_T_cam: torch.Tensor,
                cam_valid: torch.Tensor) -> dict[str, torch.Tensor]:
        f = merge_to_finest(feats)  # [B, N, C, h, w]
        B, N, C, h, w = f.shape
        Q, X, Y, Z = self.X * self.Y, self.X, self.Y, self.Z
        ref, valid = sampling_grid(self.pillars[None].expand(B, -1, 3), K, ego_T_cam, cam_valid, h, w, self.stride)
        ref, valid = ref.reshape(B, N, Z, Q, 2), valid.reshape(B, N, Z, Q)
        pos = self.query_pos(self.query_xy)[None]  # [1, Q, D]
        q = (self.query_embed[None] + pos).expand(B, -1, -1)
        bev = self.compress(self.first(q, f, ref, valid).reshape(B, C * Z, X, Y))  # [B, D, X, Y]
        for layer in self.layers:
            bev = layer(bev, pos, f, ref, valid)
        return {"bev": bev}


class RefineLayer(nn.Module):
    """A content-conditioned SCA layer: bev [B, D, X, Y] -> bev + proj(SCA(norm(bev) + pos)) + FFN,
    an identity at initialisation (the projection and the FFN's last conv start at zero)."""

    def __init__(self, sca: SpatialCrossAttention, sampled_channels: int, dim: int):
        super().__init__()
        self.sca = sca
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Conv2d(sampled_channels, dim, 1)
        self.ffn = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.ReLU(inplace=True), nn.Conv2d(2 * dim, dim, 1))
        for conv in (self.proj, self.ffn[-1]):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, bev: torch.Tensor, pos: torch.Tensor, feats: torch.Tensor, ref: torch.Tensor,
                valid: torch.Tensor) -> torch.Tensor:
        B, D, X, Y = bev.shape
        q = self.norm(bev.flatten(2).transpose(1, 2)) + pos  # [B, Q, D]
        bev = bev + self.proj(self.sca(q, feats, ref, valid).reshape(B, -1, X, Y))
        return bev + self.ffn(bev)
