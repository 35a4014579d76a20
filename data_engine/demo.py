"""`make demo`: the main job end to end on the built-in synthetic world.

For now: render a small world (labeled scenes and an unlabeled pool) as nuScenes datasets, draw
a picture of one sample per scene, and print where everything is.

    python -m data_engine.demo [--out demo_out] [--scenes 6] [--frames 8]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from rich.console import Console

from data_engine.show import show_sample
from data_engine.synth import SynthConfig, default_workers, synthesize
from data_engine.synth_report import print_summary
from perception.data.nuscenes import load_dataset


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the demo on the synthetic world.")
    parser.add_argument("--out", type=Path, default=Path("demo_out"))
    parser.add_argument("--scenes", type=int, default=6)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--pool-scenes", type=int, default=4)
    args = parser.parse_args(argv)
    console = Console()
    start = time.perf_counter()
    workers = default_workers()

    console.rule("1/3  render the labeled world (nuScenes v1.0)")
    world = args.out / "world"
    summary = synthesize(SynthConfig(out=world, scenes=args.scenes, frames=args.frames, seed=0, workers=workers))
    print_summary(summary, console)

    console.rule("2/3  render an unlabeled pool (as the fleet delivers it)")
    pool = args.out / "pool"
    pool_summary = synthesize(SynthConfig(out=pool, scenes=args.pool_scenes, frames=args.frames, seed=1,
                                          workers=workers, unlabeled=True))
    console.print(f"wrote {pool}: {pool_summary.scenes} scenes, {pool_summary.samples} samples, no labels")

    console.rule("3/3  draw one sample of every scene")
    pictures = args.out / "pictures"
    ds = load_dataset(world)
    written = []
    for scene in ds.scenes:
        token = scene.sample_tokens[len(scene.sample_tokens) // 2]
        written.append(show_sample(world, token, pictures / f"{scene.name}.png"))
        console.print(f"  {written[-1]}  ({scene.description})")

    console.rule("done")
    console.print(f"labeled world : {world}  ({summary.samples} samples, splits {', '.join(summary.splits)})")
    console.print(f"unlabeled pool: {pool}  ({pool_summary.samples} samples)")
    console.print(f"pictures      : {pictures}  ({len(written)} PNGs: six cameras with 3D boxes, and the BEV)")
    console.print(f"took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
