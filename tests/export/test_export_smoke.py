"""The fast form of the export path (in `make test-fast`): the tiny model, at its random initialization,
exported to ONNX FP32, parity-checked against PyTorch on random frames, then run by the edge runtime
on JPEG bytes for two frames of a stream, with the video state carried."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from model_inputs import random_tiny_checkpoint

from export.bench import load_frames
from export.exporter import export_checkpoint
from export.runtime import EdgeModel


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export directory of the tiny model at its random initialization (FP32 only)."""
    root = tmp_path_factory.mktemp("export_smoke")
    ckpt, _ = random_tiny_checkpoint(root / "run" / "last.pt")
    export_checkpoint(ckpt, root / "export", ["fp32"], evaluate=False, log=lambda _: None)
    return root / "export"


def test_the_tiny_model_exports_and_runs_on_jpeg_bytes(exported: Path) -> None:
    report = json.loads((exported / "export_report.json").read_text())
    assert report["fp32_parity_ok"] and list(report["files"]) == ["fp32"]

    model = EdgeModel(exported / "model.fp32.onnx", threads=2)
    frames = load_frames(model.metadata, count=2)
    results = [model.step(f, frames.rig, pose, t) for f, pose, t in zip(frames.frames, frames.poses, frames.times)]
    grid = model.preset.bev
    for res in results:
        assert not res.masked and all(res.cam_valid.values())
        assert res.seg_prob.shape == (len(res.seg_classes), *grid.shape)
        assert np.all((res.seg_prob >= 0) & (res.seg_prob <= 1))
        assert res.embedding.shape == (model.metadata.embedding_dim,) and np.all(np.isfinite(res.embedding))
        assert np.all(np.isfinite(res.heatmap)) and res.class_names == model.metadata.class_names
    # The second frame carries the first one's state: it does not read like a first frame.
    first_again = EdgeModel(exported / "model.fp32.onnx", threads=2).step(
        frames.frames[1], frames.rig, frames.poses[1], frames.times[1])
    assert not np.allclose(first_again.seg_prob, results[1].seg_prob)


def test_int8_calibration_frames_carry_the_video_state(exported: Path, synth_world: Path) -> None:
    from export.exporter import _calibration_feeds
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.data.nuscenes import load_dataset
    from perception.presets import get_preset

    fp32 = EdgeModel(exported / "model.fp32.onnx", threads=2)
    dataset = MultiCamDataset(load_dataset(synth_world), get_preset("tiny"), DatasetConfig(split="synth_train"))
    feeds = _calibration_feeds(fp32, dataset, frames=3, run_length=3)
    assert len(feeds) == 3
    assert not np.any(feeds[0]["prev_state"])  # a run starts from zeros
    for before, after in zip(feeds, feeds[1:]):  # then each frame is fed the state the previous one left
        expected = fp32.infer(**before)["state"]
        assert np.any(after["prev_state"]) and np.allclose(after["prev_state"], expected, atol=1e-5)
