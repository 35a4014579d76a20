"""A separate virtual environment holding the official nuScenes devkit, made once and cached.

The devkit (nuscenes-devkit 1.2.0) pins numpy<2 while this project needs numpy 2, so the two never
share an interpreter: the devkit lives in ``<repo>/.venv-devkit`` (gitignored by ``.venv-*/``) and
tests talk to it through a subprocess running the scripts in ``tests/support/devkit/``.

The venv is built under an exclusive file lock (concurrent pytest workers wait for one builder) and
is only trusted once a stamp file, written last, records the pinned requirement: a build that died
half way is wiped and redone.

Run ``python tests/support/devkit_env.py`` to build it by hand; it prints the interpreter's path.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVKIT_VENV = REPO_ROOT / ".venv-devkit"
DEVKIT_SCRIPTS = Path(__file__).resolve().parent / "devkit"  # run by the devkit venv's python
REQUIREMENTS = ("nuscenes-devkit==1.2.0",)
_STAMP_NAME = ".devkit-installed"


def _lock_path(venv: Path) -> Path:
    """A lock file outside the venv (wiping a half-made venv keeps it) and outside the work tree."""
    digest = hashlib.sha1(str(venv.resolve()).encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / f"devkit-venv-{digest}.lock"


def _python_of(venv: Path) -> Path:
    return venv / "bin" / "python"


def _stamp_text() -> str:
    return "\n".join(REQUIREMENTS) + "\n"


def _is_ready(venv: Path) -> bool:
    stamp = venv / _STAMP_NAME
    return _python_of(venv).exists() and stamp.exists() and stamp.read_text() == _stamp_text()


def _run(cmd: list[str], log: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    log.append(f"$ {' '.join(cmd)}\n{proc.stdout[-4000:]}{proc.stderr[-4000:]}")
    if proc.returncode != 0:
        raise RuntimeError(f"building the devkit venv failed at: {' '.join(cmd)}\n" + "\n".join(log))


def ensure_devkit_python(venv: Path = DEVKIT_VENV, base_python: str | None = None, quiet: bool = True) -> Path:
    """Return the python of a venv with the nuScenes devkit, creating it first if needed.

    Safe to call from several processes at once (an exclusive ``flock``); a half-made venv (no stamp)
    is removed and rebuilt. ``base_python`` is the interpreter that makes the venv: the one running
    this code unless given (the devkit supports Python 3.8-3.12).
    """
    venv = Path(venv)
    if _is_ready(venv):
        return _python_of(venv)
    with open(_lock_path(venv), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # blocks while another process builds
        try:
            if _is_ready(venv):  # built by whoever held the lock before us
                return _python_of(venv)
            if venv.exists():
                shutil.rmtree(venv)
            start = time.monotonic()
            log: list[str] = []
            # The project venv's python would do, but a venv made from it inherits nothing anyway.
            base = base_python or sys.executable
            _run([base, "-m", "venv", str(venv)], log)
            py = str(_python_of(venv))
            pip = [py, "-m", "pip", "install", "--disable-pip-version-check"] + (["-q"] if quiet else [])
            _run(pip + list(REQUIREMENTS), log)
            # Prove it imports before declaring it ready (numpy<2 and cv2 come in as its dependencies).
            _run([py, "-c", "import numpy, cv2, nuscenes; assert int(numpy.__version__.split('.')[0]) < 2"], log)
            (venv / _STAMP_NAME).write_text(_stamp_text())
            if not quiet:
                print(f"devkit venv built in {time.monotonic() - start:.1f} s at {venv}", file=sys.stderr)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return _python_of(venv)


def devkit_environ() -> dict[str, str]:
    """Environment for running the devkit's python: no leaking of this project's venv or path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["MPLBACKEND"] = "Agg"  # the devkit imports matplotlib; never open a window
    return env


if __name__ == "__main__":
    print(ensure_devkit_python(quiet=False))
