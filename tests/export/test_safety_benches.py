"""The safety benchmarks end to end at their quick size (bench.calibration, bench.novelty's parts) on a
random tiny checkpoint exported with a small world."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from model_inputs import random_tiny_checkpoint

from data_engine.sim.synth import SynthConfig, synthesize
from perception.data.nuscenes import load_dataset
from perception.schema import parse_conditions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world_and_checkpoint(tmp_path_factory):
    root = tmp_path_factory.mktemp("safety")
    data = root / "data"
    synthesize(SynthConfig(out=data, scenes=3, frames=5, seed=5, width=352, height=198), progress=False)
    ckpt, _ = random_tiny_checkpoint(root / "run" / "best.pt")
    return root, data, ckpt


def test_calibration_bench_quick(world_and_checkpoint) -> None:
    from bench.calibration import measure, plot, table

    root, data, ckpt = world_and_checkpoint
    report = measure(ckpt, data, root / "bench", "quick", progress=False)
    assert report["frames"] == 6  # the quick held-out world: 3 scenes of 2 frames
    pooled = report["detection_pooled"]
    assert 0.0 <= pooled["ece_raw"] <= 1.0 and 0.0 <= pooled["ece_calibrated"] <= 1.0
    assert sum(pooled["reliability_raw"]["count"]) == sum(r["detections"] for r in report["detection"].values()) > 0
    # Fitted on the confidence world (drawn like the test world), compared with the val split's fit.
    assert "confidence_world_quick" in report["fitted_on"] and "synth_val" in report["val_fitted_on"]
    assert 0.0 <= pooled["ece_val_fitted"] <= 1.0
    assert "val-split fit" in table(report)
    assert "| detection | **all** |" in table(report)
    plot(report, root / "reliability.png")
    assert (root / "reliability.png").stat().st_size > 10_000
    # The export is reused for the same checkpoint and dataset, not redone.
    model = root / "bench" / "export" / "model.fp32.onnx"
    before = model.stat().st_mtime_ns
    measure(ckpt, data, root / "bench", "quick", progress=False)
    assert model.stat().st_mtime_ns == before


def test_roc_and_auc() -> None:
    from bench.novelty import auc, roc, scene_bootstrap_auc

    assert auc(np.array([3.0, 4.0]), np.array([1.0, 2.0])) == 1.0
    assert auc(np.array([1.0, 2.0]), np.array([3.0, 4.0])) == 0.0
    assert auc(np.array([1.0, 1.0]), np.array([1.0])) == 0.5  # ties count half
    fpr, tpr = roc(np.array([3.0, 4.0]), np.array([1.0, 3.5]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    scores = np.array([5.0, 6.0, 1.0, 2.0, 5.5, 0.5])
    label = np.array([True, True, False, False, True, False])
    lo, hi = scene_bootstrap_auc(scores, label, np.array(["a", "a", "b", "b", "c", "c"]), n=200)
    assert 0.0 <= lo <= hi <= 1.0 and hi == 1.0


def test_left_out_scenes_and_the_clear_split(world_and_checkpoint, tmp_path) -> None:
    from bench.novelty import HELD_OUT, write_clear_split
    from export.safety import scene_clips
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.presets import get_preset

    _, data, _ = world_and_checkpoint
    copy = tmp_path / "data"
    shutil.copytree(data, copy)
    reader = load_dataset(copy)
    words = {sc.name: set(parse_conditions(sc.description)) for sc in reader.scenes}
    keep = write_clear_split(copy, base="synth_train", name="clear")
    assert keep == [n for n in reader.splits["synth_train"] if not words[n] & set(HELD_OUT)]
    splits = json.loads(next(copy.glob("v1.0-*/splits.json")).read_text())
    assert splits["clear"] == keep and splits["synth_train"] == list(reader.splits["synth_train"])
    every = MultiCamDataset(reader, get_preset("tiny"), DatasetConfig(split=None))
    first = sorted(words[reader.scenes[0].name])[0]  # a condition of the first scene: leaving it out drops that scene
    clips = scene_clips(every, exclude_conditions=(first,))
    left = {reader.samples[every.indices[c[0]]].scene_token for c in clips}
    assert left == {sc.token for sc in reader.scenes if first not in words[sc.name]}
    assert sum(map(len, scene_clips(every, max_frames=5))) <= 5
