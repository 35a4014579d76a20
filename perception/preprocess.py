"""Image preprocessing, written once: a camera JPEG becomes the model's input array.

Training (the Dataset) and the edge runtime both call this module, so an image is the same array in
both places. Numpy and cv2 only: no torch, no albumentations (the edge imports it).

Pipeline of one camera::

    bytes/path --decode_image(reduce)--> BGR uint8 [h, w, 3]          K_dec = decode_affine(reduce) @ K
               --ResizeCrop-----------> BGR uint8 [H, W, 3]          K'    = plan.dst_T_src @ K_dec
               --RGB, channels first--> RGB uint8 [3, H, W]           (normalization is in the model graph)

Pixel convention (cv2's, used by every 3x3 pixel affine here): integer coordinates are pixel centres;
pixel ``(u, v)`` covers ``[u - 0.5, u + 0.5) x [v - 0.5, v + 0.5)``. A pixel affine ``dst_T_src`` maps
source pixel coordinates to destination ones, so intrinsics follow as ``K' = dst_T_src @ K``.

Resize and crop (:class:`ResizeCrop`): scale so the width matches (``sx = W / w``), round the scaled
height to whole rows (``sy = round(h * sx) / h``, which can differ from ``sx`` by < 0.5 / h), then crop
rows from the TOP so the bottom (the road) is kept, or pad black rows at the top when the scaled image
is shorter than ``H``. Interpolation: ``cv2.INTER_AREA`` when shrinking (anti-aliased box filter),
``cv2.INTER_LINEAR`` when enlarging; both map source centre ``x`` to ``(x + 0.5) * s - 0.5``.

Reduced JPEG decoding (``reduce`` in 2, 4, 8) lets libjpeg scale in the DCT domain, which is several
times faster than decoding at full size. Its output pixel ``i`` averages source pixels
``[r*i, r*i + r)``, so ``x' = (x + 0.5) / r - 0.5`` exactly (measured: < 0.06 px), whatever the
rounding of the image size (libjpeg rounds it up). Its pixels differ slightly from a full decode
followed by INTER_AREA, so training and the device must use the same ``reduce`` for the same input
(choose it with :func:`auto_reduce` on both sides, or store it with the preset).

A JPEG cut short is an error, also when an end-of-image marker was appended after the cut: libjpeg
then fills the missing blocks with zero coefficients (mid-grey) and only prints a warning, which OpenCV
does not report. perception/jpeg_check.py catches this at little cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from perception.errors import DatasetError
from perception.jpeg_check import decode_jpeg_checked

__all__ = [
    "ImageDecodeError",
    "ResizeCrop",
    "auto_reduce",
    "decode_affine",
    "decode_image",
    "load_camera",
    "preprocess",
    "preprocess_cameras",
    "preprocess_hwc",
    "to_chw",
]

_REDUCE_FLAGS = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_JPEG_MAGIC = b"\xff\xd8"


class ImageDecodeError(DatasetError):
    """An image is missing, empty, truncated or undecodable; the message names the file.

    A :class:`~perception.errors.DatasetError` (hence a ``ValueError``), so the
    training side catches it with the dataset's other errors.
    """


# --------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------


def decode_image(data: bytes | Path | str, reduce: int = 1, name: str | None = None) -> np.ndarray:
    """Decode a camera image to BGR uint8 [h, w, 3], optionally reduced in size while decoding.

    data: the encoded bytes, or a path to read them from (named in errors).
    reduce: 1 (full size) or 2, 4, 8 (JPEG only: libjpeg's DCT-domain scaling; the result has
        ``ceil(h / r)`` x ``ceil(w / r)`` pixels). Intrinsics of the decoded image are
        ``decode_affine(reduce) @ K``.
    name: how errors name the image (default: the path, or ``<image bytes>``), e.g. the camera and frame.

    Raises :class:`ImageDecodeError` naming the image when it is missing, empty, undecodable
    (``cv2.imdecode`` returns None) or a JPEG whose data ends early: no end-of-image marker, or an
    entropy-coded segment cut short (libjpeg reports it as a warning only, see :func:`_decode_jpeg`).
    """
    if reduce not in _REDUCE_FLAGS:
        raise ValueError(f"reduce must be one of {sorted(_REDUCE_FLAGS)}, got {reduce}")
    if isinstance(data, (bytes, bytearray, memoryview)):
        name = name or "<image bytes>"
        buf = np.frombuffer(data, dtype=np.uint8)
    else:
        path = Path(data)
        name = name or str(path)
        if not path.is_file():
            raise ImageDecodeError(f"{name}: image file missing")
        try:
            buf = np.fromfile(path, dtype=np.uint8)
        except OSError as exc:
            raise ImageDecodeError(f"{name}: cannot read image file ({exc})") from exc
    if buf.size == 0:
        raise ImageDecodeError(f"{name}: image file is empty (0 bytes)")
    is_jpeg = buf[:2].tobytes() == _JPEG_MAGIC
    # A JPEG cut short has no end-of-image marker near its end. Entropy-coded data never holds FF D9.
    if is_jpeg and b"\xff\xd9" not in buf[-4096:].tobytes():
        raise ImageDecodeError(f"{name}: image file is corrupt (truncated JPEG, no end-of-image marker)")
    if reduce > 1 and not is_jpeg:
        # OpenCV would decode other formats at full size and resize them with its own rounding,
        # which breaks the exact 1/r scale that decode_affine promises.
        raise ImageDecodeError(f"{name}: not a JPEG, and reduce={reduce} needs one (DCT-domain scaling); "
                               "decode other formats with reduce=1")
    image = _decode_jpeg(buf, _REDUCE_FLAGS[reduce], name) if is_jpeg else cv2.imdecode(buf, _REDUCE_FLAGS[reduce])
    if image is None:
        raise ImageDecodeError(f"{name}: image file is corrupt (OpenCV cannot decode it)")
    return image


def _decode_jpeg(buf: np.ndarray, flags: int, name: str) -> np.ndarray | None:
    """``cv2.imdecode`` of a JPEG that raises :class:`ImageDecodeError` when libjpeg ran out of data."""
    image, damage = decode_jpeg_checked(buf, flags)
    if damage is not None:
        raise ImageDecodeError(f"{name}: image file is corrupt (JPEG data cut short or damaged; libjpeg: {damage})")
    return image


def decode_affine(reduce: int) -> np.ndarray:
    """``dec_T_src`` [3, 3]: full-size pixels -> pixels of an image decoded with ``reduce``.

    ``x' = (x + 0.5) / r - 0.5`` on both axes (pixel-centre convention), so ``K_dec = decode_affine(r) @ K``.
    """
    if reduce not in _REDUCE_FLAGS:
        raise ValueError(f"reduce must be one of {sorted(_REDUCE_FLAGS)}, got {reduce}")
    s = 1.0 / reduce
    t = 0.5 * s - 0.5
    return np.array([[s, 0.0, t], [0.0, s, t], [0.0, 0.0, 1.0]])


def auto_reduce(src_hw: tuple[int, int], out_hw: tuple[int, int]) -> int:
    """The largest ``reduce`` in (1, 2, 4, 8) whose decoded width is still >= the output width.

    Decoding then never throws away resolution the resize would keep (the resize still shrinks or
    keeps the size, with INTER_AREA). Training and the device must agree on this choice.
    """
    w, W = src_hw[1], out_hw[1]
    return max(r for r in _REDUCE_FLAGS if -(-w // r) >= W or r == 1)


# --------------------------------------------------------------------------------------------------
# Resize and crop
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResizeCrop:
    """How a source image of ``src_hw`` becomes ``out_hw``: resize to width W, crop or pad rows at the top.

    Build with :meth:`plan`. ``top > 0`` crops that many rows off the top of the resized image;
    ``top < 0`` pads ``-top`` black rows above it.
    """

    src_hw: tuple[int, int]  # (h, w) of the source image, px
    out_hw: tuple[int, int]  # (H, W) of the output, px
    resized_hw: tuple[int, int]  # (round(h * W / w), W): the size cv2.resize produces
    top: int  # rows cropped from the top of the resized image (negative: rows padded at the top)

    @classmethod
    def plan(cls, src_hw: tuple[int, int], out_hw: tuple[int, int]) -> ResizeCrop:
        """The plan for a source (h, w) and an output (H, W) (from ``preset.input``)."""
        h, w = int(src_hw[0]), int(src_hw[1])
        H, W = int(out_hw[0]), int(out_hw[1])
        if min(h, w, H, W) < 1:
            raise ValueError(f"image sizes must be positive, got source {h}x{w} and output {H}x{W}")
        hr = max(1, int(round(h * W / w)))
        return cls((h, w), (H, W), (hr, W), hr - H)

    @property
    def interpolation(self) -> int:
        """cv2.INTER_AREA when shrinking the width, cv2.INTER_LINEAR otherwise."""
        return cv2.INTER_AREA if self.resized_hw[1] < self.src_hw[1] else cv2.INTER_LINEAR

    @property
    def dst_T_src(self) -> np.ndarray:
        """[3, 3] pixel affine, source pixels -> output pixels (pixel-centre convention); K' = A @ K."""
        sy = self.resized_hw[0] / self.src_hw[0]
        sx = self.resized_hw[1] / self.src_hw[1]
        return np.array(
            [[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5 - self.top], [0.0, 0.0, 1.0]], dtype=np.float64
        )

    def apply(self, image: np.ndarray) -> np.ndarray:
        """Resize, then crop or pad rows at the top: [h, w, C] -> [H, W, C] (same dtype)."""
        if image.shape[:2] != self.src_hw:
            h, w = self.src_hw
            raise ValueError(f"image is {image.shape[0]}x{image.shape[1]}, the plan expects {h}x{w}")
        hr, W = self.resized_hw
        out = image if (hr, W) == self.src_hw else cv2.resize(image, (W, hr), interpolation=self.interpolation)
        if out.ndim == 2:  # cv2 drops a single channel axis
            out = out[..., None]
        if self.top >= 0:
            return np.ascontiguousarray(out[self.top :])
        pad = np.zeros((-self.top,) + out.shape[1:], dtype=out.dtype)
        return np.concatenate([pad, out], axis=0)


# --------------------------------------------------------------------------------------------------
# The one preprocessing function
# --------------------------------------------------------------------------------------------------


def preprocess_hwc(image_bgr: np.ndarray, K: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """BGR uint8 [h, w, 3] with intrinsics K [3, 3] -> (RGB uint8 [H, W, 3], K' [3, 3]).

    The layout augmentation works on; :func:`preprocess` is this followed by :func:`to_chw`.
    """
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3 or image_bgr.dtype != np.uint8:
        raise ValueError(f"expected a BGR uint8 image [h, w, 3], got {image_bgr.dtype} {image_bgr.shape}")
    plan = ResizeCrop.plan(image_bgr.shape[:2], out_hw)
    rgb = np.ascontiguousarray(plan.apply(image_bgr)[..., ::-1])
    return rgb, plan.dst_T_src @ np.asarray(K, dtype=np.float64)


def to_chw(images: np.ndarray) -> np.ndarray:
    """Channels first: [..., H, W, 3] -> [..., 3, H, W] (contiguous, same dtype)."""
    return np.ascontiguousarray(np.moveaxis(images, -1, -3))


def preprocess(image_bgr: np.ndarray, K: np.ndarray, out_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One camera: BGR uint8 [h, w, 3], K [3, 3] -> (RGB uint8 [3, H, W], K' = dst_T_src @ K [3, 3]).

    ``out_hw`` is ``(preset.input.height, preset.input.width)``. Normalization happens in the model.
    """
    rgb, K_out = preprocess_hwc(image_bgr, K, out_hw)
    return to_chw(rgb), K_out


def preprocess_cameras(
    images: Sequence[np.ndarray], Ks: np.ndarray | Sequence[np.ndarray], out_hw: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """N cameras (sizes may differ): BGR uint8 [h_i, w_i, 3] each, K [N, 3, 3] -> ([N, 3, H, W], [N, 3, 3])."""
    Ks = np.asarray(Ks, dtype=np.float64)
    if len(images) != len(Ks):
        raise ValueError(f"{len(images)} images but {len(Ks)} intrinsics")
    H, W = out_hw
    out = np.empty((len(images), 3, H, W), dtype=np.uint8)
    K_out = np.empty((len(images), 3, 3), dtype=np.float64)
    for i, (image, K) in enumerate(zip(images, Ks)):
        out[i], K_out[i] = preprocess(image, K, out_hw)
    return out, K_out


def check_size(image: np.ndarray, expected_hw: tuple[int, int], reduce: int, name: str) -> None:
    """Raise :class:`ImageDecodeError` when a decoded image is not the size its intrinsics belong to
    (a downsampled copy of a dataset would otherwise get silently wrong K)."""
    h, w = (int(np.ceil(v / reduce)) for v in expected_hw)
    if image.shape[:2] != (h, w):
        at = f" decoded at 1/{reduce}" if reduce > 1 else ""
        raise ImageDecodeError(
            f"{name}: image size does not match its calibration: it is {image.shape[1]}x{image.shape[0]} px{at}, "
            f"a {expected_hw[1]}x{expected_hw[0]} px image (as sample_data records it) gives {w}x{h} px"
        )


def load_camera(
    data: bytes | Path | str, K: np.ndarray, out_hw: tuple[int, int], reduce: int = 1,
    expected_hw: tuple[int, int] | None = None, name: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Decode and preprocess one camera: -> (RGB uint8 [H, W, 3], K' [3, 3]).

    ``K`` is the intrinsics of the full-size image (as calibration stores it); ``reduce`` is the
    JPEG decode reduction (see :func:`auto_reduce`); ``expected_hw`` is the full-size image size K
    belongs to (checked when given); ``name`` names the image in errors (default: the path).
    Chain :func:`to_chw` for the model layout.
    """
    image = decode_image(data, reduce, name)
    if expected_hw is not None:
        check_size(image, expected_hw, reduce, name or (str(data) if not isinstance(data, (bytes, bytearray))
                                                       else "<image bytes>"))
    return preprocess_hwc(image, decode_affine(reduce) @ np.asarray(K, dtype=np.float64), out_hw)
