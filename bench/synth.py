"""Throughput of `data-engine synth`: multi-camera keyframes per second (6 cameras rendered, lidar
cast, JPEGs and sweeps written) with 1 and 2 worker processes, and where the time of one frame goes.

    python -m bench.synth [--width 800 --height 450 --scenes 4 --frames 6 --repeats 3 --out bench/results/synth.json]

Prints a table and writes JSON. Medians over repeats; ratios are taken within this run.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from bench.machine import machine
from data_engine.sim.nuscenes_writer import JPEG_QUALITY
from data_engine.sim.rig import nuscenes_like_rig
from data_engine.sim.world import KEYFRAME_DT, SceneWorld, scene_spec
from data_engine.sim.synth import SynthConfig, synthesize


def run_synth(workers: int, args: argparse.Namespace, seed: int) -> float:
    """Frames per second of one synth run into a fresh directory."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-synth-"))
    try:
        cfg = SynthConfig(out=tmp / "ds", scenes=args.scenes, frames=args.frames, seed=seed, width=args.width,
                          height=args.height, workers=workers)
        start = time.perf_counter()
        synthesize(cfg, progress=False)
        return args.scenes * args.frames / (time.perf_counter() - start)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def stage_breakdown(args: argparse.Namespace) -> dict[str, float]:
    """Milliseconds per multi-camera keyframe in each stage, in this process, over a few scenes."""
    rig = nuscenes_like_rig(args.width, args.height)
    timings: dict[str, float] = {}
    frames = 0
    build = 0.0
    for index in range(args.scenes):
        start = time.perf_counter()
        world = SceneWorld(scene_spec(0, index, args.frames), rig)
        build += time.perf_counter() - start
        for k in range(args.frames):
            cap = world.capture(k * KEYFRAME_DT, frame_key=k * 100, timings=timings)
            start = time.perf_counter()
            for img in cap.images.values():
                cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            timings["jpeg"] = timings.get("jpeg", 0.0) + time.perf_counter() - start
            frames += 1
    out = {k: 1000.0 * v / frames for k, v in timings.items()}
    out["scene build (per frame)"] = 1000.0 * build / frames
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--width", type=int, default=800)
    parser.add_argument("--height", type=int, default=450)
    parser.add_argument("--scenes", type=int, default=4)
    parser.add_argument("--frames", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "synth.json")
    args = parser.parse_args()
    cv2.setNumThreads(1)

    runs: dict[int, list[float]] = {1: [], 2: []}
    for r in range(args.repeats):
        for workers in (1, 2):  # interleaved, so drift of the machine hits both alike
            runs[workers].append(run_synth(workers, args, seed=r))
    med = {w: statistics.median(v) for w, v in runs.items()}
    stages = stage_breakdown(args)

    print(f"synth at {args.width}x{args.height}, 6 cameras + lidar, {args.scenes} scenes x {args.frames} keyframes, "
          f"median of {args.repeats}; {machine()}")
    print(f"{'workers':>8} | {'frames/s':>9} | {'per core':>9} | {'runs':<30}")
    for w in (1, 2):
        print(f"{w:>8} | {med[w]:9.2f} | {med[w] / w:9.2f} | {', '.join(f'{x:.2f}' for x in runs[w]):<30}")
    print(f"speed-up of 2 workers over 1: {med[2] / med[1]:.2f}x; target: >= 10 frames/s per core")
    print("one keyframe, single process, ms:")
    total = sum(v for k, v in stages.items())
    for k, v in sorted(stages.items(), key=lambda kv: -kv[1]):
        print(f"  {k:<24} {v:8.1f}")
    print(f"  {'total':<24} {total:8.1f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({
        "machine": machine(), "width": args.width, "height": args.height, "scenes": args.scenes,
        "frames": args.frames, "repeats": args.repeats, "fps_runs": runs, "fps_median": med,
        "speedup_2_over_1": med[2] / med[1], "stage_ms": stages, "date": time.strftime("%Y-%m-%d"),
    }, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
