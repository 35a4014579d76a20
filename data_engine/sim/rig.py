"""The sensor rig of the synthetic world: six cameras laid out like nuScenes', and a top lidar.

Intrinsics follow nuScenes (fx ~ 1266 px at 1600x900 for the five narrow cameras, ~ 809 px for the
wide CAM_BACK) scaled to any resolution; extrinsics are nuScenes-like mounting positions and
headings. Everything is expressed as ``ego_T_sensor`` 4x4 transforms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from perception.schema import CAMERA_NAMES, LIDAR_NAME
from perception.geometry import camera_rotation_from_yaw_pitch, make_transform, rotz

# name -> (x, y, z mounting position in the ego frame [m], heading [deg, +left], pitch [deg, +down],
#          focal length at 1600 px width [px])
_MOUNTS: dict[str, tuple[float, float, float, float, float, float]] = {
    "CAM_FRONT": (1.70, 0.00, 1.51, 0.0, 0.5, 1266.0),
    "CAM_FRONT_RIGHT": (1.55, -0.49, 1.50, -55.0, 0.5, 1260.0),
    "CAM_BACK_RIGHT": (1.03, -0.48, 1.56, -110.0, 0.5, 1260.0),
    "CAM_BACK": (0.03, 0.00, 1.57, 180.0, 0.5, 809.0),
    "CAM_BACK_LEFT": (1.05, 0.48, 1.56, 110.0, 0.5, 1260.0),
    "CAM_FRONT_LEFT": (1.52, 0.49, 1.51, 55.0, 0.5, 1260.0),
}
LIDAR_MOUNT = (0.94, 0.0, 1.84, -90.0)  # x, y, z [m], heading [deg]: lidar x points to the ego's right


@dataclass(frozen=True)
class CameraSpec:
    """One camera of the rig."""

    name: str
    K: np.ndarray  # [3, 3] pix_T_cam
    ego_T_cam: np.ndarray  # [4, 4]
    width: int
    height: int


@dataclass(frozen=True)
class Rig:
    """The six cameras and the lidar."""

    cameras: tuple[CameraSpec, ...]
    ego_T_lidar: np.ndarray  # [4, 4]

    def camera(self, name: str) -> CameraSpec:
        for cam in self.cameras:
            if cam.name == name:
                return cam
        raise KeyError(f"no camera named {name!r}; the rig has {[c.name for c in self.cameras]}")


def nuscenes_like_rig(width: int = 800, height: int = 450) -> Rig:
    """The rig at a given image size; focal lengths scale with the width, principal point centred."""
    if width < 32 or height < 32:
        raise ValueError(f"image size must be at least 32x32 px, got {width}x{height}")
    scale = width / 1600.0
    cameras = []
    for name in CAMERA_NAMES:
        x, y, z, heading, pitch, focal = _MOUNTS[name]
        f = focal * scale
        K = np.array([[f, 0.0, width / 2.0], [0.0, f, height / 2.0], [0.0, 0.0, 1.0]])
        rot = camera_rotation_from_yaw_pitch(np.deg2rad(heading), np.deg2rad(pitch))
        cameras.append(CameraSpec(name, K, make_transform(rot, np.array([x, y, z])), width, height))
    lx, ly, lz, lyaw = LIDAR_MOUNT
    return Rig(tuple(cameras), make_transform(rotz(np.deg2rad(lyaw)), np.array([lx, ly, lz])))


SENSOR_CHANNELS: tuple[tuple[str, str], ...] = tuple((c, "camera") for c in CAMERA_NAMES) + ((LIDAR_NAME, "lidar"),)
