"""Checkpoints: atomic to write (temporary file, fsync, rename), loadable with
``torch.load(weights_only=True)``, and carrying what export and the data engine need to rebuild the
model without re-declaring anything: the preset (as a plain dict), the class lists, the format
version and the training state.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import torch

from ..presets import Preset, preset_from_dict, preset_to_dict
from perception.errors import BevStackError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "load_checkpoint", "load_model_from_checkpoint",
           "preset_from_dict", "preset_to_dict", "save_checkpoint"]

CHECKPOINT_FORMAT = 1


class CheckpointError(BevStackError):
    """A checkpoint that cannot be used; the message names the file."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts only) atomically to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise CheckpointError(f"{path}: cannot read the checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: checkpoint format {found!r}, expected {CHECKPOINT_FORMAT}")
    for key in ("preset", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    return state


def load_model_from_checkpoint(path: str | Path, ema: bool = True) -> tuple[torch.nn.Module, Preset, dict[str, Any]]:
    """Rebuild the model a checkpoint holds (its EMA weights when present and ``ema``), in eval mode.

    Returns (model, preset, the checkpoint dict).
    """
    from ..models.bev_model import build_model

    state = load_checkpoint(path)
    preset = preset_from_dict(state["preset"])
    model = build_model(dataclasses.replace(preset, model=dataclasses.replace(preset.model, pretrained=None)))
    weights = state.get("ema") if ema and state.get("ema") is not None else state["model"]
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), preset, state
