"""`perception export` and the edge runtime (export/) on the tiny preset and a small synthetic world:
every precision exported, loaded and run; parity with PyTorch; the runtime and `perception bench`
in a process where torch cannot be imported; bad inputs and models refused with the promised errors."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import pytest
from model_inputs import random_tiny_checkpoint
from typer.testing import CliRunner

from data_engine.sim.synth import SynthConfig, synthesize
from export.exporter import FP32_TOLERANCE
from export.model_file import write_metadata
from export.runtime import (
    Camera,
    EdgeModel,
    MetadataError,
    ModelMetadata,
    RuntimeInputError,
)
from perception.cli import app
from perception.data.dataset import DatasetConfig, MultiCamDataset
from perception.data.nuscenes import load_dataset
from perception.presets import get_preset

pytestmark = pytest.mark.slow

W, H = 352, 198  # recorded camera size of the synthetic world


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("export")
    data = root / "data"
    synthesize(SynthConfig(out=data, scenes=3, frames=5, seed=5, width=W, height=H), progress=False)
    preset = get_preset("tiny")
    ckpt, model = random_tiny_checkpoint(root / "run" / "best.pt")
    out = root / "export"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(ckpt), "--out", str(out), "--precision",
                                      "fp32,fp16,int8", "--calib-data", str(data), "--calib-frames", "6"])
    assert result.exit_code == 0, result.output
    return {"root": root, "data": data, "ckpt": ckpt, "out": out, "preset": preset, "model": model,
            "output": result.output, "report": json.loads((out / "export_report.json").read_text())}


def _frames_and_rig(data, sample_index: int = 0):
    """One sample's JPEG bytes per camera and its rig (ego_T_cam as the dataset feeds the model)."""
    reader = load_dataset(data)
    sample = reader.samples[sample_index]
    frames = {n: c.path.read_bytes() for n, c in sample.cameras.items()}
    rig = {n: Camera(c.K, sample.ref_T_cam(n), (c.height, c.width)) for n, c in sample.cameras.items()}
    return reader, sample, frames, rig


def test_every_precision_is_a_checked_onnx_with_metadata(exported) -> None:
    for precision in ("fp32", "fp16", "int8"):
        path = exported["out"] / f"model.{precision}.onnx"
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
        assert proto.opset_import[0].version >= 17
        assert not [n.domain for n in proto.graph.node if n.domain not in ("", "ai.onnx")], "custom ops"
        meta = EdgeModel(path).metadata
        assert meta.precision == precision
        assert meta.class_names == exported["preset"].tasks.det_classes
        assert meta.camera_names == exported["preset"].input.cameras
        assert meta.input_hw == (96, 176) and meta.state_shape == (64, 32, 32)
        props = {p.key: json.loads(p.value) if p.key == "bevstack.metadata" else p.value for p in proto.metadata_props}
        # The batch is dynamic: two samples side by side run and give two of each output.
        model = EdgeModel(path, threads=1)
        images = np.random.default_rng(0).integers(0, 256, (2, 6, 3, 96, 176), dtype=np.uint8)
        out = model.infer(images, np.tile(np.diag([80.0, 80.0, 1.0]), (2, 6, 1, 1)), np.tile(np.eye(4), (2, 6, 1, 1)),
                          np.ones((2, 6), bool), model.initial_state(2), np.tile(np.eye(4), (2, 1, 1)), np.zeros(2))
        assert out["seg"].shape == (2, 4, 64, 64) and out["embedding"].shape == (2, 128)
        body = props["bevstack.metadata"]
        for key in ("class_names", "camera_names", "input_hw", "normalization", "bev_grid", "state_shape",
                    "checkpoint_sha256", "format_version"):
            assert key in body, key
        assert body["checkpoint_sha256"] == exported["report"]["checkpoint_sha256"]
    int8 = onnx.load(str(exported["out"] / "model.int8.onnx"))
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    # Only convolutions and the activations right after them are quantized: every quantized tensor is
    # a Conv's input or output or the output of a Relu/Clip fed by a Conv (fused by onnxruntime), and
    # the attention, geometry (clamped grid coordinates) and normalization ops read float tensors.
    fp32 = onnx.load(str(exported["out"] / "model.fp32.onnx"))
    conv_io = {t for n in fp32.graph.node if n.op_type == "Conv" for t in (*n.input, *n.output)}
    conv_out = {o for n in fp32.graph.node if n.op_type == "Conv" for o in n.output}
    fused = {n.output[0] for n in fp32.graph.node if n.op_type in ("Relu", "Clip") and n.input[0] in conv_out}
    unfused = {n.output[0] for n in fp32.graph.node if n.op_type in ("Relu", "Clip") and n.input[0] not in conv_out}
    assert fused and unfused  # the edge of the rule is exercised: ReLU6 after convs, clamps of coordinates
    quantized = [n.input[0] for n in int8.graph.node if n.op_type == "QuantizeLinear"]
    assert quantized and set(quantized) <= conv_io | fused, set(quantized) - conv_io - fused
    dq_out = {n.output[0] for n in int8.graph.node if n.op_type == "DequantizeLinear"}
    float_ops = {"MatMul", "Gemm", "Softmax", "LayerNormalization", "GridSample", "Einsum"}
    assert not [n.name for n in int8.graph.node if n.op_type in float_ops and dq_out & set(n.input)]
    # The uint8 pixels are the first convolution's quantized input as they are ((x - 127) / 128 is a
    # scale and a zero point): no float copy of the image, no normalization, no requantization.
    readers: dict[str, list] = {}
    for n in int8.graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    pixels = next(n for n in readers["images"] if n.op_type == "Reshape")  # [B, N, 3, H, W] -> [B*N, 3, H, W]
    (pixels,) = readers[pixels.output[0]]
    assert pixels.op_type == "DequantizeLinear", pixels.op_type
    init = {t.name: onnx.numpy_helper.to_array(t) for t in int8.graph.initializer}
    assert float(init[pixels.input[1]]) == 1 / 128 and int(init[pixels.input[2]]) == 127
    assert not [n for n in int8.graph.node if n.op_type in ("Sub", "Div") and "model.pixel_mean" in n.input]


def test_parity_and_accuracy_report(exported) -> None:
    rep = exported["report"]
    assert rep["fp32_parity_ok"]
    # Worst element and mean, relative to the output's range. FP16 through the pretrained backbone and
    # a random head reaches 0.10 on one element of the state (mean 0.005); the trained edge model keeps
    # its FP32 accuracy in FP16 (bench/results/edge_runtime.json).
    for precision, limit, mean_limit in (("fp32", FP32_TOLERANCE, FP32_TOLERANCE), ("fp16", 0.15, 0.01),
                                         ("int8", 0.5, 0.1)):
        par = rep["parity"][precision]
        assert par["frames"] == 5
        for name in ("heatmap", "regression", "seg", "state", "embedding"):
            o = par["outputs"][name]
            scale = max(1.0, o["torch_max_abs"])
            assert 0 <= o["mean_abs_diff"] <= o["max_abs_diff"] and o["relative_max_diff"] <= limit, (precision, name, o)
            assert o["mean_abs_diff"] <= mean_limit * scale, (precision, name, o)
        assert par["torch_boxes_matched"] <= par["boxes_torch"]
    # FP32 boxes agree with PyTorch's up to plateau ties of an untrained model.
    fp32 = rep["parity"]["fp32"]
    assert fp32["torch_boxes_matched"] >= 0.99 * fp32["boxes_torch"] > 0
    # INT8 differs from FP32 more than FP16 does (it is quantized), but not wildly.
    assert rep["parity"]["int8"]["outputs"]["seg"]["mean_abs_diff"] > rep["parity"]["fp16"]["outputs"]["seg"]["mean_abs_diff"]
    sens = rep["int8"]["sensitivity_worst_first"]
    assert len(sens) > 10 and all(np.isfinite(r["sqnr_db_model"]) for r in sens)
    assert [r["sqnr_db_model"] for r in sens] == sorted(r["sqnr_db_model"] for r in sens)
    assert any(layer.startswith("model.backbone.") for r in sens for layer in r["layers"])
    acc = rep["accuracy"]
    for row in ("torch", "fp32", "fp16", "int8"):
        assert {"mAP", "NDS", "iou_drivable_area", "iou_vehicle", "conditions"} <= set(acc[row]), row
    # The FP32 model scores what the PyTorch model scores.
    for key in ("mAP", "NDS", "iou_drivable_area", "iou_lane_divider"):
        assert acc["fp32"][key] == pytest.approx(acc["torch"][key], abs=1e-6), key
    assert "INT8 sensitivity" in exported["output"] and "accuracy on synth_val" in exported["output"]


def test_runtime_preprocessing_matches_the_training_dataset(exported) -> None:
    reader, sample, frames, rig = _frames_and_rig(exported["data"])
    model = EdgeModel(exported["out"] / "model.fp32.onnx", threads=1)
    prepared = model.prepare(frames, rig)
    item = MultiCamDataset(reader, exported["preset"], DatasetConfig(split=None))[sample.index]
    assert np.array_equal(prepared.images, item.images)
    np.testing.assert_allclose(prepared.K, item.K, atol=1e-4)
    np.testing.assert_allclose(prepared.ego_T_cam, item.ego_T_cam, atol=1e-5)
    assert prepared.cam_valid.all() and not prepared.masked


RUNTIME_WITHOUT_TORCH = textwrap.dedent("""
    import sys, json
    for name in ("torch", "torchvision", "albumentations", "scipy"):
        sys.modules[name] = None  # importing it now raises ImportError
    import numpy as np
    from export.runtime import Camera, EdgeModel, RuntimeInputError
    from perception.data.nuscenes import load_dataset

    out, data = sys.argv[1], sys.argv[2]
    reader = load_dataset(data)
    scene = reader.scenes[0]
    samples = reader.scene_samples(scene)
    results = {}
    for precision in ("fp32", "fp16", "int8"):
        model = EdgeModel(f"{out}/model.{precision}.onnx", threads=1)
        runs = []
        for s in samples[:3]:
            frames = {n: c.path.read_bytes() for n, c in s.cameras.items()}
            rig = {n: Camera(c.K, s.ref_T_cam(n), (c.height, c.width)) for n, c in s.cameras.items()}
            r = model.step(frames, rig, s.global_T_ego, s.timestamp / 1e6)
            runs.append(r)
        # The same frame again right after: the carried state changes the output.
        frames = {n: c.path.read_bytes() for n, c in samples[0].cameras.items()}
        rig = {n: Camera(c.K, samples[0].ref_T_cam(n), (c.height, c.width)) for n, c in samples[0].cameras.items()}
        model.reset()
        first = model.step(frames, rig, samples[0].global_T_ego, 10.0)
        again = model.step(frames, rig, samples[0].global_T_ego, 10.5)
        # A missing camera, a stale one and a corrupt JPEG are masked, not fatal.
        names = list(frames)
        partial = dict(frames)
        partial[names[0]] = None
        partial[names[1]] = frames[names[1]][: len(frames[names[1]]) // 2]
        stale = model.step(partial, rig, samples[0].global_T_ego, 11.0, camera_timestamps={names[2]: 9.0})
        errors = {}
        for label, call in {
            "unknown_camera": lambda: model.step({**frames, "CAM_ROOF": frames[names[0]]}, rig, np.eye(4), 12.0),
            "bad_dtype": lambda: model.infer(np.zeros((1, 6, 3, 96, 176), np.float32), None, None,
                                             np.ones((1, 6), bool), model.initial_state(1), np.eye(4)[None], np.zeros(1)),
            "bad_shape": lambda: model.infer(np.zeros((1, 5, 3, 96, 176), np.uint8), None, None,
                                             np.ones((1, 5), bool), model.initial_state(1), np.eye(4)[None], np.zeros(1)),
            "bad_cam_valid": lambda: model.infer(np.zeros((1, 6, 3, 96, 176), np.uint8), np.zeros((1, 6, 3, 3)),
                                                 np.zeros((1, 6, 4, 4)), np.ones((1, 6), np.float32),
                                                 model.initial_state(1), np.eye(4)[None], np.zeros(1)),
        }.items():
            try:
                call()
                errors[label] = None
            except RuntimeInputError as exc:
                errors[label] = str(exc)
        results[precision] = {
            "boxes": [len(r.boxes) for r in runs], "seg_shape": list(runs[0].seg_prob.shape),
            "embedding": list(runs[0].embedding.shape), "stages": sorted(runs[0].timings_ms),
            "state_changes_output": float(np.abs(first.seg_prob - again.seg_prob).max()),
            "masked": stale.masked, "cam_valid": stale.cam_valid, "errors": errors,
            "providers": model.providers,
        }
    from typer.testing import CliRunner
    from perception.cli import app
    res = CliRunner().invoke(app, ["bench", "--model", f"{out}/model.fp32.onnx", "--model", f"{out}/model.int8.onnx",
                                   "--data", data, "--runs", "3", "--warmup", "1", "--threads", "1",
                                   "--json", f"{out}/bench.json"])
    results["bench_exit"] = res.exit_code
    results["bench_output"] = res.output
    results["torch_loaded"] = "torch" in sys.modules and sys.modules["torch"] is not None
    print("RESULT " + json.dumps(results))
""")


def test_step_batch_carries_each_stream_like_step(exported) -> None:
    """Two scenes scored side by side in one batch give what each gives alone, frame after frame."""
    from export.runtime import StreamState

    edge = EdgeModel(exported["out"] / "model.fp32.onnx", threads=2)
    reader = load_dataset(exported["data"])
    scenes = [reader.scene_samples(sc)[:3] for sc in reader.scenes[:2]]

    def inputs(sample):
        frames = {n: c.path.read_bytes() for n, c in sample.cameras.items()}
        rig = {n: Camera(c.K, sample.ref_T_cam(n), (c.height, c.width)) for n, c in sample.cameras.items()}
        return frames, rig, sample.global_T_ego, sample.timestamp / 1e6

    alone = []
    for samples in scenes:
        edge.reset()
        alone.append([edge.step(*inputs(s)) for s in samples])
    streams = [StreamState(), StreamState()]
    for t in range(3):
        prepared, poses, times = [], [], []
        for samples in scenes:
            frames, rig, pose, ts = inputs(samples[t])
            prepared.append(edge.prepare(frames, rig, ts))
            poses.append(pose)
            times.append(ts)
        together = edge.step_batch(prepared, poses, times, streams)
        for k in range(2):
            np.testing.assert_allclose(together[k].heatmap, alone[k][t].heatmap, atol=1e-4)
            np.testing.assert_allclose(together[k].embedding, alone[k][t].embedding, atol=1e-4)
    assert t == 2 and streams[0].state is not None and not np.allclose(streams[0].state, streams[1].state)
    with pytest.raises(RuntimeInputError, match="expected the same number"):
        edge.step_batch(prepared, poses[:1], times, streams)


def test_runtime_and_bench_run_without_torch(exported) -> None:
    res = subprocess.run([sys.executable, "-c", RUNTIME_WITHOUT_TORCH, str(exported["out"]), str(exported["data"])],
                         capture_output=True, text=True, timeout=600, check=False)
    line = next((ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert res.returncode == 0 and line is not None, res.stderr[-3000:]
    results = json.loads(line[len("RESULT "):])
    assert not results["torch_loaded"]
    for precision in ("fp32", "fp16", "int8"):
        r = results[precision]
        assert r["seg_shape"] == [4, 64, 64] and r["embedding"] == [128]
        assert r["stages"] == ["decode", "inference", "jpeg_decode", "lens_monitor", "preprocess"]
        assert r["state_changes_output"] > 1e-4, "the video state is carried from step to step"
        assert r["providers"][-1] == "CPUExecutionProvider"
        names = list(r["cam_valid"])
        assert r["masked"][names[0]] == "no frame"
        assert r["masked"][names[1]].startswith("undecodable") and "truncated" in r["masked"][names[1]]
        assert r["masked"][names[2]].startswith("stale")
        assert [r["cam_valid"][n] for n in names] == [False, False, False, True, True, True]
        e = r["errors"]
        assert "CAM_ROOF" in e["unknown_camera"] and "CAM_FRONT" in e["unknown_camera"]
        assert e["bad_dtype"].startswith("images: expected uint8")
        assert e["bad_shape"].startswith("images: expected [B, 6, 3, 96, 176]")
        assert e["bad_cam_valid"].startswith("cam_valid: expected bool")
    assert results["bench_exit"] == 0, results["bench_output"]
    bench = json.loads((exported["out"] / "bench.json").read_text())
    names = [row["name"] for row in bench["rows"]]
    assert names == ["onnxruntime fp32", "onnxruntime int8"]
    for row in bench["rows"]:
        assert not row["torch_imported"] and row["peak_rss_mb"] > 0 and row["fps"] > 0
        for stage in ("jpeg_decode", "preprocess", "inference", "decode", "lens_monitor", "end_to_end"):
            s = row["stages_ms"][stage]
            assert 0 <= s["p50"] <= s["p90"] <= s["p99"], (row["name"], stage)


def test_bench_times_the_pytorch_model_beside_onnx(exported, tmp_path) -> None:
    out = tmp_path / "bench.json"
    res = CliRunner().invoke(app, ["bench", "--model", str(exported["out"] / "model.fp32.onnx"), "--checkpoint",
                                   str(exported["ckpt"]), "--runs", "2", "--warmup", "0", "--threads", "1",
                                   "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert [r["name"] for r in rows] == ["torch eager fp32", "onnxruntime fp32"]
    assert rows[0]["torch_imported"] and not rows[1]["torch_imported"]
    assert "lens_monitor" not in rows[0]["stages_ms"] and "lens_monitor" in rows[1]["stages_ms"]  # runtime only
    assert "noise JPEGs" in json.loads(out.read_text())["frames"]


def test_static_fixed_rig_export(exported, tmp_path) -> None:
    out = tmp_path / "fixed"
    result = CliRunner().invoke(app, ["export", "--checkpoint", str(exported["ckpt"]), "--out", str(out), "--static",
                                      "--fixed-rig", "--calib-data", str(exported["data"]), "--no-eval"])
    assert result.exit_code == 0, result.output
    model = EdgeModel(out / "model.fp32.onnx", threads=1)
    inputs = {i.name: i.shape for i in model.session.get_inputs()}
    assert set(inputs) == {"images", "cam_valid", "prev_state", "prev_T_curr", "dt"}
    assert inputs["images"] == [1, 6, 3, 96, 176], "static shapes"
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["fp32_parity_ok"] and rep["parity"]["fp32"]["outputs"]["seg"]["relative_max_diff"] < FP32_TOLERANCE
    # The folded rig is checked against the rig given at run time.
    _, sample, frames, rig = _frames_and_rig(exported["data"])
    result = model.step(frames, rig, sample.global_T_ego, 0.0)
    assert len(result.seg_prob) == 4
    moved = dict(rig)
    name = next(iter(rig))
    E = rig[name].ego_T_cam.copy()
    E[0, 3] += 0.5
    moved[name] = Camera(rig[name].K, E, rig[name].image_hw)
    with pytest.raises(RuntimeInputError, match="fixed-rig"):
        model.step(frames, moved, sample.global_T_ego, 1.0)
    with pytest.raises(RuntimeInputError, match="static model takes batch 1"):
        model.infer(np.zeros((2, 6, 3, 96, 176), np.uint8), None, None, np.ones((2, 6), bool),
                    model.initial_state(2), np.repeat(np.eye(4)[None], 2, 0), np.zeros(2))


def test_models_of_another_format_or_none_are_refused(exported, tmp_path) -> None:
    path = exported["out"] / "model.fp32.onnx"
    proto = onnx.load(str(path))
    meta = EdgeModel(path).metadata
    old = tmp_path / "old.onnx"
    write_metadata(proto, meta, old)
    proto = onnx.load(str(old))
    for p in proto.metadata_props:
        if p.key == "bevstack.format_version":
            p.value = "99"
    onnx.save(proto, str(old))
    with pytest.raises(MetadataError, match=r"old\.onnx: model format version 99, this runtime reads version 1"):
        EdgeModel(old)
    bare = tmp_path / "bare.onnx"
    del proto.metadata_props[:]
    onnx.save(proto, str(bare))
    with pytest.raises(MetadataError, match="not a bevstack model"):
        EdgeModel(bare)
    with pytest.raises(FileNotFoundError, match="missing"):
        EdgeModel(tmp_path / "nothing.onnx")
    assert isinstance(ModelMetadata.from_props(meta.to_props()), ModelMetadata)


def test_export_fits_calibration_and_novelty_that_the_runtime_applies(exported, tmp_path) -> None:
    from perception.metrics.calibration import logit
    from perception.metrics.novelty import appearance_features

    out, data = exported["out"], exported["data"]
    rep = exported["report"]["safety"]
    assert rep["calibration"]["split"] == "synth_val" and rep["calibration"]["frames"] == 5
    assert "detection ECE" in exported["output"] and "novelty index" in exported["output"]
    meta = EdgeModel(out / "model.fp32.onnx").metadata
    for precision in ("fp16", "int8"):  # every precision carries the FP32 model's fit
        other = EdgeModel(out / f"model.{precision}.onnx").metadata
        assert other.calibration == meta.calibration and other.novelty == meta.novelty
    cal, index = meta.score_calibration(), meta.novelty_index()
    assert cal is not None and "synth_val" in cal.fitted_on
    assert index is not None and "synth_train" in index.fitted_on and index.embedding.centers.shape[1] == 128
    assert set(cal.detection) >= set(meta.class_names) and set(cal.segmentation) == set(meta.seg_classes)
    _, sample, frames, rig = _frames_and_rig(data, sample_index=7)
    ts = sample.timestamp / 1e6
    calibrated = EdgeModel(out / "model.fp32.onnx", threads=1).step(frames, rig, sample.global_T_ego, ts)
    raw = EdgeModel(out / "model.fp32.onnx", threads=1, calibrate=False).step(frames, rig, sample.global_T_ego, ts)
    # The same boxes (the threshold applies to raw scores), each score through its class's scaling, re-sorted.
    assert len(calibrated.boxes) == len(raw.boxes) > 0
    expected = cal.detection_scores(raw.boxes.score, raw.boxes.label, meta.class_names)
    np.testing.assert_allclose(np.sort(calibrated.boxes.score), np.sort(expected), rtol=1e-6)
    assert np.all(np.diff(calibrated.boxes.score) <= 0)
    assert not np.allclose(calibrated.boxes.score, raw.boxes.score[: len(calibrated.boxes)])
    np.testing.assert_allclose(calibrated.seg_prob, cal.segmentation_probs(logit(raw.seg_prob)[None], meta.seg_classes)[0],
                               atol=2e-3)
    np.testing.assert_array_equal(calibrated.heatmap, raw.heatmap)
    appearance = appearance_features(EdgeModel(out / "model.fp32.onnx").prepare(frames, rig, ts).images, np.ones(6, bool))
    expected_novelty, parts = index.score(calibrated.embedding, appearance)
    assert calibrated.novelty == pytest.approx(expected_novelty) and calibrated.novelty == max(parts.values()) > 0
    # A calibration table that is not one is refused on load, naming the field.
    proto = onnx.load(str(out / "model.fp32.onnx"))
    bad = ModelMetadata(**{**meta.__dict__, "calibration": {**meta.calibration, "detection": {"car": [-1.0, 0.0]}}})
    write_metadata(proto, bad, tmp_path / "bad.onnx")
    with pytest.raises(MetadataError, match=r"bad\.onnx: metadata calibration\.detection\.car is \[-1\.0, 0\.0\]"):
        EdgeModel(tmp_path / "bad.onnx")


def test_export_errors_name_the_problem(exported, tmp_path) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["export", "--checkpoint", str(exported["ckpt"]), "--out", str(tmp_path / "a"),
                              "--precision", "fp32,int4"])
    assert res.exit_code == 1 and "int4" in res.output
    res = runner.invoke(app, ["export", "--checkpoint", str(exported["ckpt"]), "--out", str(tmp_path / "b"),
                              "--precision", "int8"])
    assert res.exit_code == 1 and "--calib-data" in res.output
    res = runner.invoke(app, ["export", "--checkpoint", str(tmp_path / "none.pt")])
    assert res.exit_code == 1 and "none.pt" in res.output


def test_export_fits_the_calibration_on_the_confidence_dataset(exported, tmp_path) -> None:
    other = tmp_path / "like_deployment"
    synthesize(SynthConfig(out=other, scenes=2, frames=3, seed=11, width=W, height=H, first_scene=900,
                           quotas={"night": 1, "fog": 1}), progress=False)
    runner = CliRunner()
    base = ["export", "--checkpoint", str(exported["ckpt"]), "--no-eval"]
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "a"), "--calib-data", str(exported["data"]),
                              "--confidence-data", str(other)])
    assert res.exit_code == 0, res.output
    fitted_on = EdgeModel(tmp_path / "a" / "model.fp32.onnx").metadata.score_calibration().fitted_on
    assert str(other) in fitted_on and "6 frames" in fitted_on  # every frame of its val split (2 scenes x 3)
    assert "like_deployment" in res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "b"), "--calib-data", str(exported["data"]),
                              "--confidence-data", str(other), "--confidence-split", "nope"])
    assert res.exit_code == 1 and "no split 'nope'" in res.output and "like_deployment" in res.output
    res = runner.invoke(app, [*base, "--out", str(tmp_path / "c"), "--confidence-data", str(other)])
    assert res.exit_code == 1 and "--calib-data" in res.output


def test_export_without_a_dataset_checks_parity_on_random_frames(exported, tmp_path) -> None:
    out = tmp_path / "nodata"
    res = CliRunner().invoke(app, ["export", "--checkpoint", str(exported["ckpt"]), "--out", str(out)])
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "export_report.json").read_text())
    assert rep["parity"]["inputs"].startswith("5 random frames") and rep["fp32_parity_ok"]
    assert "accuracy" not in rep and list(rep["files"]) == ["fp32"]
    assert "safety" not in rep and EdgeModel(out / "model.fp32.onnx").metadata.calibration is None


def test_export_fails_loudly_when_fp32_parity_is_off(exported, tmp_path, monkeypatch) -> None:
    import export.exporter as exporter

    monkeypatch.setattr(exporter, "FP32_TOLERANCE", 0.0)  # no float difference is small enough now
    with pytest.raises(exporter.ExportError, match=r"model\.fp32\.onnx: FP32 onnxruntime output differs"):
        exporter.export_checkpoint(exported["ckpt"], tmp_path / "strict", ["fp32", "int8"],
                                   calib_data=exported["data"], log=lambda _: None)
    rep = json.loads((tmp_path / "strict" / "export_report.json").read_text())
    assert rep["fp32_parity_ok"] is False and "int8" not in rep["files"], "stops before the other precisions"
