"""Checkpoints: atomic to write (temporary file, fsync, rename), loadable with
``torch.load(weights_only=True)``, and carrying what export and the data engine need to rebuild the
model without re-declaring anything: the preset (as a plain dict), the class lists, the format
version and the training state.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from .process import process_alive
from .presets import Preset, PresetError, preset_from_dict, preset_to_dict
from perception.errors import BevStackError

__all__ = ["CHECKPOINT_FORMAT", "CheckpointError", "TrainingCheckpoint", "load_checkpoint", "load_model_from_checkpoint",
           "preset_differences", "preset_from_dict", "preset_to_dict", "remove_stale_temporaries",
           "save_checkpoint"]

CHECKPOINT_FORMAT = 1


class CheckpointError(BevStackError):
    """A checkpoint that cannot be used; the message names the file."""


@dataclasses.dataclass(frozen=True)
class TrainingCheckpoint:
    """What `perception train` saves, field by field: the model as the preset builds it, its weights
    (and the EMA's), the optimizer, schedule and loss-weight states, where the run stands and the
    video state of every rank [world, B, C, X, Y], so that a resumed run continues exactly."""

    preset: dict[str, Any]  # presets.preset_to_dict
    config: dict[str, Any]  # the experiment config as run
    model: dict[str, torch.Tensor]
    ema: dict[str, torch.Tensor] | None  # the EMA weights, loadable into the model (None without EMA)
    ema_module: dict[str, Any] | None  # the EMA wrapper's own state, to resume it
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    criterion: dict[str, torch.Tensor]
    step: int  # optimizer steps done
    epoch: int
    position: int  # batches of this epoch done
    video_state: torch.Tensor
    rng_torch: torch.Tensor

    def to_dict(self) -> dict[str, Any]:
        """The dict saved (plain containers only, for ``torch.load(weights_only=True)``), with the
        format version and the class lists beside the fields."""
        tasks = self.preset.get("tasks", {})
        return {"format": CHECKPOINT_FORMAT, **{f.name: getattr(self, f.name) for f in dataclasses.fields(self)},
                "classes": {"det": list(tasks.get("det_classes", ())), "seg": list(tasks.get("seg_classes", ()))}}

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> TrainingCheckpoint:
        """The record of a loaded training checkpoint (:func:`load_checkpoint` checked its format)."""
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in state]
        if missing:
            raise CheckpointError(f"not a training checkpoint (no {', '.join(missing)}): it cannot be resumed")
        return cls(**{f.name: state[f.name] for f in dataclasses.fields(cls)})


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` (tensors, numbers, strings, lists and dicts only) atomically to ``path``.

    A failed write (a full disk, say) leaves the previous file at ``path`` untouched and no temporary
    file behind, and raises :class:`CheckpointError` saying why; temporaries left by a killed writer
    are removed by :func:`remove_stale_temporaries`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: cannot write the checkpoint: {_write_failure(exc, path.parent)}"
                              + ("; the previous checkpoint is unchanged" if path.exists() else "")) from None
    finally:
        if tmp.exists():
            tmp.unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def _write_failure(exc: BaseException, directory: Path) -> str:
    """Why a write failed, in words: torch reports a full disk as "unexpected pos", with the
    operating system's error only in the exception's context."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno is not None:
            if seen.errno == errno.ENOSPC:
                break
            return seen.strerror or str(seen)
        seen = seen.__cause__ or seen.__context__
    if seen is not None or _free_bytes(directory) < 1 << 20:
        return f"no space left on device ({_free_bytes(directory) >> 20} MiB free in {directory})"
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"


def _free_bytes(directory: Path) -> int:
    try:
        return shutil.disk_usage(directory).free
    except OSError:
        return 0


def remove_stale_temporaries(directory: str | Path) -> list[Path]:
    """Delete the temporary files of checkpoint writers that died mid-write (``.NAME.PID.HEX.tmp``
    whose process no longer runs) in ``directory``; returns what it deleted."""
    removed = []
    for tmp in Path(directory).glob(".*.tmp"):
        parts = tmp.name.rsplit(".", 3)
        if len(parts) != 4 or not parts[1].isdigit() or process_alive(int(parts[1])):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True`` and check its format."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file missing")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        first = (str(exc).strip().splitlines() or [""])[0]
        if "Weights only load failed" in first:  # torch's advice to unpickle anyway is not for users
            first = "not a checkpoint, or one holding more than tensors and plain data"
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {first})") from None
    fmt = state.get("format") if isinstance(state, dict) else None
    if type(fmt) is not int or fmt != CHECKPOINT_FORMAT:  # a tensor or a bool is no format either
        found = (repr(fmt) if isinstance(fmt, (int, float, str, type(None))) else f"a {type(fmt).__name__}") \
            if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"{path}: checkpoint format {found}, expected {CHECKPOINT_FORMAT}")
    for key in ("preset", "model"):
        if key not in state:
            raise CheckpointError(f"{path}: checkpoint has no {key!r} entry")
    try:  # what every user of a checkpoint reads first
        preset_from_dict(state["preset"])
    except PresetError as exc:
        raise CheckpointError(f"{path}: the checkpoint's {exc}") from None
    for key in ("model", "ema"):
        weights = state.get(key)
        if key == "ema" and weights is None:
            continue
        if not isinstance(weights, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                    for k, v in weights.items()):
            raise CheckpointError(f"{path}: checkpoint entry {key!r} must map parameter names to tensors")
    return state


def preset_differences(saved: dict[str, Any], current: dict[str, Any], prefix: str = "") -> list[str]:
    """Where two presets (as plain dicts) differ: "model.bev_channels: 64 in the checkpoint, 96 now"."""
    out = []
    for key in sorted(set(saved) | set(current), key=str):
        name = f"{prefix}{key}"
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += preset_differences(a, b, name + ".")
        elif _plain(a) != _plain(b):
            out.append(f"{name}: {a!r} in the checkpoint, {b!r} now")
    return out


def _plain(value: Any) -> Any:
    """Tuples as lists, recursively (a checkpoint stores a preset's tuples as lists)."""
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def load_model_from_checkpoint(path: str | Path, ema: bool = True) -> tuple[torch.nn.Module, Preset, dict[str, Any]]:
    """Rebuild the model a checkpoint holds (its EMA weights when present and ``ema``), in eval mode.

    Returns (model, preset, the checkpoint dict).
    """
    from .models.bev_model import build_model

    state = load_checkpoint(path)
    preset = preset_from_dict(state["preset"])
    model = build_model(dataclasses.replace(preset, model=dataclasses.replace(preset.model, pretrained=None)))
    weights = state.get("ema") if ema and state.get("ema") is not None else state["model"]
    try:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    except RuntimeError as exc:  # tensors of other shapes than the preset's model
        first = (str(exc).strip().splitlines() or [""])[-1].strip()
        raise CheckpointError(f"{path}: weights do not fit the model the preset builds ({first})") from None
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model.eval(), preset, state
