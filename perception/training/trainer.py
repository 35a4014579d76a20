"""`perception train`: one training loop for a laptop CPU and for torchrun on many GPUs.

Reads top to bottom: set up the process group and the device, build data, model, loss, optimizer,
schedule and EMA (:mod:`.parts`), restore a checkpoint when resuming, then loop over clip batches
through :func:`perception.inference.run_clips` (the video state carried), with gradient
accumulation and clipping, checkpoints (atomic, also on SIGTERM and SIGUSR1), logging
(metrics.csv, TensorBoard, the console; rank 0 only) and periodic validation.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, Sampler

from ..checkpoint import remove_stale_temporaries
from ..config import ExperimentConfig, dump_yaml, resolve
from ..data.batch import FrameRef, MultiCamBatch, collate_frames
from ..data.dataset import MultiCamDataset
from ..data.sampler import ClipBatchSampler
from ..device import cpu_has_native_bf16, select_device
from ..inference import run_clips
from ..presets import Preset
from .parts import Dist, Progress, build_parts, optimizer_step, restore_progress, save_progress, setup_distributed
from .run_dir import TrainError, append_csv, load_resumable, refuse_existing_run, truncate_csv


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
    log = TrainLog(run_dir, d.main)

    # Data: clips of consecutive frames, shared out between ranks.
    dataset = train_dataset(cfg, preset)
    sampler = ClipBatchSampler(dataset.clips(), tc.batch_size, tc.clip_length, shuffle=True, seed=tc.seed,
                               drop_last=True, rank=d.rank, world_size=d.world)
    if len(sampler) == 0:
        raise TrainError(f"{tc.data}: split {tc.train_split!r} gives no batch of {tc.batch_size} clips of "
                         f"{tc.clip_length} frames")
    prepare_run_dir(run_dir, cfg, d, resume)

    # Model, loss, optimizer, schedule, EMA; where the run stands.
    parts = build_parts(cfg, preset, device, d)
    progress = Progress(video_state=parts.raw.initial_state(tc.batch_size, device))
    if ckpt is not None:
        progress = restore_progress(parts, ckpt, d, device)
        if d.main:
            truncate_csv(run_dir / "metrics.csv", progress.step)  # rows logged after the checkpoint are redone
        log.say(f"resumed {run_dir / 'last.pt'} at step {progress.step} (epoch {progress.epoch}, "
                f"batch {progress.position})")
    use_bf16 = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    if use_bf16 and device.type == "cpu" and not cpu_has_native_bf16():
        log.say("warning: train.amp=bf16 on a CPU without native bfloat16 (AVX512-BF16 or AMX) is emulated "
                "and slower than float32; set train.amp=off")

    stop, best, micro, stopping = Stop(), -math.inf, 0, False
    parts.model.train()
    log.say(f"training {preset.name} ({preset.model.view_transform}) for {tc.steps} steps on {device}, "
            f"{d.world} process(es), {len(dataset)} frames")
    while progress.step < tc.steps and not stopping:
        sampler.set_epoch(progress.epoch)
        loader = DataLoader(dataset, batch_sampler=SkipBatches(sampler, progress.position),
                            num_workers=tc.num_workers, collate_fn=collate_frames, pin_memory=device.type == "cuda")
        for batch, out in run_clips(parts.model, log.timed(loader), device, state=progress.video_state, bf16=use_bf16):
            loss, losses = parts.criterion(out, batch)
            (loss / tc.grad_accum).backward()
            progress.video_state = out["state"].detach().float()
            progress.position += 1
            micro += 1
            if micro % tc.grad_accum:
                continue
            grad_norm = optimizer_step(parts, tc.grad_clip, d)
            progress.step += 1
            if progress.step % tc.log_every == 0 or progress.step == tc.steps:
                log.train_step(progress.step, tc.steps, parts.scheduler.get_last_lr()[0], grad_norm, losses)
            stopping = _any_rank(stop.requested, d, device)
            if (tc.ckpt_every and progress.step % tc.ckpt_every == 0) or progress.step == tc.steps or stopping:
                save_progress(run_dir / "last.pt", parts, progress, cfg, preset, d)
            at_val = (tc.val_every and progress.step % tc.val_every == 0) or progress.step == tc.steps
            if tc.val_split and at_val and not stopping:
                net = parts.ema.module if parts.ema is not None else parts.raw
                score = validate(net, cfg, preset, dataset, device, progress.step, log) if d.main else -math.inf
                if _any_rank(d.main and score > best, d, device):
                    best = max(best, score)
                    save_progress(run_dir / "best.pt", parts, progress, cfg, preset, d)
                parts.model.train()
            if stopping or progress.step >= tc.steps:
                break
        else:  # the epoch ran out before the steps did
            progress.epoch, progress.position = progress.epoch + 1, 0
    if stopping:
        log.say(f"stop requested: saved {run_dir / 'last.pt'} at step {progress.step}")
    _finish(log, d, parts.raw, run_dir)
    return run_dir


def train_dataset(cfg: ExperimentConfig, preset: Preset) -> MultiCamDataset:
    """The training split as every ``dataset.*`` key says, augmented; with lidar depth targets when
    the lift-splat's depth loss needs them (or ``dataset.with_depth`` asks)."""
    spec = cfg.dataset_config(train=True)
    needs_depth = preset.model.view_transform == "lift_splat" and cfg.loss.depth_weight > 0
    return MultiCamDataset(cfg.train.data, preset, dataclasses.replace(spec, with_depth=spec.with_depth or needs_depth))


def val_dataset(cfg: ExperimentConfig, preset: Preset, reader: Any) -> MultiCamDataset:
    """The validation split of the training data's ``reader``, as every ``dataset.*`` key says, not augmented."""
    return MultiCamDataset(reader, preset, cfg.dataset_config(train=False))


def prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, d: Dist, resume: bool) -> None:
    """Rank 0 writes the run directory (once every rank has checked its data): config.yaml, no
    temporaries of dead writers, and for a new run no logs of an earlier one."""
    if d.world > 1:
        dist.barrier()
    if not d.main:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
    dump_yaml(cfg, run_dir / "config.yaml")
    if not resume:
        for stale in ("metrics.csv", "val_metrics.csv"):
            (run_dir / stale).unlink(missing_ok=True)


def validate(net: nn.Module, cfg: ExperimentConfig, preset: Preset, dataset: MultiCamDataset, device: torch.device,
             step: int, log: TrainLog) -> float:
    """Evaluate ``net`` (the EMA weights, or the raw ones) on the val split of the training data,
    log it, draw pictures every ``train.vis_every`` steps; returns NDS (-1 where it is NaN)."""
    from ..evaluate import evaluate_model
    from ..predict import predict_model

    net.eval()
    report = evaluate_model(net, preset, val_dataset(cfg, preset, dataset.reader), device=device, print_fn=None,
                            out=log.run_dir / "val" / f"step{step:06d}")
    log.val_step(step, report.detection.mAP, report.detection.NDS, report.bev_iou)
    if cfg.train.vis_every and step % cfg.train.vis_every == 0:
        predict_model(net, preset, dataset.reader, log.run_dir / "vis" / f"step{step:06d}", max_frames=2,
                      device=str(device))
    nds = report.detection.NDS
    return float(nds) if nds == nds else -1.0


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


class Stop:
    """Set by SIGTERM or SIGUSR1: the loop saves a checkpoint and leaves at the next step."""

    def __init__(self) -> None:
        self.requested = False
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            signal.signal(sig, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True


def _any_rank(flag: bool, d: Dist, device: torch.device) -> bool:
    if d.world == 1:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t)
    return bool(t.item() > 0)


class TrainLog:
    """What rank 0 reports: metrics.csv and val_metrics.csv, TensorBoard (when installed) and the
    console; on other ranks every call is a no-op. :meth:`timed` measures the time spent waiting for
    data, reported as ``data_wait_fraction`` of the wall time."""

    def __init__(self, run_dir: Path, main: bool) -> None:
        self.run_dir, self.main = run_dir, main
        self.writer: Any = None
        self._writer_opened = False
        self.wait_s = 0.0
        self.start: float | None = None  # when the first batch was asked for

    def say(self, message: str) -> None:
        if self.main:
            print(message, flush=True)

    def timed(self, batches: Iterable[MultiCamBatch]) -> Iterator[MultiCamBatch]:
        it = iter(batches)
        while True:
            asked = time.perf_counter()
            self.start = asked if self.start is None else self.start
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - asked
            yield batch

    def train_step(self, step: int, steps: int, lr: float, grad_norm: float, losses: dict[str, Any]) -> None:
        if not self.main:
            return
        row = {"step": step, "lr": lr, "grad_norm": grad_norm,
               "data_wait_fraction": self.wait_s / max(time.perf_counter() - (self.start or 0.0), 1e-9),
               **{k: float(v) for k, v in losses.items()}}
        append_csv(self.run_dir / "metrics.csv", row)
        self._scalars("train", row)
        self.say(f"step {step}/{steps} loss {row['total']:.4f} lr {lr:.2e} "
                 f"data wait {100 * row['data_wait_fraction']:.1f} %")

    def val_step(self, step: int, mAP: float, NDS: float, bev_iou: dict[str, float]) -> None:
        if not self.main:
            return
        row = {"step": step, "mAP": mAP, "NDS": NDS, **{f"iou_{k}": v for k, v in bev_iou.items()}}
        append_csv(self.run_dir / "val_metrics.csv", row)
        self._scalars("val", row)
        self.say(f"val step {step}: mAP {mAP:.4f} NDS {NDS:.4f} "
                 + " ".join(f"IoU {k} {v:.3f}" for k, v in bev_iou.items() if v == v))

    def _scalars(self, group: str, row: dict[str, Any]) -> None:
        """Training rows go to TensorBoard whole (a NaN loss shows); validation skips NaN (an unmeasured class)."""
        if not self._writer_opened:
            self._writer_opened = True
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is in the train extra; without it, the CSV files hold everything
                print("tensorboard is not installed: writing the CSV files only", file=sys.stderr)
            else:
                self.writer = SummaryWriter(str(self.run_dir / "tensorboard"))
        if self.writer is not None:
            for k, v in row.items():
                if k != "step" and (group == "train" or v == v):
                    self.writer.add_scalar(f"{group}/{k}", v, row["step"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _finish(log: TrainLog, d: Dist, model: nn.Module, run_dir: Path) -> None:
    """Close the logs, plot them; under DDP, check that every rank ends with the same parameters (ranks.json)."""
    log.close()
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
