"""The edge preset on this CPU, end to end: export the CPU recipe's checkpoint (FP32, FP16, INT8 and
an INT8 with the rig folded in), then time torch eager and every ONNX model from JPEG bytes to boxes
with `perception bench`, and put the accuracy of each precision beside its speed.

    python -m bench.edge_runtime [--checkpoint runs/train/edge_cpu/best.pt] [--data data/synth] \
        [--threads 2] [--runs 50] [--skip-export]

Writes runs/export/edge_cpu*/ (models and export_report.json) and bench/results/edge_runtime.json,
and prints the table of docs/results.md. Run it alone: a second busy process skews the timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from bench.machine import machine

RESULTS = Path(__file__).parent / "results" / "edge_runtime.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/train/edge_cpu/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/synth"))
    parser.add_argument("--out", type=Path, default=Path("runs/export/edge_cpu"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--calib-frames", type=int, default=32)
    parser.add_argument("--skip-export", action="store_true", help="reuse the models already in --out")
    args = parser.parse_args()
    fixed = args.out.with_name(args.out.name + "_fixed_rig")
    if not args.skip_export:
        from export.exporter import export_checkpoint

        export_checkpoint(args.checkpoint, args.out, ["fp32", "fp16", "int8"], args.data, args.calib_frames,
                          threads=args.threads)
        export_checkpoint(args.checkpoint, fixed, ["fp32", "int8"], args.data, args.calib_frames, fixed_rig=True,
                          static=True, threads=args.threads)
    from export.bench import bench

    models = [args.out / f"model.{p}.onnx" for p in ("fp32", "fp16", "int8")] + [fixed / "model.int8.onnx"]
    report = bench(models, args.checkpoint, args.data, threads=args.threads, runs=args.runs)
    export = json.loads((args.out / "export_report.json").read_text())
    acc = export.get("accuracy", {})
    report.update(machine=machine(), date=time.strftime("%Y-%m-%d"), checkpoint=str(args.checkpoint),
                  accuracy=acc, parity={k: v for k, v in export["parity"].items() if k != "inputs"})
    lines = [("| model | decode + preprocess ms | inference ms (p50/p90/p99) | end to end ms | FPS | peak RSS MB "
             "| vehicle IoU | mAP |"), "|---|---:|---:|---:|---:|---:|---:|---:|"]
    fixed_acc = json.loads((fixed / "export_report.json").read_text()).get("accuracy", {})
    report["accuracy_fixed_rig"] = fixed_acc
    acc_of = {"torch eager fp32": acc.get("torch", {}), "onnxruntime fp32": acc.get("fp32", {}),
              "onnxruntime fp16": acc.get("fp16", {}), "onnxruntime int8": acc.get("int8", {}),
              "onnxruntime int8 fixed rig static": fixed_acc.get("int8", {})}
    for r in report["rows"]:
        s = r["stages_ms"]
        pre = s["jpeg_decode"]["p50"] + s["preprocess"]["p50"]
        inf = s["inference"]
        a = acc_of[r["name"]]
        lines.append(f"| {r['name']} | {pre:.1f} | {inf['p50']:.0f} / {inf['p90']:.0f} / {inf['p99']:.0f} "
                     f"| {s['end_to_end']['p50']:.0f} | {r['fps']:.1f} | {r['peak_rss_mb']:.0f} "
                     f"| {a.get('iou_vehicle', float('nan')):.3f} | {a.get('mAP', float('nan')):.4f} |")
    report["table"] = "\n".join(lines)
    print(report["table"])
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
