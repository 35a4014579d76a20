"""Active learning on the synthetic world: does mining pick better frames than random selection?

    python -m bench.active_learning [--out runs/active_learning] [--seeds 0] [--rounds 2] [--budget 30] \
        [--steps 300] [--pool-scenes 30] [--yield-model runs/export/edge_cpu/model.int8.onnx]

1. Worlds (in data/al/, rendered once): a seed labeled set (8 scenes), an unlabeled pool of other scenes
   of the same world, and a condition-balanced val set (night, fog and day scenes) never in the pool.
2. The loop (`data-engine loop`, configs/loops/tiny.yaml; every round trains configs/tiny_loop.yaml
   from the same initialization) with three strategies and random selection at the same budget:
   ``uncertainty`` (det_entropy), ``rare`` (triggers for the rare classes) and ``novelty``.
3. Yield, which needs no retraining: with the round-0 model, each arm picks one budget from the whole
   pool; the world's truth says how many picks hold a rare class (construction_vehicle, trailer) or a
   rare condition (night, fog), and how many rare objects there are per 100 picks. ``--yield-model``
   repeats this with another ONNX model (for instance a longer-trained one), to see how the yield
   depends on the model that mines.

Writes bench/results/active_learning.json and bench/results/learning_curves.png and prints the tables
of docs/results.md. Costs about 45 minutes per seed on 2 CPU cores with the defaults (resumable).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.machine import machine
from perception.schema import RARE_CLASSES, RARE_CONDITIONS

RESULTS = Path(__file__).parent / "results" / "active_learning.json"
CURVES = Path(__file__).parent / "results" / "learning_curves.png"
ARMS = [
    {"name": "uncertainty", "strategies": ["det_entropy"]},
    {"name": "rare", "strategies": ["rare:construction_vehicle@0.1", "rare:trailer@0.1"]},
    {"name": "novelty", "strategies": ["novelty"]},
    {"name": "random", "strategies": ["random"]},
]
W, H = 352, 198


def worlds(root: Path, pool_scenes: int) -> dict[str, Path]:
    from data_engine.sim.synth import SynthConfig, default_workers, synthesize

    w = default_workers()
    cfgs = {
        "seed": SynthConfig(out=root / "seed", scenes=8, frames=10, seed=7, width=W, height=H, workers=w),
        "pool": SynthConfig(out=root / "pool", scenes=pool_scenes, frames=10, seed=7, width=W, height=H, workers=w,
                            first_scene=8, unlabeled=True),
        "val": SynthConfig(out=root / "val", scenes=8, frames=10, seed=7, width=W, height=H, workers=w,
                           first_scene=10_000, quotas={"night": 3, "fog": 3, "day": 2}),
    }
    for cfg in cfgs.values():
        synthesize(cfg)
    return {k: c.out for k, c in cfgs.items()}


def pick_yield(model: Path, data: dict[str, Path], budget: int, seed: int) -> dict[str, Any]:
    """Each arm's picks from the whole pool with one model, and what the world's truth says they hold."""
    from data_engine.catalog import Catalog
    from data_engine.mining.mine import MineConfig, mine
    from data_engine.sim.oracle import label_samples
    from perception.data.nuscenes_tables import find_version, read_tables
    from perception.schema import CATEGORY_TO_DETECTION

    tables = read_tables(data["pool"], find_version(data["pool"], None))
    category = {c["token"]: CATEGORY_TO_DETECTION.get(c["name"]) for c in tables.records["category"]}

    def contents(tokens: list[str]) -> dict[str, Any]:
        truth = label_samples(data["pool"], tokens)
        inst = {i["token"]: category[i["category_token"]] for i in truth["instance"]}
        rare_objects = {t: 0 for t in tokens}
        for a in truth["sample_annotation"]:
            if inst[a["instance_token"]] in RARE_CLASSES:
                rare_objects[a["sample_token"]] += 1
        return rare_objects

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for arm in ARMS:
            db = Path(tmp) / f"{arm['name']}.db"
            with Catalog.open(db) as cat:
                cat.index_dataset(data["seed"])
                cat.index_dataset(data["pool"], unlabeled=True)
            strategies = [s if s != "random" else f"random:{seed + 1}" for s in arm["strategies"]]
            mine(MineConfig(model=model, catalog=db, strategies=strategies, budget=budget, run="yield", progress=False),
                 log=lambda _: None)
            with Catalog.open(db) as cat:
                picks = cat.selections("yield")
                pool = cat.query(dataset=str(data["pool"]))
            rare = contents([p.frame.sample_token for p in picks])
            n = max(1, len(picks))
            out[arm["name"]] = {
                "picks": len(picks),
                "rare_class_frames": round(sum(v > 0 for v in rare.values()) / n, 4),
                "rare_condition_frames": round(sum(any(c in RARE_CONDITIONS for c in p.frame.conditions)
                                                   for p in picks) / n, 4),
                "rare_objects_per_100": round(100 * sum(rare.values()) / n, 2),
            }
        all_rare = contents([f.sample_token for f in pool])
        out["pool (all frames)"] = {
            "picks": len(pool), "rare_class_frames": round(sum(v > 0 for v in all_rare.values()) / len(pool), 4),
            "rare_condition_frames": round(sum(any(c in RARE_CONDITIONS for c in f.conditions) for f in pool)
                                           / len(pool), 4),
            "rare_objects_per_100": round(100 * sum(all_rare.values()) / len(pool), 2)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/active_learning"))
    parser.add_argument("--data", type=Path, default=Path("data/al"))
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--budget", type=int, default=30)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--pool-scenes", type=int, default=30)
    parser.add_argument("--yield-model", type=Path, action="append", default=[],
                        help="another ONNX model to measure the yield with (repeatable)")
    args = parser.parse_args()
    from data_engine.loop import Arm, LoopConfig, run_loop

    t0 = time.perf_counter()
    data = worlds(args.data, args.pool_scenes)
    seeds = [int(s) for s in args.seeds.split(",")]
    cfg = LoopConfig(seed_data=str(data["seed"]), pool=str(data["pool"]), val_data=str(data["val"]), out=str(args.out),
                     train_config="configs/tiny_loop.yaml", steps=args.steps,
                     rounds=args.rounds, budget=args.budget, arms=[Arm(a["name"], a["strategies"]) for a in ARMS],
                     seeds=seeds)
    loop = run_loop(cfg)
    models = {"round-0 model": args.out / f"seed{seeds[0]}" / "round0" / "export" / "model.fp32.onnx"}
    models.update({str(m): m for m in args.yield_model})
    yields = {name: pick_yield(m, data, args.budget, seeds[0]) for name, m in models.items()}
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "arms": ARMS, "seeds": seeds,
              "rounds": args.rounds, "budget": args.budget, "steps": args.steps, "yield": yields,
              "learning_curves": loop["summary"], "wall_s": round(time.perf_counter() - t0, 1)}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    shutil.copy(args.out / "learning_curves.png", CURVES)
    print(f"\nyield of one budget ({args.budget}) from the pool ({args.pool_scenes * 10} frames):")
    print("| mined with | arm | frames with a rare class | frames in night or fog | rare objects per 100 picks |")
    print("|---|---|---:|---:|---:|")
    for model_name, per_arm in yields.items():
        for name, y in per_arm.items():
            print(f"| {model_name} | {name} | {y['rare_class_frames']:.2f} | {y['rare_condition_frames']:.2f} "
                  f"| {y['rare_objects_per_100']:.1f} |")
    print()
    print((args.out / "loop_report.md").read_text())
    print(f"wrote {RESULTS} and {CURVES} ({report['wall_s'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
