"""What a training run updates and where it stands, built, stepped, saved and restored.

:class:`TrainParts` holds the model, the loss, the optimizer, the schedule and the EMA copy;
:class:`Progress` where the run is. :func:`build_parts`, :func:`optimizer_step`,
:func:`save_progress` and :func:`restore_progress` are the trainer's steps that touch them.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from ..checkpoint import TrainingCheckpoint, preset_to_dict, save_checkpoint
from ..config import ExperimentConfig, to_dict
from ..models.bev_model import BEVModel, build_model
from ..models.view_transformer import OFFSET_LR_SCALE
from ..presets import Preset
from .criterion import Criterion

__all__ = ["Dist", "Progress", "TrainParts", "build_parts", "lr_factor", "optimizer_step", "param_groups",
           "restore_progress", "save_progress", "setup_distributed"]


@dataclass
class Dist:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Dist:
    """Join the torchrun process group when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) == 1:
        return Dist()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    dist.init_process_group(backend)
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


@dataclass
class TrainParts:
    """The model (wrapped in DistributedDataParallel under torchrun) and ``raw``, the BEVModel inside;
    the loss with its learned task weights; AdamW, the warm-up + cosine schedule, the EMA copy."""

    model: nn.Module
    raw: BEVModel
    criterion: Criterion
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    ema: torch.optim.swa_utils.AveragedModel | None


@dataclass
class Progress:
    """Where the run stands: the video state [B, C, X, Y] after the last batch, optimizer steps done,
    the epoch, and batches of this epoch done."""

    video_state: torch.Tensor
    step: int = 0
    epoch: int = 0
    position: int = 0


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def param_groups(model: nn.Module, criterion: nn.Module, lr: float, weight_decay: float,
                 backbone_lr_scale: float) -> list[dict[str, Any]]:
    """AdamW parameter groups: weight decay on weights (not on norms, biases, embeddings or the loss
    weights); the backbone at ``backbone_lr_scale`` of ``lr`` and sampling offsets at
    OFFSET_LR_SCALE (Deformable DETR), every other parameter at ``lr``."""
    groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        scale = backbone_lr_scale if name.startswith("backbone.") else OFFSET_LR_SCALE if ".offsets." in name else 1.0
        decay = p.ndim > 1 and not name.endswith("_embed")
        groups.setdefault((scale, decay), []).append(p)
    groups.setdefault((1.0, False), []).extend(criterion.parameters())
    return [{"params": params, "lr": lr * scale, "weight_decay": weight_decay if decay else 0.0}
            for (scale, decay), params in groups.items() if params]


def build_parts(cfg: ExperimentConfig, preset: Preset, device: torch.device, d: Dist) -> TrainParts:
    """The model on ``device`` (SyncBatchNorm and DDP across ranks), loss, optimizer, schedule, EMA."""
    tc = cfg.train
    model: nn.Module = build_model(preset).to(device)
    if tc.sync_bn and d.world > 1 and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    raw: BEVModel = model  # type: ignore[assignment]
    if d.world > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = Criterion.for_preset(preset, cfg.loss).to(device)
    optimizer = torch.optim.AdamW(param_groups(raw, criterion, tc.lr, tc.weight_decay, tc.backbone_lr_scale), lr=tc.lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, tc.warmup_steps, tc.steps, tc.min_lr_ratio))
    ema = torch.optim.swa_utils.AveragedModel(raw, avg_fn=_ema_avg(tc.ema_decay), use_buffers=True) \
        if tc.ema_decay > 0 else None
    return TrainParts(model, raw, criterion, optimizer, scheduler, ema)


def optimizer_step(parts: TrainParts, grad_clip: float, d: Dist) -> float:
    """Average the loss weights' gradients over ranks, clip, step the optimizer, the schedule and the
    EMA; returns the gradient norm before clipping."""
    if d.world > 1:
        parts.criterion.all_reduce_gradients()
    grad_norm = torch.nn.utils.clip_grad_norm_(parts.raw.parameters(), grad_clip)
    parts.optimizer.step()
    parts.optimizer.zero_grad(set_to_none=True)
    parts.scheduler.step()
    if parts.ema is not None:
        parts.ema.update_parameters(parts.raw)
    return float(grad_norm)


def save_progress(path: Any, parts: TrainParts, progress: Progress, cfg: ExperimentConfig, preset: Preset,
                  d: Dist) -> None:
    """Write a :class:`TrainingCheckpoint` to ``path`` (rank 0), with every rank's video state."""
    state = progress.video_state
    states = [torch.zeros_like(state) for _ in range(d.world)] if d.world > 1 else [state]
    if d.world > 1:
        dist.all_gather(states, state.contiguous())
    if not d.main:
        return
    ema = parts.ema
    record = TrainingCheckpoint(
        preset=preset_to_dict(preset), config=to_dict(cfg), model=parts.raw.state_dict(), ema=_ema_weights(ema),
        ema_module=ema.state_dict() if ema is not None else None, optimizer=parts.optimizer.state_dict(),
        scheduler=parts.scheduler.state_dict(), criterion=parts.criterion.state_dict(), step=progress.step,
        epoch=progress.epoch, position=progress.position, video_state=torch.stack([s.cpu() for s in states]),
        rng_torch=torch.get_rng_state())
    save_checkpoint(path, record.to_dict())


def restore_progress(parts: TrainParts, ckpt: TrainingCheckpoint, d: Dist, device: torch.device) -> Progress:
    """Load a checkpoint's weights and states into ``parts``; returns where that run stood."""
    parts.raw.load_state_dict(ckpt.model)
    if parts.ema is not None and ckpt.ema_module is not None:
        parts.ema.load_state_dict(ckpt.ema_module)
    parts.optimizer.load_state_dict(ckpt.optimizer)
    parts.scheduler.load_state_dict(ckpt.scheduler)
    parts.criterion.load_state_dict(ckpt.criterion)
    torch.set_rng_state(ckpt.rng_torch)
    return Progress(step=int(ckpt.step), epoch=int(ckpt.epoch), position=int(ckpt.position),
                    video_state=ckpt.video_state[d.rank].to(device))


def _ema_avg(decay: float) -> Any:
    """EMA update with a warm-up of the decay, min(decay, (1 + n) / (10 + n)) after n updates, so
    that a short run's EMA is not dominated by the initial weights."""

    def avg(averaged: torch.Tensor, current: torch.Tensor, num_averaged: torch.Tensor) -> torch.Tensor:
        n = float(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        return averaged * d + current * (1.0 - d)

    return avg


def _ema_weights(ema: Any) -> dict[str, torch.Tensor] | None:
    """The EMA model's state dict with the wrapper's prefix removed (loads into a BEVModel)."""
    if ema is None:
        return None
    return {k[len("module."):]: v for k, v in ema.state_dict().items() if k.startswith("module.")}
