"""View-transform ablation: transformer vs sampling vs lift_splat trained at the same budget (steps),
on the same data, from the same seeds; val metrics beside latency and cost.

    python -m bench.ablation [--config configs/edge_cpu.yaml] [--steps 300] [--seeds 0,1] \
        [--views transformer,sampling,lift_splat] [--data data/synth]

Each (view, seed) is a `perception train` run of the recipe in ``--config`` with only the view
transform, the step count and the seed changed (runs/train/ablation_<view>_s<seed>); a finished run
is read back, not retrained, so the script resumes where it stopped (a killed run resumes from its
last.pt). The budget is steps, so the metrics do not depend on how busy the machine is. The cost
columns (parameters, multiply-accumulates, eager forward and training-step time, peak memory) are
bench/model.py's measurement: read from bench/results/model.json when it holds the configuration,
else (or with --measure-cost) measured one configuration at a time after the training (run nothing
else meanwhile: a second busy process skews timings). Prints a Markdown table and writes
bench/results/ablation.json.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.machine import machine

RESULTS = Path(__file__).parent / "results" / "ablation.json"
METRICS = ("mAP", "NDS", "iou_drivable_area", "iou_lane_divider", "iou_vehicle", "iou_pedestrian")


def run_dir(view: str, seed: int) -> Path:
    return Path("runs/train") / f"ablation_{view}_s{seed}"


def final_metrics(path: Path, steps: int) -> dict[str, float] | None:
    """The val metrics a finished run wrote at its last step, or None when it has not finished."""
    csv_path = path / "val_metrics.csv"
    if not csv_path.exists():
        return None
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) == steps]
    return {k: float(rows[-1][k]) for k in METRICS} if rows else None


def train(config: Path, view: str, seed: int, steps: int, data: str | None) -> float:
    """One training run; returns its wall time in s."""
    name = run_dir(view, seed).name
    cmd = [sys.executable, "-m", "perception.cli", "train", "--config", str(config), f"model.view_transform={view}",
           f"train.steps={steps}", f"train.seed={seed}", f"train.name={name}", f"train.val_every={steps}",
           f"train.ckpt_every={steps}", "train.vis_every=0"]
    if data:
        cmd.append(f"train.data={data}")
    resume = (run_dir(view, seed) / "last.pt").exists()
    if resume:
        cmd.append("--resume")
    print(f"train {view} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def cost(preset: str, view: str, data: str, threads: int) -> dict:
    """bench/model.py's measurement of one configuration, in its own process."""
    cmd = [sys.executable, "-m", "bench.model", "--one", preset, view, data, "--runs", "5", "--threads", str(threads)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"cost of {preset} {view} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(result: dict) -> str:
    lines = [
        ("| view transform | mAP | NDS | IoU drivable | IoU lane | IoU vehicle | IoU ped. | forward ms "
         "| train step ms | GMACs (view) | params M | train min |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for view, r in result["views"].items():
        cells = []
        for k in METRICS:
            m, sd = r["metrics"][k]["mean"], r["metrics"][k]["sd"]
            cells.append(f"{m:.3f}" + (f" ± {sd:.3f}" if len(r["seeds"]) > 1 else ""))
        c = r.get("cost") or {}
        gm = c.get("gmacs_backbone", 0) + c.get("gmacs_view", 0) + c.get("gmacs_rest", 0)
        lines.append(f"| {view} | " + " | ".join(cells)
                     + (f" | {c['forward_ms']:.0f} | {c['train_step_ms']:.0f} | {gm:.1f} ({c['gmacs_view']:.1f}) "
                        f"| {c['params_m']:.1f}" if c else " | | | | ")
                     + f" | {statistics.fmean(r['train_minutes']):.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/edge_cpu.yaml"))
    parser.add_argument("--views", default="transformer,sampling,lift_splat")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (the budget)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds")
    parser.add_argument("--data", default=None, help="dataset (default: the config's train.data)")
    parser.add_argument("--preset", default="edge", help="preset of the cost measurement (the config's)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cost-from", type=Path, default=Path(__file__).parent / "results" / "model.json",
                        help="take the cost columns from bench/model.py's results when they hold the configuration")
    parser.add_argument("--measure-cost", action="store_true", help="measure the cost columns anew")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    views = args.views.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    result: dict = {"machine": machine(), "config": str(args.config), "steps": args.steps, "seeds": seeds,
                    "date": time.strftime("%Y-%m-%d"), "views": {}}
    for view in views:
        entry: dict = {"seeds": seeds, "runs": [], "train_minutes": []}
        for seed in seeds:
            metrics = final_metrics(run_dir(view, seed), args.steps)
            minutes = None
            if metrics is None:
                minutes = train(args.config, view, seed, args.steps, args.data) / 60
                metrics = final_metrics(run_dir(view, seed), args.steps)
                if metrics is None:
                    raise RuntimeError(f"{run_dir(view, seed)}: no val metrics at step {args.steps}")
            else:  # read back a finished run, with the time it took then
                old = previous.get("views", {}).get(view, {}).get("runs", [])
                minutes = next((r["train_minutes"] for r in old if r["seed"] == seed), float("nan"))
            entry["runs"].append({"seed": seed, "metrics": metrics, "train_minutes": minutes})
            entry["train_minutes"].append(minutes)
        entry["metrics"] = {k: dict(zip(("mean", "sd"), _mean_sd([r["metrics"][k] for r in entry["runs"]])))
                            for k in METRICS}
        result["views"][view] = entry
    measured = {}
    if args.cost_from.exists() and not args.measure_cost:
        measured = {(r["preset"], r["view"]): r for r in json.loads(args.cost_from.read_text())["rows"]}
    for view in views:
        if (args.preset, view) in measured:
            result["views"][view]["cost"] = {**measured[(args.preset, view)], "source": str(args.cost_from)}
            continue
        import yaml

        data = args.data or yaml.safe_load(args.config.read_text())["train"]["data"]
        print(f"cost {args.preset} {view}", flush=True)
        result["views"][view]["cost"] = cost(args.preset, view, data, args.threads)
    text = table(result)
    result["table"] = text
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
