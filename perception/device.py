"""Which torch device a command runs on: one parser for ``--device`` and ``train.device``."""

from __future__ import annotations

import re

import torch

from .errors import BevStackError

__all__ = ["DeviceError", "DEVICE_CHOICES", "cpu_has_native_bf16", "select_device"]

DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"


class DeviceError(BevStackError):
    """A device name that is not one of DEVICE_CHOICES, or a CUDA device this machine does not have."""


def select_device(name: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The device ``name`` asks for: ``None``/``auto`` is CUDA when available (device ``local_rank``,
    one per torchrun process), else the CPU; ``cuda`` is device ``local_rank``; ``cuda:N`` device N."""
    if isinstance(name, torch.device):
        name = str(name)
    text = (name or "auto").strip().lower()
    if text == "cpu" or (text == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    match = re.fullmatch(r"(auto|cuda)(?::(\d+))?", text)
    if match is None or (match.group(1) == "auto" and match.group(2) is not None):
        raise DeviceError(f"device {name!r}: expected {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise DeviceError(f"device {name!r}: CUDA is not available on this machine (use cpu)")
    index = int(match.group(2)) if match.group(2) is not None else local_rank
    if index >= torch.cuda.device_count():
        raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs bfloat16 natively (AVX512-BF16 or AMX tiles); without either, bf16
    autocast on the CPU is emulated and slower than float32."""
    checks = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(check()) for check in checks if check is not None)
