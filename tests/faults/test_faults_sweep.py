"""The quick form of the standing fault sweep (`python -m bench.faults --quick`): one SIGKILL of each
long job, two mines and two ingests at once, full disks, malformed inputs to every reader. It fails
on any traceback, any lost or changed artifact and any trial that did not finish."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = ("synth", "train", "mine", "ingest", "loop")


def test_the_quick_sweep_loses_nothing_and_shows_no_traceback(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    res = subprocess.run([sys.executable, "-m", "bench.faults", "--quick", "--work", str(tmp_path / "work"),
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=1500,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert set(figures["kills"]) == set(COMMANDS)
    for name, tally in figures["kills"].items():
        assert tally["trials"] == 1 and tally["survived"] == 1, (name, tally["problems"])
    for name, tally in figures["concurrent"].items():
        assert tally["survived"] == tally["trials"] == 1, (name, tally["problems"])
    if os.geteuid() == 0:
        assert set(figures["full_disk"]) == {"train", "ingest", "mine"}
        for name, tally in figures["full_disk"].items():
            assert tally["survived"] == tally["trials"] == 1, (name, tally["problems"])
    assert len(figures["inputs"]) >= 6 and all(v["tried"] >= 20 for v in figures["inputs"].values())
    assert figures["tracebacks"] == 0, res.stdout[-3000:]
    assert figures["data_lost"] == 0 and figures["failed"] == 0, res.stdout[-3000:]
    assert "tracebacks 0, data lost 0" in res.stdout
