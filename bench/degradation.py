"""Dead cameras: what losing one camera, or the worst pair, costs inside and outside their view.

    PYTHONPATH=. .venv/bin/python -m bench.degradation --checkpoint runs/train/edge_cpu/best.pt --data data/synth \
        [--split synth_val] [--pairs all|adjacent|none] [--threads 2]

Runs the report of `perception eval --drop-cameras` (perception/degradation.py) on the val split: the
model with no camera masked, each camera masked in turn, then every pair (the worst one, by vehicle
IoU lost over the whole grid, goes in the table), each scored inside the dead cameras' view and
outside it against the unmasked model on the same cells and boxes. Prints a markdown table for the
README and the reading against the target (a single dead camera costs at most 1 point of vehicle IoU
outside its view: the train-time camera dropout, AugmentConfig.dropout_p and dropout_cameras, is what
should buy that), and writes bench/results/degradation.json: the whole report, the machine, the
timing. Run it alone: a second busy process slows it (the numbers do not depend on it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine

RESULTS = Path(__file__).parent / "results" / "degradation.json"
OUTSIDE_TARGET = 0.01  # vehicle IoU a single dead camera may cost outside its own view


def outside_reading(report: dict, target: float = OUTSIDE_TARGET) -> dict:
    """The main class's IoU lost outside each single dead camera's view, the worst, and the target."""
    c = report["main_class"]
    deltas = {r["dropped"][0]: r["regions"]["outside"]["delta_bev_iou"][c] for r in report["runs"] if r["k"] == 1}
    finite = {k: v for k, v in deltas.items() if v is not None}
    worst = min(finite, key=finite.__getitem__) if finite else None
    inside = [r["regions"]["inside"]["delta_bev_iou"][c] for r in report["runs"] if r["k"] == 1]
    inside = [v for v in inside if v is not None]
    return {"class": c, "target": target, "outside_delta": deltas, "worst_camera": worst,
            "worst_delta": finite.get(worst) if worst else None,
            "mean_outside_delta": statistics.fmean(finite.values()) if finite else None,
            "mean_inside_delta": statistics.fmean(inside) if inside else None,
            "met": (finite[worst] >= -target) if worst else None}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/train/edge_cpu/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--split", default=None, help="default: the dataset's val split")
    parser.add_argument("--pairs", default="all", help="all, adjacent or none")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--eval-out", type=Path, default=None, help="the eval outputs (default: a temporary directory)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    import torch

    from perception.degradation import evaluate_degradation
    from perception.errors import BevStackError, one_line

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rep = evaluate_degradation(args.checkpoint, args.data, args.split, args.eval_out or Path(tmp),
                                       args.batch_size, pairs=args.pairs, print_fn=lambda s: print(s, flush=True),
                                       print_eval=False)
        except BevStackError as exc:
            raise SystemExit(f"error: {one_line(exc)}") from None
    seconds = time.perf_counter() - start
    report = rep.to_json()
    reading = outside_reading(report)
    runs = [rep.baseline, *rep.runs]
    timing = {"seconds_total": round(seconds, 1), "runs": len(runs), "frames_per_run": rep.samples,
              "seconds_per_run_median": round(statistics.median(r.seconds for r in runs), 1),
              "frames_per_second": round(rep.samples * len(runs) / seconds, 2)}
    table = rep.table(markdown=True)
    f = lambda v: "n/a" if v is None else f"{v:+.3f}"  # noqa: E731
    verdict = (f"Target: one dead camera costs at most {OUTSIDE_TARGET:.2f} of {reading['class']} IoU outside its "
               f"view. Worst {reading['worst_camera']}: {f(reading['worst_delta'])} "
               f"({'met' if reading['met'] else 'missed'}); mean over the cameras {f(reading['mean_outside_delta'])} "
               f"outside, {f(reading['mean_inside_delta'])} inside." if reading["worst_camera"] else
               "Target: no single camera gave a finite IoU outside its view.")
    print()
    print(table)
    print()
    print(verdict)
    print(f"{len(runs)} runs of {rep.samples} frames in {seconds / 60:.1f} min "
          f"({timing['seconds_per_run_median']:.0f} s per run, median) on {machine()}")
    out = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "threads": args.threads,
           "command": "python -m bench.degradation " + " ".join(sys.argv[1:]), "checkpoint": str(args.checkpoint),
           "timing": timing, "outside_target": reading, "table_markdown": table, "verdict": verdict,
           "report": report}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
