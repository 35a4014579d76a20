"""One multi-camera frame from raw camera data to the model's inputs: decoding, preprocessing, masking.

numpy, cv2 and the shared preprocessing (:mod:`perception.preprocess`) only; never torch.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception.errors import BevStackError
from perception.preprocess import (ImageDecodeError, auto_reduce, check_size, decode_affine, decode_image, preprocess_hwc,
                                   to_chw)

__all__ = ["Camera", "PreparedFrame", "RuntimeInputError", "prepare_cameras"]


class RuntimeInputError(BevStackError):
    """Inputs the model cannot take: the message names the camera, input or field and what was expected."""


@dataclass(frozen=True)
class Camera:
    """One camera's calibration at its native image size (as the dataset's calibrated_sensor holds it)."""

    K: np.ndarray  # [3, 3] intrinsics, px
    ego_T_cam: np.ndarray  # [4, 4] camera (optical) -> ego
    image_hw: tuple[int, int] | None = None  # native (h, w) px; lets JPEGs decode at reduced size


@dataclass
class PreparedFrame:
    """One multi-camera frame as the model takes it, and what it took to get there."""

    images: np.ndarray  # uint8 [N, 3, H, W]
    K: np.ndarray  # float32 [N, 3, 3] at the input size
    ego_T_cam: np.ndarray  # float32 [N, 4, 4]
    cam_valid: np.ndarray  # bool [N]
    masked: dict[str, str] = field(default_factory=dict)  # camera -> why it is masked
    timings_ms: dict[str, float] = field(default_factory=dict)  # "jpeg_decode", "preprocess"


def prepare_cameras(frames: Mapping[str, bytes | np.ndarray | str | Path | None], rig: Mapping[str, Camera],
                    names: Sequence[str], input_hw: tuple[int, int], timestamp: float | None = None,
                    camera_timestamps: Mapping[str, float] | None = None, max_camera_age: float = 0.25) -> PreparedFrame:
    """Decode and preprocess the cameras ``names`` of one frame to ``input_hw`` (the shared preprocessing).

    frames: camera name -> JPEG/PNG bytes, a path, a decoded BGR uint8 image [h, w, 3] (any size;
    its Camera.K must be for that size), or None (missing). rig: camera name -> Camera, for every
    camera in ``names``. A camera missing from ``frames``, None, undecodable, or (given the times)
    older than ``max_camera_age`` s is masked. JPEGs of a camera whose ``image_hw`` is known decode
    at reduced size when the input size allows (:func:`perception.preprocess.auto_reduce`).
    """
    unknown = sorted(set(frames) - set(names))
    if unknown:
        raise RuntimeInputError(f"unknown camera(s) {unknown}; the model's cameras are {list(names)}")
    missing_rig = [n for n in names if n not in rig]
    if missing_rig:
        raise RuntimeInputError(f"rig: no calibration for camera(s) {missing_rig}")
    N, (H, W) = len(names), input_hw
    images = np.zeros((N, 3, H, W), np.uint8)
    K_out = np.zeros((N, 3, 3), np.float32)
    E_out = np.zeros((N, 4, 4), np.float32)
    valid = np.zeros(N, bool)
    masked: dict[str, str] = {}
    todo: list[tuple[int, str, Any]] = []  # (camera index, name, frame data) to decode
    for i, name in enumerate(names):
        cam = rig[name]
        K = np.asarray(cam.K, np.float64)
        E = np.asarray(cam.ego_T_cam, np.float64)
        if K.shape != (3, 3) or E.shape != (4, 4):
            raise RuntimeInputError(f"rig[{name!r}]: expected K [3, 3] and ego_T_cam [4, 4], "
                                    f"got {list(K.shape)} and {list(E.shape)}")
        E_out[i] = E
        K_out[i] = K  # replaced by the preprocessed K below; kept for masked cameras' geometry
        data = frames.get(name)
        if data is None:
            masked[name] = "no frame"
            continue
        if timestamp is not None and camera_timestamps is not None and name in camera_timestamps:
            age = float(timestamp) - float(camera_timestamps[name])
            if age > max_camera_age:
                masked[name] = f"stale: {age:.3f} s old (max {max_camera_age} s)"
                continue
        todo.append((i, name, data))

    def decode(job: tuple[int, str, Any]) -> tuple[np.ndarray, int]:
        i, name, data = job
        cam = rig[name]
        if isinstance(data, np.ndarray):
            if data.ndim != 3 or data.shape[2] != 3 or data.dtype != np.uint8:
                raise RuntimeInputError(f"frames[{name!r}]: expected a BGR uint8 image [h, w, 3], "
                                        f"got {data.dtype} {list(data.shape)}")
            if cam.image_hw is not None and tuple(data.shape[:2]) != tuple(cam.image_hw):
                raise RuntimeInputError(f"frames[{name!r}]: image is {data.shape[1]}x{data.shape[0]} px, its "
                                        f"calibration is for {cam.image_hw[1]}x{cam.image_hw[0]} px")
            return data, 1
        reduce = auto_reduce(tuple(cam.image_hw), (H, W)) if cam.image_hw is not None else 1
        encoded = data if isinstance(data, (bytes, bytearray, memoryview)) else Path(data)
        image = decode_image(encoded, reduce, name=f"frames[{name!r}]" if not isinstance(encoded, Path) else None)
        if cam.image_hw is not None:
            check_size(image, tuple(cam.image_hw), reduce, f"frames[{name!r}]")
        return image, reduce

    # Cameras decode, then preprocess, side by side on threads (OpenCV releases the GIL).
    pool = _camera_pool()
    t0 = time.perf_counter()
    decoded = list(pool.map(_catching(decode), todo))
    t1 = time.perf_counter()
    jobs = []
    for (i, name, _), result in zip(todo, decoded):
        if isinstance(result, ImageDecodeError):
            masked[name] = f"undecodable: {result}"
        else:
            jobs.append((i, *result))

    def prepare(job: tuple[int, np.ndarray, int]) -> tuple[int, np.ndarray, np.ndarray]:
        i, image, reduce = job
        rgb, K_pre = preprocess_hwc(image, decode_affine(reduce) @ np.asarray(rig[names[i]].K, np.float64), (H, W))
        return i, to_chw(rgb), K_pre

    for i, chw, K_pre in pool.map(prepare, jobs):
        images[i] = chw
        K_out[i] = K_pre
        valid[i] = True
    t2 = time.perf_counter()
    return PreparedFrame(images, K_out, E_out, valid, masked,
                         {"jpeg_decode": 1e3 * (t1 - t0), "preprocess": 1e3 * (t2 - t1)})


_POOL: ThreadPoolExecutor | None = None


def _camera_pool() -> ThreadPoolExecutor:
    """One thread per core, shared by every frame of the process."""
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max_workers=max(1, min(8, os.cpu_count() or 1)), thread_name_prefix="camera")
    return _POOL


def _catching(fn: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``fn`` returning an :class:`ImageDecodeError` instead of raising it (a masked camera, not a failed frame)."""

    def call(arg: Any) -> Any:
        try:
            return fn(arg)
        except ImageDecodeError as exc:
            return exc

    return call
