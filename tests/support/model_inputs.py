"""Model inputs for tests: the synthetic rig at a preset's input size, random images."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from data_engine.sim.rig import nuscenes_like_rig
from perception.presets import Preset, get_preset

from perception.specs import MODEL_INPUT_NAMES as INPUT_NAMES  # noqa: F401  (the tests import it from here)


def preset_with(name: str, **model_overrides) -> Preset:
    p = get_preset(name)
    return dataclasses.replace(p, model=dataclasses.replace(p.model, **model_overrides))


def rig_tensors(preset: Preset, batch: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """K [B, N, 3, 3] and ego_T_cam [B, N, 4, 4] of the nuScenes-like rig rendered at the input size."""
    rig = nuscenes_like_rig(preset.input.width, preset.input.height)
    K = torch.from_numpy(np.stack([c.K for c in rig.cameras]).astype(np.float32))
    E = torch.from_numpy(np.stack([c.ego_T_cam for c in rig.cameras]).astype(np.float32))
    return K[None].repeat(batch, 1, 1, 1), E[None].repeat(batch, 1, 1, 1)


def model_inputs(preset: Preset, batch: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """A full set of forward() inputs with random images and a random previous state."""
    g = torch.Generator().manual_seed(seed)
    H, W = preset.input.height, preset.input.width
    N = len(preset.input.cameras)
    K, E = rig_tensors(preset, batch)
    return {
        "images": torch.randint(0, 256, (batch, N, 3, H, W), dtype=torch.uint8, generator=g),
        "K": K,
        "ego_T_cam": E,
        "cam_valid": torch.ones(batch, N, dtype=torch.bool),
        "prev_state": torch.randn(batch, *preset.state_shape, generator=g) * 0.1,
        "prev_T_curr": torch.eye(4)[None].repeat(batch, 1, 1),
        "dt": torch.full((batch,), 0.5),
    }


def random_tiny_checkpoint(path, seed: int = 0, pretrained: bool = True):
    """A checkpoint of the tiny preset at its random initialization (torch seed ``seed``; with
    ``pretrained`` False, no ImageNet backbone either: ``preset_with("tiny", pretrained=None)``), as
    training writes one: for tests that need a model, not a trained one. Returns (path, model)."""
    from perception.models.bev_model import build_model
    from perception.presets import preset_to_dict
    from perception.checkpoint import CHECKPOINT_FORMAT, save_checkpoint

    preset = get_preset("tiny") if pretrained else preset_with("tiny", pretrained=None)
    torch.manual_seed(seed)
    model = build_model(preset).eval()
    ckpt = save_checkpoint(path, {
        "format": CHECKPOINT_FORMAT, "preset": preset_to_dict(preset), "model": model.state_dict(), "ema": None,
        "step": 0, "classes": {"det": list(preset.tasks.det_classes), "seg": list(preset.tasks.seg_classes)},
        "config": {"train": {"train_split": "synth_train", "val_split": "synth_val"}},
    })
    return ckpt, model
