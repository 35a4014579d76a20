"""Whether a JPEG decoded whole: one decode per image, and libjpeg's own verdict when in doubt.

How a JPEG cut short is caught. libjpeg zero-fills the blocks it has no data for and prints a warning on
stderr, which OpenCV neither returns nor raises. In a sequential JPEG whose one scan holds every
component (what cameras, nuScenes and cv2 write) the last MCU decoded is the bottom-right one, so a scan
cut short leaves the bottom-right pixel at luma 128 (up to rounding: chroma upsampling may mix in a
neighbour's chroma, which moves colour, not luma). Only images whose corner has that luma (1 in 720 of
the synthetic world's) are decoded a second time, alone and with stderr captured, to read libjpeg's
own verdict; other layouts (progressive, several scans, arithmetic coding) are always decoded that way.
Not caught: a cut inside the last MCU's own data (the last few tens of bytes), which leaves that one
MCU (16x16 px at the corner) partly wrong.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import threading
from collections.abc import Iterator

import cv2
import numpy as np

__all__ = ["decode_jpeg_checked"]

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


def decode_jpeg_checked(buf: np.ndarray, flags: int) -> tuple[np.ndarray | None, str | None]:
    """``cv2.imdecode`` of JPEG bytes, and libjpeg's words when it ran out of data or found it damaged
    (None when the image is whole)."""
    one_scan, exif = _jpeg_layout(buf[:65536].tobytes())  # the marker segments before the scan
    if one_scan:
        with _GATE.shared():
            image = cv2.imdecode(buf, flags)
        if image is None or not _corner_may_be_zero_filled(image, exif):
            return image, None
    return _decode_captured(buf, flags)
