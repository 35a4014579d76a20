"""Reading the files a nuScenes sample points to: camera JPEGs, LIDAR_TOP .pcd.bin, the map PNG.

Every failure is a :class:`DatasetError` naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from perception.data.nuscenes_tables import DatasetError

__all__ = ["MapMask", "load_lidar_points", "read_image", "read_map_mask"]

LIDAR_FIELDS = 5  # x, y, z (metres, lidar frame), intensity, ring index; float32 each


def _read_bytes(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise DatasetError(f"{path}: {what} file missing")
    try:
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read {what} file ({exc})") from exc
    if data.size == 0:
        raise DatasetError(f"{path}: {what} file is empty")
    return data


def read_image(path: str | Path, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """A camera image as BGR uint8 [H, W, 3]; raises a :class:`DatasetError` naming a missing,
    undecodable or truncated file, or one whose size is not ``expected_hw`` (the size its
    calibration belongs to). The one decoder of the stack: :func:`perception.preprocess.decode_image`."""
    from perception.preprocess import check_size, decode_image  # preprocess imports this package's errors

    image = decode_image(Path(path))
    if expected_hw is not None:
        check_size(image, expected_hw, 1, str(path))
    return image


def load_lidar_points(path: str | Path) -> np.ndarray:
    """Points of a nuScenes .pcd.bin: float32 [M, 5] (x, y, z, intensity, ring) in the lidar frame."""
    path = Path(path)
    data = _read_bytes(path, "lidar")
    if data.size % (4 * LIDAR_FIELDS) != 0:
        raise DatasetError(
            f"{path}: lidar file has {data.size} bytes, not a whole number of {LIDAR_FIELDS}-float32 points"
        )
    return data.view(np.float32).reshape(-1, LIDAR_FIELDS).copy()


@dataclass(frozen=True, eq=False)
class MapMask:
    """A nuScenes map raster (the devkit's MapMask convention).

    ``mask`` is uint8 [H, W], non-zero where drivable (nuScenes writes 255), 0 elsewhere. A global point (x, y)
    lies at column x / resolution and row H - y / resolution: ``pix_T_global`` [4, 4] maps global
    metres to (col, row, z).
    """

    token: str
    path: Path
    mask: np.ndarray  # [H, W] uint8
    resolution: float  # metres per pixel (0.1 in nuScenes)

    @property
    def pix_T_global(self) -> np.ndarray:
        """[4, 4] global (x, y, z) metres -> (col, row, z) pixels of :attr:`mask`."""
        r = 1.0 / self.resolution
        return np.array(
            [[r, 0, 0, 0], [0, -r, 0, self.mask.shape[0]], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float64
        )

    def is_drivable(self, xy_global: np.ndarray) -> np.ndarray:
        """Whether global points (x, y) [..., 2] fall on foreground pixels (False off the map): bool [...].

        Pixel coordinates are rounded, as the devkit's ``MapMask.is_on_mask`` does.
        """
        xy = np.asarray(xy_global, dtype=np.float64)
        col = np.round(xy[..., 0] / self.resolution).astype(np.int64)
        row = np.round(self.mask.shape[0] - xy[..., 1] / self.resolution).astype(np.int64)
        inside = (col >= 0) & (col < self.mask.shape[1]) & (row >= 0) & (row < self.mask.shape[0])
        out = np.zeros(xy.shape[:-1], dtype=bool)
        out[inside] = self.mask[row[inside], col[inside]] > 0
        return out


def read_map_mask(token: str, path: Path, resolution: float = 0.1) -> MapMask:
    """Read a map PNG as a :class:`MapMask` (grayscale; any non-zero value counts as foreground)."""
    if resolution <= 0:
        raise ValueError(f"map resolution must be > 0 m/px, got {resolution}")
    if not path.is_file():
        raise DatasetError(f"{path}: map file missing (map {token!r})")
    mask = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    if mask is None:
        raise DatasetError(f"{path}: map file is corrupt (OpenCV cannot decode it; map {token!r})")
    mask.setflags(write=False)
    return MapMask(token=token, path=path, mask=mask, resolution=resolution)
