"""The label-prior baseline: what a model scores without looking at the images.

For BEV segmentation it predicts, in every cell, the frequency of each class at that cell over the
training split (a cell is positive when that frequency exceeds 0.5, the threshold the model's IoU
uses); for detection it predicts nothing (mAP 0). A trained model's table is read against it.

    python -m bench.prior_baseline --data DIR --preset edge [--train-split synth_train --val-split synth_val]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from perception.data.dataset import DatasetConfig, MultiCamDataset
from perception.metrics import BEVIoU
from perception.presets import get_preset


def segmentation_prior(ds: MultiCamDataset) -> tuple[np.ndarray, np.ndarray]:
    """Per-cell class frequency [S, X, Y] over a dataset (valid frames only), and which classes had data."""
    total, count = None, None
    for i in range(len(ds)):
        item = ds[i]
        seg = item.seg.astype(np.float64) * item.seg_valid[:, None, None]
        total = seg if total is None else total + seg
        n = item.seg_valid.astype(np.float64)
        count = n if count is None else count + n
    assert total is not None and count is not None
    return total / np.maximum(count, 1)[:, None, None], count > 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--preset", default="edge")
    parser.add_argument("--train-split", default="synth_train")
    parser.add_argument("--val-split", default="synth_val")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    preset = get_preset(args.preset)
    train = MultiCamDataset(args.data, preset, DatasetConfig(split=args.train_split))
    prior, known = segmentation_prior(train)
    val = MultiCamDataset(args.data, preset, DatasetConfig(split=args.val_split))
    iou = BEVIoU(preset.tasks.seg_classes)
    for i in range(len(val)):
        item = val[i]
        iou.update(prior, item.seg, item.seg_valid & known)
    result = {"preset": args.preset, "data": str(args.data), "mAP": 0.0, "NDS": 0.0, "bev_iou": iou.compute()}
    print(json.dumps(result, indent=1))
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
