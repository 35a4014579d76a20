"""The typed records of a nuScenes dataset as the reader hands them out: scenes, samples, camera and
lidar key frames (with their calibration and ego poses as ``dst_T_src`` matrices)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.geometry import invert_rigid

__all__ = ["CameraFrame", "LidarFrame", "Sample", "Scene"]


@dataclass(frozen=True, eq=False)
class Scene:
    """One scene (a drive of ~20 s); ``sample_tokens`` are in time order."""

    token: str
    name: str  # e.g. "scene-0061"
    description: str  # free text; our synthetic world writes its conditions here ("night, rain")
    log_token: str
    location: str  # the log's location, e.g. "singapore-onenorth"
    map_token: str | None  # the map whose log_tokens list this scene's log (None if no map does)
    sample_tokens: tuple[str, ...]


@dataclass(frozen=True, eq=False)
class CameraFrame:
    """One camera key frame. Arrays are read-only."""

    token: str  # sample_data token
    channel: str  # e.g. "CAM_FRONT"
    root: Path  # the dataset root
    filename: str  # relative to root, as sample_data.json writes it
    K: np.ndarray  # [3, 3] intrinsics (pix_T_cam) for an image of width x height
    ego_T_cam: np.ndarray  # [4, 4] camera (optical: x right, y down, z forward) -> ego at this frame's time
    global_T_ego: np.ndarray  # [4, 4] ego at this frame's time -> global
    timestamp: int  # microseconds
    width: int
    height: int

    @property
    def path(self) -> Path:
        """Absolute path of the JPEG."""
        return self.root / self.filename


@dataclass(frozen=True, eq=False)
class LidarFrame:
    """The LIDAR_TOP key frame. Arrays are read-only."""

    token: str  # sample_data token
    channel: str  # "LIDAR_TOP"
    root: Path  # the dataset root
    filename: str  # relative to root: a .pcd.bin of float32 (x, y, z, intensity, ring) in the lidar frame
    ego_T_lidar: np.ndarray  # [4, 4] lidar -> ego at this frame's time
    global_T_ego: np.ndarray  # [4, 4] ego at this frame's time -> global (the sample's reference pose)
    timestamp: int  # microseconds

    @property
    def path(self) -> Path:
        """Absolute path of the point cloud."""
        return self.root / self.filename


@dataclass(frozen=True, eq=False)
class Sample:
    """One annotated key frame: all cameras and the lidar near ``timestamp``."""

    token: str
    index: int  # position in NuScenesDataset.samples
    scene_token: str
    scene_index: int  # position in its scene, 0 first
    timestamp: int  # microseconds
    prev: str  # sample token, '' at the start of a scene
    next: str  # sample token, '' at the end of a scene
    cameras: Mapping[str, CameraFrame]  # channel -> frame, in schema.CAMERA_NAMES order first (do not mutate)
    lidar: LidarFrame
    annotation_tokens: tuple[str, ...]
    # channel -> the non-key camera frames (sweeps) after this key frame and before the next, in time
    # order; empty when the dataset has no sweeps.
    sweeps: Mapping[str, tuple[CameraFrame, ...]] = field(default_factory=dict)

    @property
    def global_T_ego(self) -> np.ndarray:
        """[4, 4] reference ego frame (the LIDAR_TOP ego pose) -> global; boxes are in this ego frame."""
        return self.lidar.global_T_ego

    def ref_T_cam(self, channel: str) -> np.ndarray:
        """[4, 4] camera ``channel`` -> reference ego frame, including the ego motion between the
        camera's and the lidar's timestamps: ``inv(global_T_ref) @ global_T_ego_cam @ ego_T_cam``."""
        cam = self.cameras[channel]
        return invert_rigid(self.global_T_ego) @ cam.global_T_ego @ cam.ego_T_cam

    def cam_T_ref(self, channel: str) -> np.ndarray:
        """[4, 4] reference ego frame -> camera ``channel`` (the inverse of :meth:`ref_T_cam`)."""
        return invert_rigid(self.ref_T_cam(channel))
