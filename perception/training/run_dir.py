"""The run directory of `perception train`: a run is never replaced by a new one, a resumed run
must build the model its checkpoint holds, and its metrics are CSV rows that a resume truncates to
the checkpoint's step."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from ..checkpoint import CheckpointError, TrainingCheckpoint, load_checkpoint, preset_differences, preset_to_dict
from ..errors import BevStackError

__all__ = ["TrainError", "append_csv", "load_resumable", "refuse_existing_run", "truncate_csv"]


class TrainError(BevStackError):
    """A training run that cannot start as asked; the message says what to do instead."""


def refuse_existing_run(run_dir: Path) -> None:
    """Raise :class:`TrainError` when ``run_dir`` holds a checkpoint: a new run must not replace it.
    The logs of an attempt that died before its first checkpoint are started over."""
    found = [name for name in ("last.pt", "best.pt") if (run_dir / name).exists()]
    if found:
        raise TrainError(f"{run_dir} already holds a run ({', '.join(found)}): pass --resume to continue it, or "
                         f"name a new run with train.name=NAME")


def load_resumable(path: Path, preset: Any) -> TrainingCheckpoint:
    """The checkpoint to resume from, checked against the model the config now builds."""
    state = load_checkpoint(path)
    try:
        ckpt = TrainingCheckpoint.from_dict(state)
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    changed = preset_differences(ckpt.preset, preset_to_dict(preset))
    if changed:
        raise CheckpointError(f"{path}: the config builds another model than the run trained ({'; '.join(changed[:4])}"
                              f"{'; ...' if len(changed) > 4 else ''}): resume with the run's own config.yaml, or "
                              "start a new run with train.name=NAME")
    return ckpt


def append_csv(path: Path, row: dict[str, float]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow(row)


def truncate_csv(path: Path, last_step: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    kept = [r for r in rows if int(r["step"]) <= last_step]
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as f:
        if kept:
            w = csv.DictWriter(f, fieldnames=list(kept[0]))
            w.writeheader()
            w.writerows(kept)
    os.replace(tmp, path)
