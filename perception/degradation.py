"""Dead-camera degradation: `perception eval --drop-cameras`.

The model runs over the split as :func:`~perception.evaluate.evaluate_model` runs it (video state
carried) with no camera masked (the baseline), each camera masked, then pairs (all, neighbours in the
ring by azimuth, or none); a camera is masked on the model's inputs as the edge runtime masks a dead
one (``cam_valid`` False, image zeros) in every frame. Per frame, a dropped set D splits the BEV grid
into inside (cells that :func:`perception.geometry.bev_visibility` says a camera of D sees: cell
centres lifted to a few heights, projected with the frame's K and ``ego_T_cam`` at the input size),
outside (seen by a live camera and by no camera of D) and the whole grid. BEV IoU counts the region's
cells; detection keeps the boxes whose centre lies in the region (off the grid: in none) and scores
them range-capped (:func:`~perception.metrics.range_capped_to_grid`, not the benchmark's numbers).
Deltas are against the baseline's outputs re-scored on the same cells and boxes.

    report = evaluate_degradation("runs/train/edge_cpu/best.pt", "data/synth", pairs="adjacent")
    report.singles[0].regions["outside"].delta_iou("vehicle")
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .boxes import BoxCodec, sigmoid
from .data.batch import MultiCamBatch
from .data.dataset import MultiCamDataset
from .data.nuscenes import NuScenesDataset
from .errors import BevStackError
from .evaluate import EvalError, eval_dataset, evaluate_outputs, load_for_eval, run_model
from .geometry import BEVGrid, bev_visibility
from .metrics import BEVIoU, DetectionConfig, DetectionEvaluator, EvalBoxes, range_capped_to_grid
from .metrics.nuscenes_io import ground_truth
from .metrics.report import nan_to_none
from .presets import Preset

__all__ = ["PAIR_MODES", "DegradationError", "DegradationReport", "DropResult", "RegionScores", "camera_ring",
           "degradation_model", "drop_sets", "evaluate_degradation", "mask_cameras", "parse_cameras"]

PAIR_MODES = ("all", "adjacent", "none")  # which pairs of cameras the k = 2 runs mask
_Pairs = Iterator[tuple[MultiCamBatch, dict[str, Any]]]  # (batch, outputs) of a model run, in order


class DegradationError(BevStackError):
    """A camera name or option the degradation report cannot use; the message names it."""


def _check_pairs(pairs: str) -> None:
    if pairs not in PAIR_MODES:
        raise DegradationError(f"--drop-pairs {pairs!r}: expected one of {', '.join(PAIR_MODES)}")


def parse_cameras(names: str | Sequence[str], cameras: Sequence[str]) -> tuple[int, ...]:
    """Indices into ``cameras`` of ``names`` ("CAM_A,CAM_B" or a sequence); unknown or repeated names raise."""
    items = [n.strip() for n in (names.split(",") if isinstance(names, str) else names) if n.strip()]
    bad = next((n for n in items if n not in cameras), None)
    if bad is not None or not items:
        what = f"unknown camera {bad!r} in --drop-only" if bad else "--drop-only names no camera"
        raise DegradationError(f"{what} (the model's cameras: {', '.join(cameras)})")
    if len(set(items)) != len(items):
        raise DegradationError(f"--drop-only names a camera twice: {','.join(items)}")
    return tuple(list(cameras).index(n) for n in items)


def camera_ring(ego_T_cam: np.ndarray) -> tuple[int, ...]:
    """Camera indices by the azimuth of their optical axis (camera z, column 2 of the rotation) in the
    ego frame, from +x towards +y. ego_T_cam [N, 4, 4] camera -> ego."""
    axis = np.asarray(ego_T_cam, dtype=np.float64)[:, :3, 2]  # [N, 3]
    return tuple(int(i) for i in np.argsort(np.arctan2(axis[:, 1], axis[:, 0]), kind="stable"))


def drop_sets(num_cameras: int, ring: Sequence[int], pairs: str) -> list[tuple[int, ...]]:
    """The dropped sets after the baseline: each camera, then the pairs (``pairs`` in :data:`PAIR_MODES`;
    ``adjacent``: neighbours in ``ring``, the last next to the first)."""
    _check_pairs(pairs)
    sets: list[tuple[int, ...]] = [(n,) for n in range(num_cameras)]
    if pairs == "all":
        sets += list(itertools.combinations(range(num_cameras), 2))
    elif pairs == "adjacent":
        sets += sorted({tuple(sorted(p)) for p in zip(ring, [*ring[1:], *ring[:1]]) if p[0] != p[1]})
    return sets


def mask_cameras(batch: MultiCamBatch, dropped: Sequence[int]) -> MultiCamBatch:
    """``batch`` with cameras ``dropped`` (indices into N) masked as the runtime masks a dead camera:
    ``cam_valid`` [B, N] False and ``images`` [B, N, 3, H, W] zeros there; K and ``ego_T_cam`` kept.
    The input batch is not modified."""
    images, cam_valid = batch.images.clone(), batch.cam_valid.clone()
    images[:, list(dropped)] = 0
    cam_valid[:, list(dropped)] = False
    return dataclasses.replace(batch, images=images, cam_valid=cam_valid)


@dataclass(frozen=True)
class RegionScores:
    """One region under one dropped set: the masked model's scores and the baseline's on the same cells
    and boxes. IoU per segmentation class; mAP range-capped; NaN where undefined."""

    bev_iou: dict[str, float]
    baseline_bev_iou: dict[str, float]
    mAP: float
    baseline_mAP: float
    num_gt: int  # ground-truth boxes in the region, after the configuration's range filter
    cells: float  # mean fraction of the grid's cells in the region, per frame

    def delta_iou(self, cls: str) -> float:
        """IoU of ``cls`` with the cameras masked minus the baseline's (negative: lost)."""
        return self.bev_iou[cls] - self.baseline_bev_iou[cls]

    @property
    def delta_mAP(self) -> float:
        return self.mAP - self.baseline_mAP


@dataclass(frozen=True)
class DropResult:
    """The cameras masked (names; none for the baseline), each region's scores, the run's wall time."""

    dropped: tuple[str, ...]
    regions: dict[str, RegionScores]  # "inside" (not for the baseline), "outside", "grid"
    seconds: float

    def to_json(self) -> dict[str, Any]:
        regions = {r: {**dataclasses.asdict(s), "delta_mAP": s.delta_mAP,
                       "delta_bev_iou": {c: s.delta_iou(c) for c in s.bev_iou}} for r, s in self.regions.items()}
        return {"dropped": list(self.dropped), "k": len(self.dropped), "seconds": round(self.seconds, 2),
                "regions": regions}


@dataclass(frozen=True)
class DegradationReport:
    """The baseline (no camera masked) and every dropped set, in the order run."""

    split: str | None
    dataset: str
    samples: int
    cameras: tuple[str, ...]
    ring: tuple[str, ...]  # the cameras by azimuth
    pairs: str  # the --drop-pairs mode, or "only" for one --drop-only set
    main_class: str  # "vehicle" when the model segments it, else its first segmentation class
    detection_config: str  # the range-capped configuration's name
    heights: tuple[float, ...]  # m, ego z at which cell centres are projected
    baseline: DropResult
    runs: tuple[DropResult, ...]
    meta: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    @property
    def singles(self) -> tuple[DropResult, ...]:
        return tuple(r for r in self.runs if len(r.dropped) == 1)

    @property
    def worst_pair(self) -> DropResult | None:
        """The pair that loses most main-class IoU over the whole grid (the same cells for every pair)."""
        pairs = [r for r in self.runs if len(r.dropped) == 2]
        return min(pairs, key=lambda r: np.nan_to_num(r.regions["grid"].delta_iou(self.main_class), nan=np.inf),
                   default=None)

    def to_json(self) -> dict[str, Any]:
        worst = self.worst_pair
        keys = ("split", "dataset", "samples", "pairs", "main_class", "detection_config")
        return nan_to_none({
            **{k: getattr(self, k) for k in keys}, "cameras": list(self.cameras), "ring": list(self.ring),
            "heights_m": list(self.heights), "video_state": "carried", "masking": "cam_valid False, image zeros",
            "worst_pair": list(worst.dropped) if worst else None,
            "worst_pair_by": f"{self.main_class} IoU delta over the whole grid",
            "baseline": self.baseline.to_json(), "runs": [r.to_json() for r in self.runs], "meta": self.meta})

    def table(self, markdown: bool = False) -> str:
        """Rows: none, each camera, the worst pair; main-class IoU and mAP* inside and outside, with deltas."""
        c, worst = self.main_class, self.worst_pair
        head = ["dropped", f"{c} IoU in", "Δ", f"{c} IoU out", "Δ", "mAP* in", "Δ", "mAP* out", "Δ", "cells in"]
        body = []
        for r in [self.baseline, *self.singles, *([worst] if worst else [])]:
            row = [" + ".join(r.dropped) or "none"]
            for get in (lambda s: (s.bev_iou[c], s.delta_iou(c)), lambda s: (s.mAP, s.delta_mAP)):
                for s in (r.regions.get("inside"), r.regions["outside"]):
                    v, d = get(s) if s else (None, None)
                    row += [_num(v) if s else "-", _num(d, True) if s and r.dropped else "-"]
            body.append(row + [f"{r.regions['inside'].cells:.0%}" if "inside" in r.regions else "-"])
        notes = [f"mAP*: class ranges capped to the BEV grid ({self.detection_config}), not the benchmark's mAP. "
                 "Δ: masked minus no camera masked, on the same cells and boxes.",
                 "in: cells a dropped camera sees; out: cells only live cameras see (none: every seen cell); "
                 f"{self.samples} samples of {self.split or 'every scene'}, video state carried."]
        if worst:
            notes.append(f"Worst of {len(self.runs) - len(self.singles)} pairs ({self.pairs}) by {c} IoU lost on the "
                         f"grid: {' + '.join(worst.dropped)} ({_num(worst.regions['grid'].delta_iou(c), True)}).")
        if markdown:
            lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in body] + [""] + notes)
        w = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
        rows = ["  ".join(x.rjust(w[i]) if i else x.ljust(w[i]) for i, x in enumerate(r)) for r in [head, *body]]
        return "\n".join(["Dead cameras: BEV IoU and mAP* inside and outside their view", *rows, *notes])


def _num(x: float | None, signed: bool = False) -> str:
    """``x`` to 3 decimals (never "-0.000"); n/a when missing or not finite."""
    return "n/a" if x is None or not math.isfinite(x) else f"{round(x, 3) + 0.0:{'+' if signed else ''}.3f}"


@dataclass
class _Frame:
    """The baseline's record of one frame (X, Y: the BEV grid; S seg classes; N cameras)."""

    token: str
    seg_pos: np.ndarray  # bool [S, X, Y] cells the baseline predicts positive
    seg_gt: np.ndarray  # uint8 [S, X, Y]
    seg_valid: np.ndarray  # bool [S]
    gt: EvalBoxes  # ground truth, reference ego frame
    pred: EvalBoxes  # the baseline's boxes, reference ego frame
    seen: np.ndarray  # bool [N, X, Y] cells each camera sees
    cam_valid: np.ndarray  # bool [N] as the dataset gives it
    ego_T_cam: np.ndarray  # [N, 4, 4] camera -> reference ego frame

    def regions(self, dropped: Sequence[int]) -> dict[str, np.ndarray | None]:
        """Cells [X, Y] of each region with ``dropped`` dead ("grid": None, every cell)."""
        live = self.cam_valid & ~np.isin(np.arange(len(self.cam_valid)), list(dropped))
        inside = self.seen[list(dropped)].any(axis=0)
        return {**({"inside": inside} if dropped else {}), "outside": self.seen[live].any(axis=0) & ~inside,
                "grid": None}


class _Region:
    """BEV IoU and capped detection of one region for one model run."""

    def __init__(self, seg_classes: Sequence[str], config: DetectionConfig, grid: BEVGrid) -> None:
        self.iou, self.det, self.grid = BEVIoU(seg_classes), DetectionEvaluator(config), grid
        self.cells, self.frames = 0.0, 0

    def _boxes(self, boxes: EvalBoxes, cells: np.ndarray | None) -> EvalBoxes:
        """The boxes whose centre lies in a cell of ``cells`` (all of them when None)."""
        if cells is None:
            return boxes
        xy = boxes.center[:, :2]
        on = self.grid.contains(xy)
        ij = np.clip(np.floor(self.grid.to_cells(xy[on])).astype(np.int64), 0, np.array(cells.shape) - 1)
        keep = np.zeros(len(boxes), dtype=bool)
        keep[on] = cells[ij[:, 0], ij[:, 1]]
        return boxes.select(keep)

    def add(self, seg_prob: np.ndarray, frame: _Frame, pred: EvalBoxes, cells: np.ndarray | None) -> None:
        """One frame: seg probabilities [S, X, Y], boxes ``pred``, the region's ``cells`` [X, Y] or None."""
        self.iou.update(np.asarray(seg_prob, dtype=np.float32), frame.seg_gt, frame.seg_valid, cell_mask=cells)
        self.det.add_sample(frame.token, self._boxes(frame.gt, cells), self._boxes(pred, cells))
        self.cells += 1.0 if cells is None else float(cells.mean())
        self.frames += 1

    def scores(self) -> tuple[dict[str, float], float, int, float]:
        """(IoU per class, mAP, ground-truth boxes, mean fraction of cells)."""
        metrics = self.det.compute()
        return self.iou.compute(), metrics.mean_ap, int(sum(metrics.num_gt.values())), self.cells / max(self.frames, 1)


class _Scorer:
    """Decodes outputs, records the baseline per frame, and scores each dropped set's run against it."""

    def __init__(self, preset: Preset, dataset: MultiCamDataset, score_threshold: float,
                 heights: tuple[float, ...]) -> None:
        self.codec, self.dataset, self.heights = BoxCodec.from_preset(preset), dataset, heights
        self.grid, self.seg_classes = preset.bev, tuple(preset.tasks.seg_classes)
        self.image_hw = (preset.input.height, preset.input.width)
        self.full, self.score_threshold = DetectionConfig.cvpr_2019(), score_threshold
        self.config = range_capped_to_grid(self.full, preset.bev)
        self.frames: dict[int, _Frame] = {}  # by sample index
        self.grid_scores: tuple[dict[str, float], float] | None = None  # the baseline's (IoU, mAP) on the grid
        self._new = functools.partial(_Region, self.seg_classes, self.config, self.grid)

    def decode(self, out: dict[str, Any]) -> tuple[list[EvalBoxes], np.ndarray]:
        """Boxes per frame and seg probabilities [B, S, X, Y], decoded as :func:`evaluate_outputs` decodes them."""
        decoded = self.codec.decode_logits(out, self.score_threshold, self.full.max_boxes_per_sample)
        return [EvalBoxes.from_decoded(d, self.codec.classes) for d in decoded], sigmoid(np.asarray(out["seg"]))

    def record(self, pairs: _Pairs) -> _Pairs:
        """Pass the baseline's (batch, outputs) through, keeping what the later runs are scored against."""
        reader = self.dataset.reader
        for batch, out in pairs:
            preds, seg_prob = self.decode(out)
            for b, pred in enumerate(preds):
                i, ego_T_cam = int(batch.sample_index[b]), batch.ego_T_cam[b].numpy()
                seen = bev_visibility(self.grid, batch.K[b].numpy(), ego_T_cam, self.image_hw, self.heights)
                self.frames[i] = _Frame(reader.samples[i].token, seg_prob[b] > 0.5, batch.seg[b].numpy(),
                                        batch.seg_valid[b].numpy(), ground_truth(reader, reader.samples[i]), pred,
                                        seen, batch.cam_valid[b].numpy().astype(bool), ego_T_cam)
            yield batch, out

    def frames_of(self, pairs: _Pairs) -> Iterator[tuple[_Frame, np.ndarray, EvalBoxes]]:
        """(the baseline's frame, seg probabilities [S, X, Y], boxes) of each frame of a run."""
        for batch, out in pairs:
            preds, seg_prob = self.decode(out)
            for b, pred in enumerate(preds):
                yield self.frames[int(batch.sample_index[b])], seg_prob[b], pred

    def score(self, names: tuple[str, ...], dropped: tuple[int, ...],
              items: Iterable[tuple[_Frame, np.ndarray, EvalBoxes]], start: float) -> DropResult:
        """Score (frame, seg probabilities, boxes) of a run with ``dropped`` masked, and the baseline on the
        same regions (the baseline itself: ``dropped`` empty, ``items`` the recorded frames)."""
        masked = {r: self._new() for r in ("inside", "outside", "grid")}
        base = {r: self._new() for r in ("inside", "outside")}
        for f, seg_prob, pred in items:
            for name, cells in f.regions(dropped).items():
                masked[name].add(seg_prob, f, pred, cells)
                if name in base:
                    base[name].add(f.seg_pos, f, f.pred, cells)
        if masked["grid"].frames != len(self.frames):
            raise EvalError(f"masking {names}: {masked['grid'].frames} frames, the baseline had {len(self.frames)}")
        regions = {}
        for name, acc in masked.items():
            if acc.frames:
                iou, mAP, num_gt, cells = acc.scores()
                baseline = base[name].scores()[:2] if name in base else self.grid_scores or (iou, mAP)
                regions[name] = RegionScores(iou, baseline[0], mAP, baseline[1], num_gt, cells)
        if not dropped:
            self.grid_scores = (regions["grid"].bev_iou, regions["grid"].mAP)
        return DropResult(names, regions, time.perf_counter() - start)


def degradation_model(model: torch.nn.Module, preset: Preset, data: str | Path | NuScenesDataset | MultiCamDataset,
                      split: str | None = None, *, pairs: str = "all", only: str | Sequence[str] | None = None,
                      out: str | Path | None = None, batch_size: int = 1, device: str | torch.device | None = None,
                      num_workers: int = 0, score_threshold: float = 0.1, heights: tuple[float, ...] = (0.0, 1.0, 2.0),
                      meta: dict[str, Any] | None = None, print_fn: Callable[[str], None] | None = print,
                      print_eval: bool = True) -> DegradationReport:
    """The degradation report of an in-memory model on ``split`` of ``data``.

    ``only``: mask just this set of cameras (names) after the baseline; else every camera, then the
    pairs of ``pairs``. With ``out``, the baseline's evaluation files and ``degradation.json`` are
    written there. ``print_fn`` gets progress lines and the table; ``print_eval`` also prints the
    baseline's evaluation report."""
    cameras = tuple(preset.input.cameras)
    only_idx = parse_cameras(only, cameras) if only is not None else None
    _check_pairs(pairs)
    say = print_fn or (lambda _: None)
    dataset = eval_dataset(preset, data, split)
    scorer = _Scorer(preset, dataset, score_threshold, heights)
    main = "vehicle" if "vehicle" in scorer.seg_classes else scorer.seg_classes[0]

    def run(dropped: tuple[int, ...] = ()) -> _Pairs:
        edit = (lambda b: mask_cameras(b, dropped)) if dropped else None
        return run_model(model, dataset, dataset.clips(), batch_size, device, num_workers=num_workers, edit_batch=edit)

    start = time.perf_counter()
    evaluate_outputs(preset, dataset, scorer.record(run()), out=out, score_threshold=score_threshold, meta=meta,
                     print_fn=print_fn if print_eval else None)
    baseline = scorer.score((), (), ((f, f.seg_pos, f.pred) for f in scorer.frames.values()), start)
    say(f"no camera masked: {len(scorer.frames)} frames in {baseline.seconds:.0f} s")
    ring = camera_ring(next(iter(scorer.frames.values())).ego_T_cam)
    runs = []
    for dropped in [only_idx] if only_idx is not None else drop_sets(len(cameras), ring, pairs):
        names = tuple(cameras[i] for i in dropped)
        runs.append(scorer.score(names, dropped, scorer.frames_of(run(dropped)), time.perf_counter()))
        r = runs[-1].regions
        say(f"masked {' + '.join(names)}: {main} IoU {_num(r['inside'].delta_iou(main), True)} inside their view, "
            f"{_num(r['outside'].delta_iou(main), True)} outside; {runs[-1].seconds:.0f} s")
    report = DegradationReport(
        split=dataset.config.split, dataset=str(dataset.reader.root), samples=len(scorer.frames), cameras=cameras,
        ring=tuple(cameras[i] for i in ring), pairs="only" if only_idx is not None else pairs, main_class=main,
        detection_config=scorer.config.name, heights=tuple(heights), baseline=baseline, runs=tuple(runs),
        meta=dict(meta or {}))
    say(report.table())
    if out is not None:
        path = Path(out) / "degradation.json"
        path.write_text(json.dumps(report.to_json(), indent=2))  # out exists: evaluate_outputs wrote there
        report = dataclasses.replace(report, files={"degradation": str(path)})
    return report


def evaluate_degradation(checkpoint: str | Path, data: str | Path, split: str | None = None,
                         out: str | Path | None = None, batch_size: int = 1, *, pairs: str = "all",
                         only: str | Sequence[str] | None = None, device: str | None = None, num_workers: int = 0,
                         use_ema: bool = True, print_fn: Callable[[str], None] | None = print,
                         print_eval: bool = True) -> DegradationReport:
    """`perception eval --drop-cameras`: load the checkpoint and the dataset (as `perception eval`),
    then :func:`degradation_model`; ``out`` defaults to runs/eval/<name>."""
    model, preset, reader, split, out = load_for_eval(checkpoint, data, split, out, device=device, use_ema=use_ema)
    return degradation_model(model, preset, reader, split, pairs=pairs, only=only, out=out, batch_size=batch_size,
                             device=device, num_workers=num_workers, meta={"checkpoint": str(checkpoint)},
                             print_fn=print_fn, print_eval=print_eval)
