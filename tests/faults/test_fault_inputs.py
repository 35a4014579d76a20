"""Malformed input never crashes a reader: every input bench.fault_inputs feeds is either read or
refused with a project error (or an OS error), one line on the command line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.fault_inputs import READERS, fuzz_all

pytestmark = pytest.mark.slow

EXAMPLES = 25  # inputs per reader


def test_no_reader_raises_anything_but_a_project_error(tmp_path: Path) -> None:
    results = fuzz_all(EXAMPLES, tmp_path)
    assert [r.reader for r in results] == list(READERS)
    for r in results:
        assert r.tried >= EXAMPLES, f"{r.reader}: only {r.tried} inputs tried"
        assert r.accepted + r.refused + len(r.tracebacks) == r.tried
    crashes = [f"{r.reader}: {kind}: {message} (input: {summary})"
               for r in results for summary, kind, message in r.tracebacks]
    assert not crashes, "\n".join(crashes)
