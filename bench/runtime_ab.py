"""Two exported models timed against each other with the edge runtime, alternating, one at a time.

    python -m bench.runtime_ab --models runs/export/edge_cpu_k2/model.int8.onnx \
        runs/export/edge_cpu/model.int8.onnx --data data/synth --repeats 5 \
        --out bench/results/runtime_ab_cameras.json

Each repeat runs `perception bench` on every model in turn (its own process, ``--runs`` frames after
the warm-up, JPEG bytes of a val scene to boxes); the medians over the repeats, and the ratio of the
second model's FPS to the first's, are printed and written to bench/results/runtime_ab.json.
Run it alone: a second busy process skews the timings.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine

RESULTS = Path(__file__).parent / "results" / "runtime_ab.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", type=Path, nargs=2, required=True)
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    rows: dict[str, list[dict]] = {str(m): [] for m in args.models}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for i, model in enumerate(args.models):
                out = Path(tmp) / f"{r}_{i}.json"
                cmd = [sys.executable, "-m", "perception.cli", "bench", "--model", str(model), "--data", str(args.data),
                       "--runs", str(args.runs), "--threads", str(args.threads), "--json", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise SystemExit(f"{model}: perception bench failed: {proc.stderr.strip()[-500:]}")
                rows[str(model)].append(json.loads(out.read_text())["rows"][0])
    summary = {}
    for model, runs in rows.items():
        summary[model] = {
            "fps": [round(x["fps"], 2) for x in runs],
            "fps_median": statistics.median(x["fps"] for x in runs),
            "end_to_end_p50_ms_median": statistics.median(x["stages_ms"]["end_to_end"]["p50"] for x in runs),
            "inference_p50_ms_median": statistics.median(x["stages_ms"]["inference"]["p50"] for x in runs),
            "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
        }
        s = summary[model]
        print(f"{model}: {s['fps_median']:.1f} FPS median of {s['fps']}, end to end {s['end_to_end_p50_ms_median']:.1f} ms, "
              f"inference {s['inference_p50_ms_median']:.1f} ms (p50 medians), peak {s['peak_rss_mb']:.0f} MB")
    a, b = (summary[str(m)]["fps_median"] for m in args.models)
    print(f"FPS ratio, second / first: {b / a:.2f}")
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "repeats": args.repeats, "runs": args.runs,
              "threads": args.threads, "models": summary, "fps_ratio_second_over_first": b / a}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
