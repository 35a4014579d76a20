"""The edge runtime: an exported model run by onnxruntime from raw camera frames to typed results.

numpy, cv2 and onnxruntime only; never torch. Preprocessing (:mod:`perception.preprocess`),
geometry (:mod:`perception.geometry`) and box decoding (:mod:`perception.boxes`) are the same
functions training and evaluation use.

    model = EdgeModel("out/export/model.fp32.onnx", threads=2)
    rig = {name: Camera(K, ego_T_cam, image_hw=(900, 1600)) for ...}       # calibration, native size
    for frames, global_T_ego, t in drive:                                    # frames: name -> JPEG bytes
        result = model.step(frames, rig, global_T_ego, t)                    # the video state is carried
        result.boxes.center, result.class_names, result.seg_prob, result.timings_ms, result.novelty
        result.camera_health["CAM_FRONT"].blocked                            # lens monitor (.lens_monitor)

A model exported with a dataset carries a score calibration (fitted on the val split) and a novelty
index (of the train split) in its metadata: ``boxes.score`` and ``seg_prob`` are then calibrated
probabilities (``EdgeModel(..., calibrate=False)`` gives the raw ones; ``heatmap`` stays raw) and
``novelty`` says how far the frame lies from the training frames (about 1 at the edge of the training
set, NaN without an index; :class:`perception.metrics.novelty.NoveltyIndex`).

A camera whose frame is missing (absent or None), older than ``max_camera_age`` seconds, or
undecodable is masked (``cam_valid`` False) and named in ``result.masked``; the frame still runs.
Wrong camera names, shapes or dtypes, or a model of another format version, raise
:class:`RuntimeInputError` / :class:`~export.runtime.metadata.MetadataError` naming what is wrong.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort

from perception.boxes import BoxCodec, DecodedBoxes, sigmoid
from perception.geometry import invert_rigid
from perception.metrics.novelty import appearance_features

from .cameras import Camera, PreparedFrame, RuntimeInputError, prepare_cameras
from .lens_monitor import CameraHealth, LensMemory, LensMonitorConfig, frame_health
from .metadata import OUTPUT_NAMES, MetadataError, ModelMetadata

__all__ = ["Camera", "EdgeModel", "EdgeResult", "PreparedFrame", "RuntimeInputError", "StreamState", "default_providers",
           "prepare_cameras"]

# Execution providers in order of preference; the first ones present in this onnxruntime build are used.
PREFERRED_PROVIDERS: tuple[str, ...] = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


@dataclass
class EdgeResult:
    """The model's reading of one frame (ego frame of that frame)."""

    boxes: DecodedBoxes  # detections, ego frame, sorted by score (calibrated when the model carries a calibration)
    class_names: tuple[str, ...]  # boxes.label indexes this
    seg_prob: np.ndarray  # float32 [S, X, Y] BEV segmentation probabilities on the preset's BEV grid (calibrated too)
    seg_classes: tuple[str, ...]
    heatmap: np.ndarray  # float32 [K, Xd, Yd] raw detection probabilities (for uncertainty scores)
    embedding: np.ndarray  # float32 [E]
    novelty: float  # distance from the training frames, ~1 at the edge of the training set; NaN: no index
    cam_valid: dict[str, bool]
    masked: dict[str, str]  # camera -> why it was masked
    timings_ms: dict[str, float]  # "jpeg_decode", "preprocess", "inference", "decode", "lens_monitor"
    # camera -> its lens as the images show it (blocked or dirty; NaN scores for a masked camera)
    camera_health: dict[str, CameraHealth] = field(default_factory=dict)


def default_providers() -> list[str]:
    """TensorRT, then CUDA, then the CPU: those of them this onnxruntime build has."""
    available = set(ort.get_available_providers())
    return [p for p in PREFERRED_PROVIDERS if p in available]


@dataclass
class StreamState:
    """The video state of one stream between frames (empty at the start of a clip)."""

    state: np.ndarray | None = None  # float32 [1, C, X, Y]
    last_pose: np.ndarray | None = None  # [4, 4] global_T_ego of the last frame
    last_time: float | None = None  # s
    lens: LensMemory = field(default_factory=LensMemory)  # the lens monitor's evidence per camera


class EdgeModel:
    """An exported model (.onnx with bevstack metadata) ready to run on raw frames."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: Sequence[str] | None = None,
                 score_threshold: float = 0.1, max_detections: int = 500, max_camera_age: float = 0.25,
                 max_gap: float = 2.0, calibrate: bool = True) -> None:
        """path: the .onnx; threads: intra-op threads (None: onnxruntime's default); providers:
        execution providers (None: :func:`default_providers`); max_camera_age: s a camera frame may lag
        the frame time before it is masked; max_gap: s between frames beyond which the video state restarts;
        calibrate: apply the model's score calibration (if it has one). ``score_threshold`` applies to
        the raw heatmap probability, so calibration never changes which boxes are kept."""
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: model file missing")
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # errors only: fp16 graphs warn about folding they skip
        # No busy-waiting after a run: the next frame's cameras decode on those cores.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads is not None:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        self.providers = list(providers) if providers is not None else default_providers()
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=self.providers)
        except Exception as exc:  # onnxruntime's own error types (InvalidProtobuf, Fail, ...) per failure
            reason = " ".join(str(exc).split()).replace(str(self.path), "the file")
            raise MetadataError(f"{self.path}: onnxruntime cannot load this model ({reason})") from None
        self.metadata = ModelMetadata.from_props(dict(self.session.get_modelmeta().custom_metadata_map), self.path)
        self._check_signature()
        preset = self.metadata.preset_obj
        self.preset = preset
        self.codec = BoxCodec.from_preset(preset)
        self.calibration = self.metadata.score_calibration() if calibrate else None
        self.novelty = self.metadata.novelty_index()
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.max_camera_age = max_camera_age
        self.max_gap = max_gap
        self.lens_monitor = LensMonitorConfig()  # the thresholds of EdgeResult.camera_health
        self.reset()

    # -- the contract ------------------------------------------------------------------------------
    def _check_signature(self) -> None:
        meta = self.metadata
        inputs = {i.name: i for i in self.session.get_inputs()}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != set(meta.input_names):
            raise MetadataError(f"{self.path}: inputs {sorted(inputs)} do not match the metadata's {sorted(meta.input_names)}")
        if set(outputs) != set(OUTPUT_NAMES):
            raise MetadataError(f"{self.path}: outputs {sorted(outputs)}, expected {sorted(OUTPUT_NAMES)}")
        N, (H, W) = len(meta.camera_names), meta.input_hw
        shape = inputs["images"].shape
        if list(shape[1:]) != [N, 3, H, W]:
            raise MetadataError(f"{self.path}: images input is {shape}, the metadata says [B, {N}, 3, {H}, {W}]")

    @property
    def batch_size(self) -> int | None:
        """The static batch size, or None when the model takes any batch."""
        return self.metadata.static_batch

    def initial_state(self, batch: int = 1) -> np.ndarray:
        """Zeros [B, C, X, Y]: the state of a clip's first frame."""
        return np.zeros((batch, *self.metadata.state_shape), np.float32)

    def infer(self, images: np.ndarray, K: np.ndarray | None, ego_T_cam: np.ndarray | None, cam_valid: np.ndarray,
              prev_state: np.ndarray, prev_T_curr: np.ndarray, dt: np.ndarray) -> dict[str, np.ndarray]:
        """One batched forward on preprocessed inputs (shapes in :mod:`.metadata`); returns name -> array.

        K and ego_T_cam are ignored (pass None) for a fixed-rig model. Raises RuntimeInputError naming
        the input whose shape or dtype is wrong.
        """
        meta = self.metadata
        N, (H, W) = len(meta.camera_names), meta.input_hw
        images = np.asarray(images)
        if images.ndim != 5 or images.shape[1:] != (N, 3, H, W):
            raise RuntimeInputError(f"images: expected [B, {N}, 3, {H}, {W}], got {list(images.shape)}")
        if images.dtype != np.uint8:
            raise RuntimeInputError(f"images: expected uint8, got {images.dtype}")
        B = images.shape[0]
        if meta.static_batch is not None and B != meta.static_batch:
            raise RuntimeInputError(f"images: this static model takes batch {meta.static_batch}, got {B}")
        feeds = {"images": np.ascontiguousarray(images)}
        expected: dict[str, tuple[tuple[int, ...], type]] = {
            "cam_valid": ((B, N), np.bool_), "prev_state": ((B, *meta.state_shape), np.float32),
            "prev_T_curr": ((B, 4, 4), np.float32), "dt": ((B,), np.float32),
        }
        given = {"cam_valid": cam_valid, "prev_state": prev_state, "prev_T_curr": prev_T_curr, "dt": dt}
        if meta.fixed_rig is None:
            expected.update(K=((B, N, 3, 3), np.float32), ego_T_cam=((B, N, 4, 4), np.float32))
            given.update(K=K, ego_T_cam=ego_T_cam)
        for name, (shape, dtype) in expected.items():
            value = given[name]
            if value is None:
                raise RuntimeInputError(f"{name}: required by this model, got None")
            arr = np.asarray(value)
            if arr.shape != shape:
                raise RuntimeInputError(f"{name}: expected shape {list(shape)}, got {list(arr.shape)}")
            if dtype is np.bool_ and arr.dtype != np.bool_:
                raise RuntimeInputError(f"{name}: expected bool, got {arr.dtype}")
            if dtype is np.float32 and arr.dtype.kind != "f":
                raise RuntimeInputError(f"{name}: expected float32, got {arr.dtype}")
            feeds[name] = np.ascontiguousarray(arr, dtype=dtype)
        values = self.session.run(list(OUTPUT_NAMES), feeds)
        return {name: np.asarray(v, dtype=np.float32) for name, v in zip(OUTPUT_NAMES, values)}

    # -- raw frames ----------------------------------------------------------------------------------
    def prepare(self, frames: Mapping[str, bytes | np.ndarray | str | Path | None], rig: Mapping[str, Camera],
                timestamp: float | None = None, camera_timestamps: Mapping[str, float] | None = None) -> PreparedFrame:
        """Decode and preprocess the cameras of one frame (:func:`prepare_cameras` for this model's
        cameras and input size); a fixed-rig model checks that ``rig`` is its rig."""
        meta = self.metadata
        prepared = prepare_cameras(frames, rig, meta.camera_names, meta.input_hw, timestamp, camera_timestamps,
                                   self.max_camera_age)
        if meta.fixed_rig is not None:
            self._check_fixed_rig(prepared.K, prepared.ego_T_cam, prepared.cam_valid)
        return prepared

    def _check_fixed_rig(self, K: np.ndarray, E: np.ndarray, valid: np.ndarray) -> None:
        K_fixed, E_fixed = self.metadata.rig_arrays()
        for i, name in enumerate(self.metadata.camera_names):
            if not valid[i]:
                continue
            if not np.allclose(K[i], K_fixed[i], rtol=1e-3, atol=0.5) or not np.allclose(E[i], E_fixed[i], atol=1e-3):
                raise RuntimeInputError(f"rig[{name!r}]: this model was exported with --fixed-rig for another "
                                        "calibration; export it for this rig or without --fixed-rig")

    def decode(self, outputs: Mapping[str, np.ndarray]) -> list[DecodedBoxes]:
        """Boxes of each frame of a batch of outputs (the shared codec's decoding)."""
        return self.codec.decode_logits(outputs, self.score_threshold, self.max_detections)

    # -- streams with their video state ---------------------------------------------------------------
    def reset(self) -> None:
        """Forget the video state: the next :meth:`step` starts a clip."""
        self._stream = StreamState()

    def step(self, frames: Mapping[str, bytes | np.ndarray | str | Path | None], rig: Mapping[str, Camera],
             global_T_ego: np.ndarray, timestamp: float,
             camera_timestamps: Mapping[str, float] | None = None) -> EdgeResult:
        """Run one frame of a stream (s timestamps, ``global_T_ego`` [4, 4] the ego pose at ``timestamp``).

        The video state of the previous step is warped by the ego motion between the two poses; it
        restarts (zeros) at the first step, after :meth:`reset`, when time goes backwards, or after a
        gap longer than ``max_gap``.
        """
        prepared = self.prepare(frames, rig, timestamp, camera_timestamps)
        return self.step_batch([prepared], [global_T_ego], [timestamp], [self._stream])[0]

    def step_batch(self, prepared: Sequence[PreparedFrame], poses: Sequence[np.ndarray], timestamps: Sequence[float],
                   streams: Sequence[StreamState]) -> list[EdgeResult]:
        """One batched forward over the next frame of several independent streams (e.g. scenes mined
        side by side): frame i is ``prepared[i]`` at pose ``poses[i]`` and time ``timestamps[i]`` (s) of
        ``streams[i]``, whose video state is carried and updated as :meth:`step` does for one stream."""
        if not (len(prepared) == len(poses) == len(timestamps) == len(streams)) or not prepared:
            raise RuntimeInputError(f"step_batch: {len(prepared)} frames, {len(poses)} poses, {len(timestamps)} "
                                    f"timestamps and {len(streams)} streams; expected the same number, >= 1")
        B = len(prepared)
        states = np.zeros((B, *self.metadata.state_shape), np.float32)
        prev_T_curr = np.tile(np.eye(4, dtype=np.float32), (B, 1, 1))
        dt = np.zeros(B, np.float32)
        pose_list = []
        for i, (pose, t, st) in enumerate(zip(poses, timestamps, streams)):
            pose = np.asarray(pose, np.float64)
            if pose.shape != (4, 4):
                raise RuntimeInputError(f"global_T_ego: expected [4, 4], got {list(pose.shape)}")
            pose_list.append(pose)
            if (st.state is not None and st.last_pose is not None and st.last_time is not None
                    and 0.0 < t - st.last_time <= self.max_gap):
                states[i] = st.state
                prev_T_curr[i] = invert_rigid(st.last_pose) @ pose
                dt[i] = t - st.last_time
            else:
                st.lens = LensMemory()  # a new clip: the lens evidence starts again too
        t0 = time.perf_counter()
        out = self.infer(np.stack([p.images for p in prepared]), np.stack([p.K for p in prepared]),
                         np.stack([p.ego_T_cam for p in prepared]), np.stack([p.cam_valid for p in prepared]),
                         states, prev_T_curr, dt)
        t1 = time.perf_counter()
        heatmaps = sigmoid(out["heatmap"])  # once, for the decoding and the results
        boxes = self.codec.decode_batch(heatmaps, out["regression"], self.score_threshold, self.max_detections)
        cal = self.calibration
        if cal is not None:
            boxes = [self._calibrated(b) for b in boxes]
        seg_probs = sigmoid(out["seg"]) if cal is None else cal.segmentation_probs(out["seg"], self.metadata.seg_classes)
        novelty = [self.novelty.score(out["embedding"][i], appearance_features(p.images, p.cam_valid))[0]
                   if self.novelty is not None else np.nan for i, p in enumerate(prepared)]
        t2 = time.perf_counter()
        names = self.metadata.camera_names
        health = [frame_health(names, p.images, p.cam_valid, self.lens_monitor, st.lens, float(t))
                  for p, st, t in zip(prepared, streams, timestamps)]
        t3 = time.perf_counter()
        results = []
        for i, (p, st) in enumerate(zip(prepared, streams)):
            st.state, st.last_pose, st.last_time = out["state"][i:i + 1], pose_list[i], float(timestamps[i])
            results.append(EdgeResult(
                boxes=boxes[i], class_names=self.metadata.class_names, seg_prob=seg_probs[i],
                seg_classes=self.metadata.seg_classes, heatmap=heatmaps[i], embedding=out["embedding"][i],
                novelty=float(novelty[i]),
                cam_valid={n: bool(v) for n, v in zip(names, p.cam_valid)}, masked=p.masked, camera_health=health[i],
                timings_ms={**p.timings_ms, "inference": 1e3 * (t1 - t0) / B, "decode": 1e3 * (t2 - t1) / B,
                            "lens_monitor": 1e3 * (t3 - t2) / B},
            ))
        return results

    def _calibrated(self, boxes: DecodedBoxes) -> DecodedBoxes:
        """``boxes`` with calibrated scores, sorted by them again."""
        assert self.calibration is not None
        scores = self.calibration.detection_scores(boxes.score, boxes.label, self.metadata.class_names)
        order = np.argsort(-scores, kind="stable")
        return dataclasses.replace(boxes.select(order), score=scores[order])
