"""Mining throughput on this machine: multi-camera frames scored per second by `data-engine mine`'s
engines (local with 1 and 2 worker processes, batched, and Ray Data with 2 actors), and the memory of
a long run.

    python -m bench.mining [--model runs/export/edge_cpu/model.int8.onnx] [--data data/synth] \
        [--scenes 8] [--long-passes 2]

Every row runs in its own process on a fresh catalog that registers ``--data`` as an unlabeled pool,
and scores its first ``--scenes`` scenes with det_entropy, seg_entropy and flicker, writing the
results to the catalog as `data-engine mine` does. Frames per second are steady-state: counted from
the first finished scene (or batch of scenes) to the last; the time to the first one is the start-up. The long row scores the
whole pool ``--long-passes`` times (a new run each pass) and samples the resident memory of the
driver and its worker processes every 0.5 s. Writes bench/results/mining.json and prints the table
of docs/results.md. Run it alone: a second busy process skews the timings.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.machine import machine

RESULTS = Path(__file__).parent / "results" / "mining.json"
STRATEGIES = ["det_entropy", "seg_entropy", "flicker"]


def _tree_rss_mb(pid: int) -> float:
    """Resident memory (MB) of a process and all its descendants, from /proc."""
    total, stack = 0.0, [pid]
    while stack:
        p = stack.pop()
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += float(line.split()[1]) / 1024
            for task in Path(f"/proc/{p}/task").iterdir():
                children = (task / "children").read_text().split()
                stack += [int(c) for c in children]
        except (OSError, ValueError):
            continue
    return total


def run_row(spec: dict[str, Any]) -> dict[str, Any]:
    """One measurement (in this process): score the pool with one engine setting."""
    from data_engine.catalog import Catalog
    from data_engine.mining.mine import SceneJob, file_sha256, score_scenes

    model = Path(spec["model"])
    sha = file_sha256(model)
    samples: list[tuple[float, float, int]] = []  # (time, RSS MB, frames done)
    done = 0
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append((time.perf_counter(), _tree_rss_mb(os.getpid()), done))
            stop.wait(0.5)

    with tempfile.TemporaryDirectory() as tmp:
        cat = Catalog.open(Path(tmp) / "bench.db")
        cat.index_dataset(spec["data"], unlabeled=True)
        scenes = cat.scene_frames(["unlabeled"])[: spec["scenes"]]
        kwargs = {"model": str(model), "strategies": STRATEGIES, "plugins": [], "threads": spec["threads"],
                  "score_threshold": 0.1, "max_boxes": 100}
        watcher = threading.Thread(target=sample, daemon=True)
        t0 = time.perf_counter()
        watcher.start()
        finish_times: list[tuple[float, int]] = []
        for p in range(spec.get("passes", 1)):
            run_id, _ = cat.start_run(f"bench-{p}", str(model), sha, STRATEGIES, 1, spec["engine"], {})
            jobs = [SceneJob(d, tok, tuple(frames)) for d, tok, frames in scenes]
            for job, results in score_scenes(jobs, kwargs, spec["workers"], spec["batch"], spec["engine"]):
                cat.write_scene(run_id, job.dataset_id, job.scene_token, results)
                done += len(results)
                finish_times.append((time.perf_counter(), done))
        stop.set()
        watcher.join()
        cat.close()
    t_first = finish_times[0][0]
    n_first = max(n for t, n in finish_times if t - t_first < 0.05)  # scenes of a batch arrive together
    t_last, n_last = finish_times[-1]
    rss = [r for _, r, _ in samples]
    return {
        "frames": n_last, "wall_s": round(t_last - t0, 2), "startup_s": round(t_first - t0, 2),
        "fps_steady": round((n_last - n_first) / (t_last - t_first), 2) if t_last > t_first else None,
        "fps_wall": round(n_last / (t_last - t0), 2),
        "rss_mb": {"peak": round(max(rss), 1) if rss else None,
                   "at": [{"frames": n, "rss_mb": round(r, 1), "t_s": round(t - t0, 1)} for t, r, n in samples[::4]]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("runs/export/edge_cpu/model.int8.onnx"))
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--scenes", type=int, default=8)
    parser.add_argument("--long-passes", type=int, default=2)
    parser.add_argument("--row", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.row:
        print(json.dumps(run_row(json.loads(args.row))))
        return
    if not args.model.is_file():
        sys.exit(f"{args.model}: model missing; export one (python -m bench.edge_runtime) or pass --model")
    cores = os.cpu_count() or 1
    base = {"model": str(args.model.resolve()), "data": str(args.data.resolve()), "scenes": args.scenes}
    rows = {
        "local, 1 worker": {**base, "engine": "local", "workers": 1, "batch": 1, "threads": cores},
        "local, 1 worker, batch 4": {**base, "engine": "local", "workers": 1, "batch": 4, "threads": cores},
        "local, 2 workers": {**base, "engine": "local", "workers": 2, "batch": 1, "threads": max(1, cores // 2)},
        "ray, 2 workers": {**base, "engine": "ray", "workers": 2, "batch": 1, "threads": max(1, cores // 2)},
        "long run: local, 1 worker": {**base, "engine": "local", "workers": 1, "batch": 1, "threads": cores,
                                      "scenes": 10**9, "passes": args.long_passes},
    }
    report: dict[str, Any] = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "model": str(args.model),
                              "data": str(args.data), "strategies": STRATEGIES, "rows": {}}
    for name, spec in rows.items():
        print(f"{name} ...", flush=True)
        proc = subprocess.run([sys.executable, "-m", "bench.mining", "--row", json.dumps(spec)], capture_output=True, check=False,
                              text=True)
        if proc.returncode != 0:
            sys.exit(f"{name}: failed\n{proc.stderr[-3000:]}")
        report["rows"][name] = {**json.loads(proc.stdout.strip().splitlines()[-1]),
                                **{k: spec[k] for k in ("engine", "workers", "batch", "threads")}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print("| engine | frames | start-up s | frames/s (steady) | frames/s (wall) | peak RSS MB |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, r in report["rows"].items():
        print(f"| {name} | {r['frames']} | {r['startup_s']} | {r['fps_steady']} | {r['fps_wall']} | {r['rss_mb']['peak']} |")
    long = report["rows"]["long run: local, 1 worker"]["rss_mb"]["at"]
    if long:
        print("long run RSS MB: " + ", ".join(f"{a['frames']} frames {a['rss_mb']}" for a in long[:: max(1, len(long) // 8)]))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
