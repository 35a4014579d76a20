"""An exported model run over a dataset's frames, as export checks it and the benchmarks measure it.

    for batch, outputs in run_edge(EdgeModel("model.fp32.onnx"), dataset):   # scenes in time order
        ...
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from export.runtime import EdgeModel
from perception.data.batch import MultiCamBatch, collate_frames
from perception.data.dataset import MultiCamDataset
from perception.data.sampler import ClipBatchSampler

__all__ = ["feeds_of", "run_edge"]


def feeds_of(batch: MultiCamBatch, prev_state: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The model's inputs of a batch (:meth:`MultiCamBatch.model_inputs`) as numpy arrays, ``prev_state``
    zeroed where a clip starts; without ``prev_state`` when none is given (the caller carries its own)."""
    state = torch.zeros(len(batch), 1, 1, 1) if prev_state is None else torch.from_numpy(prev_state)
    feeds = {k: v.numpy() for k, v in batch.model_inputs(state).items()}
    if prev_state is None:
        del feeds["prev_state"]
    return feeds


def run_edge(model: EdgeModel, dataset: MultiCamDataset,
             clips: list[list[int]] | None = None) -> Iterator[tuple[MultiCamBatch, dict[str, np.ndarray]]]:
    """An exported model over a dataset's scenes in time order, the video state carried (zeros at
    each scene's first frame): yields (batch of 1, outputs), the pairs :func:`evaluate_outputs` scores."""
    from torch.utils.data import DataLoader

    sampler = ClipBatchSampler(clips if clips is not None else dataset.clips(), 1, clip_length=None, shuffle=False,
                               drop_last=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_frames, num_workers=0)
    state = model.initial_state(1)
    for batch in loader:
        out = model.infer(**feeds_of(batch, state))
        state = out["state"]
        yield batch, out
