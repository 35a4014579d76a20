"""INT8 export: the uint8 pixels feed the first quantized convolution as they are, when the model's
normalization is one whole-pixel mean and one std for every channel, and the outputs do not change."""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

from export.precision import FeedReader, _pixels_as_quantized_input


def _normalize_then_conv(mean: list[float], std: list[float], also_output: str | None = None) -> onnx.ModelProto:
    """uint8 [1, 2, 3, 8, 8] -> Reshape [2, 3, 8, 8] -> float -> (x - mean) / std -> 3x3 conv -> [2, 4, 8, 8];
    ``also_output``: a tensor of that chain the graph outputs as well."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([2, 3, 8, 8], np.int64), "shape"),
             numpy_helper.from_array(np.array(mean, np.float32).reshape(1, 3, 1, 1), "pixel_mean"),
             numpy_helper.from_array(np.array(std, np.float32).reshape(1, 3, 1, 1), "pixel_std"),
             numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=4).astype(np.float32), "b")]
    nodes = [helper.make_node("Reshape", ["images", "shape"], ["flat"]),
             helper.make_node("Cast", ["flat"], ["pixels"], to=TensorProto.FLOAT),
             helper.make_node("Sub", ["pixels", "pixel_mean"], ["centred"]),
             helper.make_node("Div", ["centred", "pixel_std"], ["normalized"]),
             helper.make_node("Conv", ["normalized", "w", "b"], ["out"], pads=[1, 1, 1, 1])]
    outputs = [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2, 4, 8, 8])]
    if also_output:
        outputs.append(helper.make_tensor_value_info(also_output, TensorProto.FLOAT, [2, 3, 8, 8]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("images", TensorProto.UINT8, [1, 2, 3, 8, 8])],
                              outputs, inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _quantized(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]]) -> onnx.ModelProto:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "f.onnx", Path(tmp) / "q.onnx"
        onnx.save(model, src)
        quantize_static(str(src), str(dst), FeedReader(feeds), quant_format=QuantFormat.QDQ,
                        op_types_to_quantize=["Conv"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
        return onnx.load(str(dst))


def _run(model: onnx.ModelProto, feed: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]


@pytest.fixture
def feeds() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(1)
    return [{"images": rng.integers(0, 256, (1, 2, 3, 8, 8), dtype=np.uint8)} for _ in range(4)]


def test_pixels_feed_the_quantized_conv_and_outputs_do_not_change(feeds) -> None:
    q = _quantized(_normalize_then_conv([127.0] * 3, [128.0] * 3), feeds)
    before = [_run(q, f) for f in feeds]
    assert _pixels_as_quantized_input(q.graph) == 1
    onnx.checker.check_model(q)
    ops = [n.op_type for n in q.graph.node]
    assert "Cast" not in ops and "Sub" not in ops and "Div" not in ops
    assert ops.count("QuantizeLinear") == 1  # the conv's output; the input's is gone
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == "flat")
    init = {t.name: numpy_helper.to_array(t) for t in q.graph.initializer}
    assert float(init[dq.input[1]]) == 1 / 128 and int(init[dq.input[2]]) == 127
    assert "pixel_mean" not in init and "pixel_std" not in init  # unused initializers removed
    # These calibration frames span 0..255, so the calibrated scale and zero point already were 1/128
    # and 127 and the outputs are identical (the padding, the zero point, is 0 after normalization).
    for f, b in zip(feeds, before):
        np.testing.assert_array_equal(_run(q, f), b)


@pytest.mark.parametrize("mean, std", [([123.7, 116.3, 103.5], [58.4, 57.1, 57.4]),  # ImageNet: per channel
                                       ([127.5] * 3, [127.5] * 3)])  # uniform, but not a whole pixel value
def test_other_normalizations_are_left_as_they_are(feeds, mean, std) -> None:
    q = _quantized(_normalize_then_conv(mean, std), feeds)
    before = q.graph.SerializeToString()
    assert _pixels_as_quantized_input(q.graph) == 0
    assert q.graph.SerializeToString() == before  # nodes and initializers alike


@pytest.mark.parametrize("tensor", ["pixels", "centred"])
def test_a_chain_the_graph_also_outputs_is_left_as_it_is(feeds, tensor) -> None:
    q = _quantized(_normalize_then_conv([127.0] * 3, [128.0] * 3, also_output=tensor), feeds)
    before = q.graph.SerializeToString()
    assert _pixels_as_quantized_input(q.graph) == 0
    assert q.graph.SerializeToString() == before


def test_an_output_of_the_normalized_pixels_keeps_its_values(feeds) -> None:
    # The quantizer hands the graph output the DequantizeLinear's tensor, which now reads the pixels.
    q = _quantized(_normalize_then_conv([127.0] * 3, [128.0] * 3, also_output="normalized"), feeds)
    session = lambda: ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"])  # noqa: E731
    before = [session().run(None, f) for f in feeds]
    assert _pixels_as_quantized_input(q.graph) == 1
    onnx.checker.check_model(q)
    for f, b in zip(feeds, before):
        for got, want in zip(session().run(None, f), b):
            np.testing.assert_array_equal(got, want)
