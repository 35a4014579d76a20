"""`make demo`: the main job end to end on the built-in synthetic world.

For now: render a small world (labeled scenes and an unlabeled pool) as nuScenes datasets, draw
a picture of one sample per scene, and print where everything is.

    python -m data_engine.demo [--out demo_out] [--scenes 6] [--frames 8]

The datasets under ``--out`` are the demo's own scratch outputs: one made with other arguments or
by another version of the world is deleted and rendered again. Any other problem with them (say a
directory the demo did not write, or another run writing it) ends the demo with a one-line message.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

from rich.console import Console

from data_engine.show import show_sample
from data_engine.synth import (
    RecipeMismatch,
    SynthConfig,
    SynthError,
    SynthSummary,
    default_workers,
    synthesize,
)
from data_engine.synth_report import print_summary
from perception.data.nuscenes import load_dataset


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
    except SynthError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


def run(argv: list[str] | None = None) -> None:
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
    summary = render_own(SynthConfig(out=world, scenes=args.scenes, frames=args.frames, seed=0, workers=workers),
                         console)
    print_summary(summary, console)

    console.rule("2/3  render an unlabeled pool (as the fleet delivers it)")
    pool = args.out / "pool"
    pool_summary = render_own(SynthConfig(out=pool, scenes=args.pool_scenes, frames=args.frames, seed=1,
                                          workers=workers, unlabeled=True), console)
    console.print(f"wrote {pool}: {pool_summary.scenes} scenes, {pool_summary.samples} samples, no labels")

    console.rule("3/3  draw one sample of every scene")
    pictures = args.out / "pictures"
    ds = load_dataset(world)
    for old in pictures.glob("scene-*.png"):  # pictures of scenes a stale world had
        if old.stem not in {scene.name for scene in ds.scenes}:
            old.unlink()
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
