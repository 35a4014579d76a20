"""Label QA measured: plant known label errors in a labeled set, rank its frames by model-vs-label
disagreement, and report precision at k of finding the frames that hold an error.

    python -m bench.label_qa [--model runs/export/edge_cpu/model.int8.onnx] [--data data/synth] \
        [--inject missing=0.002,class=0.002,shift=0.002] [--seeds 0,1]

Per seed, in a fresh catalog: `data-engine index DATA`, `label --oracle sim --state labeled --inject`,
`ingest --relabel` (the noisy labels become the newest version), `mine --strategy disagreement`,
`qa`. The base rate (fraction of frames holding an error) is what a random ranking finds on average.
Writes bench/results/label_qa.json and prints the table of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from bench.machine import machine
from data_engine.catalog import Catalog
from data_engine.cli import app
from data_engine.labels.qa import qa_precision, read_errors

RESULTS = Path(__file__).parent / "results" / "label_qa.json"
KS = (10, 20, 50, 100)


def _run(args: list[str]) -> str:
    res = CliRunner().invoke(app, args)
    if res.exit_code != 0:
        raise SystemExit(f"data-engine {' '.join(args)} failed:\n{res.output}")
    return res.output


def one_seed(model: Path, data: Path, inject: str, seed: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        db = str(Path(tmp) / "qa.db")
        _run(["index", str(data), "--catalog", db])
        labels = Path(tmp) / "noisy.json"
        _run(["label", "--catalog", db, "--oracle", "sim", "--state", "labeled", "--out", str(labels),
              "--inject", inject, "--seed", str(seed)])
        _run(["ingest", str(labels), "--catalog", db, "--relabel"])
        _run(["mine", "--model", str(model), "--catalog", db, "--strategy", "disagreement", "--budget", "50",
              "--run", "qa"])
        errors = read_errors(labels.with_name("noisy.errors.json"))
        with Catalog.open(db) as cat:
            report = qa_precision(cat, "qa", errors, KS)
        report["errors"] = {k: sum(e["kind"] == k for e in errors) for k in sorted({e["kind"] for e in errors})}
        return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/export/edge_cpu/model.int8.onnx"))
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--inject", default="missing=0.002,class=0.002,shift=0.002")
    parser.add_argument("--seeds", default="0,1")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for seed in seeds:
        print(f"seed {seed} ...", flush=True)
        runs[str(seed)] = one_seed(args.model, args.data, args.inject, seed)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "model": str(args.model),
              "data": str(args.data), "inject": args.inject, "runs": runs}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("| seed | planted errors (missing/class/shift) | frames with an error | base rate | "
          + " | ".join(f"precision@{k}" for k in KS) + " |")
    print("|---|---|---:|---:|" + "---:|" * len(KS))
    for seed, r in runs.items():
        e = r["errors"]
        print(f"| {seed} | {e.get('missing', 0)}/{e.get('class', 0)}/{e.get('shift', 0)} | {r['frames_with_errors']} of "
              f"{r['frames_ranked']} | {r['base_rate']:.3f} | "
              + " | ".join(f"{r['precision_at'][str(k)]:.2f}" for k in KS) + " |")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
