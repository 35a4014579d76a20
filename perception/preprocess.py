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
does not report. See :func:`decode_image` for how this is caught at little cost.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from perception.errors import DatasetError

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


# How a JPEG cut short is caught. libjpeg zero-fills the blocks it has no data for and prints a warning on
# stderr, which OpenCV neither returns nor raises. In a sequential JPEG whose one scan holds every
# component (what cameras, nuScenes and cv2 write) the last MCU decoded is the bottom-right one, so a scan
# cut short leaves the bottom-right pixel at luma 128 (up to rounding: chroma upsampling may mix in a
# neighbour's chroma, which moves colour, not luma). Only images whose corner has that luma (1 in 720 of
# the synthetic world's) are decoded a second time, alone and with stderr captured, to read libjpeg's
# own verdict; other layouts (progressive, several scans, arithmetic coding) are always decoded that way.
# Not caught: a cut inside the last MCU's own data (the last few tens of bytes), which leaves that one
# MCU (16x16 px at the corner) partly wrong.
_LIBJPEG_DAMAGE = ("Premature end of JPEG file", "Corrupt JPEG data")
_LIBJPEG_HARMLESS = ("extraneous bytes before marker",)  # data after the image, which is complete


class _DecodeGate:
    """Decodes run side by side (shared); a decode whose stderr is captured runs alone (exclusive), so
    that what it captures is its own. Waiting exclusive decodes hold back new shared ones."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._shared = 0
        self._exclusive = False
        self._waiting = 0

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            while self._exclusive or self._waiting:
                self._cond.wait()
            self._shared += 1
        try:
            yield
        finally:
            with self._cond:
                self._shared -= 1
                if not self._shared:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            while self._exclusive or self._shared:
                self._cond.wait()
            self._waiting -= 1
            self._exclusive = True
        try:
            yield
        finally:
            with self._cond:
                self._exclusive = False
                self._cond.notify_all()


_GATE = _DecodeGate()


def _jpeg_layout(data: bytes) -> tuple[bool, bool]:
    """(whether a JPEG is Huffman-coded sequential, SOF0 or SOF1, with its first scan holding all of its
    1 or 3 components, hence its only scan; whether it has an EXIF segment), from its marker segments."""
    i, n, components, exif = 2, len(data), 0, False
    while i + 4 <= n:
        if data[i] != 0xFF:
            return False, exif
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        length = (data[i + 2] << 8) | data[i + 3]
        if marker == 0xE1 and data[i + 4:i + 10] == b"Exif\x00\x00":
            exif = True
        elif marker in (0xC0, 0xC1) and i + 10 <= n:
            components = data[i + 9]
        elif 0xC2 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return False, exif  # progressive, lossless, hierarchical or arithmetic-coded
        elif marker == 0xDA:
            return components in (1, 3) and i + 5 <= n and data[i + 4] == components, exif
        i += 2 + length
    return False, exif


def _corner_may_be_zero_filled(image: np.ndarray, exif: bool) -> bool:
    """Whether the bottom-right pixel (any corner when EXIF may have rotated the image) has luma 128."""
    for y, x in ((-1, -1), (0, 0), (0, -1), (-1, 0)) if exif else ((-1, -1),):
        b, g, r = (int(v) for v in image[y, x])
        if abs(0.114 * b + 0.587 * g + 0.299 * r - 128.0) <= 0.51:
            return True
    return False


@contextlib.contextmanager
def _stderr_captured() -> Iterator[list[str]]:
    """Send file descriptor 2 to a temporary file while the block runs; the text lands in the list."""
    out: list[str] = []
    if sys.stderr is not None:
        sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as tmp:
            os.dup2(tmp.fileno(), 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                tmp.seek(0)
                out.append(tmp.read().decode(errors="replace"))
    finally:
        os.close(saved)


def _decode_captured(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, str | None]:
    """Decode alone with stderr captured: (image or None, libjpeg's first message saying the data is
    damaged, or None). Other text written to stderr meanwhile is passed on."""
    with _GATE.exclusive():
        try:
            with _stderr_captured() as captured:
                image = cv2.imdecode(buf, flags)
        except OSError:  # no stderr to capture (descriptor 2 closed): libjpeg's verdict is not available
            return cv2.imdecode(buf, flags), None
    damage, others = None, []
    for line in "".join(captured).splitlines():
        if line.startswith(_LIBJPEG_DAMAGE):
            if not any(h in line for h in _LIBJPEG_HARMLESS):
                damage = damage or line.strip()
        elif line:
            others.append(line + "\n")
    if others:
        os.write(2, "".join(others).encode())
    return image, damage


def _decode_jpeg(buf: np.ndarray, flags: int, name: str) -> np.ndarray | None:
    """``cv2.imdecode`` of a JPEG that raises :class:`ImageDecodeError` when libjpeg ran out of data."""
    one_scan, exif = _jpeg_layout(buf[:65536].tobytes())  # the marker segments before the scan
    if one_scan:
        with _GATE.shared():
            image = cv2.imdecode(buf, flags)
        if image is None or not _corner_may_be_zero_filled(image, exif):
            return image
    image, damage = _decode_captured(buf, flags)
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
