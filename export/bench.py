"""`perception bench`: per-stage latency, end-to-end frames per second and peak memory of exported
models (and of the PyTorch model, given its checkpoint), one stream of raw JPEG frames, side by side.

Each row runs in its own process, so its peak resident memory is its own and the ONNX rows never
import torch (they run from the base install). Stages per frame: ``jpeg_decode`` (all cameras, at
reduced size where the input allows), ``preprocess`` (resize/crop, the shared function),
``inference`` (onnxruntime session or torch eager, the video state carried), ``decode`` (heatmap
peaks to boxes, the shared codec). Frames come from a scene of a dataset (its JPEG bytes and rig), or
are made up (noise JPEGs on a stand-in rig) without one.

    perception bench --model runs/export/x/model.fp32.onnx --model runs/export/x/model.int8.onnx \
        --checkpoint runs/train/x/best.pt --data data/synth --threads 2 --runs 50 --json bench.json
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from export.rig import ring_rig
from export.runtime.edge_model import Camera, EdgeModel, prepare_cameras
from export.runtime.metadata import ModelMetadata
from perception.boxes import BoxCodec
from perception.geometry import (
    invert_3x3,
    make_transform,
)
from perception.preprocess import ResizeCrop

__all__ = ["STAGES", "BenchFrames", "bench", "format_table", "load_frames"]

# The runtime's stages ("decode": boxes, calibration and novelty; "lens_monitor": camera health, which
# the PyTorch row does not run).
STAGES: tuple[str, ...] = ("jpeg_decode", "preprocess", "inference", "decode", "lens_monitor")


@dataclass
class BenchFrames:
    """A stream of raw frames: per frame camera -> JPEG bytes, the ego pose and the time."""

    frames: list[dict[str, bytes]]
    poses: list[np.ndarray]  # global_T_ego [4, 4] per frame
    times: list[float]  # s
    rig: dict[str, Camera]
    source: str


def load_frames(meta: ModelMetadata, data: str | Path | None = None, count: int = 20,
                seed: int = 0) -> BenchFrames:
    """``count`` consecutive frames of the first scene of ``data`` (its val split, else every scene), or
    noise JPEGs at twice the input size on the model's fixed rig or a stand-in ring rig."""
    names = meta.camera_names
    if data is not None:
        from perception.data.nuscenes import load_dataset

        reader = load_dataset(data)
        scenes = reader.scenes_of_split(reader.val_split) if reader.val_split else reader.scenes
        if not scenes:
            raise ValueError(f"{reader.root}: no scenes to take frames from")
        scene = scenes[0]
        frames, poses, times, rig = [], [], [], {}
        for sample in reader.scene_samples(scene)[:count]:
            frame = {}
            for name in names:
                if name not in sample.cameras:
                    raise ValueError(f"{reader.root}: sample {sample.token} has no camera {name!r}")
                cam = sample.cameras[name]
                frame[name] = cam.path.read_bytes()
                rig[name] = Camera(cam.K, cam.ego_T_cam, (cam.height, cam.width))
            frames.append(frame)
            poses.append(sample.global_T_ego)
            times.append(sample.timestamp / 1e6)
        return BenchFrames(frames, poses, times, rig, f"{reader.root}: scene {scene.name}, {len(frames)} frames")
    H, W = meta.input_hw
    native = (2 * H, 2 * W)
    from_input = invert_3x3(ResizeCrop.plan(native, (H, W)).dst_T_src)  # input px -> native px
    Ks, Es = meta.rig_arrays() if meta.fixed_rig is not None else ring_rig(len(names), (H, W))
    rig = {n: Camera(from_input @ Ks[i], Es[i], native) for i, n in enumerate(names)}
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(min(count, 4)):
        small = rng.integers(0, 256, (native[0] // 8, native[1] // 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (native[1], native[0]), interpolation=cv2.INTER_CUBIC)  # JPEG-like content
        ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        frames.append({n: buf.tobytes() for n in names})
    frames = [frames[i % len(frames)] for i in range(count)]
    poses = [make_transform(np.eye(3), np.array([5.0 * i, 0.0, 0.0])) for i in range(count)]
    return BenchFrames(frames, poses, [0.5 * i for i in range(count)], rig,
                       f"noise JPEGs {native[1]}x{native[0]} on a {'fixed' if meta.fixed_rig else 'stand-in'} rig")


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(v, 50)), "p90": float(np.percentile(v, 90)), "p99": float(np.percentile(v, 99)),
            "mean": float(v.mean())}


def _peak_rss_mb() -> float:
    """This process's peak resident memory, MB: VmHWM (Linux: reset at exec, unlike getrusage's
    ru_maxrss, which keeps the high-water mark of the process before exec), else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _measure(step: Callable[[int], dict[str, float]], n_frames: int, runs: int, warmup: int) -> dict[str, Any]:
    for i in range(warmup):
        step(i % n_frames)
    per_stage: dict[str, list[float]] = {s: [] for s in STAGES}
    total: list[float] = []
    for i in range(runs):
        t0 = time.perf_counter()
        timings = step(i % n_frames)
        total.append(1e3 * (time.perf_counter() - t0))
        for s in STAGES:
            if s in timings:
                per_stage[s].append(timings[s])
    stats = {s: _percentiles(v) for s, v in per_stage.items() if v}
    stats["end_to_end"] = _percentiles(total)
    return {"stages_ms": stats, "fps": 1e3 / stats["end_to_end"]["mean"], "runs": runs, "warmup": warmup}


def _row_onnx(model_path: str, frames: BenchFrames, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    rss_before = _peak_rss_mb()
    model = EdgeModel(model_path, threads=threads)
    rss_loaded = _peak_rss_mb()

    def step(i: int) -> dict[str, float]:
        if i == 0:
            model.reset()
        return model.step(frames.frames[i], frames.rig, frames.poses[i], frames.times[i]).timings_ms

    result = _measure(step, len(frames.frames), runs, warmup)
    meta = model.metadata
    name = f"onnxruntime {meta.precision}" + (" fixed rig" if meta.fixed_rig is not None else "") + (
        " static" if meta.static_batch is not None else "")
    return {"name": name, "model": model_path, "providers": model.providers,
            "precision": model.metadata.precision, **result,
            "peak_rss_mb": _peak_rss_mb(), "rss_after_load_mb": rss_loaded, "rss_before_load_mb": rss_before,
            "torch_imported": "torch" in sys.modules}


def _row_torch(checkpoint: str, frames: BenchFrames, threads: int, runs: int, warmup: int) -> dict[str, Any]:
    import torch

    from perception.checkpoint import load_model_from_checkpoint

    torch.set_num_threads(threads)
    model, preset, _ = load_model_from_checkpoint(checkpoint)
    codec = BoxCodec.from_preset(preset)
    names, hw = tuple(preset.input.cameras), (preset.input.height, preset.input.width)
    state = {"s": model.initial_state(1), "pose": None, "t": None}

    def step(i: int) -> dict[str, float]:
        prepared = prepare_cameras(frames.frames[i], frames.rig, names, hw)
        pose, t = frames.poses[i], frames.times[i]
        if i == 0 or state["pose"] is None:
            state["s"], prev_T_curr, dt = model.initial_state(1), np.eye(4), 0.0
        else:
            prev_T_curr, dt = np.linalg.solve(state["pose"], pose), t - state["t"]
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model(torch.from_numpy(prepared.images[None]), torch.from_numpy(prepared.K[None]),
                        torch.from_numpy(prepared.ego_T_cam[None]), torch.from_numpy(prepared.cam_valid[None]),
                        state["s"], torch.from_numpy(prev_T_curr[None].astype(np.float32)), torch.tensor([dt]))
        t1 = time.perf_counter()
        codec.decode_logits(out)
        t2 = time.perf_counter()
        state.update(s=out["state"], pose=pose, t=t)
        return {**prepared.timings_ms, "inference": 1e3 * (t1 - t0), "decode": 1e3 * (t2 - t1)}

    result = _measure(step, len(frames.frames), runs, warmup)
    return {"name": "torch eager fp32", "model": checkpoint, "precision": "fp32", **result,
            "peak_rss_mb": _peak_rss_mb(), "torch_imported": True, "torch_threads": torch.get_num_threads()}


def _row_main() -> None:
    """Child process entry: ``python -m export.bench ROW.pkl`` prints one row as JSON."""
    job = pickle.loads(Path(sys.argv[1]).read_bytes())
    frames: BenchFrames = job["frames"]
    if job["kind"] == "onnx":
        row = _row_onnx(job["path"], frames, job["threads"], job["runs"], job["warmup"])
    else:
        row = _row_torch(job["path"], frames, job["threads"], job["runs"], job["warmup"])
    print("BENCH_ROW " + json.dumps(row))


def bench(models: Sequence[str | Path], checkpoint: str | Path | None = None, data: str | Path | None = None,
          threads: int = 2, runs: int = 50, warmup: int = 5, frames: int = 20,
          log: Callable[[str], None] = print) -> dict[str, Any]:
    """One row per model (and torch eager when ``checkpoint`` is given), each measured in a child process
    on the same frames, one after the other (never concurrently: they would skew each other)."""
    if not models:
        raise ValueError("give at least one --model")
    for m in models:
        if not Path(m).is_file():
            raise FileNotFoundError(f"{m}: model file missing")
    first = EdgeModel(models[0], threads=1)
    stream = load_frames(first.metadata, data, frames)
    del first
    jobs = ([{"kind": "torch", "path": str(checkpoint)}] if checkpoint is not None else []) + [
        {"kind": "onnx", "path": str(m)} for m in models]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bevstack-bench-") as tmp:
        for k, job in enumerate(jobs):
            job_file = Path(tmp) / f"row{k}.pkl"
            job_file.write_bytes(pickle.dumps({**job, "frames": stream, "threads": threads, "runs": runs,
                                               "warmup": warmup}))
            log(f"bench {job['kind']} {job['path']} ({runs} frames after {warmup} warm-up, {threads} threads)")
            env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
            res = subprocess.run([sys.executable, "-m", "export.bench", str(job_file)], check=False,
                                 capture_output=True,
                                 text=True, env=env)
            line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH_ROW ")), None)
            if res.returncode != 0 or line is None:
                raise RuntimeError(f"bench row {job['path']} failed:\n{res.stderr[-3000:]}")
            rows.append(json.loads(line[len("BENCH_ROW "):]))
    report = {"frames": stream.source, "threads": threads, "runs": runs, "warmup": warmup,
              "cpu_count": os.cpu_count(), "rows": rows}
    log(format_table(report))
    return report


def format_table(report: dict[str, Any]) -> str:
    """The printed table: p50/p90/p99 per stage (ms), end-to-end FPS and peak resident memory per row."""
    head = f"{'model':<22}" + "".join(f"{s:>22}" for s in (*STAGES, "end_to_end")) + f"{'FPS':>7}{'peak MB':>9}"
    lines = [f"frames: {report['frames']}; {report['threads']} threads; ms as p50/p90/p99", head]
    for r in report["rows"]:
        cells = []
        for s in (*STAGES, "end_to_end"):
            v = r["stages_ms"].get(s)
            cells.append(("-" if v is None else f"{v['p50']:.1f}/{v['p90']:.1f}/{v['p99']:.1f}").rjust(22))
        lines.append(f"{r['name']:<22}" + "".join(cells) + f"{r['fps']:>7.1f}{r['peak_rss_mb']:>9.0f}")
    return "\n".join(lines)


if __name__ == "__main__":
    _row_main()
