"""`perception export`: a checkpoint -> .onnx per precision, a parity report and their accuracy.

    report = export_checkpoint("runs/train/edge_cpu/best.pt", out="runs/export/edge_cpu",
                               precisions=("fp32", "fp16", "int8"), calib_data="data/synth")

Writes ``model.<precision>.onnx`` and ``export_report.json`` to ``out``:

- parity: each exported precision against the PyTorch model over a clip of 5 fresh frames (frames of
  the val split when a dataset is given, random images otherwise; never the frames traced or
  calibrated on), each with its own video state fed back: max and mean absolute difference per output
  and whether the decoded boxes are identical. FP32 beyond tolerance fails the export;
- INT8: calibrated on frames of the train split with their video state; the per-layer sensitivity;
- safety (given a dataset): the score calibration fitted on the val split (or on ``confidence_data``,
  a dataset like the one the model will meet, its val split) and the novelty index of the train split
  (:mod:`export.safety`), stored in the metadata of every precision;
- accuracy: every precision and the PyTorch model on the val split, with `perception eval`'s metrics.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from export.model_file import write_metadata
from export.onnx_export import OPSET, export_onnx
from export.precision import (
    DEFAULT_INT8_OP_TYPES,
    int8_sensitivity,
    quantize_int8,
    to_fp16,
)
from export.dataset_runs import feeds_of as _feeds_of
from export.dataset_runs import run_edge
from export.rig import ring_rig
from export.safety import fit_calibration_on, fit_novelty_on
from export.runtime import EdgeModel, ModelMetadata
from export.runtime.metadata import OUTPUT_NAMES, PRECISIONS
from perception.boxes import BoxCodec, DecodedBoxes
from perception.data.batch import collate_frames
from perception.data.dataset import DatasetConfig, MultiCamDataset
from perception.data.nuscenes import NuScenesDataset, load_dataset
from perception.evaluate import default_split, evaluate_model, evaluate_outputs
from perception.metrics.report import nan_to_none
from perception.geometry import make_transform
from perception.presets import Preset, preset_to_dict
from perception.checkpoint import load_model_from_checkpoint
from perception.digest import file_sha256
from perception.errors import BevStackError

__all__ = ["ExportError", "export_checkpoint", "parity_report", "run_edge"]

PARITY_FRAMES = 5
# FP32 parity: max |onnxruntime - torch| per output, relative to max(1, max |torch|).
FP32_TOLERANCE = 1e-3


class ExportError(BevStackError, RuntimeError):
    """The export cannot be written or checked; the message says which file and what failed."""


# --------------------------------------------------------------------------------------------------
# Inputs: dataset frames or random ones
# --------------------------------------------------------------------------------------------------


def _random_feeds(preset: Preset, batch: int, frames: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``frames`` consecutive random frames of ``batch`` samples on the stand-in rig, the ego moving ahead."""
    rng = np.random.default_rng(seed)
    K, E = ring_rig(len(preset.input.cameras), (preset.input.height, preset.input.width))
    N, H, W = len(preset.input.cameras), preset.input.height, preset.input.width
    out = []
    for t in range(frames):
        motion = make_transform(np.eye(3), np.array([2.0 * (t > 0), 0.0, 0.0]))
        out.append({
            "images": rng.integers(0, 256, (batch, N, 3, H, W), dtype=np.uint8),
            "K": np.repeat(K[None], batch, 0).astype(np.float32), "ego_T_cam": np.repeat(E[None], batch, 0).astype(np.float32),
            "cam_valid": np.ones((batch, N), bool), "prev_T_curr": np.repeat(motion[None], batch, 0).astype(np.float32),
            "dt": np.full((batch,), 0.5 * (t > 0), np.float32),
        })
    return out


def _dataset_clip(dataset: MultiCamDataset, length: int, scene: int = 0) -> list[dict[str, np.ndarray]]:
    """The first ``length`` frames of a scene of ``dataset`` as feeds of batch 1."""
    clips = [c for c in dataset.clips() if c]
    if not clips:
        raise ExportError(f"{dataset.reader.root}: split {dataset.config.split!r} has no frames")
    clip = clips[scene % len(clips)][:length]
    return [_feeds_of(collate_frames([dataset[i]])) for i in clip]


# --------------------------------------------------------------------------------------------------
# Parity
# --------------------------------------------------------------------------------------------------


def _box_matches(a: DecodedBoxes, b: DecodedBoxes, atol: float = 1e-3) -> int:
    """How many boxes of ``a`` have a box in ``b`` of the same class with centre, size and yaw within ``atol``
    (order ignored: scores equal to float precision may sort differently)."""
    if len(a) == 0 or len(b) == 0:
        return 0

    def rows(d: DecodedBoxes) -> np.ndarray:
        return np.column_stack([d.center, d.size, np.sin(d.yaw), np.cos(d.yaw)])

    ra, rb = rows(a), rows(b)
    close = np.abs(ra[:, None, :] - rb[None, :, :]).max(axis=-1) <= atol  # [Ka, Kb]
    close &= a.label[:, None] == b.label[None, :]
    return int(close.any(axis=1).sum())


def parity_report(model: torch.nn.Module, edge: EdgeModel, clip: Sequence[dict[str, np.ndarray]],
                  codec: BoxCodec) -> dict[str, Any]:
    """onnxruntime against PyTorch over ``clip`` (feeds of every input but prev_state; a fixed-rig
    model ignores K and ego_T_cam, which must then be its rig), each run feeding its own state back.
    Per output: max and mean absolute difference over the clip, and the reference scale max |torch|;
    per frame: whether the decoded boxes (every peak above the score threshold, uncapped) are
    identical; over the clip, how many PyTorch boxes have their twin among the ONNX ones."""
    B = clip[0]["images"].shape[0]
    t_state = torch.zeros(B, *edge.metadata.state_shape)
    o_state = edge.initial_state(B)
    diffs: dict[str, list[np.ndarray]] = {n: [] for n in OUTPUT_NAMES}
    scale = {n: 0.0 for n in OUTPUT_NAMES}
    same: list[bool] = []
    n_ref = n_got = matched = 0
    for feeds in clip:
        with torch.no_grad():
            ref = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}, prev_state=t_state)
        got = edge.infer(feeds["images"], feeds["K"], feeds["ego_T_cam"], feeds["cam_valid"], o_state,
                         feeds["prev_T_curr"], feeds["dt"])
        t_state, o_state = ref["state"], got["state"]
        for n in OUTPUT_NAMES:
            r = ref[n].float().numpy()
            diffs[n].append(np.abs(got[n] - r).ravel())
            scale[n] = max(scale[n], float(np.abs(r).max()))
        # Every peak above the score threshold, uncapped: a cap would cut among near-equal scores.
        ref_boxes = codec.decode_logits(ref, edge.score_threshold, max_detections=1 << 20)
        got_boxes = codec.decode_logits(got, edge.score_threshold, max_detections=1 << 20)
        for a, b in zip(ref_boxes, got_boxes):
            n_ref += len(a)
            n_got += len(b)
            forward = _box_matches(a, b)
            matched += forward
            same.append(len(a) == len(b) == forward == _box_matches(b, a))
    outputs = {}
    for n in OUTPUT_NAMES:
        d = np.concatenate(diffs[n])
        outputs[n] = {"max_abs_diff": float(d.max()), "mean_abs_diff": float(d.mean()), "torch_max_abs": scale[n],
                      "relative_max_diff": float(d.max()) / max(1.0, scale[n])}
    return {"frames": len(clip), "batch": B, "outputs": outputs, "boxes_identical": all(same),
            "frames_with_identical_boxes": int(sum(same)), "frames_compared": len(same),
            "boxes_torch": n_ref, "boxes_onnx": n_got, "torch_boxes_matched": matched}


# --------------------------------------------------------------------------------------------------
# The command
# --------------------------------------------------------------------------------------------------


def _calibration_feeds(fp32: EdgeModel, dataset: MultiCamDataset, frames: int, run_length: int = 4) -> list[dict[str, np.ndarray]]:
    """``frames`` frames of the train split for INT8 calibration: runs of ``run_length`` consecutive
    frames taken from scene after scene (spread over the split), each with the video state the FP32
    model carries along its run."""
    clips = [c for c in dataset.clips() if c]
    if not clips:
        raise ExportError(f"{dataset.reader.root}: calibration split {dataset.config.split!r} has no frames")
    picks: list[list[int]] = []
    offset, total = 0, 0
    while total < frames:
        added = False
        for clip in clips:
            run = clip[offset:offset + run_length][: frames - total]
            if run:
                picks.append(run)
                total += len(run)
                added = True
            if total >= frames:
                break
        if not added:
            break
        offset += run_length
    feeds: list[dict[str, np.ndarray]] = []
    for run in picks:
        state = fp32.initial_state(1)
        for k, i in enumerate(run):
            f = _feeds_of(collate_frames([dataset[i]]))
            f["prev_state"] = state  # the state carried along the run (the frame is no clip start here)
            if k == 0:
                f["prev_T_curr"], f["dt"] = np.eye(4, dtype=np.float32)[None], np.zeros(1, np.float32)
            state = fp32.infer(**f)["state"]
            feeds.append(f)
    return feeds


def export_checkpoint(checkpoint: str | Path, out: str | Path | None = None, precisions: Sequence[str] = ("fp32",),
                      calib_data: str | Path | None = None, calib_frames: int = 32, static: bool = False,
                      fixed_rig: bool = False, train_split: str | None = None, val_split: str | None = None,
                      evaluate: bool = True, int8_op_types: Sequence[str] = DEFAULT_INT8_OP_TYPES,
                      threads: int | None = None, safety: bool = True,
                      confidence_data: str | Path | None = None, confidence_split: str | None = None,
                      log: Callable[[str], None] = print) -> dict[str, Any]:
    """Export a checkpoint (see the module docstring). Returns the report (also in export_report.json)."""
    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    bad = [p for p in precisions if p not in PRECISIONS]
    if bad:
        raise ExportError(f"unknown precision(s) {bad}; choose from {', '.join(PRECISIONS)}")
    precisions = tuple(dict.fromkeys(["fp32", *precisions]))  # fp32 is the reference the others derive from
    if ("int8" in precisions or fixed_rig) and calib_data is None:
        raise ExportError("--calib-data DATASET is needed for int8 (calibration frames) and --fixed-rig (the rig)")
    model, preset, state = load_model_from_checkpoint(checkpoint)
    out = Path(out) if out is not None else Path("runs/export") / checkpoint.resolve().parent.name
    out.mkdir(parents=True, exist_ok=True)
    cfg = state.get("config") or {}
    train_cfg = cfg.get("train", {}) if isinstance(cfg, dict) else {}

    reader: NuScenesDataset | None = load_dataset(calib_data) if calib_data is not None else None
    calib_ds = val_ds = None
    if reader is not None:
        train_split = (train_split or train_cfg.get("train_split")
                       or next((s for s in sorted(reader.splits) if s.endswith("train")), None))
        val_split = val_split or train_cfg.get("val_split") or default_split(reader)
        for name in (train_split, val_split):
            if name is not None and name not in reader.splits:
                raise ExportError(f"{reader.root}: no split {name!r} in splits.json; it has {sorted(reader.splits)}")
        calib_ds = MultiCamDataset(reader, preset, DatasetConfig(split=train_split))
        val_ds = MultiCamDataset(reader, preset, DatasetConfig(split=val_split))
    confidence_ds = val_ds
    if confidence_data is not None:
        if reader is None:
            raise ExportError("--confidence-data needs --calib-data too (the novelty index is fitted on its train split)")
        conf_reader = load_dataset(confidence_data)
        confidence_split = confidence_split or default_split(conf_reader)
        if confidence_split is not None and confidence_split not in conf_reader.splits:
            raise ExportError(f"{conf_reader.root}: no split {confidence_split!r} in splits.json; it has "
                              f"{sorted(conf_reader.splits)}")
        confidence_ds = MultiCamDataset(conf_reader, preset, DatasetConfig(split=confidence_split))

    rig = None
    if fixed_rig:
        assert calib_ds is not None
        first = calib_ds[0]
        rig = {"K": first.K.astype(float).tolist(), "ego_T_cam": first.ego_T_cam.astype(float).tolist()}
    meta = ModelMetadata(
        preset=preset_to_dict(preset), precision="fp32", checkpoint_sha256=file_sha256(checkpoint),
        state_shape=preset.state_shape, embedding_dim=preset.model.embedding_dim,
        static_batch=1 if static else None, fixed_rig=rig,
        exporter={"opset": OPSET, "torch": torch.__version__, "onnx": onnx.__version__},
    )

    # Trace on one input, check parity on other ones.
    batch = 1 if static else 2
    if calib_ds is not None and val_ds is not None:
        trace = _dataset_clip(calib_ds, 1)[0]
        trace = {k: np.repeat(v, batch, axis=0) for k, v in trace.items()}
        parity_clip = _dataset_clip(val_ds, PARITY_FRAMES, scene=len(val_ds.clips()) // 2)
        parity_source = f"{PARITY_FRAMES} frames of a {val_ds.config.split} scene"
    else:
        trace = _random_feeds(preset, batch, 1, seed=0)[0]
        parity_clip = _random_feeds(preset, 1, PARITY_FRAMES, seed=1)
        parity_source = f"{PARITY_FRAMES} random frames on a stand-in rig"
    example = {k: torch.from_numpy(v) for k, v in trace.items()}
    example["prev_state"] = torch.randn(batch, *meta.state_shape) * 0.1

    files: dict[str, Path] = {}
    log(f"exporting {checkpoint} ({preset.name}, {preset.model.view_transform}) to {out}")
    t0 = time.perf_counter()
    files["fp32"] = export_onnx(model, example, out / "model.fp32.onnx", meta, static=static)
    timings = {"export_fp32_s": time.perf_counter() - t0}
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "checkpoint_sha256": meta.checkpoint_sha256,
                              "preset": preset.name, "view_transform": preset.model.view_transform,
                              "static": static, "fixed_rig": fixed_rig, "opset": OPSET, "files": {},
                              "parity": {"inputs": parity_source}, "timings": timings}
    codec = BoxCodec.from_preset(preset)
    edge = {"fp32": EdgeModel(files["fp32"], threads=threads)}
    report["parity"]["fp32"] = parity_report(model, edge["fp32"], parity_clip, codec)
    _log_parity(log, "fp32", report["parity"]["fp32"])
    off = {n: v["relative_max_diff"] for n, v in report["parity"]["fp32"]["outputs"].items()
           if v["relative_max_diff"] > FP32_TOLERANCE}
    report["fp32_parity_ok"] = not off
    if off:
        (out / "export_report.json").write_text(json.dumps(nan_to_none(report), indent=2))
        raise ExportError(f"{files['fp32']}: FP32 onnxruntime output differs from PyTorch beyond {FP32_TOLERANCE} "
                          f"(relative max abs diff {off}); see {out / 'export_report.json'}")

    if safety and calib_ds is not None and confidence_ds is not None:
        t0 = time.perf_counter()
        calibration, cal_report = fit_calibration_on(edge["fp32"], preset, confidence_ds)
        novelty = fit_novelty_on(edge["fp32"], calib_ds, log=log)
        meta = dataclasses.replace(meta, calibration=calibration.to_json(),
                                   novelty=novelty.to_json() if novelty is not None else None)
        write_metadata(onnx.load(str(files["fp32"])), meta, files["fp32"])
        edge["fp32"] = EdgeModel(files["fp32"], threads=threads)
        report["safety"] = {"calibration": cal_report, "novelty": None if novelty is None else
                            {"fitted_on": novelty.fitted_on, "centers": len(novelty.embedding.centers)}}
        timings["safety_s"] = time.perf_counter() - t0
        det, seg = cal_report["detection_pooled"], cal_report["segmentation_pooled"]
        log(f"score calibration on {confidence_ds.config.split} of {confidence_ds.reader.root} (in-sample): detection ECE {det['ece_raw']:.3f} -> "
            f"{det['ece_calibrated']:.3f}, segmentation ECE {seg['ece_raw']:.4f} -> {seg['ece_calibrated']:.4f}")

    if "fp16" in precisions:
        files["fp16"] = to_fp16(files["fp32"], out / "model.fp16.onnx", meta)
        edge["fp16"] = EdgeModel(files["fp16"], threads=threads)
    if "int8" in precisions:
        assert calib_ds is not None
        t0 = time.perf_counter()
        calib = _calibration_feeds(edge["fp32"], calib_ds, calib_frames)
        if fixed_rig:
            calib = [{k: v for k, v in f.items() if k not in ("K", "ego_T_cam")} for f in calib]
        files["int8"] = quantize_int8(files["fp32"], out / "model.int8.onnx", meta, calib, int8_op_types)
        timings["quantize_int8_s"] = time.perf_counter() - t0
        edge["int8"] = EdgeModel(files["int8"], threads=threads)
        sens = int8_sensitivity(files["fp32"], files["int8"], calib[:2], int8_op_types)
        report["int8"] = {"op_types": list(int8_op_types), "calibration_frames": len(calib),
                          "calibration_split": calib_ds.config.split, "per_channel": True,
                          "activations": "uint8, min/max calibration", "weights": "int8 symmetric",
                          "sensitivity_worst_first": sens}
        log("INT8 sensitivity: SQNR (dB, higher is better) of each quantized layer's input vs FP32, "
            "through the whole model and from its own quantization alone, worst first:")
        for r in sens[:8]:
            name = ", ".join(r["layers"]) or r["tensor"]
            log(f"  {name[:64]:<64} model {r['sqnr_db_model']:6.1f}  layer {r['sqnr_db_layer']:6.1f}")

    for p, path in files.items():
        report["files"][p] = {"path": str(path), "size_mb": round(path.stat().st_size / 2**20, 2)}
    for p, em in edge.items():
        if p != "fp32":
            report["parity"][p] = parity_report(model, em, parity_clip, codec)
            _log_parity(log, p, report["parity"][p])

    if evaluate and val_ds is not None:
        report["accuracy"] = {"split": val_ds.config.split, "frames": len(val_ds)}
        t0 = time.perf_counter()
        rep = evaluate_model(model, preset, val_ds, print_fn=None)
        report["accuracy"]["torch"] = rep.summary()
        for p, em in edge.items():
            rep = evaluate_outputs(preset, val_ds, run_edge(em, val_ds), print_fn=None)
            report["accuracy"][p] = rep.summary()
        timings["accuracy_s"] = time.perf_counter() - t0
        log(format_accuracy(report["accuracy"]))
    timings["total_s"] = time.perf_counter() - started
    (out / "export_report.json").write_text(json.dumps(nan_to_none(report), indent=2))
    log(f"wrote {out / 'export_report.json'}")
    return report


def _log_parity(log: Callable[[str], None], precision: str, par: dict[str, Any]) -> None:
    log(f"parity {precision}: " + ", ".join(f"{n} max {v['max_abs_diff']:.2e} mean {v['mean_abs_diff']:.2e}"
                                             for n, v in par["outputs"].items())
        + f"; boxes identical: {par['boxes_identical']} ({par['torch_boxes_matched']} of {par['boxes_torch']} "
          "PyTorch boxes matched)")


def format_accuracy(acc: dict[str, Any]) -> str:
    """The accuracy table: one row per model (PyTorch, then each precision)."""
    rows = [k for k in acc if isinstance(acc[k], dict)]
    ious = [k for k in acc[rows[0]] if k.startswith("iou_")] if rows else []
    head = f"{'model':<8}{'mAP':>8}{'NDS':>8}" + "".join(f"{k[4:][:12]:>14}" for k in ious)
    lines = [f"accuracy on {acc['split']} ({acc['frames']} frames)", head]
    for r in rows:
        v = acc[r]
        lines.append(f"{r:<8}{v['mAP']:>8.4f}{v['NDS']:>8.4f}" + "".join(f"{v[k]:>14.4f}" for k in ious))
    return "\n".join(lines)
