"""`perception train`: one training loop for a laptop CPU and for torchrun on many GPUs.

Reads top to bottom: set up the process group and the device, build data, model, loss, optimizer,
schedule and EMA, restore a checkpoint when resuming, then loop over clip batches carrying the video
state, with gradient accumulation and clipping, checkpoints (atomic, also on SIGTERM and SIGUSR1),
logging (metrics.csv, TensorBoard, a progress bar, rank 0 only) and periodic validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..config import ExperimentConfig, dump_yaml, resolve, to_dict
from ..device import select_device
from ..data.batch import FrameRef, MultiCamBatch, collate_frames
from ..data.dataset import MultiCamDataset
from ..data.sampler import ClipBatchSampler
from ..models.bev_model import BEVModel, build_model
from ..models.view_transformer import OFFSET_LR_SCALE
from ..checkpoint import CHECKPOINT_FORMAT, preset_to_dict, remove_stale_temporaries, save_checkpoint
from .criterion import Criterion
from .run_dir import TrainError, append_csv, load_resumable, refuse_existing_run, truncate_csv


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


class SkipBatches(Sampler[list[FrameRef]]):
    """The batches of a batch sampler after the first ``skip`` (to resume mid-epoch)."""

    def __init__(self, inner: ClipBatchSampler, skip: int):
        self.inner, self.skip = inner, skip

    def __iter__(self) -> Iterator[list[FrameRef]]:
        for i, batch in enumerate(self.inner):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.inner) - self.skip)


def lr_factor(step: int, warmup: int, total: int, floor: float) -> float:
    """Linear warm-up to 1, then cosine decay to ``floor``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class Stop:
    """Set by SIGTERM or SIGUSR1: the loop saves a checkpoint and leaves at the next step."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


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


def train_dataset(cfg: ExperimentConfig, preset: Any) -> MultiCamDataset:
    """The training split as every ``dataset.*`` key says, augmented; with lidar depth targets when
    the lift-splat's depth loss needs them (or ``dataset.with_depth`` asks)."""
    spec = cfg.dataset_config(train=True)
    needs_depth = preset.model.view_transform == "lift_splat" and cfg.loss.depth_weight > 0
    return MultiCamDataset(cfg.train.data, preset, dataclasses.replace(spec, with_depth=spec.with_depth or needs_depth))


def val_dataset(cfg: ExperimentConfig, preset: Any, reader: Any) -> MultiCamDataset:
    """The validation split of the training data's ``reader``, as every ``dataset.*`` key says, not augmented."""
    return MultiCamDataset(reader, preset, cfg.dataset_config(train=False))


def model_inputs(batch: MultiCamBatch, state: torch.Tensor) -> dict[str, torch.Tensor]:
    return {"images": batch.images, "K": batch.K, "ego_T_cam": batch.ego_T_cam, "cam_valid": batch.cam_valid,
            "prev_state": state, "prev_T_curr": batch.prev_T_curr, "dt": batch.dt}


def train(cfg: ExperimentConfig, resume: bool = False) -> Path:
    """Train as ``cfg`` says; returns the run directory. ``resume`` continues from ``last.pt``."""
    tc = cfg.train
    d = setup_distributed()
    device = select_device(tc.device, d.local_rank)
    if tc.deterministic:
        torch.use_deterministic_algorithms(True)
        torch.set_num_threads(1)
    torch.manual_seed(tc.seed)
    preset = resolve(cfg)
    run_dir = Path(tc.out_root) / tc.name
    ckpt = load_resumable(run_dir / "last.pt", preset) if resume else None
    if not resume:
        refuse_existing_run(run_dir)
    log = (lambda msg: print(msg, flush=True)) if d.main else (lambda msg: None)

    # Data: clips of consecutive frames, shared out between ranks.
    dataset = train_dataset(cfg, preset)
    sampler = ClipBatchSampler(dataset.clips(), tc.batch_size, tc.clip_length, shuffle=True, seed=tc.seed,
                               drop_last=True, rank=d.rank, world_size=d.world)
    if len(sampler) == 0:
        raise TrainError(f"{tc.data}: split {tc.train_split!r} gives no batch of {tc.batch_size} clips of "
                         f"{tc.clip_length} frames")

    # The run directory, written once the data and the checkpoint are known to be usable.
    if d.world > 1:
        dist.barrier()  # every rank has checked before rank 0 writes
    if d.main:
        run_dir.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(run_dir)
        dump_yaml(cfg, run_dir / "config.yaml")
        if not resume:
            for stale in ("metrics.csv", "val_metrics.csv"):
                (run_dir / stale).unlink(missing_ok=True)

    # Model, loss, optimizer, schedule, EMA.
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
    use_bf16 = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")

    step, epoch, position = 0, 0, 0
    state = raw.initial_state(tc.batch_size, device)
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        if ema is not None and ckpt.get("ema_module") is not None:
            ema.load_state_dict(ckpt["ema_module"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        criterion.load_state_dict(ckpt["criterion"])
        step, epoch, position = int(ckpt["step"]), int(ckpt["epoch"]), int(ckpt["position"])
        state = ckpt["video_state"][d.rank].to(device)
        torch.set_rng_state(ckpt["rng_torch"])
        if d.main:
            truncate_csv(run_dir / "metrics.csv", step)  # rows logged after the checkpoint are redone
        log(f"resumed {run_dir / 'last.pt'} at step {step} (epoch {epoch}, batch {position})")

    def save(name: str) -> None:
        states = [torch.zeros_like(state) for _ in range(d.world)] if d.world > 1 else [state]
        if d.world > 1:
            dist.all_gather(states, state.contiguous())
        if d.main:
            save_checkpoint(run_dir / name, {
                "format": CHECKPOINT_FORMAT, "preset": preset_to_dict(preset), "config": to_dict(cfg),
                "classes": {"det": list(preset.tasks.det_classes), "seg": list(preset.tasks.seg_classes)},
                "model": raw.state_dict(), "ema": _ema_weights(ema), "ema_module": ema.state_dict() if ema else None,
                "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "criterion": criterion.state_dict(), "step": step, "epoch": epoch, "position": position,
                "video_state": torch.stack([s.cpu() for s in states]), "rng_torch": torch.get_rng_state(),
            })

    best = -math.inf

    def validate(at: int) -> float:
        """Rank 0 evaluates the EMA weights (or the raw ones) on the val split and draws pictures;
        returns NDS (-inf on other ranks)."""
        if not d.main:
            return -math.inf
        from ..evaluate import evaluate_model
        from ..predict import predict_model

        net = ema.module if ema is not None else raw
        net.eval()
        report = evaluate_model(net, preset, val_dataset(cfg, preset, dataset.reader), device=device, print_fn=None,
                                out=run_dir / "val" / f"step{at:06d}")
        det = report["detection"]
        row = {"step": at, "mAP": det["mean_ap"], "NDS": det["nd_score"],
               **{f"iou_{k}": v for k, v in report["bev_iou"].items()}}
        append_csv(run_dir / "val_metrics.csv", row)
        if writer is not None:
            for k, v in row.items():
                if k != "step" and v == v:  # skip NaN
                    writer.add_scalar(f"val/{k}", v, at)
        if tc.vis_every and at % tc.vis_every == 0:
            predict_model(net, preset, dataset.reader, run_dir / "vis" / f"step{at:06d}", max_frames=2,
                          device=str(device))
        log(f"val step {at}: mAP {det['mean_ap']:.4f} NDS {det['nd_score']:.4f} "
            + " ".join(f"IoU {k} {v:.3f}" for k, v in report["bev_iou"].items() if v == v))
        return float(det["nd_score"]) if det["nd_score"] == det["nd_score"] else -1.0

    stop = Stop()
    metrics_file = run_dir / "metrics.csv"
    writer = _tensorboard(run_dir) if d.main else None
    model.train()
    micro = 0
    wait_total, step_total = 0.0, 0.0
    log(f"training {preset.name} ({preset.model.view_transform}) for {tc.steps} steps on {device}, "
        f"{d.world} process(es), {len(dataset)} frames")
    while step < tc.steps:
        sampler.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=SkipBatches(sampler, position), num_workers=tc.num_workers,
                            collate_fn=collate_frames, pin_memory=device.type == "cuda")
        tick = time.perf_counter()
        for batch in loader:
            got = time.perf_counter()
            batch = batch.to(device, non_blocking=True)
            keep = (~batch.is_first).to(state.dtype).reshape(-1, 1, 1, 1)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                out = model(**model_inputs(batch, state * keep))
            loss, logs = criterion(out, batch)
            (loss / tc.grad_accum).backward()
            state = out["state"].detach().float()
            position += 1
            micro += 1
            if micro % tc.grad_accum:
                continue
            if d.world > 1:
                criterion.all_reduce_gradients()
            grad_norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), tc.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            if ema is not None:
                ema.update_parameters(raw)
            step += 1
            done = time.perf_counter()
            wait_total += got - tick
            step_total += done - tick
            tick = done
            if d.main and (step % tc.log_every == 0 or step == tc.steps):
                row = {"step": step, "lr": scheduler.get_last_lr()[0], "grad_norm": float(grad_norm),
                       "data_wait_fraction": wait_total / max(step_total, 1e-9),
                       **{k: float(v) for k, v in logs.items()}}
                append_csv(metrics_file, row)
                if writer is not None:
                    for k, v in row.items():
                        if k != "step":
                            writer.add_scalar(f"train/{k}", v, step)
                log(f"step {step}/{tc.steps} loss {row['total']:.4f} lr {row['lr']:.2e} "
                    f"data wait {100 * row['data_wait_fraction']:.1f} %")
            stop_now = _any_rank(stop.requested, d, device)
            if (tc.ckpt_every and step % tc.ckpt_every == 0) or step == tc.steps or stop_now:
                save("last.pt")
            if tc.val_split and ((tc.val_every and step % tc.val_every == 0) or step == tc.steps) and not stop_now:
                score = validate(step)
                if _any_rank(d.main and score > best, d, device):
                    best = max(best, score)
                    save("best.pt")
                model.train()
            if stop_now:
                log(f"stop requested: saved {run_dir / 'last.pt'} at step {step}")
                _finish(writer, d, raw, run_dir)
                return run_dir
            if step >= tc.steps:
                break
        else:
            epoch += 1
            position = 0
            continue
        break
    _finish(writer, d, raw, run_dir)
    return run_dir


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


def _any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


def _tensorboard(run_dir: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is in the train extra; without it, metrics.csv still holds everything
        print("tensorboard is not installed: writing metrics.csv only", file=sys.stderr)
        return None
    return SummaryWriter(str(run_dir / "tensorboard"))


def _finish(writer: Any, d: Dist, model: nn.Module, run_dir: Path) -> None:
    """Close the logs; under DDP, check that every rank ends with the same parameters (ranks.json)."""
    if writer is not None:
        writer.close()
    if d.main and (run_dir / "metrics.csv").exists():
        from .plots import plot_results

        plot_results(run_dir / "metrics.csv", run_dir / "results.png")
        if (run_dir / "val_metrics.csv").exists():
            plot_results(run_dir / "val_metrics.csv", run_dir / "val_results.png")
    if d.world > 1:
        digest = hashlib.sha256(b"".join(p.detach().cpu().numpy().tobytes() for p in model.parameters())).hexdigest()
        digests: list[Any] = [None] * d.world
        dist.all_gather_object(digests, digest)
        if d.main:
            (run_dir / "ranks.json").write_text(json.dumps({"parameter_sha256": digests}, indent=1))
            if len(set(digests)) != 1:
                print(f"warning: ranks ended with different parameters: {digests}", file=sys.stderr)
        dist.barrier()
        dist.destroy_process_group()
