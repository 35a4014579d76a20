"""PyTorch BEV model -> one .onnx file with the contract of :mod:`export.runtime.metadata` (needs torch).

The torch.export-based exporter (``dynamo=True``) writes standard ONNX (opset :data:`OPSET`, no
custom ops) and runs the ONNX-script optimizer on it (constant folding, dead code removal): with
``fixed_rig`` the camera geometry becomes constants, and the projections, masks and ray encodings
computed from it fold away. A dynamic batch is traced from an example batch of 2.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from export.model_file import write_metadata
from export.runtime.metadata import INPUT_NAMES, OUTPUT_NAMES, RIG_INPUTS, ModelMetadata

__all__ = ["OPSET", "ExportWrapper", "FixedRigWrapper", "export_onnx"]

OPSET = 18


class ExportWrapper(nn.Module):
    """The model with the contract's inputs and its outputs as a tuple in OUTPUT_NAMES order."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, K: torch.Tensor, ego_T_cam: torch.Tensor, cam_valid: torch.Tensor,
                prev_state: torch.Tensor, prev_T_curr: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.model(images, K, ego_T_cam, cam_valid, prev_state, prev_T_curr, dt)
        return tuple(out[name] for name in OUTPUT_NAMES)


class FixedRigWrapper(nn.Module):
    """The model with one rig's K [N, 3, 3] and ego_T_cam [N, 4, 4] (at the input size) as constants."""

    def __init__(self, model: nn.Module, K: torch.Tensor, ego_T_cam: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("K", K.float()[None])  # [1, N, 3, 3]
        self.register_buffer("ego_T_cam", ego_T_cam.float()[None])  # [1, N, 4, 4]

    def forward(self, images: torch.Tensor, cam_valid: torch.Tensor, prev_state: torch.Tensor,
                prev_T_curr: torch.Tensor, dt: torch.Tensor) -> tuple[torch.Tensor, ...]:
        B = images.shape[0]
        K = self.K.expand(B, -1, -1, -1)
        E = self.ego_T_cam.expand(B, -1, -1, -1)
        out = self.model(images, K, E, cam_valid, prev_state, prev_T_curr, dt)
        return tuple(out[name] for name in OUTPUT_NAMES)


def export_onnx(model: nn.Module, example: dict[str, torch.Tensor], path: str | Path, metadata: ModelMetadata,
                static: bool = False) -> Path:
    """Export ``model`` (eval mode, CPU) traced on ``example`` (the contract's inputs; batch 2 for a
    dynamic batch, the static batch size with ``static``), embed ``metadata``, check, and write ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = model.eval().cpu()
    if metadata.fixed_rig is not None:
        K, E = (torch.from_numpy(a.astype(np.float32)) for a in metadata.rig_arrays())
        wrapper: nn.Module = FixedRigWrapper(model, K, E)
        names = [n for n in INPUT_NAMES if n not in RIG_INPUTS]
    else:
        wrapper = ExportWrapper(model)
        names = list(INPUT_NAMES)
    args = tuple(example[n] for n in names)
    dynamic = None
    if not static:
        if args[0].shape[0] < 2:
            raise ValueError("a dynamic-batch export needs an example batch of at least 2")
        batch = torch.export.Dim("batch")
        dynamic = {n: {0: batch} for n in names}
    tmp = path.with_name(f".{path.name}.export.tmp")
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, args, str(tmp), input_names=names, output_names=list(OUTPUT_NAMES), dynamo=True,
                          opset_version=OPSET, dynamic_shapes=dynamic, optimize=True, external_data=False)
    proto = onnx.load(str(tmp))
    tmp.unlink()
    write_metadata(proto, metadata, path)
    return path
