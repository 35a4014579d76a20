"""Evaluation of a BEV model on a split of a nuScenes-format dataset: `perception eval`.

The model runs scene by scene in time order with the video state carried from frame to frame
(reset to zeros at each scene's first frame; ego motion ``prev_T_curr`` and ``dt`` come from the
batch). Boxes are decoded with the preset's :class:`~perception.boxes.BoxCodec` and scored with
:mod:`perception.metrics` (the devkit's ``detection_cvpr_2019`` protocol, and a variant whose class
ranges are capped to the model's BEV grid, labelled as such); segmentation is scored with
:class:`~perception.metrics.BEVIoU` (sigmoid > 0.5, classes counted only where the dataset has a
source for them). Every number is also reported per scene condition (from the scene description)
and for the rare classes.

    report = evaluate("runs/train/x/best.pt", "data/synth", split="synth_val", out="runs/eval/x")
    report = evaluate_model(model, preset, dataset, split="synth_val")   # training's validation

Frames: predictions and ground truth are compared in each sample's reference ego frame; the
results JSON is written in the global frame (the submission format).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boxes import BoxCodec, sigmoid
from .data.batch import MultiCamBatch, collate_frames
from .data.dataset import DatasetConfig, MultiCamDataset
from .data.nuscenes import NuScenesDataset, load_dataset
from .data.sampler import ClipBatchSampler
from .inference import run_clips
from .schema import EVAL_CONDITIONS, parse_conditions
from .metrics import (
    BEVIoU,
    DetectionConfig,
    DetectionEvaluator,
    DetectionMetrics,
    EvalBoxes,
    range_capped_to_grid,
)
from .metrics.report import ConditionScores, DetectionScores, EvalReport
from .metrics.nuscenes_io import ground_truth, results_json
from .presets import Preset
from .device import select_device
from perception.errors import BevStackError

__all__ = ["EvalError", "EvalReport", "default_split", "eval_dataset", "evaluate", "evaluate_model",
           "evaluate_outputs", "run_model"]


class EvalError(BevStackError):
    """A split, scene or input that cannot be evaluated; the message names it."""


def default_split(reader: NuScenesDataset) -> str | None:
    """The validation split of splits.json (a name ending in "val"), else None (every scene)."""
    return reader.val_split


def check_split(reader: NuScenesDataset, split: str | None) -> None:
    """Raise :class:`EvalError` naming ``split`` when splits.json does not define it."""
    if split is not None and split not in reader.splits:
        raise EvalError(f"{reader.root}: unknown split {split!r} (splits.json defines: "
                        f"{', '.join(sorted(reader.splits)) or 'none'})")


@torch.no_grad()  # entered around each step of the generator, not while the caller holds it
def run_model(model: torch.nn.Module, dataset: MultiCamDataset, clips: list[list[int]], batch_size: int = 1,
              device: str | torch.device | None = None, reset_state: bool = False,
              num_workers: int = 0, *, edit_batch: Callable[[MultiCamBatch], MultiCamBatch] | None = None,
              ) -> Iterator[tuple[MultiCamBatch, dict[str, torch.Tensor]]]:
    """Run ``model`` in eval mode without gradients over ``clips`` (dataset positions, each in time
    order) through :func:`~perception.inference.run_clips`: batch t of a group holds frame t of up to
    ``batch_size`` clips of equal length. Yields (batch, outputs as float32), both on the CPU, in order.
    ``edit_batch``: applied to each batch before the model sees it (e.g. masking cameras)."""
    from torch.utils.data import DataLoader

    dev = select_device(device)
    sampler = ClipBatchSampler(clips, batch_size, clip_length=None, shuffle=False, drop_last=False)
    loader = DataLoader(dataset, batch_sampler=sampler, collate_fn=collate_frames, num_workers=num_workers)
    was_training = model.training
    model.eval()
    try:
        batches = loader if edit_batch is None else map(edit_batch, loader)
        for batch, out in run_clips(model, batches, dev, reset_state=reset_state):
            yield batch.to("cpu"), {k: v.detach().float().cpu() for k, v in out.items()}
    finally:
        model.train(was_training)


def _fmt(v: float | None, width: int = 7) -> str:
    return f"{'n/a':>{width}}" if v is None or not math.isfinite(v) else f"{v:>{width}.3f}"


def eval_dataset(preset: Preset, data: str | Path | NuScenesDataset | MultiCamDataset,
                 split: str | None = None) -> MultiCamDataset:
    """The frames to evaluate: ``split`` of ``data`` (a path or a reader), or a MultiCamDataset as given."""
    if isinstance(data, MultiCamDataset):
        dataset = data
    else:
        reader = data if isinstance(data, NuScenesDataset) else load_dataset(data)
        check_split(reader, split)
        dataset = MultiCamDataset(reader, preset, DatasetConfig(split=split))
    if len(dataset) == 0:
        raise EvalError(f"{dataset.reader.root}: split {dataset.config.split!r} has no samples")
    return dataset


def evaluate_model(model: torch.nn.Module, preset: Preset, data: str | Path | NuScenesDataset | MultiCamDataset,
                   split: str | None = None, *, out: str | Path | None = None, batch_size: int = 1,
                   device: str | torch.device | None = None, num_workers: int = 0, score_threshold: float = 0.1,
                   reset_state: bool = False, meta: dict[str, Any] | None = None,
                   print_fn: Callable[[str], None] | None = print) -> EvalReport:
    """Evaluate an in-memory model on ``split`` of ``data`` (a path, a reader or a MultiCamDataset,
    whose own split is then used); writes the files to ``out`` when given."""
    dataset = eval_dataset(preset, data, split)
    pairs = run_model(model, dataset, dataset.clips(), batch_size, device, reset_state, num_workers)
    return evaluate_outputs(preset, dataset, pairs, out=out, score_threshold=score_threshold,
                            video_state="reset every frame" if reset_state else "carried", meta=meta,
                            print_fn=print_fn)


def evaluate_outputs(preset: Preset, dataset: MultiCamDataset,
                     pairs: Iterable[tuple[MultiCamBatch, Mapping[str, Any]]], *, out: str | Path | None = None,
                     score_threshold: float = 0.1, video_state: str = "carried",
                     meta: dict[str, Any] | None = None,
                     print_fn: Callable[[str], None] | None = print) -> EvalReport:
    """Score a model's outputs over every frame of ``dataset``: the metrics of :func:`evaluate_model`.

    pairs: (batch, outputs) in any order covering the dataset's frames, outputs holding ``heatmap``
    [B, K, Xd, Yd], ``regression`` [B, 10, Xd, Yd] and ``seg`` [B, S, X, Y] logits as numpy arrays or
    CPU tensors (a PyTorch model through :func:`run_model`, or an exported one through onnxruntime).
    """
    reader = dataset.reader
    split = dataset.config.split
    codec = BoxCodec.from_preset(preset)
    classes = codec.classes
    seg_classes = tuple(preset.tasks.seg_classes)
    configs = {"full": DetectionConfig.cvpr_2019(), "capped": range_capped_to_grid(DetectionConfig.cvpr_2019(), preset.bev)}
    conditions = {sc.token: parse_conditions(sc.description) for sc in dataset.scenes}
    groups = ("all",) + EVAL_CONDITIONS
    ious = {g: BEVIoU(seg_classes) for g in groups}
    per_sample: list[tuple[str, str, EvalBoxes, EvalBoxes]] = []  # (token, scene token, gt, pred)
    predictions: dict[str, EvalBoxes] = {}

    for batch, outputs in pairs:
        decoded = codec.decode_logits(outputs, score_threshold, configs["full"].max_boxes_per_sample)
        seg_prob = sigmoid(np.asarray(outputs["seg"]))
        seg_gt, seg_valid = batch.seg.numpy(), batch.seg_valid.numpy()
        for b, boxes in enumerate(decoded):
            sample = reader.samples[int(batch.sample_index[b])]
            if not np.allclose(batch.aug_T_ego[b].numpy(), np.eye(4), atol=1e-6):
                raise EvalError("evaluation needs frames without BEV augmentation (DatasetConfig.augment)")
            pred = EvalBoxes.from_decoded(boxes, classes)
            predictions[sample.token] = pred
            per_sample.append((sample.token, sample.scene_token, ground_truth(reader, sample), pred))
            for g in groups:
                if g == "all" or g in conditions[sample.scene_token]:
                    ious[g].update(seg_prob[b], seg_gt[b], seg_valid[b])

    # Detection metrics: everything, then each condition, for the benchmark's ranges and the capped ones.
    metrics: dict[tuple[str, str], DetectionMetrics] = {}
    group_scenes = {g: sorted({s for _, s, _, _ in per_sample if g == "all" or g in conditions[s]}) for g in groups}
    for g in groups:
        if not group_scenes[g]:
            continue
        for name, cfg in configs.items():
            ev = DetectionEvaluator(cfg)
            for token, scene, gt, pred in per_sample:
                if g == "all" or g in conditions[scene]:
                    ev.add_sample(token, gt, pred)
            metrics[(g, name)] = ev.compute()

    full, capped = metrics[("all", "full")], metrics[("all", "capped")]
    submission_meta = results_meta()
    submission = results_json(predictions, reader, submission_meta)
    conditions = {}
    for g in EVAL_CONDITIONS:
        if group_scenes[g]:
            conditions[g] = ConditionScores(
                scenes=len(group_scenes[g]), samples=metrics[(g, "full")].num_samples,
                detection=DetectionScores.from_metrics(metrics[(g, "full")]),
                detection_capped=DetectionScores.from_metrics(metrics[(g, "capped")]), bev_iou=ious[g].compute())
        else:
            conditions[g] = ConditionScores(scenes=0, samples=0)
    report = EvalReport(split=split, dataset=str(reader.root), scenes=len(dataset.scenes), samples=len(per_sample),
                        video_state=video_state, detection=DetectionScores.from_metrics(full),
                        detection_capped=DetectionScores.from_metrics(capped), bev_iou=ious["all"].compute(),
                        conditions=conditions, meta=dict(meta or {}))
    report = dataclasses.replace(report, table=format_report(report, full, capped))
    if print_fn is not None:
        print_fn(report.table)
    if out is not None:
        report = write_outputs(Path(out), submission, full, capped, report)
    return report


def results_meta() -> dict[str, bool]:
    """The submission's meta: a camera-only detector."""
    return {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False}


def write_outputs(out: Path, submission: dict[str, Any], full: DetectionMetrics, capped: DetectionMetrics,
                  report: EvalReport) -> EvalReport:
    """Write the results JSON, metrics_summary.json (devkit layout), its capped twin, the details,
    the report (eval_report.json, :meth:`EvalReport.to_json`) and the printed tables. Returns the
    report with ``files`` (name -> path) filled in."""
    out.mkdir(parents=True, exist_ok=True)
    files = {
        "results": out / "results_nusc.json",
        "metrics_summary": out / "metrics_summary.json",
        "metrics_summary_capped": out / "metrics_summary_capped.json",
        "metrics_details": out / "metrics_details.json",
        "report": out / "eval_report.json",
        "table": out / "eval_report.txt",
    }
    meta = results_meta()
    files["results"].write_text(json.dumps(submission))
    files["metrics_summary"].write_text(json.dumps(full.to_devkit_json(meta), indent=2))  # NaN as the devkit writes it
    files["metrics_summary_capped"].write_text(json.dumps(capped.to_devkit_json(meta), indent=2))
    files["metrics_details"].write_text(json.dumps(full.to_devkit_details_json()))
    report = report.with_files({k: str(v) for k, v in files.items()})
    files["report"].write_text(json.dumps(report.to_json(), indent=2))
    files["table"].write_text(report.table + "\n")
    return report


def format_report(report: EvalReport, full: DetectionMetrics, capped: DetectionMetrics) -> str:
    """The printed report: per-class tables (benchmark ranges, then capped), BEV IoU, conditions, rare classes."""
    lines = [(f"split {report.split or '(all scenes)'}: {report.scenes} scenes, {report.samples} samples, "
              f"video state {report.video_state}"), "", full.summary_table(), "",
             f"RANGE-CAPPED to the BEV grid (not the benchmark's numbers): {capped.config.name}",
             capped.summary_table(), "", "BEV segmentation IoU (sigmoid > 0.5; n/a: no ground truth source)"]
    lines += [f"  {c:<16}{_fmt(v)}" for c, v in report.bev_iou.items()]
    seg = list(report.bev_iou)
    errors = ("mATE", "mASE", "mAOE", "mAVE", "mAAE")
    head = f"{'condition':<10}{'scenes':>7}{'samples':>8}{'mAP':>7}{'NDS':>7}" + "".join(
        f"{n:>7}" for n in errors) + f"{'mAP*':>7}{'NDS*':>7}" + "".join(f"{c[:9]:>10}" for c in seg)
    lines += ["", "Per scene condition (* = range-capped; last columns: BEV IoU)", head]
    for g, e in report.conditions.items():
        if e.detection is None or e.detection_capped is None:
            lines.append(f"{g:<10}{e.scenes:>7}{0:>8}  (no scenes)")
            continue
        d, dc = e.detection, e.detection_capped
        lines.append(f"{g:<10}{e.scenes:>7}{e.samples:>8}{_fmt(d.mAP)}{_fmt(d.NDS)}" + "".join(
            _fmt(getattr(d, k)) for k in errors) + f"{_fmt(dc.mAP)}{_fmt(dc.NDS)}"
            + "".join(_fmt(e.bev_iou[c], 10) for c in seg))
    lines += ["", "Rare classes", f"{'class':<22}{'ranges':<8}{'GT':>6}{'pred':>6}{'AP':>7}" + "".join(
        f"{n:>7}" for n in ("ATE", "ASE", "AOE", "AVE", "AAE"))]
    for c in report.rare:
        for name, r in (("full", report.rare[c]), ("capped", report.rare_capped[c])):
            lines.append(f"{c:<22}{name:<8}{r.num_gt:>6}{r.num_pred:>6}{_fmt(r.AP)}" + "".join(
                _fmt(getattr(r, k)) for k in ("ATE", "ASE", "AOE", "AVE", "AAE")))
    return "\n".join(lines)


def load_for_eval(checkpoint: str | Path, data: str | Path, split: str | None, out: str | Path | None, *,
                  device: str | None = None, use_ema: bool = True
                  ) -> tuple[torch.nn.Module, Preset, NuScenesDataset, str | None, Path]:
    """What `perception eval` and its variants start from: (model on ``device``, preset, reader, split
    (default: the dataset's val split), out (default runs/eval/<run>-<checkpoint>-<split>))."""
    from .checkpoint import load_model_from_checkpoint

    checkpoint = Path(checkpoint)
    if not checkpoint.is_file():
        raise EvalError(f"{checkpoint}: checkpoint file missing")
    reader = load_dataset(data)
    split = default_split(reader) if split is None else split
    check_split(reader, split)
    model, preset, _ = load_model_from_checkpoint(checkpoint, ema=use_ema)
    model.to(select_device(device))
    if out is None:
        out = Path("runs/eval") / f"{checkpoint.resolve().parent.name}-{checkpoint.stem}-{split or 'all'}"
    return model, preset, reader, split, Path(out)


def evaluate(checkpoint: str | Path, data: str | Path, split: str | None = None, out: str | Path | None = None,
             batch_size: int = 1, *, device: str | None = None, num_workers: int = 0, use_ema: bool = True,
             reset_state: bool = False, print_fn: Callable[[str], None] | None = print) -> EvalReport:
    """`perception eval`: load the checkpoint and the dataset, evaluate ``split`` (default: the
    dataset's val split, or every scene), write the outputs to ``out`` (default runs/eval/<name>)."""
    model, preset, reader, split, out = load_for_eval(checkpoint, data, split, out, device=device, use_ema=use_ema)
    dev = select_device(device)
    meta = {"checkpoint": str(checkpoint)}
    report = evaluate_model(model, preset, reader, split, out=out, batch_size=batch_size, device=dev,
                            num_workers=num_workers, reset_state=reset_state, meta=meta, print_fn=print_fn)
    return report
