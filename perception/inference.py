"""One way to run a model over clips: the video state carried from frame to frame.

Training, evaluation and prediction go through :func:`run_clips`; :meth:`MultiCamBatch.model_inputs`
is the one place a batch becomes the model's inputs (keyed by the ONNX input names,
:data:`perception.specs.MODEL_INPUT_NAMES`), which the exporter's feeds and the benches use too. The
exporter's parity check steps PyTorch and onnxruntime side by side on numpy feeds (random frames
included), each carrying its own state.

    for batch, out in run_clips(model, loader, device):   # loader: batches in clip order
        loss = criterion(out, batch)                      # grad flows unless the caller turns it off

Batch t of a group holds frame t of each of its clips; a slot's state starts from zeros where
``is_first`` is set, and at every frame with ``reset_state`` (which turns the video memory off).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch

from .data.batch import MultiCamBatch

__all__ = ["run_clips"]


def run_clips(model: torch.nn.Module, batches: Iterable[MultiCamBatch], device: torch.device, *,
              state: torch.Tensor | None = None, reset_state: bool = False,
              bf16: bool = False) -> Iterator[tuple[MultiCamBatch, dict[str, torch.Tensor]]]:
    """Run ``model`` over ``batches`` in order, each frame's output state [B, C, X, Y] fed to the next.

    Yields (batch on ``device``, outputs as the model returns them). ``state``: the state to start
    from (a resumed training run's), else zeros. ``bf16``: the forward under bfloat16 autocast.
    Gradients flow as the caller's grad mode says; the state carried is detached and float32.
    """
    net = getattr(model, "module", model)  # DistributedDataParallel wraps the BEVModel
    for batch in batches:
        batch = batch.to(device, non_blocking=True)
        B = len(batch)
        if state is None or state.shape[0] != B or reset_state:
            state = net.initial_state(B, device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch.model_inputs(state))
        yield batch, out
        state = out["state"].detach().float()
