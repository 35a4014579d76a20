"""Camera geometry inside the model graph (torch), in closed form so that it exports to ONNX.

These are the tensor counterparts of :mod:`perception.geometry` (same conventions, same formulas;
a test checks them against it): ``torch.linalg.inv`` does not export, so the inverses of rigid
transforms (rotations and reflections) and of intrinsics are written out.
"""

from __future__ import annotations

import torch


def invert_rigid(dst_T_src: torch.Tensor) -> torch.Tensor:
    """Inverse of rigid transforms [..., 4, 4] with orthogonal linear part (reflections included)."""
    rot_t = dst_T_src[..., :3, :3].transpose(-1, -2)
    trans = -(rot_t @ dst_T_src[..., :3, 3:4])
    bottom = torch.zeros_like(dst_T_src[..., 3:4, :])
    bottom[..., 3] = 1.0
    return torch.cat([torch.cat([rot_t, trans], dim=-1), bottom], dim=-2)


def invert_intrinsics(K: torch.Tensor) -> torch.Tensor:
    """Inverse of upper-triangular intrinsics [..., 3, 3] (negative focal lengths allowed)."""
    fx, s, cx = K[..., 0, 0], K[..., 0, 1], K[..., 0, 2]
    fy, cy = K[..., 1, 1], K[..., 1, 2]
    zero, one = torch.zeros_like(fx), torch.ones_like(fx)
    row0 = torch.stack([1.0 / fx, -s / (fx * fy), (s * cy - cx * fy) / (fx * fy)], dim=-1)
    row1 = torch.stack([zero, 1.0 / fy, -cy / fy], dim=-1)
    row2 = torch.stack([zero, zero, one], dim=-1)
    return torch.stack([row0, row1, row2], dim=-2)


def project_to_cameras(points_ego: torch.Tensor, K: torch.Tensor, ego_T_cam: torch.Tensor,
                       eps: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Project ego-frame points into every camera.

    points_ego [B, P, 3]; K [B, N, 3, 3]; ego_T_cam [B, N, 4, 4]
    -> pixels [B, N, P, 2] (cv2 convention: integer coordinates are pixel centres), depth [B, N, P]
    (camera z in metres; pixels are meaningless where depth <= eps).
    """
    # pix_T_ego [B, N, 3, 4] applied to the points as columns: [B, N, 3, P] (rows u*z, v*z, z), so
    # each coordinate is a [B, N, P] slice; no einsum and no broadcast over a short innermost axis
    # (both slow in onnxruntime).
    pix_T_ego = K @ invert_rigid(ego_T_cam)[..., :3, :]
    ones = torch.ones_like(points_ego[..., :1])
    cols = torch.cat([points_ego, ones], dim=-1).transpose(1, 2)[:, None]  # [B, 1, 4, P]
    pix = pix_T_ego @ cols  # [B, N, 3, P]
    depth = pix[:, :, 2]
    safe = torch.where(depth.abs() > eps, depth, torch.full_like(depth, eps))
    return torch.stack([pix[:, :, 0] / safe, pix[:, :, 1] / safe], dim=-1), depth


def sampling_grid(points_ego: torch.Tensor, K: torch.Tensor, ego_T_cam: torch.Tensor, cam_valid: torch.Tensor,
                  h: int, w: int, stride: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Where ego-frame points land on every camera's h x w feature map at ``stride``, as
    ``grid_sample`` coordinates (align_corners=False: -1 and 1 are the map's outer edges).

    points_ego [B, P, 3]; K [B, N, 3, 3] (of the input images); ego_T_cam [B, N, 4, 4]; cam_valid [B, N]
    -> grid [B, N, P, 2] (x along the width, y along the height), valid [B, N, P] (in front of a valid
    camera and inside its image; the grid is meaningless elsewhere).
    """
    pix, depth = project_to_cameras(points_ego, K, ego_T_cam)
    # The feature map covers w*stride x h*stride input pixels; pixel centres sit at integer coordinates.
    gx = (pix[..., 0] + 0.5) / (w * stride) * 2 - 1
    gy = (pix[..., 1] + 0.5) / (h * stride) * 2 - 1
    valid = (depth > 0.1) & (gx.abs() <= 1) & (gy.abs() <= 1) & cam_valid[:, :, None]
    return torch.stack([gx, gy], dim=-1), valid


def camera_rays(K: torch.Tensor, ego_T_cam: torch.Tensor, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit ray directions and camera centres in the ego frame for pixels [P, 2] of every camera.

    K [B, N, 3, 3]; ego_T_cam [B, N, 4, 4] -> directions [B, N, P, 3], centres [B, N, 3].
    """
    hom = torch.cat([pixels, torch.ones_like(pixels[:, :1])], dim=-1)  # [P, 3]
    rays_cam = torch.einsum("bnij,pj->bnpi", invert_intrinsics(K), hom)
    rays = torch.einsum("bnij,bnpj->bnpi", ego_T_cam[..., :3, :3], rays_cam)
    rays = rays / rays.norm(dim=-1, keepdim=True).clamp_min(1e-6)
    return rays, ego_T_cam[..., :3, 3]


def feature_pixels(h: int, w: int, stride: float, device: torch.device | None = None) -> torch.Tensor:
    """Input-image pixel coordinates of the centres of an h x w feature map at ``stride``: [h*w, 2] (u, v)."""
    vs = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
    us = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * stride - 0.5
    v, u = torch.meshgrid(vs, us, indexing="ij")
    return torch.stack([u.reshape(-1), v.reshape(-1)], dim=-1)


def bev_points(x_min: float, x_max: float, y_min: float, y_max: float, nx: int, ny: int, zs: list[float],
               device: torch.device | None = None) -> torch.Tensor:
    """Ego-frame centres of an nx x ny BEV grid at heights ``zs``: [Z, nx, ny, 3]."""
    xs = x_min + (torch.arange(nx, device=device, dtype=torch.float32) + 0.5) * (x_max - x_min) / nx
    ys = y_min + (torch.arange(ny, device=device, dtype=torch.float32) + 0.5) * (y_max - y_min) / ny
    gx, gy = torch.meshgrid(xs, ys, indexing="ij")
    out = [torch.stack([gx, gy, torch.full_like(gx, float(z))], dim=-1) for z in zs]
    return torch.stack(out, dim=0)
