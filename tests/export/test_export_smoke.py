"""The fast form of the export path (in `make test-fast`): the tiny model, at its random initialization,
exported to ONNX FP32, parity-checked against PyTorch on random frames, then run by the edge runtime
on JPEG bytes for two frames of a stream, with the video state carried."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from model_inputs import random_tiny_checkpoint

from export.bench import load_frames
from export.exporter import export_checkpoint
from export.runtime import EdgeModel


def test_the_tiny_model_exports_and_runs_on_jpeg_bytes(tmp_path: Path) -> None:
    ckpt, _ = random_tiny_checkpoint(tmp_path / "run" / "last.pt")
    export_checkpoint(ckpt, tmp_path / "export", ["fp32"], evaluate=False, log=lambda _: None)
    report = json.loads((tmp_path / "export" / "export_report.json").read_text())
    assert report["fp32_parity_ok"] and list(report["files"]) == ["fp32"]

    model = EdgeModel(tmp_path / "export" / "model.fp32.onnx", threads=2)
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
    first_again = EdgeModel(tmp_path / "export" / "model.fp32.onnx", threads=2).step(
        frames.frames[1], frames.rig, frames.poses[1], frames.times[1])
    assert not np.allclose(first_again.seg_prob, results[1].seg_prob)
