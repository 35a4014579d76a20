"""Loader throughput: multi-camera samples per second through MultiCamDataset + DataLoader, with
and without augmentation, for num_workers 0 and 2, at the tiny and edge presets.

    python -m bench.data [--data DIR] [--batches 12] [--repeats 3] [--out bench/results/data.json]

Without --data, a small synthetic dataset (800x450, as `data-engine synth` writes by default) is
rendered into a temporary directory first. Prints a table and writes JSON; medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from bench.machine import machine
from data_engine.sim.synth import SynthConfig, synthesize
from perception.data.augment import AugmentConfig
from perception.data.batch import collate_frames
from perception.data.dataset import DatasetConfig, MultiCamDataset
from perception.data.sampler import ClipBatchSampler
from perception.presets import get_preset


def throughput(root: Path, preset_name: str, augment: bool, workers: int, batches: int, batch_size: int) -> float:
    """Samples per second over ``batches`` batches (after one warm-up batch)."""
    ds = MultiCamDataset(root, get_preset(preset_name), DatasetConfig(augment=AugmentConfig(enabled=augment)))
    sampler = ClipBatchSampler(ds.clips(), batch_size, clip_length=1, shuffle=True, seed=0)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=workers, collate_fn=collate_frames,
                        persistent_workers=False)
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    n = 0
    for _ in range(batches):
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        n += len(batch)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "data.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    tmp = None
    root = args.data
    if root is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-data-")
        root = Path(tmp.name) / "ds"
        synthesize(SynthConfig(out=root, scenes=3, frames=10, seed=0, workers=2), progress=False)

    rows = []
    for preset in ("tiny", "edge"):
        for augment in (False, True):
            for workers in (0, 2):
                runs = [throughput(root, preset, augment, workers, args.batches, args.batch_size)
                        for _ in range(args.repeats)]
                rows.append({"preset": preset, "augment": augment, "workers": workers,
                             "samples_per_s": statistics.median(runs), "runs": runs})
    print(f"loader throughput, 6 cameras from 800x450 JPEGs, batch {args.batch_size}, median of {args.repeats}; "
          f"{machine()}")
    print(f"{'preset':<6} | {'augment':<7} | {'workers':>7} | {'samples/s':>9}")
    for r in rows:
        print(f"{r['preset']:<6} | {str(r['augment']):<7} | {r['workers']:>7} | {r['samples_per_s']:9.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"machine": machine(), "batch_size": args.batch_size, "rows": rows,
                                    "date": time.strftime("%Y-%m-%d")}, indent=1))
    print(f"wrote {args.out}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
