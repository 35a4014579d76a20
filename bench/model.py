"""Model cost per preset and view transform on this CPU: parameters, multiply-accumulates (backbone +
FPN, view transform, the rest), eager forward latency (batch 1), training-step time (forward,
losses, backward, AdamW step; batch 2 from a synthetic dataset) and peak resident memory of the
training process.

    python -m bench.model [--presets tiny,edge,base] [--views transformer,global_attention,sampling,lift_splat]

Also in JSON: the multiply-accumulates of every part (backbone, neck, view, temporal, bev_encoder,
heads) for the budget of the edge preset (8 GMACs per 6-camera frame).

Each configuration runs in its own process (so peak memory is its own). Prints a table and writes
JSON (bench/results/model.json). MACs count convolutions, matmuls and attention (torch's
FlopCounterMode / 2); elementwise work and grid sampling are not counted.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.machine import machine

RESULTS = Path(__file__).parent / "results" / "model.json"


def measure(preset_name: str, view: str, runs: int, data: Path, threads: int, scratch: bool = False) -> dict:
    """One configuration, in this process (``scratch``: the backbone from random weights, none frozen)."""
    import torch
    from torch.utils.data import DataLoader
    from torch.utils.flop_counter import FlopCounterMode

    from perception.data.batch import collate_frames
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.models.bev_model import build_model
    from perception.presets import get_preset
    from perception.training.criterion import Criterion, LossConfig

    torch.set_num_threads(threads)
    base = get_preset(preset_name)
    preset = dataclasses.replace(base, model=dataclasses.replace(base.model, view_transform=view,
                                                                 **({"pretrained": None} if scratch else {})))
    torch.manual_seed(0)
    model = build_model(preset)
    params = sum(p.numel() for p in model.parameters())
    ds = MultiCamDataset(data, preset, DatasetConfig(with_depth=view == "lift_splat"))
    loader = DataLoader(ds, batch_size=2, collate_fn=collate_frames)
    batch = next(iter(loader))
    one = {k: v[:1] for k, v in _inputs(model, batch).items()}

    # MACs by part, on one frame (the parts in the order they run).
    model.eval()
    B, N = one["K"].shape[:2]
    x = (one["images"].reshape(B * N, 3, *one["images"].shape[-2:]).float() - model.pixel_mean) / model.pixel_std
    macs: dict[str, float] = {}

    def count(part: str, fn):
        with FlopCounterMode(display=False) as counter:
            result = fn()
        macs[part] = counter.get_total_flops() / 2 / 1e9
        return result

    levels = count("backbone", lambda: model.backbone(x))
    feats = count("neck", lambda: model.neck(levels))
    feats = [f.reshape(B, N, *f.shape[1:]) for f in feats]
    bev = count("view", lambda: model.view_transform(feats, one["K"], one["ego_T_cam"], one["cam_valid"]))["bev"]
    if model.temporal is not None:
        bev, _ = count("temporal", lambda: model.temporal(bev, one["prev_state"], one["prev_T_curr"], one["dt"]))
    bev = count("bev_encoder", lambda: model.bev_encoder(bev))
    count("heads", lambda: model.heads(bev))
    count("total", lambda: model(**one))
    macs_backbone = (macs["backbone"] + macs["neck"]) * 1e9
    macs_view = macs["view"] * 1e9
    macs_rest = (macs["total"] - macs["backbone"] - macs["neck"] - macs["view"]) * 1e9

    with torch.no_grad():
        model(**one)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            model(**one)
            times.append(time.perf_counter() - start)

    model.train()
    criterion = Criterion.for_preset(preset, LossConfig())
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(criterion.parameters()), lr=1e-4)
    inputs = _inputs(model, batch)
    steps = []
    for i in range(max(2, runs // 2) + 1):
        start = time.perf_counter()
        out = model(**inputs)
        loss, _ = criterion(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i > 0:  # the first step allocates optimizer state
            steps.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "preset": preset_name, "view": view, "scratch": scratch, "params_m": params / 1e6,
        "gmacs_backbone": macs_backbone / 1e9, "gmacs_view": macs_view / 1e9, "gmacs_rest": macs_rest / 1e9,
        "gmacs_by_part": macs,
        "forward_ms": 1000 * statistics.median(times), "train_step_ms": 1000 * statistics.median(steps),
        "peak_rss_mb": peak_mb, "threads": threads,
    }


def _inputs(model, batch) -> dict:
    return batch.model_inputs(model.initial_state(len(batch)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,edge,base")
    parser.add_argument("--views", default="transformer,global_attention,sampling,lift_splat")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--one", nargs=3, metavar=("PRESET", "VIEW", "DATA"), help=argparse.SUPPRESS)
    parser.add_argument("--scratch", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one[0], args.one[1], args.runs, Path(args.one[2]), args.threads, args.scratch)))
        return
    from data_engine.sim.synth import SynthConfig, synthesize

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-model-") as tmp:
        data = Path(tmp) / "ds"
        synthesize(SynthConfig(out=data, scenes=1, frames=2, seed=0, workers=1), progress=False)
        for preset in args.presets.split(","):
            for view in args.views.split(","):
                cmd = [sys.executable, "-m", "bench.model", "--one", preset, view, str(data), "--runs", str(args.runs),
                       "--threads", str(args.threads)]
                res = subprocess.run(cmd, capture_output=True, text=True)
                if res.returncode != 0:
                    print(f"{preset} {view}: failed\n{res.stderr[-2000:]}")
                    continue
                rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
                r = rows[-1]
                print(f"{preset:<5} {view:<12} params {r['params_m']:6.2f} M  GMACs backbone {r['gmacs_backbone']:7.2f} "
                      f"view {r['gmacs_view']:6.2f} rest {r['gmacs_rest']:6.2f}  forward {r['forward_ms']:7.0f} ms  "
                      f"train step {r['train_step_ms']:7.0f} ms  peak {r['peak_rss_mb']:6.0f} MB", flush=True)
    print("\nGMACs per 6-camera frame by part:")
    parts = ("backbone", "neck", "view", "temporal", "bev_encoder", "heads", "total")
    print("| preset | view | " + " | ".join(parts) + " |\n|---|---|" + "---:|" * len(parts))
    for r in rows:
        print(f"| {r['preset']} | {r['view']} | " + " | ".join(f"{r['gmacs_by_part'].get(p, 0.0):.2f}" for p in parts) + " |")
    print(f"{machine()}, torch threads {args.threads}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "rows": rows, "date": time.strftime("%Y-%m-%d")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
