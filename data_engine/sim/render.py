"""Camera rendering of the synthetic world with OpenCV and numpy.

The ground is one homography per camera (``cv2.warpPerspective`` of the scene's ground texture);
objects are meshes whose faces are filled with ``cv2.fillPoly`` under an exact per-pixel depth test:
for a planar face with normal n and offset d in the camera frame (n . X = d), the inverse depth of
the pixel (u, v) is ``n . (K^-1 [u, v, 1]) / d``, affine in (u, v). Faces are clipped at the near
plane. The renderer returns radiance before the camera's exposure and weather passes (effects.py),
the depth map, and an instance-id map from which visibility is measured.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from perception.geometry import invert_intrinsics, invert_rigid

from .mesh_builder import EMISSIVE_ROLES, Mesh

NEAR = 0.15  # m, near clipping plane
FAR = 250.0  # m, beyond this the ground fades into the horizon
SUB = 4  # fractional bits of the polygon coordinates given to cv2.fillPoly
LAMP = 1.0  # light factor of emissive faces (lamps): as bright as a lit white surface by day


@dataclass
class RenderItem:
    """One object to draw: its mesh in the box frame, where the box is, and how it is coloured."""

    actor_id: int  # >= 0, written into the instance map
    mesh: Mesh
    global_T_box: np.ndarray  # [4, 4]
    colours: np.ndarray  # [F, 3] BGR albedo in [0, 1] per face
    emissive: np.ndarray  # [F] bool, faces that glow (lamps)
    radius: float  # m, bounding sphere about the box centre
    size: np.ndarray  # (w, l, h) m, for the shadow on the ground


@dataclass
class CameraImage:
    """What one camera sees, before exposure and weather."""

    albedo: np.ndarray  # [H, W, 3] float32 BGR in [0, 1]
    light: np.ndarray  # [H, W] float32 irradiance factor (sun, sky, lamps; headlights are added later)
    sky: np.ndarray  # [H, W] bool, pixels that see no surface
    depth: np.ndarray  # [H, W] float32 camera z in metres (inf on the sky)
    instance: np.ndarray  # [H, W] int32 actor id, -1 for ground and sky
    silhouette: dict[int, int]  # actor id -> pixels it would cover with nothing in front of it


def ground_rays(K: np.ndarray, ego_T_cam: np.ndarray, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Ground depth [H, W] (inf where the pixel sees no ground) and the sky mask, for a flat world.

    The ego stands on the plane z = 0, so this depends on the rig only and is computed once.
    """
    cols, rows = np.meshgrid(np.arange(width, dtype=np.float64), np.arange(height, dtype=np.float64))
    pix = np.stack([cols, rows, np.ones_like(cols)], axis=-1)
    rays_cam = pix @ invert_intrinsics(K).T  # camera z = 1
    dz = rays_cam @ ego_T_cam[2, :3]  # ego z of each ray
    cam_height = ego_T_cam[2, 3]
    with np.errstate(divide="ignore"):
        depth = np.where(dz < -1e-6, cam_height / -dz, np.inf)
    depth[depth > FAR] = np.inf
    return depth.astype(np.float32), ~np.isfinite(depth)


def _clip_near(poly: np.ndarray) -> np.ndarray:
    """Clip a camera-frame polygon [P, 3] to z >= NEAR (Sutherland-Hodgman against one plane)."""
    out = []
    n = len(poly)
    for i in range(n):
        a, b = poly[i], poly[(i + 1) % n]
        ina, inb = a[2] >= NEAR, b[2] >= NEAR
        if ina:
            out.append(a)
        if ina != inb:
            t = (NEAR - a[2]) / (b[2] - a[2])
            out.append(a + t * (b - a))
    return np.array(out) if out else np.zeros((0, 3))


def render_camera(
    K: np.ndarray,
    ego_T_cam: np.ndarray,
    global_T_ego: np.ndarray,
    width: int,
    height: int,
    ground_texture: np.ndarray,
    cam_H_tex_base: np.ndarray,
    ground_depth: np.ndarray,
    sky_mask: np.ndarray,
    items: list[RenderItem],
    sun_dir: np.ndarray,
    ambient: float,
    diffuse: float,
) -> CameraImage:
    """Render one camera.

    cam_H_tex_base: 3x3 mapping texture pixels to global ground (x, y, 1) (layout.global_T_tex).
    sun_dir: unit vector towards the sun in the global frame.
    """
    global_T_cam = global_T_ego @ ego_T_cam
    cam_T_global = invert_rigid(global_T_cam)
    # Ground: pixel ~ K [r1 r2 t] (x, y, 1) for points on z = 0, composed with texture -> ground.
    img_H_ground = K @ cam_T_global[:3][:, [0, 1, 3]]
    img_H_tex = img_H_ground @ cam_H_tex_base
    ground = cv2.warpPerspective(ground_texture, img_H_tex, (width, height), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_REPLICATE)
    albedo = ground.astype(np.float32) * (1.0 / 255.0)
    light = np.full((height, width), ambient + diffuse * max(0.0, float(sun_dir[2])), np.float32)
    with np.errstate(divide="ignore"):
        invz = np.where(sky_mask, 0.0, 1.0 / ground_depth).astype(np.float32)
    instance = np.full((height, width), -1, np.int32)
    silhouette: dict[int, int] = {}
    K_inv = invert_intrinsics(K)
    # Frustum culling of whole objects by their bounding spheres: outward normals of the four side
    # planes through the camera centre, and the near plane.
    planes_out = np.array([[1.0, 0.0, -(width - K[0, 2]) / K[0, 0]], [-1.0, 0.0, -K[0, 2] / K[0, 0]],
                           [0.0, 1.0, -(height - K[1, 2]) / K[1, 1]], [0.0, -1.0, -K[1, 2] / K[1, 1]]])
    planes_out /= np.linalg.norm(planes_out, axis=1, keepdims=True)
    if items:
        centres = np.stack([it.global_T_box[:3, 3] for it in items]) @ cam_T_global[:3, :3].T + cam_T_global[:3, 3]
        radii = np.array([it.radius for it in items])
        inside = (centres[:, 2] + radii > NEAR) & np.all(centres @ planes_out.T <= radii[:, None], axis=1)
    else:
        inside = np.zeros(0, bool)

    if diffuse > 0 and sun_dir[2] > 0.02:
        _cast_shadows(items, inside, cam_T_global, K, albedo, sky_mask, sun_dir, diffuse)

    for item, keep in zip(items, inside):
        if not keep:
            continue
        cam_T_box = cam_T_global @ item.global_T_box
        verts = item.mesh.vertices @ cam_T_box[:3, :3].T + cam_T_box[:3, 3]
        if verts.shape[0] == 0 or verts[:, 2].max() < NEAR:
            continue
        normals = item.mesh.normals @ cam_T_box[:3, :3].T
        # Back faces (the camera is behind their plane, or sees them edge-on) are never drawn.
        offsets = np.einsum("ij,ij->i", normals, verts[item.mesh.first])
        polys, planes, faces_kept = [], [], []
        for fi in np.flatnonzero(offsets < -1e-9):
            pts = verts[item.mesh.faces[fi]]
            n = normals[fi]
            d = float(offsets[fi])
            if pts[:, 2].min() < NEAR:
                pts = _clip_near(pts)
                if len(pts) < 3:
                    continue
            hom = pts @ K.T
            uv = hom[:, :2] / hom[:, 2:3]
            polys.append(uv)
            planes.append((K_inv.T @ n) / d)
            faces_kept.append(fi)
        if not polys:
            continue
        allpts = np.concatenate(polys, 0)
        x0 = max(int(np.floor(allpts[:, 0].min())), 0)
        y0 = max(int(np.floor(allpts[:, 1].min())), 0)
        x1 = min(int(np.ceil(allpts[:, 0].max())), width - 1)
        y1 = min(int(np.ceil(allpts[:, 1].max())), height - 1)
        if x1 < x0 or y1 < y0:
            continue
        bw, bh = x1 - x0 + 1, y1 - y0 + 1
        us = np.arange(x0, x1 + 1, dtype=np.float32)[None, :]
        vs = np.arange(y0, y1 + 1, dtype=np.float32)[:, None]
        own = np.zeros((bh, bw), np.uint8)
        face_mask = np.zeros((bh, bw), np.uint8)
        z_view = invz[y0:y1 + 1, x0:x1 + 1]
        inst_view = instance[y0:y1 + 1, x0:x1 + 1]
        albedo_view = albedo[y0:y1 + 1, x0:x1 + 1]
        light_view = light[y0:y1 + 1, x0:x1 + 1]
        for uv, plane, fi in zip(polys, planes, faces_kept):
            pts_px = np.round((uv - [x0, y0]) * (1 << SUB)).astype(np.int32)
            fx0, fy0, fw, fh = cv2.boundingRect(pts_px >> SUB)
            fx0, fy0 = max(fx0 - 1, 0), max(fy0 - 1, 0)
            fx1, fy1 = min(fx0 + fw + 3, bw), min(fy0 + fh + 3, bh)
            if fx1 <= fx0 or fy1 <= fy0:
                continue
            cv2.fillPoly(face_mask, [pts_px], 1, lineType=cv2.LINE_8, shift=SUB)
            m = face_mask[fy0:fy1, fx0:fx1].astype(bool)
            face_mask[fy0:fy1, fx0:fx1] = 0
            if not m.any():
                continue
            own[fy0:fy1, fx0:fx1] |= m
            face_invz = (plane[0] * us[:, fx0:fx1] + plane[1] * vs[fy0:fy1] + plane[2]).astype(np.float32)
            zb = z_view[fy0:fy1, fx0:fx1]
            write = m & (face_invz > zb)
            if not write.any():
                continue
            zb[write] = face_invz[write]
            inst_view[fy0:fy1, fx0:fx1][write] = item.actor_id
            colour = item.colours[fi]
            albedo_view[fy0:fy1, fx0:fx1][write] = colour
            if item.emissive[fi]:
                light_view[fy0:fy1, fx0:fx1][write] = LAMP  # lamps shine by themselves
            else:
                n_global = item.global_T_box[:3, :3] @ item.mesh.normals[fi]
                light_view[fy0:fy1, fx0:fx1][write] = ambient * (0.75 + 0.25 * max(0.0, float(n_global[2]))) + \
                    diffuse * max(0.0, float(n_global @ sun_dir))
        silhouette[item.actor_id] = silhouette.get(item.actor_id, 0) + int(own.sum())

    with np.errstate(divide="ignore"):
        depth = np.where(invz > 0, 1.0 / np.maximum(invz, 1e-12), np.inf).astype(np.float32)
    sky = invz <= 0
    return CameraImage(albedo, light, sky, depth, instance, silhouette)


def _cast_shadows(items: list[RenderItem], inside: np.ndarray, cam_T_global: np.ndarray, K: np.ndarray,
                  albedo: np.ndarray, sky_mask: np.ndarray, sun_dir: np.ndarray, diffuse: float) -> None:
    """Darken the ground where objects shade it from the sun: the hull of each box's footprint and
    its top corners projected along the sun onto the ground (drawn before the objects, so only
    ground pixels keep it)."""
    height, width = sky_mask.shape
    shade = np.zeros((height, width), np.uint8)
    along = -sun_dir[:2] / sun_dir[2]  # ground displacement per metre of height
    reach = np.linalg.norm(along)
    if reach > 6.0:
        along = along * 6.0 / reach
    for item, keep in zip(items, inside):
        if not keep and item.radius < 8.0:
            continue
        w, l, h = (float(v) for v in item.size)
        hw, hl = 0.45 * w, 0.45 * l
        foot = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
        rot = item.global_T_box[:2, :2]
        base = foot @ rot.T + item.global_T_box[:2, 3]
        pts = np.concatenate([base, base + along * h * 0.9])
        hull = cv2.convexHull(pts.astype(np.float32))[:, 0].astype(np.float64)
        ground = np.concatenate([hull, np.full((len(hull), 1), 0.01)], axis=1)
        cam = ground @ cam_T_global[:3, :3].T + cam_T_global[:3, 3]
        if cam[:, 2].max() < NEAR:
            continue
        cam = _clip_near(cam)
        if len(cam) < 3:
            continue
        uv = cam @ K.T
        uv = uv[:, :2] / uv[:, 2:3]
        cv2.fillPoly(shade, [np.round(uv * (1 << SUB)).astype(np.int32)], 1, lineType=cv2.LINE_8, shift=SUB)
    dark = shade.astype(bool) & ~sky_mask
    albedo[dark] *= np.float32(1.0 - 0.55 * min(1.0, diffuse / 0.6))


def face_colours(mesh: Mesh, palette: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-face albedo [F, 3] from a role palette [R, 3] (BGR, 0-1), and the emissive flags [F]."""
    colours = palette[mesh.roles]
    emissive = np.isin(mesh.roles, EMISSIVE_ROLES)
    return colours.astype(np.float32), emissive
