"""A stand-in camera rig, for when no dataset gives one: export parity and `perception bench` without
data (numpy only)."""

from __future__ import annotations

import numpy as np

from perception.geometry import camera_rotation_from_yaw_pitch, make_transform

__all__ = ["ring_rig"]


def ring_rig(cameras: int, input_hw: tuple[int, int], fov_deg: float = 70.0,
             height: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    """``cameras`` cameras evenly around the ego (the first looking forward), 1 m ahead of the origin at
    ``height`` m, looking out horizontally with ``fov_deg`` horizontal field of view.

    -> (K [N, 3, 3] for images of ``input_hw`` (H, W), ego_T_cam [N, 4, 4]).
    """
    H, W = input_hw
    f = 0.5 * W / np.tan(np.radians(fov_deg) / 2)
    K = np.array([[f, 0.0, (W - 1) / 2], [0.0, f, (H - 1) / 2], [0.0, 0.0, 1.0]])
    Ks = np.repeat(K[None], cameras, axis=0)
    Es = np.stack([make_transform(camera_rotation_from_yaw_pitch(2 * np.pi * i / cameras), np.array([1.0, 0.0, height]))
                   for i in range(cameras)])
    return Ks, Es
