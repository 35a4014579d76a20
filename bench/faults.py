"""The standing fault sweep: ``python -m bench.faults [--kills 5] [--examples 200]``.

1. kills: SIGKILL ``synth``, ``train``, ``mine``, ``ingest`` and ``loop`` at random moments, N times each,
   and run them again; the result must equal an uninterrupted run's (bench/fault_kills.py);
2. two mines and two ingests on one catalog at once; a full disk under a checkpoint, a dataset version
   and a catalog (bench/fault_contention.py; the disks are tmpfs mounts, so this part needs root);
3. property-based malformed inputs to every reader (bench/fault_inputs.py).
Prints kills survived per command, inputs tried per reader, tracebacks and data lost, and writes
them as JSON. ``--quick`` is the form ``make test`` runs (tests/faults/test_faults_sweep.py).
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from .fault_contention import concurrent_ingests, concurrent_mines, full_disks
from .fault_inputs import fuzz_all
from .fault_kills import Tally, prepare, sweep_target, targets


def sweep(work: Path, kills: int, examples: int, seed: int = 0, loop_steps: int = 2,
          log=print) -> dict:
    """Run the whole sweep in ``work``; returns the figures."""
    rng = random.Random(seed)
    start = time.perf_counter()
    ws = prepare(work / "workspace", log)
    kill_tallies: dict[str, Tally] = {}
    for t in targets(ws, loop_steps):
        log(f"kill {t.name} {kills} times")
        kill_tallies[t.name] = sweep_target(t, work / "kills", kills, rng, log)
    log("two mines and two ingests at once")
    crowd = {"two mines": concurrent_mines(ws, work), "two ingests": concurrent_ingests(ws, work)}
    log("full disks (tmpfs)")
    disks = full_disks(ws, work)
    log(f"malformed inputs, {examples} per reader")
    inputs = fuzz_all(examples, work / "inputs")
    everything = [*kill_tallies.values(), *crowd.values(), *disks.values()]
    return {
        "kills": {k: asdict(v) for k, v in kill_tallies.items()},
        "concurrent": {k: asdict(v) for k, v in crowd.items()},
        "full_disk": {k: asdict(v) for k, v in disks.items()} or "skipped: mounting a tmpfs needs root",
        "inputs": {r.reader: {"tried": r.tried, "tracebacks": len(r.tracebacks),
                              "examples": [list(map(str, x)) for x in r.tracebacks[:5]]} for r in inputs},
        "tracebacks": sum(t.tracebacks for t in everything) + sum(len(r.tracebacks) for r in inputs),
        "data_lost": sum(t.data_lost for t in everything),
        "failed": sum(t.trials - t.survived for t in everything),
        "wall_s": round(time.perf_counter() - start, 1),
    }


def table(figures: dict) -> str:
    lines = ["| part | trials | kills that struck a running job | survived | tracebacks | data lost |",
             "|---|---:|---:|---:|---:|---:|"]
    parts = [(f"kill -9 `{k}`", v) for k, v in figures["kills"].items()]
    parts += [(k, v) for k, v in figures["concurrent"].items()]
    if isinstance(figures["full_disk"], dict):
        parts += [(f"full disk under `{k}`", v) for k, v in figures["full_disk"].items()]
    for name, v in parts:
        landed = v["landed"] if name.startswith("kill") else "n/a"
        lines.append(f"| {name} | {v['trials']} | {landed} | {v['survived']} | {v['tracebacks']} | {v['data_lost']} |")
    lines += ["", "| reader | malformed inputs tried | tracebacks |", "|---|---:|---:|"]
    lines += [f"| {k} | {v['tried']} | {v['tracebacks']} |" for k, v in figures["inputs"].items()]
    lines += ["", f"tracebacks {figures['tracebacks']}, data lost {figures['data_lost']}, "
                  f"failed trials {figures['failed']} ({figures['wall_s'] / 60:.1f} min)"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=5, help="SIGKILLs per command")
    parser.add_argument("--examples", type=int, default=200, help="malformed inputs per reader")
    parser.add_argument("--quick", action="store_true", help="1 kill per command, 20 inputs per reader")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", type=Path, default=None, help="working directory (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=Path("bench/results/faults.json"))
    args = parser.parse_args()
    kills, examples = (1, 20) if args.quick else (args.kills, args.examples)
    work = args.work or Path(tempfile.mkdtemp(prefix="faults-"))
    try:
        figures = sweep(work, kills, examples, args.seed)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(table(figures))
    for part in ("kills", "concurrent", "full_disk"):
        if isinstance(figures[part], dict):
            for name, v in figures[part].items():
                for problem in v["problems"]:
                    print(f"{name}: {problem}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"kills_per_command": kills, "inputs_per_reader": examples, **figures}, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
