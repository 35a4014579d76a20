"""Low-poly meshes of the world's objects, built in the box frame (x along the length, y along the
width, z up, origin at the box centre) from the annotated size (w, l, h).

Vehicles are extruded side profiles with wheels, windows and lamps; pedestrians and riders are
stacked parts with limbs that swing with the walking phase; cones are frusta; barriers are panels on
feet. Every face carries its outward normal and a colour role; the actor's palette turns roles into
colours, so no class owns a colour. The primitives and their solid parts are in mesh_builder.py.
"""

from __future__ import annotations

import numpy as np

from .mesh_builder import (  # noqa: F401  (roles and Mesh are re-exported for the renderer and actors)
    ACCENT,
    BODY,
    DARK,
    EMISSIVE_ROLES,
    HAIR,
    LIGHT_FRONT,
    LIGHT_REAR,
    PANTS,
    SHIRT,
    SKIN,
    WINDOW,
    Mesh,
    MeshBuilder,
    fit_to_box,
)


def _rot_y(angle: float, pivot) -> np.ndarray:
    """4x4 rotation about a y-parallel axis through ``pivot`` (used for swinging limbs and booms)."""
    c, s = np.cos(angle), np.sin(angle)
    t = np.eye(4)
    t[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    p = np.asarray(pivot, np.float64)
    t[:3, 3] = p - t[:3, :3] @ p
    return t


def car(w: float, l: float, h: float, style: int) -> Mesh:
    """Sedan (0), hatchback (1) or SUV/van (2): extruded profile, wheels, windows, lamps."""
    m = MeshBuilder()
    x0, z0 = -l / 2, -h / 2
    clear = 0.12 * h
    belt = z0 + h * (0.52 if style != 2 else 0.58)
    top = z0 + h
    hood_end = [0.22, 0.28, 0.33][style] * l
    roof_front = [0.05, 0.08, 0.22][style] * l
    roof_back = [-0.30, -0.40, -0.44][style] * l
    tail = [-0.44, -0.49, -0.5][style] * l
    # Lower body (counter-clockwise from rear-bottom): x right = forward.
    body = np.array([[x0 + 0.02 * l, z0 + clear], [l / 2 - 0.02 * l, z0 + clear], [l / 2, belt - 0.15 * h],
                     [l / 2 - 0.04 * l, belt], [x0 + 0.01 * l, belt], [x0, belt - 0.2 * h]])
    m.extrude(body, -w / 2, w / 2, BODY)
    cabin = np.array([[tail, belt], [hood_end, belt], [roof_front, top], [roof_back, top]])
    m.extrude(cabin * [1, 1], -w / 2 + 0.08 * w, w / 2 - 0.08 * w, WINDOW, edge_roles={3: BODY})
    for sx in (l / 2 - 0.2 * l, -l / 2 + 0.2 * l):
        for sy in (-w / 2 + 0.12, w / 2 - 0.12):
            m.wheel(sx, sy, z0, 0.17 * h + 0.05, 0.24)
    for sy in (-w / 2 + 0.25, w / 2 - 0.25):
        m.box((l / 2 - 0.01, sy - 0.18, belt - 0.14 * h), (l / 2 + 0.02, sy + 0.18, belt - 0.05 * h), LIGHT_FRONT)
        m.box((x0 - 0.02, sy - 0.16, belt - 0.12 * h), (x0 + 0.01, sy + 0.16, belt - 0.04 * h), LIGHT_REAR)
    return m.build()


def truck(w: float, l: float, h: float, style: int) -> Mesh:
    """Box truck (0) or flatbed with load (1): a cab in front of a cargo body."""
    m = MeshBuilder()
    z0 = -h / 2
    cab_l = min(2.3, 0.35 * l)
    cab_h = min(h, 2.6)
    fx = l / 2
    cab = np.array([[fx - cab_l, z0 + 0.45], [fx, z0 + 0.45], [fx, z0 + 0.55 * cab_h], [fx - 0.25, z0 + cab_h],
                    [fx - cab_l, z0 + cab_h]])
    m.extrude(cab, -w / 2, w / 2, BODY, edge_roles={2: WINDOW})
    m.box((fx - 0.2, -w / 2 + 0.1, z0 + 0.65 * cab_h), (fx - 0.05, w / 2 - 0.1, z0 + 0.92 * cab_h), WINDOW)
    bx1 = fx - cab_l - 0.15
    if style == 0:
        m.box((-l / 2, -w / 2, z0 + 0.6), (bx1, w / 2, z0 + h), ACCENT)
    else:
        m.box((-l / 2, -w / 2, z0 + 0.6), (bx1, w / 2, z0 + 1.0), DARK)
        m.box((-l / 2 + 0.5, -w / 2 + 0.2, z0 + 1.0), (bx1 - 0.5, w / 2 - 0.2, z0 + 0.65 * h), ACCENT)
    m.box((-l / 2 + 0.3, -w / 2 + 0.3, z0 + 0.35), (fx - 0.3, w / 2 - 0.3, z0 + 0.6), DARK)
    for sx in (fx - 0.8, -l / 2 + 1.4, -l / 2 + 2.6):
        for sy in (-w / 2 + 0.15, w / 2 - 0.15):
            m.wheel(sx, sy, z0, 0.48, 0.3)
    for sy in (-w / 2 + 0.25, w / 2 - 0.25):
        m.box((fx - 0.01, sy - 0.18, z0 + 0.6), (fx + 0.03, sy + 0.18, z0 + 0.8), LIGHT_FRONT)
        m.box((-l / 2 - 0.03, sy - 0.15, z0 + 0.6), (-l / 2, sy + 0.15, z0 + 0.8), LIGHT_REAR)
    return m.build()


def bus(w: float, l: float, h: float, style: int) -> Mesh:
    """A rigid bus: a tall box with a window band, a windscreen and wheels."""
    m = MeshBuilder()
    z0 = -h / 2
    prof = np.array([[-l / 2, z0 + 0.35], [l / 2, z0 + 0.35], [l / 2, z0 + h - 0.3], [l / 2 - 0.3, z0 + h],
                     [-l / 2, z0 + h]])
    m.extrude(prof, -w / 2, w / 2, BODY, edge_roles={2: WINDOW})
    band_lo, band_hi = z0 + 0.5 * h, z0 + 0.85 * h
    for sy, n in ((-w / 2 - 0.02, -1), (w / 2 + 0.02, 1)):
        y0, y1 = (sy, sy + 0.03) if n < 0 else (sy - 0.03, sy)
        m.box((-l / 2 + 0.6, y0, band_lo), (l / 2 - 1.5, y1, band_hi), WINDOW)
        if style == 1:  # a livery stripe
            m.box((-l / 2 + 0.3, y0, z0 + 0.7), (l / 2 - 0.3, y1, z0 + 0.95), ACCENT)
    for sx in (l / 2 - 2.2, -l / 2 + 2.5):
        for sy in (-w / 2 + 0.15, w / 2 - 0.15):
            m.wheel(sx, sy, z0, 0.5, 0.3)
    for sy in (-w / 2 + 0.3, w / 2 - 0.3):
        m.box((l / 2, sy - 0.2, z0 + 0.6), (l / 2 + 0.03, sy + 0.2, z0 + 0.8), LIGHT_FRONT)
        m.box((-l / 2 - 0.03, sy - 0.15, z0 + 0.6), (-l / 2, sy + 0.15, z0 + 0.9), LIGHT_REAR)
    return m.build()


def trailer(w: float, l: float, h: float, style: int) -> Mesh:
    """A semi-trailer: a box (0), a tank (1) or a flatbed with containers (2), on rear axles, a
    hitch at the front and landing legs."""
    m = MeshBuilder()
    z0 = -h / 2
    deck = z0 + 1.1
    if style == 0:
        m.box((-l / 2, -w / 2, deck), (l / 2, w / 2, z0 + h), BODY)
    elif style == 1:
        m.box((-l / 2 + 0.3, -w / 2 + 0.3, z0 + 0.9), (l / 2 - 0.3, w / 2 - 0.3, deck), DARK)
        a = np.linspace(0, 2 * np.pi, 8, endpoint=False) + np.pi / 8
        r = min(w / 2, (h - 1.1) / 2)
        prof = np.stack([r * np.cos(a), deck + r + r * np.sin(a)], 1)  # (y, z) circle
        # A tank: extrude the octagon along x by swapping axes (x <-> y) of an extruded profile.
        t = MeshBuilder()
        t.extrude(prof, -l / 2, l / 2, BODY)
        swap = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 1]], np.float64)
        m.add(t.build(), swap)
    else:
        m.box((-l / 2, -w / 2, deck - 0.2), (l / 2, w / 2, deck), DARK)
        m.box((-l / 2 + 0.3, -w / 2 + 0.1, deck), (-0.2, w / 2 - 0.1, z0 + h), BODY)
        m.box((0.2, -w / 2 + 0.1, deck), (l / 2 - 0.3, w / 2 - 0.1, z0 + h - 0.2), ACCENT)
    m.box((-l / 2 + 0.5, -w / 2 + 0.2, z0 + 0.9), (-l / 2 + 3.5, w / 2 - 0.2, deck), DARK)
    for sx in (-l / 2 + 1.2, -l / 2 + 2.4):
        for sy in (-w / 2 + 0.15, w / 2 - 0.15):
            m.wheel(sx, sy, z0, 0.48, 0.3)
    for sy in (-w / 2 + 0.4, w / 2 - 0.6):  # landing legs
        m.box((l / 2 - 3.0, sy, z0), (l / 2 - 2.8, sy + 0.2, deck), DARK)
    for sy in (-w / 2 + 0.25, w / 2 - 0.25):
        m.box((-l / 2 - 0.03, sy - 0.15, deck - 0.2), (-l / 2, sy + 0.15, deck), LIGHT_REAR)
    return m.build()


def construction_vehicle(w: float, l: float, h: float, style: int, boom_angle: float = 0.0) -> Mesh:
    """An excavator (0: tracks, turret, cab, boom and bucket) or a wheel loader (1: body, cab,
    front bucket)."""
    m = MeshBuilder()
    z0 = -h / 2
    if style == 0:
        for sy in (-w / 2, w / 2 - 0.6):
            m.extrude(np.array([[-l / 2 + 0.3, z0], [0.15 * l, z0], [0.2 * l, z0 + 0.45], [0.15 * l, z0 + 0.8],
                                [-l / 2 + 0.3, z0 + 0.8], [-l / 2, z0 + 0.45]]), sy, sy + 0.6, DARK)
        m.box((-l / 2 + 0.2, -w / 2 + 0.2, z0 + 0.8), (0.1 * l, w / 2 - 0.2, z0 + 1.8), BODY)
        m.box((-0.05 * l, -w / 2 + 0.25, z0 + 1.8), (0.1 * l, 0.05, z0 + 0.82 * h), WINDOW, top_role=BODY)
        pivot = (0.1 * l, 0.35, z0 + 1.6)
        t = _rot_y(-0.5 + boom_angle, pivot)
        m.box((0.1 * l, 0.15, z0 + 1.4), (0.1 * l + 0.35 * l, 0.6, z0 + 1.8), ACCENT, transform=t)
        tip = (t @ np.array([0.1 * l + 0.35 * l, 0.35, z0 + 1.6, 1.0]))[:3]
        t2 = _rot_y(1.3 + boom_angle, tip)
        m.box((tip[0], 0.15, tip[2] - 0.2), (min(tip[0] + 0.4 * l - 0.1 * l, l / 2 - 0.1), 0.55, tip[2] + 0.2), ACCENT,
              transform=t2)
        m.box((l / 2 - 0.9, -0.4, z0), (l / 2, 0.9, z0 + 0.8), DARK)
    else:
        m.box((-l / 2, -w / 2 + 0.2, z0 + 0.7), (0.15 * l, w / 2 - 0.2, z0 + 0.55 * h), BODY)
        m.box((-0.25 * l, -w / 2 + 0.35, z0 + 0.55 * h), (0.05 * l, w / 2 - 0.35, z0 + h), WINDOW, top_role=BODY)
        m.box((0.15 * l, -0.3, z0 + 0.9), (0.33 * l, 0.3, z0 + 1.5), ACCENT)
        prof = np.array([[0.33 * l, z0 + 0.05], [l / 2, z0 + 0.05], [l / 2, z0 + 0.3], [0.36 * l, z0 + 1.3]])
        m.extrude(prof, -w / 2, w / 2, DARK)
        for sx in (0.05 * l, -0.32 * l):
            for sy in (-w / 2 + 0.25, w / 2 - 0.25):
                m.wheel(sx, sy, z0, 0.7, 0.5)
    m.box((-l / 2 - 0.02, -w / 2 + 0.3, z0 + 1.0), (-l / 2, -w / 2 + 0.6, z0 + 1.2), LIGHT_REAR)
    m.box((-l / 2 - 0.02, w / 2 - 0.6, z0 + 1.0), (-l / 2, w / 2 - 0.3, z0 + 1.2), LIGHT_REAR)
    return m.build()


def person(w: float, l: float, h: float, phase: float, pose: str = "walk", builder: MeshBuilder | None = None,
           origin=(0.0, 0.0, 0.0)) -> Mesh | None:
    """A pedestrian of height h: legs, torso, arms, head. ``pose`` is walk, stand, sit or ride.

    Limbs swing with the walking ``phase`` (radians). With ``builder``, parts are added to it at
    ``origin`` (the rider of a cycle) and nothing is returned.
    """
    m = builder or MeshBuilder()
    ox, oy, oz = origin
    z0 = oz - (h / 2 if builder is None else 0.0)
    leg_h = 0.47 * h
    torso_w = min(w, 0.5) * 0.85
    swing = 0.45 * np.sin(phase) if pose == "walk" else 0.0
    hip_z = z0 + leg_h
    if pose == "sit":
        hip_z = z0 + 0.45 * h
        for sy in (-0.1, 0.1):
            m.box((ox, oy + sy - 0.07, hip_z - 0.15), (ox + 0.45, oy + sy + 0.07, hip_z), PANTS)
            m.box((ox + 0.35, oy + sy - 0.07, z0), (ox + 0.47, oy + sy + 0.07, hip_z - 0.15), PANTS)
        m.box((ox - 0.2, oy - 0.25, z0), (ox + 0.15, oy + 0.25, hip_z - 0.17), DARK)  # what they sit on
    elif pose == "ride":
        for sy in (-0.12, 0.12):
            m.box((ox - 0.05, oy + sy - 0.07, oz - 0.35), (ox + 0.3, oy + sy + 0.07, oz), PANTS)
        hip_z = oz
    else:
        for sy, sgn in ((-0.1, 1.0), (0.1, -1.0)):
            t = _rot_y(sgn * swing, (ox, oy + sy, hip_z))
            m.box((ox - 0.08, oy + sy - 0.08, z0), (ox + 0.08, oy + sy + 0.08, hip_z), PANTS, transform=t)
    torso_top = hip_z + 0.36 * h
    lean = 0.25 if pose == "ride" else 0.0
    t_torso = _rot_y(lean, (ox, oy, hip_z))
    m.box((ox - 0.12, oy - torso_w / 2, hip_z), (ox + 0.12, oy + torso_w / 2, torso_top), SHIRT, transform=t_torso)
    for sy, sgn in ((-torso_w / 2 - 0.07, -1.0), (torso_w / 2 + 0.07, 1.0)):
        t = t_torso @ _rot_y(sgn * swing + (0.9 if pose == "ride" else 0.0), (ox, oy + sy, torso_top - 0.03))
        m.box((ox - 0.05, oy + sy - 0.05, torso_top - 0.33 * h), (ox + 0.05, oy + sy + 0.05, torso_top - 0.03), SHIRT,
              transform=t)
    head = 0.13 * h
    t_head = t_torso
    m.box((ox - head / 2, oy - head * 0.42, torso_top + 0.02), (ox + head / 2, oy + head * 0.42, torso_top + 0.02 + head),
          SKIN, top_role=HAIR, transform=t_head)
    return None if builder is not None else m.build()


def cycle(w: float, l: float, h: float, motor: bool, rider: bool, phase: float) -> Mesh:
    """A bicycle or motorcycle, with or without its rider (the box includes the rider, as nuScenes)."""
    m = MeshBuilder()
    z0 = -h / 2
    r = (0.33 if not motor else 0.3) * min(1.0, l / 1.8)
    for sx in (l / 2 - r, -l / 2 + r):
        m.wheel(sx, 0.0, z0, r, 0.06 if not motor else 0.14)
    frame_z = z0 + r * (1.6 if not motor else 1.7)
    if motor:
        m.extrude(np.array([[-l / 2 + 0.4, z0 + r], [l / 2 - 0.5, z0 + r], [l / 2 - 0.3, frame_z + 0.3],
                            [-0.1, frame_z + 0.2], [-l / 2 + 0.3, frame_z]]), -0.18, 0.18, BODY)
        m.box((-0.15, -0.12, frame_z + 0.2), (0.3, 0.12, frame_z + 0.35), BODY)
        m.box((l / 2 - 0.25, -0.05, frame_z + 0.15), (l / 2 - 0.15, 0.05, frame_z + 0.35), LIGHT_FRONT)
    else:
        for (xa, za), (xb, zb) in (((-l / 2 + r, z0 + r), (0.05, frame_z)), ((0.05, frame_z), (l / 2 - r, z0 + r)),
                                   ((-0.15, frame_z + 0.15), (0.35, frame_z + 0.15))):
            ang = np.arctan2(zb - za, xb - xa)
            length = np.hypot(xb - xa, zb - za)
            t = _rot_y(-ang, (xa, 0.0, za))
            m.box((xa, -0.03, za - 0.03), (xa + length, 0.03, za + 0.03), BODY, transform=t)
    m.box((l / 2 - r - 0.05, -0.3, frame_z + 0.25), (l / 2 - r + 0.02, 0.3, frame_z + 0.3), DARK)  # handlebar
    if rider:
        person(min(w, 0.6), 0.5, h * 1.0, phase, "ride", builder=m, origin=(-0.15, 0.0, frame_z + 0.2))
    return m.build()


def traffic_cone(w: float, l: float, h: float, style: int) -> Mesh:
    """A cone: a square foot and an octagonal frustum with a reflective band."""
    m = MeshBuilder()
    z0 = -h / 2
    m.box((-w / 2, -w / 2, z0), (w / 2, w / 2, z0 + 0.04), DARK)
    r0, r1 = 0.4 * w, 0.08 * w
    zb0, zb1 = z0 + 0.04 + 0.45 * (h - 0.04), z0 + 0.04 + 0.7 * (h - 0.04)
    rb0 = r0 + (r1 - r0) * 0.45
    rb1 = r0 + (r1 - r0) * 0.7
    m.frustum(8, r0, rb0, z0 + 0.04, zb0, BODY)
    m.frustum(8, rb0, rb1, zb0, zb1, ACCENT if style == 0 else BODY)
    m.frustum(8, rb1, r1, zb1, z0 + h, BODY)
    return m.build()


def barrier(w: float, l: float, h: float, style: int) -> Mesh:
    """A road barrier spanning its width w: a jersey block (0) or striped boards on feet (1)."""
    m = MeshBuilder()
    z0 = -h / 2
    if style == 0:
        prof = np.array([[-l / 2, z0], [l / 2, z0], [l / 2 - 0.05, z0 + 0.25], [0.1, z0 + h], [-0.1, z0 + h],
                         [-l / 2 + 0.05, z0 + 0.25]])
        m.extrude(prof, -w / 2, w / 2, BODY)
        m.box((-l / 2 + 0.02, -w / 2, z0 + 0.45 * h), (l / 2 - 0.02, w / 2, z0 + 0.6 * h), ACCENT)
    else:
        for sy in (-w / 2 + 0.1, w / 2 - 0.25):
            m.box((-l / 2, sy, z0), (l / 2, sy + 0.15, z0 + 0.1), DARK)
            m.box((-0.04, sy + 0.05, z0 + 0.1), (0.04, sy + 0.12, z0 + h), DARK)
        for zb in (z0 + 0.35 * h, z0 + 0.75 * h):
            m.box((-0.05, -w / 2, zb), (0.05, w / 2, zb + 0.22 * h), ACCENT)
    return m.build()


def building(w: float, l: float, h: float, floors: int) -> Mesh:
    """Scenery: a block with rows of windows on its long sides."""
    m = MeshBuilder()
    m.box((-l / 2, -w / 2, -h / 2), (l / 2, w / 2, h / 2), BODY, top_role=DARK)
    floor_h = h / max(floors, 1)
    for k in range(floors):
        zlo = -h / 2 + k * floor_h + 0.35 * floor_h
        zhi = zlo + 0.4 * floor_h
        for sy, n in ((-w / 2 - 0.03, -1), (w / 2, 1)):
            m.box((-l / 2 + 0.8, sy, zlo), (l / 2 - 0.8, sy + 0.03, zhi), WINDOW)
    return m.build()


def tree(w: float, l: float, h: float) -> Mesh:
    """Scenery: a trunk and a two-tier crown."""
    m = MeshBuilder()
    z0 = -h / 2
    m.frustum(6, 0.15, 0.12, z0, z0 + 0.45 * h, DARK)
    m.frustum(7, 0.15 * w, 0.5 * w, z0 + 0.35 * h, z0 + 0.6 * h, BODY)
    m.frustum(7, 0.5 * w, 0.1 * w, z0 + 0.6 * h, z0 + h, BODY)
    return m.build()


def pole(w: float, l: float, h: float) -> Mesh:
    """Scenery: a street-light pole with an arm."""
    m = MeshBuilder()
    z0 = -h / 2
    m.frustum(6, 0.12, 0.08, z0, z0 + h, DARK)
    m.box((-0.05, -0.05, z0 + h - 0.2), (1.5, 0.05, z0 + h - 0.1), DARK)
    return m.build()
