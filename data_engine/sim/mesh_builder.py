"""Meshes as the world builds them: polygons with outward normals and colour roles, and the same
primitives recorded as convex solid parts (the half-spaces of their faces, n . x <= d), so that the
lidar (lidar.py) hits exactly the surfaces the cameras draw. A concave extruded profile is split into
convex prisms. Frame: the box frame (x along the length, y along the width, z up, origin at the box
centre).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# Colour roles. LIGHT_* faces glow at night (emissive).
BODY, WINDOW, DARK, LIGHT_FRONT, LIGHT_REAR, SKIN, SHIRT, PANTS, ACCENT, HAIR = range(10)
EMISSIVE_ROLES = (LIGHT_FRONT, LIGHT_REAR)


_NO_PLANES = np.zeros((0, 4))
_NO_PARTS = np.zeros(1, np.int64)


@dataclass
class Mesh:
    """Polygons in the box frame: vertices [V, 3], faces (vertex index arrays), normals [F, 3], roles [F].

    Solid parts: ``planes`` [P, 4] rows (nx, ny, nz, d) with unit n, a point x being inside a plane's
    half-space when n . x <= d; part q is the intersection of the half-spaces
    ``planes[part_start[q]:part_start[q + 1]]`` (a convex polyhedron), the mesh's solid is the union of
    its parts.
    """

    vertices: np.ndarray
    faces: list[np.ndarray]
    normals: np.ndarray
    roles: np.ndarray
    first: np.ndarray  # [F] index of each face's first vertex
    planes: np.ndarray = field(default_factory=lambda: _NO_PLANES.copy())  # [P, 4]
    part_start: np.ndarray = field(default_factory=lambda: _NO_PARTS.copy())  # [Q + 1]


def _face_planes(pts_list: list[np.ndarray], normals: list[np.ndarray]) -> np.ndarray:
    """Half-spaces [k, 4] bounded by the given planar faces (unit outward normals)."""
    n = np.array(normals, np.float64).reshape(-1, 3)
    v0 = np.array([p[0] for p in pts_list], np.float64).reshape(-1, 3)
    return np.concatenate([n, np.einsum("ij,ij->i", n, v0)[:, None]], axis=1)


def _convex_polygon_planes(poly: np.ndarray) -> np.ndarray:
    """Outward half-planes [k, 3] (nx, nz, d) of a convex polygon [k, 2], whatever its winding."""
    centroid = poly.mean(axis=0)
    out = []
    for i in range(len(poly)):
        a, b = poly[i], poly[(i + 1) % len(poly)]
        e = b - a
        length = np.hypot(e[0], e[1])
        if length < 1e-12:
            continue
        n = np.array([e[1], -e[0]]) / length
        if n @ (centroid - a) > 0:
            n = -n
        out.append((n[0], n[1], n @ a))
    return np.array(out, np.float64).reshape(-1, 3)


def _is_convex(poly: np.ndarray) -> bool:
    e = np.roll(poly, -1, axis=0) - poly
    cross = e[:, 0] * np.roll(e, -1, axis=0)[:, 1] - e[:, 1] * np.roll(e, -1, axis=0)[:, 0]
    scale = max(float(np.abs(e).max()) ** 2, 1e-12)
    return bool(np.all(cross >= -1e-9 * scale) or np.all(cross <= 1e-9 * scale))


def _triangulate(poly: np.ndarray) -> list[np.ndarray]:
    """Ear clipping of a simple polygon [k, 2] (either winding) into triangles [3, 2]."""
    pts = [np.asarray(p, np.float64) for p in poly]
    area = 0.5 * sum(a[0] * b[1] - b[0] * a[1] for a, b in zip(pts, pts[1:] + pts[:1]))
    if area < 0:
        pts = pts[::-1]
    tris = []

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    while len(pts) > 3:
        for i in range(len(pts)):
            a, b, c = pts[i - 1], pts[i], pts[(i + 1) % len(pts)]
            if cross(a, b, c) <= 1e-12:
                continue  # reflex or flat corner
            others = [p for j, p in enumerate(pts) if j not in (i - 1 if i else len(pts) - 1, i, (i + 1) % len(pts))]
            if any(cross(a, b, p) >= 0 and cross(b, c, p) >= 0 and cross(c, a, p) >= 0 for p in others):
                continue
            tris.append(np.array([a, b, c]))
            del pts[i]
            break
        else:  # degenerate remainder: fan it
            tris += [np.array([pts[0], pts[j], pts[j + 1]]) for j in range(1, len(pts) - 1)]
            return tris
    tris.append(np.array(pts))
    return tris


class MeshBuilder:
    """Accumulates parts into one :class:`Mesh`: the faces to draw and, per primitive, its solid."""

    def __init__(self) -> None:
        self._verts: list[np.ndarray] = []
        self._faces: list[np.ndarray] = []
        self._normals: list[np.ndarray] = []
        self._roles: list[int] = []
        self._count = 0
        self._parts: list[np.ndarray] = []  # [k, 4] half-spaces per solid part

    def _face(self, pts: np.ndarray, normal: np.ndarray, role: int) -> None:
        pts = np.asarray(pts, np.float64)
        self._verts.append(pts)
        self._faces.append(np.arange(self._count, self._count + len(pts)))
        self._count += len(pts)
        n = np.asarray(normal, np.float64)
        self._normals.append(n / max(np.linalg.norm(n), 1e-12))
        self._roles.append(role)

    def _solid_since(self, first_face: int) -> None:
        """Record the faces added since ``first_face`` as the boundary of one convex part."""
        self._parts.append(_face_planes(self._verts[first_face:], self._normals[first_face:]))

    def face(self, pts: np.ndarray, normal: np.ndarray, role: int, thickness: float = 2e-3) -> None:
        """One planar convex polygon on its own; its solid is a plate ``thickness`` thick."""
        self._face(pts, normal, role)
        pts = np.asarray(pts, np.float64)
        n = self._normals[-1]
        d = float(n @ pts[0])
        planes = [(*n, d + thickness / 2), (*(-n), -d + thickness / 2)]
        centroid = pts.mean(axis=0)
        for i in range(len(pts)):
            a, b = pts[i], pts[(i + 1) % len(pts)]
            m = np.cross(b - a, n)
            length = np.linalg.norm(m)
            if length < 1e-12:
                continue
            m = m / length
            if m @ (centroid - a) > 0:
                m = -m
            planes.append((*m, float(m @ a)))
        self._parts.append(np.array(planes, np.float64))

    def add(self, mesh: Mesh, rotation: np.ndarray | None = None) -> None:
        """Append another mesh's faces and solid parts, turned by an orthogonal 3x3 ``rotation``."""
        rot = np.eye(3) if rotation is None else np.asarray(rotation, np.float64)
        if not np.allclose(rot @ rot.T, np.eye(3), atol=1e-9):
            raise ValueError("add() takes an orthogonal matrix")
        for f, n, role in zip(mesh.faces, mesh.normals, mesh.roles):
            self._face(mesh.vertices[f] @ rot.T, rot @ n, int(role))
        for q in range(len(mesh.part_start) - 1):
            planes = mesh.planes[mesh.part_start[q]:mesh.part_start[q + 1]]
            self._parts.append(np.concatenate([planes[:, :3] @ rot.T, planes[:, 3:]], axis=1))

    def box(self, lo, hi, role: int, top_role: int | None = None, transform: np.ndarray | None = None) -> None:
        """An axis-aligned cuboid [lo, hi] (optionally rotated/moved by a 4x4 ``transform``)."""
        (x0, y0, z0), (x1, y1, z1) = lo, hi
        c = np.array([[x0, y0, z0], [x1, y0, z0], [x1, y1, z0], [x0, y1, z0],
                      [x0, y0, z1], [x1, y0, z1], [x1, y1, z1], [x0, y1, z1]], np.float64)
        quads = [([0, 3, 2, 1], (0, 0, -1)), ([4, 5, 6, 7], (0, 0, 1)), ([0, 1, 5, 4], (0, -1, 0)),
                 ([2, 3, 7, 6], (0, 1, 0)), ([1, 2, 6, 5], (1, 0, 0)), ([3, 0, 4, 7], (-1, 0, 0))]
        start = len(self._faces)
        for idx, n in quads:
            pts, normal = c[idx], np.array(n, np.float64)
            if transform is not None:
                pts = pts @ transform[:3, :3].T + transform[:3, 3]
                normal = transform[:3, :3] @ normal
            self._face(pts, normal, top_role if (top_role is not None and n == (0, 0, 1)) else role)
        self._solid_since(start)

    def extrude(self, profile_xz: np.ndarray, y0: float, y1: float, role: int,
                edge_roles: dict[int, int] | None = None) -> None:
        """Extrude a counter-clockwise (x right, z up) side profile between y0 < y1. Its solid is one
        prism, or one per triangle of the profile when it is concave."""
        p = np.asarray(profile_xz, np.float64)
        n = len(p)
        self._face(np.stack([p[:, 0], np.full(n, y0), p[:, 1]], 1), (0, -1, 0), role)
        self._face(np.stack([p[::-1, 0], np.full(n, y1), p[::-1, 1]], 1), (0, 1, 0), role)
        for i in range(n):
            a, b = p[i], p[(i + 1) % n]
            d = b - a
            quad = np.array([[a[0], y0, a[1]], [a[0], y1, a[1]], [b[0], y1, b[1]], [b[0], y0, b[1]]])
            self._face(quad, (d[1], 0.0, -d[0]), (edge_roles or {}).get(i, role))
        caps = np.array([[0.0, -1.0, 0.0, -y0], [0.0, 1.0, 0.0, y1]])
        for piece in ([p] if _is_convex(p) else _triangulate(p)):
            sides = _convex_polygon_planes(piece)
            prism = np.stack([sides[:, 0], np.zeros(len(sides)), sides[:, 1], sides[:, 2]], axis=1)
            self._parts.append(np.concatenate([caps, prism], axis=0))

    def frustum(self, sides: int, r0: float, r1: float, z0: float, z1: float, role: int,
                centre=(0.0, 0.0), top_role: int | None = None) -> None:
        """A regular ``sides``-gon frustum about the z axis, radius r0 at z0 and r1 at z1."""
        a = np.linspace(0, 2 * np.pi, sides, endpoint=False) + np.pi / sides
        cx, cy = centre
        bottom = np.stack([cx + r0 * np.cos(a), cy + r0 * np.sin(a), np.full(sides, z0)], 1)
        top = np.stack([cx + r1 * np.cos(a), cy + r1 * np.sin(a), np.full(sides, z1)], 1)
        start = len(self._faces)
        # A side face's plane is at the apothem r(z) cos(pi / sides) from the axis, in the direction mid.
        slope = np.cos(np.pi / sides) * (r0 - r1) / max(z1 - z0, 1e-9)
        for i in range(sides):
            j = (i + 1) % sides
            mid = a[i] + np.pi / sides  # (not (a[i] + a[j]) / 2, which points backwards on the last face)
            self._face(np.stack([bottom[i], bottom[j], top[j], top[i]]), (np.cos(mid), np.sin(mid), slope), role)
        self._face(top, (0, 0, 1), role if top_role is None else top_role)
        self._face(bottom[::-1], (0, 0, -1), role)
        self._solid_since(start)

    def wheel(self, x: float, y: float, z_bottom: float, radius: float, width: float) -> None:
        """A wheel as an octagonal disc with its axle along y, resting at z_bottom."""
        a = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8
        prof = np.stack([x + radius * np.cos(a), z_bottom + radius + radius * np.sin(a)], 1)
        self.extrude(prof, y - width / 2, y + width / 2, DARK)

    def build(self) -> Mesh:
        verts = np.concatenate(self._verts, 0) if self._verts else np.zeros((0, 3))
        first = np.array([f[0] for f in self._faces], np.int64)
        planes = np.concatenate(self._parts, 0) if self._parts else _NO_PLANES.copy()
        part_start = np.concatenate([[0], np.cumsum([len(p) for p in self._parts])]).astype(np.int64)
        return Mesh(verts, self._faces, np.array(self._normals).reshape(-1, 3), np.array(self._roles, np.int32), first,
                    planes, part_start)


def fit_to_box(mesh: Mesh, w: float, l: float, h: float) -> Mesh:
    """Scale a mesh about the box centre, per axis, so that no part reaches out of the box
    [-l/2, l/2] x [-w/2, w/2] x [-h/2, h/2] (swinging limbs, riders, booms). Normals follow the
    inverse-transpose of the scaling; faces stay planar."""
    if len(mesh.vertices) == 0:
        return mesh
    reach = np.abs(mesh.vertices).max(axis=0)
    half = np.array([l, w, h]) / 2
    scale = np.minimum(1.0, half / np.maximum(reach, 1e-9))
    if np.all(scale == 1.0):
        return mesh
    normals = mesh.normals / scale
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    # n . x <= d  <=>  (n / s) . (s x) <= d, then normalised.
    pn = mesh.planes[:, :3] / scale
    norm = np.linalg.norm(pn, axis=1, keepdims=True)
    planes = np.concatenate([pn, mesh.planes[:, 3:]], axis=1) / np.maximum(norm, 1e-12)
    return Mesh(mesh.vertices * scale, mesh.faces, normals, mesh.roles, mesh.first, planes, mesh.part_start)
