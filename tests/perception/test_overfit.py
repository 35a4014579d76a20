"""The tiny preset overfits a small batch: after at most a few hundred steps, decoding its outputs
recovers every ground-truth box within 1 m, with the right class."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from data_engine.sim.synth import SynthConfig, synthesize
from perception.boxes import BoxCodec
from perception.data.batch import collate_frames
from perception.data.dataset import MultiCamDataset
from perception.models.bev_model import build_model
from perception.presets import get_preset
from perception.training.criterion import Criterion

MAX_STEPS = 400
CHECK_EVERY = 25


def _separable(centres: np.ndarray, labels: np.ndarray, min_gap: float) -> np.ndarray:
    """Boxes with no other box of their class within ``min_gap`` metres: the 3x3 peak decoding can
    only return one of two centres closer than about two cells."""
    d = np.linalg.norm(centres[:, None, :2] - centres[None, :, :2], axis=-1)
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    return ~(same & (d < min_gap)).any(axis=1)


def _recovered(codec: BoxCodec, out: dict, batch, b: int) -> tuple[int, int]:
    """(ground-truth boxes recovered within 1 m with the right class, ground-truth boxes)."""
    heat = torch.sigmoid(out["heatmap"][b]).detach().numpy()
    dec = codec.decode(heat, out["regression"][b].detach().numpy(), score_threshold=0.3)
    m = batch.det_mask[b].numpy()
    gt_rows = batch.gt_labels[b].numpy() >= 0
    centres = batch.gt_boxes[b].numpy()[gt_rows, :3]
    labels = batch.gt_labels[b].numpy()[gt_rows]
    # The targets the codec encoded (on the grid, in range): match them by position.
    on_grid = codec.grid.contains(centres[:, :2]) & (np.linalg.norm(centres[:, :2], axis=1) <= codec.max_distance)
    keep = on_grid & _separable(centres, labels, 2.5 * codec.grid.resolution)
    assert m.sum() >= keep.sum()
    hits = 0
    for c, lab in zip(centres[keep], labels[keep]):
        d = np.linalg.norm(dec.center[:, :2] - c[:2], axis=1) if len(dec) else np.array([np.inf])
        ok = (d <= 1.0) & (dec.label == lab) if len(dec) else np.array([False])
        hits += int(ok.any())
    return hits, int(keep.sum())


@pytest.mark.slow
def test_tiny_preset_overfits_a_small_batch(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    synthesize(SynthConfig(out=root, scenes=1, frames=2, seed=21, width=352, height=198), progress=False)
    preset = get_preset("tiny")
    ds = MultiCamDataset(root, preset)
    batch = collate_frames([ds[0], ds[1]])
    torch.manual_seed(0)
    model = build_model(preset).train()
    criterion = Criterion.for_preset(preset)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    inputs = dict(images=batch.images, K=batch.K, ego_T_cam=batch.ego_T_cam, cam_valid=batch.cam_valid,
                  prev_state=model.initial_state(2), prev_T_curr=batch.prev_T_curr,
                  dt=batch.dt)
    codec = BoxCodec.from_preset(preset)
    history = []
    for step in range(1, MAX_STEPS + 1):
        out = model(**inputs)
        loss, logs = criterion(out, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step % CHECK_EVERY == 0:
            model.eval()
            with torch.no_grad():
                out = model(**inputs)
            model.train()
            counts = [_recovered(codec, out, batch, b) for b in range(2)]
            hits, total = sum(c[0] for c in counts), sum(c[1] for c in counts)
            history.append((step, float(loss.detach()), hits, total))
            if hits == total:
                break
    print("overfit history (step, loss, recovered, boxes):", history)
    step, last_loss, hits, total = history[-1]
    assert total >= 10, f"too few boxes to test ({total})"
    assert hits == total, f"after {step} steps {hits}/{total} boxes recovered; history {history}"
