"""Reduced-precision variants of an exported FP32 model: FP16 and INT8 (static QDQ), and the
per-layer sensitivity report of the INT8 model. onnx and onnxruntime only (no torch).

FP16 uses onnxruntime's float16 converter with float32 inputs and outputs kept, so the runtime feeds
every precision the same arrays. INT8 is onnxruntime.quantization's static QDQ quantization:
per-channel int8 weights, uint8 activations calibrated (min/max) on real frames, and only the
operator types in ``op_types`` quantized (convolutions by default): the geometry (projections,
masks, ray encodings), attention and normalization stay in float, where int8 breaks such models;
the ReLU and ReLU6 right after a quantized convolution are quantized with it (fused by onnxruntime).
Where the input normalization is a whole-pixel mean and one std for every channel (EfficientNet-Lite's
``(x - 127) / 128``), the uint8 pixels are the first convolution's quantized input as they are.
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
    _pixels_as_quantized_input(proto.graph)
    return write_metadata(proto, replace(metadata, precision="int8"), out_path)


def _pixels_as_quantized_input(graph: onnx.GraphProto) -> int:
    """Feed the uint8 camera pixels straight to the first quantized convolution.

    The model normalizes its uint8 input in float, ``(float(x) - mean) / std``, and INT8 then quantizes
    the result again. Where mean and std are one value for every channel and the mean is a whole pixel
    value (EfficientNet-Lite's ``(x - 127) / 128``), the pixels already are that tensor in int8 form:
    scale ``1 / std`` and zero point ``mean`` (exact when std is a power of two, as 128 is; else to
    float rounding), and padding with the zero point pads with 0 after normalization as the float model
    does. The Cast, Sub, Div and QuantizeLinear are removed, the DequantizeLinear reads the pixels, and
    the constants only they read are dropped. A chain whose tensors anything else reads (another node,
    a subgraph, the graph's outputs) is left alone. Returns how many chains were rewritten (0: the graph
    is unchanged)."""
    init = {t.name: t for t in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    types = {v.name: v.type.tensor_type.elem_type for v in (*graph.input, *graph.value_info)}
    # Names read where the node lists above do not look: graph outputs and inputs, and subgraphs.
    kept = {v.name for v in (*graph.output, *graph.input)} | _subgraph_reads(graph)

    def constant(name: str) -> np.ndarray | None:
        return onnx.numpy_helper.to_array(init[name]) if name in init else None

    def only(name: str, op_type: str) -> onnx.NodeProto | None:
        users = consumers.get(name, [])
        return users[0] if len(users) == 1 and users[0].op_type == op_type and name not in kept else None

    def per_channel(c: np.ndarray) -> bool:  # one value, broadcast over [N, C, H, W] without growing it
        return c.size > 0 and not np.ptp(c) and c.ndim <= 4 and all(d == 1 for i, d in enumerate(c.shape[::-1]) if i != 2)

    rewritten, dead = 0, []
    for cast in [n for n in graph.node if n.op_type == "Cast"]:
        pixels = root = cast.input[0]
        while root in producer and producer[root].op_type == "Reshape":  # [B, N, 3, H, W] -> [B*N, 3, H, W]
            root = producer[root].input[0]
        to_float = next((a.i for a in cast.attribute if a.name == "to"), None) == onnx.TensorProto.FLOAT
        sub = only(cast.output[0], "Sub")
        div = sub and only(sub.output[0], "Div")
        quant = div and only(div.output[0], "QuantizeLinear")
        if not (types.get(root) == onnx.TensorProto.UINT8 and to_float and sub and div and quant
                and sub.input[0] == cast.output[0] and div.input[0] == sub.output[0]):
            continue
        dqs = consumers.get(quant.output[0], [])
        mean, std = constant(sub.input[1]), constant(div.input[1])
        if (mean is None or std is None or not per_channel(mean) or not per_channel(std) or quant.output[0] in kept
                or not dqs or not all(d.op_type == "DequantizeLinear" for d in dqs)):
            continue
        m, s = float(mean.flat[0]), float(std.flat[0])
        if not (0 <= m <= 255 and m == round(m) and s > 0):
            continue
        scale, zero = f"{cast.output[0]}_pixel_scale", f"{cast.output[0]}_pixel_zero_point"
        graph.initializer.extend([onnx.numpy_helper.from_array(np.array(1.0 / s, np.float32), scale),
                                  onnx.numpy_helper.from_array(np.array(round(m), np.uint8), zero)])
        for dq in dqs:
            dq.input[:] = [pixels, scale, zero]
        dead += [cast, sub, div, quant]
        rewritten += 1
    for node in dead:
        graph.node.remove(node)
    # The constants only the removed nodes read (mean, std, the old scale and zero point).
    orphans = {i for n in dead for i in n.input[1:]} - {i for n in graph.node for i in n.input} - kept
    for t in [t for t in graph.initializer if t.name in orphans]:
        graph.initializer.remove(t)
    return rewritten


def _subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name read by a node inside a subgraph (If, Loop, Scan bodies) of ``graph``'s nodes."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
                names |= {i for n in sub.node for i in n.input} | _subgraph_reads(sub)
    return names


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
