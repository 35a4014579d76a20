"""View-transform ablation at equal wall time: the geometry-seeded transformer, unseeded global
attention, the sampling lift and lift-splat, each on the pretrained backbone, plus the transformer
from scratch; the same data and seeds; val metrics beside latency and cost.

    python -m bench.ablation [--config configs/tiny_cpu.yaml] [--minutes 4] [--seeds 0,1] \
        [--rows transformer,global_attention,sampling,lift_splat,transformer_scratch] [--data data/synth]

The budget is wall time: each row's training-step time is measured first, alone, in its own process
(bench/model.py's measurement at the config's preset), and the row trains ``minutes * 60 / step``
steps (``--steps`` instead gives every row the same step count). Each (row, seed) is then a
`perception train` run of the recipe in ``--config`` with only the model override, the step count
and the seed changed (runs/train/ablation_<row>_s<seed>); a finished run is read back, not retrained,
so the script resumes where it stopped (a killed run resumes from its last.pt). Step counts are
stored in the results and reused on a re-run, so an interrupted ablation keeps its budgets. Run
nothing else meanwhile: a second busy process skews the step times. Prints a Markdown table and the
transformer-vs-sampling check, and writes bench/results/ablation.json.
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
# Row name -> (view transform, pretrained backbone).
ROWS: dict[str, tuple[str, bool]] = {
    "transformer": ("transformer", True),
    "global_attention": ("global_attention", True),
    "sampling": ("sampling", True),
    "lift_splat": ("lift_splat", True),
    "transformer_scratch": ("transformer", False),
}


def run_dir(row: str, seed: int) -> Path:
    return Path("runs/train") / f"ablation_{row}_s{seed}"


def final_metrics(path: Path, steps: int) -> dict[str, float] | None:
    """The val metrics a finished run wrote at its last step, or None when it has not finished."""
    csv_path = path / "val_metrics.csv"
    if not csv_path.exists():
        return None
    with open(csv_path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) == steps]
    return {k: float(rows[-1][k]) for k in METRICS} if rows else None


def train(config: Path, row: str, seed: int, steps: int, data: str | None) -> float:
    """One training run; returns its wall time in s."""
    view, pretrained = ROWS[row]
    name = run_dir(row, seed).name
    cmd = [sys.executable, "-m", "perception.cli", "train", "--config", str(config), f"model.view_transform={view}",
           f"train.steps={steps}", f"train.seed={seed}", f"train.name={name}", f"train.val_every={steps}",
           f"train.ckpt_every={steps}", "train.vis_every=0"]
    if not pretrained:
        cmd.append("model.pretrained=null")
    if data:
        cmd.append(f"train.data={data}")
    if (run_dir(row, seed) / "last.pt").exists():
        cmd.append("--resume")
    print(f"train {row} seed {seed}: {' '.join(cmd[3:])}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def cost(preset: str, row: str, data: str, threads: int) -> dict:
    """bench/model.py's measurement of one row, in its own process."""
    view, pretrained = ROWS[row]
    cmd = [sys.executable, "-m", "bench.model", "--one", preset, view, data, "--runs", "5", "--threads", str(threads)]
    if not pretrained:
        cmd.append("--scratch")
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"cost of {preset} {row} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def table(result: dict) -> str:
    lines = [
        ("| row | steps | mAP | NDS | IoU drivable | IoU lane | IoU vehicle | IoU ped. | vehicle IoU per seed "
         "| forward ms | train step ms | GMACs (view) | params M | train min |"),
        "|---|---:|---|---|---|---|---|---|---|---:|---:|---|---:|---:|",
    ]
    for row, r in result["rows"].items():
        cells = []
        for k in METRICS:
            m, sd = r["metrics"][k]["mean"], r["metrics"][k]["sd"]
            cells.append(f"{m:.3f}" + (f" ± {sd:.3f}" if len(r["seeds"]) > 1 else ""))
        per_seed = " / ".join(f"{run['metrics']['iou_vehicle']:.3f}" for run in r["runs"])
        c = r["cost"]
        gm = c["gmacs_backbone"] + c["gmacs_view"] + c["gmacs_rest"]
        lines.append(f"| {row} | {r['steps']} | " + " | ".join(cells) + f" | {per_seed} | {c['forward_ms']:.0f} "
                     f"| {c['train_step_ms']:.0f} | {gm:.2f} ({c['gmacs_view']:.2f}) | {c['params_m']:.1f} "
                     f"| {statistics.fmean(r['train_minutes']):.1f} |")
    return "\n".join(lines)


def seeded_vs_sampling(result: dict) -> str | None:
    """The target check: the seeded transformer >= 2 points of vehicle IoU above sampling on the
    mean, and never below it on any seed."""
    rows = result["rows"]
    if "transformer" not in rows or "sampling" not in rows:
        return None
    t = {run["seed"]: run["metrics"]["iou_vehicle"] for run in rows["transformer"]["runs"]}
    s = {run["seed"]: run["metrics"]["iou_vehicle"] for run in rows["sampling"]["runs"]}
    seeds = sorted(set(t) & set(s))
    diffs = [t[k] - s[k] for k in seeds]
    mean = statistics.fmean(diffs)
    return (f"transformer - sampling, vehicle IoU: mean {100 * mean:+.1f} points over seeds {seeds} "
            f"(per seed {', '.join(f'{100 * d:+.1f}' for d in diffs)}); target >= +2.0 on the mean and >= 0 on "
            f"every seed: {'met' if mean >= 0.02 and min(diffs) >= 0 else 'not met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=Path("configs/tiny_cpu.yaml"))
    parser.add_argument("--rows", default=",".join(ROWS))
    parser.add_argument("--minutes", type=float, default=4.0, help="training wall time per run (the budget)")
    parser.add_argument("--steps", type=int, default=None, help="the same step count for every row instead")
    parser.add_argument("--seeds", default="0,1", help="comma-separated seeds")
    parser.add_argument("--data", default=None, help="dataset (default: the config's train.data)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    import yaml

    recipe = yaml.safe_load(args.config.read_text())
    preset = recipe.get("preset", "tiny")
    data = args.data or recipe["train"]["data"]
    rows = args.rows.split(",")
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown rows {unknown}; known: {', '.join(ROWS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    previous = json.loads(args.out.read_text()).get("rows", {}) if args.out.exists() else {}
    result: dict = {"machine": machine(), "config": str(args.config), "preset": preset, "seeds": seeds,
                    "budget": f"{args.steps} steps" if args.steps else f"{args.minutes} min of training",
                    "date": time.strftime("%Y-%m-%d"), "rows": {}}
    # Costs (and the step counts they give) first, each measured alone.
    for row in rows:
        old = previous.get(row, {})
        c = old.get("cost") or cost(preset, row, data, args.threads)
        steps = args.steps or old.get("steps") or max(10, round(args.minutes * 60 / (c["train_step_ms"] / 1000)))
        print(f"{row}: train step {c['train_step_ms']:.0f} ms -> {steps} steps", flush=True)
        result["rows"][row] = {"seeds": seeds, "steps": steps, "cost": c, "runs": [], "train_minutes": []}
    for row in rows:
        entry = result["rows"][row]
        old_runs = {r["seed"]: r for r in previous.get(row, {}).get("runs", [])}
        for seed in seeds:
            metrics = final_metrics(run_dir(row, seed), entry["steps"])
            if metrics is None:
                minutes = train(args.config, row, seed, entry["steps"], args.data) / 60
                metrics = final_metrics(run_dir(row, seed), entry["steps"])
                if metrics is None:
                    raise RuntimeError(f"{run_dir(row, seed)}: no val metrics at step {entry['steps']}")
            else:  # read back a finished run, with the time it took then
                minutes = old_runs.get(seed, {}).get("train_minutes", float("nan"))
            entry["runs"].append({"seed": seed, "metrics": metrics, "train_minutes": minutes})
            entry["train_minutes"].append(minutes)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps({**result, "rows": {**previous, **result["rows"]}}, indent=1))
        entry["metrics"] = {k: dict(zip(("mean", "sd"), _mean_sd([r["metrics"][k] for r in entry["runs"]])))
                            for k in METRICS}
    result["table"] = table(result)
    result["check"] = seeded_vs_sampling(result)
    print(result["table"])
    if result["check"]:
        print(result["check"])
    args.out.write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
