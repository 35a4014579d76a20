"""Reduced-precision variants of an exported FP32 model: FP16 and INT8 (static QDQ), and the
per-layer sensitivity report of the INT8 model. onnx and onnxruntime only (no torch).

FP16 uses onnxruntime's float16 converter with float32 inputs and outputs kept, so the runtime feeds
every precision the same arrays. INT8 is onnxruntime.quantization's static QDQ quantization:
per-channel int8 weights, uint8 activations calibrated (min/max) on real frames, and only the
operator types in ``op_types`` quantized (convolutions by default): the geometry (projections,
masks, ray encodings), attention and normalization stay in float, where int8 breaks such models;
the ReLU and ReLU6 right after a quantized convolution are quantized with it (fused by onnxruntime).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    qdq_loss_debug,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from onnxruntime.transformers.float16 import convert_float_to_float16

from export.model_file import write_metadata
from export.runtime.metadata import ModelMetadata

__all__ = ["DEFAULT_INT8_OP_TYPES", "FeedReader", "int8_sensitivity", "quantize_int8", "to_fp16"]

DEFAULT_INT8_OP_TYPES: tuple[str, ...] = ("Conv",)
ACTIVATION_OP_TYPES: tuple[str, ...] = ("Relu", "Clip")  # quantized only right after a layer of op_types


def to_fp16(fp32_path: str | Path, out_path: str | Path, metadata: ModelMetadata) -> Path:
    """FP16 weights and activations, float32 inputs and outputs; metadata precision "fp16"."""
    proto = convert_float_to_float16(onnx.load(str(fp32_path)), keep_io_types=True)
    return write_metadata(proto, replace(metadata, precision="fp16"), Path(out_path))


class FeedReader(CalibrationDataReader):
    """onnxruntime calibration reader over an iterable of input feeds (name -> array)."""

    def __init__(self, feeds: Iterable[Mapping[str, np.ndarray]]) -> None:
        self._feeds = list(feeds)
        self._it: Iterator[Mapping[str, np.ndarray]] = iter(self._feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        item = next(self._it, None)
        return None if item is None else dict(item)

    def rewind(self) -> None:
        self._it = iter(self._feeds)

    def __len__(self) -> int:
        return len(self._feeds)


def quantize_int8(fp32_path: str | Path, out_path: str | Path, metadata: ModelMetadata,
                  calibration: Sequence[Mapping[str, np.ndarray]], op_types: Sequence[str] = DEFAULT_INT8_OP_TYPES,
                  nodes_to_exclude: Sequence[str] = ()) -> Path:
    """Static QDQ INT8 of an FP32 model, calibrated on ``calibration`` (input feeds, real frames with
    their video state); per-channel weights; only ``op_types`` quantized, minus ``nodes_to_exclude`` and
    the layers that write the model's outputs."""
    if not calibration:
        raise ValueError("INT8 quantization needs at least one calibration frame")
    out_path = Path(out_path)
    with tempfile.TemporaryDirectory(prefix="bevstack-int8-") as tmp:
        pre = Path(tmp) / "pre.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=True)
        q = Path(tmp) / "int8.onnx"
        # The layers that write the model's outputs (the heads' last convolutions: logits whose range
        # the decoding thresholds read) stay in float; they are a sliver of the compute.
        graph = onnx.load(str(pre)).graph
        outputs = {o.name for o in graph.output}
        exclude = list(nodes_to_exclude) + [n.name for n in graph.node if outputs & set(n.output)]
        # Activations (ReLU, ReLU6 as Clip) right after a quantized layer are quantized with it, so
        # onnxruntime fuses them into the integer convolution instead of leaving the int8 domain for
        # them; every other Clip or Relu (clamped grid coordinates, masks) stays in float.
        producer = {o: n for n in graph.node for o in n.output}
        follows = lambda n: n.input and n.input[0] in producer and producer[n.input[0]].op_type in op_types  # noqa: E731
        activations = [n for n in graph.node if n.op_type in ACTIVATION_OP_TYPES]
        exclude += [n.name for n in activations if not follows(n)]
        quantize_static(str(pre), str(q), FeedReader(calibration), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=list(dict.fromkeys([*op_types, *ACTIVATION_OP_TYPES])), per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, nodes_to_exclude=exclude,
                        calibrate_method=CalibrationMethod.MinMax,
                        extra_options={"ActivationSymmetric": False, "WeightSymmetric": True})
        proto = onnx.load(str(q))
    return write_metadata(proto, replace(metadata, precision="int8"), out_path)


def int8_sensitivity(fp32_path: str | Path, int8_path: str | Path, feeds: Sequence[Mapping[str, np.ndarray]],
                     op_types: Sequence[str] = DEFAULT_INT8_OP_TYPES) -> list[dict[str, Any]]:
    """Which quantized layers cost accuracy: for each quantized activation (the input of a layer of
    ``op_types``), the signal-to-quantization-noise ratio (dB, higher is better) of the INT8 model's value
    against the FP32 model's on the same inputs, with the error carried from every layer before it
    (``sqnr_db_model``: what the layer sees) and of that tensor's own quantization alone
    (``sqnr_db_layer``). Sorted worst first. Keep ``feeds`` few: every saved activation is held in memory."""
    with tempfile.TemporaryDirectory(prefix="bevstack-sens-") as tmp:
        fp_aug, q_aug = Path(tmp) / "fp32_aug.onnx", Path(tmp) / "int8_aug.onnx"
        qdq_loss_debug.modify_model_output_intermediate_tensors(str(fp32_path), str(fp_aug), list(op_types))
        # The QDQ model saves each quantized activation before and after its QuantizeLinear/DequantizeLinear
        # pair; the float model the inputs of the quantized layers (the same tensor names).
        qdq_loss_debug.modify_model_output_intermediate_tensors(str(int8_path), str(q_aug),
                                                                ["QuantizeLinear", "DequantizeLinear"])
        float_acts = qdq_loss_debug.collect_activations(str(fp_aug), FeedReader(feeds))
        q_acts = qdq_loss_debug.collect_activations(str(q_aug), FeedReader(feeds))
        matching = qdq_loss_debug.create_activation_matching(q_acts, float_acts)
        # Activations fused into a layer (ReLU6 after a conv) have no float twin among the layers' inputs.
        matching = {name: m for name, m in matching.items() if "float" in m}
        errors = qdq_loss_debug.compute_activation_error(matching)
    # Name each activation by the layers reading it (their weight's name, e.g. model.neck.lateral.0), or
    # else by the layer writing it ("... output").
    layers: dict[str, list[str]] = {}
    writers: dict[str, str] = {}
    for node in onnx.load(str(fp32_path), load_external_data=False).graph.node:
        if node.op_type in op_types and len(node.input) > 1:
            name = node.input[1].removesuffix(".weight")
            layers.setdefault(node.input[0], []).append(name)
            writers.update({o: f"{name} output" for o in node.output})
    layers = {t: layers.get(t) or [writers[t]] for t in set(layers) | set(writers)}
    rows = []
    for tensor, err in errors.items():
        rows.append({"tensor": tensor, "layers": layers.get(tensor, []),
                     "sqnr_db_model": float(err.get("xmodel_err", float("nan"))),
                     "sqnr_db_layer": float(err.get("qdq_err", float("nan")))})
    rows.sort(key=lambda r: (r["sqnr_db_model"] if np.isfinite(r["sqnr_db_model"]) else np.inf))
    return rows
