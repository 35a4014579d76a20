"""`make demo`: the main job end to end on the built-in synthetic world, in minutes on 2 CPU cores.

    python -m data_engine.demo [--out demo_out] [--scenes 8] [--pool-scenes 10] [--frames 10] [--steps 600]

1. render a labeled world and an unlabeled pool of other scenes (nuScenes v1.0);
2. train the tiny preset (configs/tiny_loop.yaml) and evaluate it on the world's val split;
3. export FP32 and INT8 ONNX and benchmark them with the edge runtime;
4. mine the pool with the INT8 model, write the relabel queue, label it with the world's oracle,
   ingest the labels as a new dataset version, retrain from the same initialization, evaluate again;
5. print where every output is and the numbers before and after.

Every step is resumable (the loop's): run it again and finished steps are skipped. The datasets under
``--out`` are the demo's own scratch outputs: one made with other arguments or by another version of
the world is deleted and rendered again. Any other problem with them (say a directory the demo did
not write, or another run writing it) ends the demo with a one-line message.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from data_engine.sim.synth import (
    SynthConfig,
    SynthSummary,
    default_workers,
    synthesize,
)
from data_engine.sim.synth_output import RecipeMismatch
from data_engine.sim.synth_report import print_summary
from perception.errors import BevStackError, one_line
from perception.schema import RARE_CLASSES

W, H = 352, 198  # camera size: twice the tiny preset's input is plenty, and quick to render
CONFIG = Path(__file__).resolve().parent.parent / "configs" / "tiny_loop.yaml"
# The strategy the label-limited benchmark (python -m bench.active_learning) found best, and its results.
DEMO_ARM = "rare"
DEMO_STRATEGIES = [f"rare:{c}@fire=0.1" for c in RARE_CLASSES]
ACTIVE_LEARNING = Path(__file__).resolve().parent.parent / "bench" / "results" / "active_learning.json"


def benchmark_line() -> str:
    """What the benchmark measured for the demo's strategy against random, or how to measure it."""
    try:
        report = json.loads(ACTIVE_LEARNING.read_text())
        arm, rnd = report["arms"][DEMO_ARM], report["arms"]["random"]
        proto, key = report["protocol"], report["primary_metric"]
        labels = proto["initial"] + proto["rounds"] * proto["budget"]
        d = arm["delta_vs_random"][key]
        y = arm["yield"]
        reach = arm["random_labels_to_match"]
    except (OSError, ValueError, KeyError, TypeError):
        return "Whether mining beats random selection at the same budget: python -m bench.active_learning"
    match = (f"random needs more than {max(proto['random_labels'])} labels to match it" if reach is None
             else f"random needs {reach:.0f} labels to match it")
    return (f"The demo mines with {' + '.join(DEMO_STRATEGIES)}, the best arm of the label-limited benchmark "
            f"(python -m bench.active_learning, {len(report['seeds'])} seed{'s' if len(report['seeds']) != 1 else ''}, "
            f"{report['date']}): with {labels} labels "
            f"it reached rare-class AP {arm['final'][key]['mean']:.3f} against random's {rnd['final'][key]['mean']:.3f} "
            f"({d['mean']:+.3f}, 95 % CI [{d['lo']:+.3f}, {d['hi']:+.3f}]); {match}; "
            f"{100 * y['share']:.0f} % of its picks held a rare class against a base rate of {100 * y['base_rate']:.0f} %.")


def render_own(cfg: SynthConfig, console: Console) -> SynthSummary:
    """Synthesize one of the demo's own datasets; a stale one (other recipe or world code) is
    deleted and rendered again rather than refused."""
    try:
        return synthesize(cfg)
    except RecipeMismatch as exc:
        console.print(f"{cfg.out} is the demo's own scratch output but is stale ({exc}); "
                      "deleting it and rendering it again", style="yellow", markup=False)
        shutil.rmtree(cfg.out)
        return synthesize(cfg)


def main(argv: list[str] | None = None) -> None:
    try:
        run(argv)
    except (BevStackError, OSError) as exc:
        print(f"demo: {one_line(exc)}", file=sys.stderr)
        raise SystemExit(1) from None


def run(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the demo on the synthetic world.")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--pool-scenes", type=int, default=10)
    parser.add_argument("--frames", type=int, default=10)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--budget", type=int, default=16)
    args = parser.parse_args(argv)
    console = Console()
    start = time.perf_counter()
    workers = default_workers()

    console.rule("1/5  render a labeled world and an unlabeled pool (nuScenes v1.0)")
    world, pool = args.out / "world", args.out / "pool"
    summary = render_own(SynthConfig(out=world, scenes=args.scenes, frames=args.frames, seed=0, width=W, height=H,
                                     workers=workers), console)
    print_summary(summary, console)
    pool_summary = render_own(SynthConfig(out=pool, scenes=args.pool_scenes, frames=args.frames, seed=0, width=W,
                                          height=H, workers=workers, first_scene=args.scenes, unlabeled=True), console)
    console.print(f"pool: {pool_summary.samples} frames of {pool_summary.scenes} other scenes, no labels")

    from data_engine.loop import Arm, LoopConfig, evaluate_round, run_loop, train_round

    loop_dir = args.out / "loop"
    cfg = LoopConfig(seed_data=str(world), pool=str(pool), out=str(loop_dir), train_config=str(CONFIG),
                     steps=args.steps, rounds=1, budget=args.budget, precision="int8",
                     arms=[Arm("mined", DEMO_STRATEGIES)])
    round0 = loop_dir / "seed0" / "round0"
    round0.mkdir(parents=True, exist_ok=True)
    console.rule(f"2/5  train the tiny preset for {args.steps} steps, evaluate on the val split")
    ckpt = train_round(cfg, world, round0, 0, console.print)
    before = evaluate_round(cfg, ckpt, round0, console.print)

    console.rule("3/5  export FP32 and INT8 ONNX, benchmark them with the edge runtime")
    export_dir = round0 / "export"
    if not (export_dir / "model.int8.onnx").is_file():
        from export.exporter import export_checkpoint

        export_checkpoint(ckpt, export_dir, ["fp32", "int8"], calib_data=world, calib_frames=16, evaluate=False,
                          log=lambda _: None)
    bench_file = args.out / "bench.json"
    if not bench_file.is_file():
        from export.bench import bench, format_table

        report = bench([export_dir / "model.fp32.onnx", export_dir / "model.int8.onnx"], data=world, runs=10,
                       warmup=2, frames=10, log=lambda _: None)
        bench_file.write_text(json.dumps(report, indent=2) + "\n")
        console.print(format_table(report), markup=False)
    bench_rows = json.loads(bench_file.read_text())["rows"]

    console.rule("4/5  mine the pool, queue, label with the oracle, ingest, retrain, evaluate")
    loop = run_loop(cfg, log=console.print)
    after = next(r for r in loop["rows"] if r["round"] == 1)
    arm_dir = loop_dir / "seed0" / "mined"

    console.rule("5/5  done")
    table = Table("metric (val split)", "before (seed set)", "after (+ mined frames)")
    table.add_row("labeled frames", str(loop["rows"][0]["labeled_frames"]), str(after["labeled_frames"]))
    for key in ("mAP", "NDS", "vehicle_iou", "drivable_iou"):
        table.add_row(key, _fmt(before.get(key)), _fmt(after.get(key)))
    console.print(table)
    console.print(f"one seed; 'after' has {after['labeled_frames'] - loop['rows'][0]['labeled_frames']} more labeled "
                  "frames.", markup=False)
    console.print(benchmark_line(), markup=False)
    for row in bench_rows:
        e2e = row["stages_ms"]["end_to_end"]["p50"]
        console.print(f"edge runtime, {row['name']}: {row['fps']:.1f} FPS, {e2e:.0f} ms from JPEGs to boxes (p50), "
                      f"peak {row['peak_rss_mb']:.0f} MB", markup=False)
    console.print(f"labeled world   : {world}")
    console.print(f"unlabeled pool  : {pool}")
    console.print(f"models          : {round0 / 'train' / 'last.pt'}, {export_dir}/model.{{fp32,int8}}.onnx")
    console.print(f"benchmark       : {bench_file}")
    console.print(f"catalog         : {arm_dir / 'catalog.db'}  (data-engine status --catalog ...)")
    console.print(f"relabel queue   : {arm_dir / 'round0' / 'queue'}  (index.html, Label Studio tasks)")
    console.print(f"new version     : {arm_dir / 'versions' / 'round1'}")
    console.print(f"loop report     : {loop_dir / 'loop_report.md'}, {loop_dir / 'learning_curves.png'}")
    console.print(f"took {(time.perf_counter() - start) / 60:.1f} min")


def _fmt(v: object) -> str:
    return "n/a" if not isinstance(v, (int, float)) else f"{v:.4f}"


if __name__ == "__main__":
    main()
