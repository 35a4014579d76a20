"""The output directory of `data-engine synth`: its layout, its lock, and what a run may resume.

``DIR/synth.json`` holds the recipe (arguments and world code digest) of the dataset in ``DIR``;
``DIR/.synth/`` holds the lock file and one record file per rendered scene. A run locks the
directory for its whole length, refuses a directory made with another recipe or holding something
else, clears the temporary files a killed run left, and renders only the scenes without a record.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from perception.errors import BevStackError

if TYPE_CHECKING:
    from .synth import SynthConfig

__all__ = ["LOCK_FILE", "RECIPE_FILE", "STATE_DIR", "OutputLocked", "RecipeMismatch", "SynthError", "output_lock",
           "prepare_output", "scene_file"]

RECIPE_FILE = "synth.json"
STATE_DIR = ".synth"
LOCK_FILE = "lock"


class SynthError(BevStackError):
    """Impossible arguments or an output directory that cannot be used."""


class RecipeMismatch(SynthError):
    """The output directory holds a dataset made with other arguments or another version of the world."""


class OutputLocked(SynthError):
    """Another `synth` run is writing the output directory."""


def scene_file(root: Path, index: int) -> Path:
    """The record file a worker writes when it has rendered scene ``index`` of the dataset at ``root``."""
    return root / STATE_DIR / f"scene-{index:04d}.json"


_TMP_NAME = re.compile(r"\.\d+\.[0-9a-f]{8}\.tmp$")  # what nuscenes_writer._write_bytes writes through


def _remove_temporaries(root: Path) -> None:
    """Delete the temporary files of writes a killed run did not finish (none is being written: we
    hold the lock, and the workers of a killed run are gone)."""
    for folder, _, files in os.walk(root):
        for name in files:
            if _TMP_NAME.search(name):
                Path(folder, name).unlink(missing_ok=True)


def _is_recipe_tmp(p: Path) -> bool:
    """A temporary file left by a run killed while it wrote the recipe."""
    return p.name.startswith(RECIPE_FILE + ".") and p.name.endswith(".tmp") and p.is_file()


def _is_fresh(root: Path) -> bool:
    """Whether ``root`` holds nothing but what a run killed before it wrote the recipe leaves behind:
    an empty ``.synth/`` or one holding only the lock file, and temporary files of the recipe."""
    for p in root.iterdir():
        if p.name == STATE_DIR and p.is_dir():
            if any(q.name != LOCK_FILE for q in p.iterdir()):
                return False
        elif not _is_recipe_tmp(p):
            return False
    return True


def _check_usable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise SynthError(f"--out {root} exists and is not a directory")
    if root.is_dir() and not (root / RECIPE_FILE).exists() and not _is_fresh(root):
        raise SynthError(f"--out {root} is not empty and holds no {RECIPE_FILE}; refusing to write into it")


@contextlib.contextmanager
def output_lock(root: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``root/.synth/lock`` (creating the directories) or fail at once.

    A directory holding something other than a synth dataset is refused before anything is created
    in it.
    """
    _check_usable(root)
    state = root / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    fd = os.open(state / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            who = f" (pid {holder})" if holder.isdigit() else ""
            raise OutputLocked(f"{root} is being written by another synth run{who}; "
                               "wait for it to finish or choose another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def prepare_output(cfg: SynthConfig) -> list[int]:
    """Check the output directory; return the indices of scenes still to render.

    A directory made by an earlier run with the same recipe (arguments and world code) is resumed;
    anything else that is not empty is refused. Call it holding ``output_lock(cfg.out)``.
    """
    root = cfg.out
    recipe_path = root / RECIPE_FILE
    _check_usable(root)
    if recipe_path.exists():
        try:
            old = json.loads(recipe_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SynthError(f"{recipe_path} is unreadable ({exc}); delete {root} or choose another --out") from None
        new = cfg.recipe()
        if old != new:
            if not isinstance(old, dict):
                old = {}
            reasons = []
            diff = {k: (old.get(k), v) for k, v in new.items() if old.get(k) != v and k != "world"}
            if diff:
                reasons.append(f"made with other arguments {diff} (was, now)")
            if old.get("world") != new["world"]:
                reasons.append(f"made by another version of the world (code digest {old.get('world')}, "
                               f"now {new['world']})")
            if not reasons:
                extra = sorted(set(old) - set(new))
                reasons.append(f"made with other arguments {extra} (not known to this version)")
            raise RecipeMismatch(f"{root} holds a dataset {' and '.join(reasons)}; "
                                 "refusing to mix them: choose another --out or delete it")
        _remove_temporaries(root)
    root.mkdir(parents=True, exist_ok=True)
    (root / STATE_DIR).mkdir(exist_ok=True)
    if not recipe_path.exists():
        from .nuscenes_writer import _write_bytes

        for tmp in root.iterdir():
            if _is_recipe_tmp(tmp):
                tmp.unlink()
        _write_bytes(recipe_path, json.dumps(cfg.recipe(), indent=1).encode())
    todo = []
    for i in cfg.scene_indices():
        f = scene_file(root, i)
        try:
            json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            todo.append(i)
    return todo
