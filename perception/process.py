"""Whether another process still runs: how a job tells a killed writer's leftovers from a live one's."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["process_alive"]


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` still runs. A zombie (killed, not yet reaped) does not; another user's
    process, which this one may not signal, does."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:  # no /proc (macOS): signal 0 is all there is
        return True
    return not stat[stat.rindex(")") + 2:].startswith(("Z", "X"))
