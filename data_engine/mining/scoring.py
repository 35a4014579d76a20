"""Scoring scenes for a mining run: the unit of work (a scene, frames in time order), the scorer a
worker or a Ray actor holds (one onnxruntime session and the strategies), and the local engine's
worker processes. ``mining`` runs a whole mining run on top of this; ``ray_engine`` hosts the same
scorer in Ray actors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.data.nuscenes import DatasetError, NuScenesDataset, load_dataset
from perception.errors import BevStackError

from ..catalog import FrameResult, FrameRow
from .strategies import (FrameOutput, RunStrategy, StrategyError, load_plugins, make_strategy, plugin_file,
                         strategy_failure)

if TYPE_CHECKING:
    from perception.metrics.detection_boxes import EvalBoxes

__all__ = ["DatasetReaders", "MineError", "SceneJob", "SceneScorer", "box_predictions", "frame_labels", "group_scenes",
           "init_worker", "score_in_worker"]


class MineError(BevStackError):
    """Mining cannot start or continue; the message names the model, catalog, strategy or frame."""


@dataclass(frozen=True)
class SceneJob:
    """One scene to score: its frames in time order (all of one dataset)."""

    dataset_id: int
    scene_token: str
    frames: tuple[FrameRow, ...]  # every frame of the scene, whatever its label state
    labels_root: str | None = None  # where labeled frames' labels are read (the latest dataset version)
    labeled_dataset: bool = True  # the frames' dataset holds labels (False: an unlabeled pool)


class DatasetReaders:
    """Readers of nuScenes-format datasets by root, each opened once (None: it cannot be read)."""

    def __init__(self) -> None:
        self._readers: dict[str, NuScenesDataset | None] = {}

    def __call__(self, root: str) -> NuScenesDataset | None:
        if root not in self._readers:
            try:
                self._readers[root] = load_dataset(root)
            except (DatasetError, OSError):
                self._readers[root] = None
        return self._readers[root]


def frame_labels(frame: FrameRow, labels_root: str | None, labeled_dataset: bool,
                 readers: DatasetReaders) -> EvalBoxes:
    """The labels of a labeled frame (detection classes, reference ego frame): from the newest dataset
    version ``labels_root`` when it holds the frame, else from the frame's own dataset when that is a
    labeled one (``labeled_dataset``). :class:`MineError` says why there are none."""
    from perception.metrics.nuscenes_io import ground_truth

    if labels_root is not None:
        version = readers(labels_root)
        if version is None:
            raise MineError(f"{labels_root}: the newest dataset version cannot be read")
        try:
            return ground_truth(version, version.sample(frame.sample_token))
        except DatasetError:
            pass  # not in the version: the frame's own dataset holds its labels
    if not labeled_dataset:
        raise MineError(f"no labels: the frame is in the unlabeled pool {frame.dataset_root} and not in the "
                        f"newest dataset version {labels_root}")
    reader = readers(frame.dataset_root)
    if reader is None:
        raise MineError(f"{frame.dataset_root}: the dataset cannot be read")
    return ground_truth(reader, reader.sample(frame.sample_token))


# -- scoring one scene (in a worker) ----------------------------------------------------------------------
class SceneScorer:
    """One onnxruntime session and the strategies; scores scenes. Lives in a worker or a Ray actor."""

    def __init__(self, model: str | Path, strategies: Sequence[str], plugins: Sequence[str | Path] = (),
                 threads: int | None = None, score_threshold: float = 0.1, max_boxes: int = 100) -> None:
        from export.runtime import EdgeModel  # the edge runtime: numpy + onnxruntime

        load_plugins(plugins)
        self.model = EdgeModel(model, threads=threads, score_threshold=score_threshold)
        self.strategies = [s for s in (make_strategy(x) for x in strategies) if not isinstance(s, RunStrategy)]
        self.max_boxes = max_boxes
        self._reader = DatasetReaders()
        meta = self.model.metadata
        self.det_grid = self.model.preset.det_grid
        self.static_batch = meta.static_batch

    def score_scenes(self, jobs: Sequence[SceneJob]) -> list[tuple[SceneJob, list[FrameResult]]]:
        """Score scenes side by side: step t runs frame t of every scene still going, in one batch."""
        from export.runtime import Camera, RuntimeInputError, StreamState

        streams = [StreamState() for _ in jobs]
        results: list[list[FrameResult]] = [[] for _ in jobs]
        prev: list[FrameOutput | None] = [None for _ in jobs]
        longest = max(len(j.frames) for j in jobs)
        for t in range(longest):
            batch: list[tuple[int, Any, Any, FrameRow, Any]] = []
            for i, job in enumerate(jobs):
                if t >= len(job.frames):
                    continue
                frame = job.frames[t]
                reader = self._reader(frame.dataset_root)
                try:
                    if reader is None:
                        raise MineError(f"{frame.dataset_root}: the dataset cannot be read")
                    sample = reader.sample(frame.sample_token)
                    rig, images, cam_times, unreadable, files = {}, {}, {}, {}, {}
                    for name in self.model.metadata.camera_names:
                        cam = sample.cameras.get(name)
                        if cam is None:
                            raise MineError(f"{name}: the sample has no such camera")
                        rig[name] = Camera(cam.K, sample.ref_T_cam(name), (cam.height, cam.width))
                        files[name] = cam.path
                        try:
                            images[name] = cam.path.read_bytes()
                        except OSError as exc:
                            images[name] = None
                            unreadable[name] = f"{cam.path}: {exc.strerror or exc}"
                        cam_times[name] = cam.timestamp / 1e6
                    prepared = self.model.prepare(images, rig, sample.timestamp / 1e6, cam_times)
                    # camera -> "image file: why"; a file that cannot be read says so rather than "no frame"
                    problems = {**{k: f"{files[k]}: {v}" for k, v in prepared.masked.items()}, **unreadable}
                    if problems:  # a frame mined with a camera missing would be scored on what the model did not see
                        raise MineError("; ".join(f"{k}: {v}" for k, v in sorted(problems.items())))
                    labels = None
                    if frame.label_state == "labeled" and any(s.needs_labels for s in self.strategies):
                        labels = frame_labels(frame, job.labels_root, job.labeled_dataset, self._reader)
                except (MineError, DatasetError, RuntimeInputError) as exc:
                    results[i].append(FrameResult(frame.id, status="failed", reason=str(exc)))
                    streams[i], prev[i] = StreamState(), None  # a gap: the next frame starts a clip
                    continue
                batch.append((i, prepared, sample, frame, labels))
            if not batch:
                continue
            chunk = self.static_batch or len(batch)
            for k in range(0, len(batch), chunk):
                part = batch[k:k + chunk]
                outs = self.model.step_batch([b[1] for b in part], [b[2].global_T_ego for b in part],
                                             [b[2].timestamp / 1e6 for b in part], [streams[b[0]] for b in part])
                for (i, _, sample, frame, labels), res in zip(part, outs):
                    out = FrameOutput(token=frame.sample_token, timestamp=sample.timestamp / 1e6,
                                      global_T_ego=sample.global_T_ego, boxes=res.boxes, class_names=res.class_names,
                                      heatmap=res.heatmap, seg_prob=res.seg_prob, seg_classes=res.seg_classes,
                                      embedding=res.embedding, det_grid=self.det_grid, labels=labels,
                                      camera_health=res.camera_health)
                    scores = {}
                    for strategy in self.strategies:
                        if strategy.needs_labels and labels is None:
                            continue
                        try:
                            value, details = strategy.score(out, prev[i])
                            if strategy.calibrated:  # else fired() waits for prepare(), after scoring
                                details = {**details, "fired": bool(strategy.fired(value, details))}
                        except StrategyError:
                            raise
                        except Exception as exc:  # noqa: BLE001 - a plugin's code may raise anything
                            if plugin_file(strategy) is None:
                                raise  # a built-in strategy's bug keeps its traceback
                            raise strategy_failure(strategy, f"on frame {frame.sample_token}", exc) from None
                        scores[strategy.name] = (_checked(strategy.name, frame.sample_token, value, details),
                                                 details)
                    results[i].append(FrameResult(frame.id, embedding=res.embedding.astype(np.float32),
                                                  predictions=box_predictions(res, self.max_boxes), scores=scores))
                    prev[i] = out
        return list(zip(jobs, results))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON")


def _checked(strategy: str, token: str, value: Any, details: dict[str, Any]) -> float:
    """A strategy's score as a finite float, with details that JSON can hold (numpy scalars made plain)."""
    try:
        score = float(value)
        text = json.dumps(details, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise StrategyError(f"strategy {strategy} on frame {token}: the score or details cannot be stored ({exc})") from None
    if not np.isfinite(score):
        raise StrategyError(f"strategy {strategy} on frame {token}: score {score} (scores must be finite numbers)")
    details.clear()
    details.update(json.loads(text))
    return score


def box_predictions(res: Any, max_boxes: int) -> list[dict[str, Any]]:
    """The catalog form of a frame's boxes (catalog.PREDICTION_KEYS), the best ``max_boxes``."""
    b = res.boxes
    return [{"class": res.class_names[int(b.label[i])], "score": round(float(b.score[i]), 4),
             "center": [round(float(v), 3) for v in b.center[i]], "size": [round(float(v), 3) for v in b.size[i]],
             "yaw": round(float(b.yaw[i]), 4), "velocity": [round(float(v), 3) for v in b.velocity[i]]}
            for i in range(min(len(b), max_boxes))]


# -- the local engine ---------------------------------------------------------------------------------------
_WORKER: SceneScorer | None = None


def init_worker(kwargs: dict[str, Any]) -> None:
    global _WORKER
    _WORKER = SceneScorer(**kwargs)


def score_in_worker(jobs: list[SceneJob]) -> list[tuple[SceneJob, list[FrameResult]]]:
    assert _WORKER is not None
    return _WORKER.score_scenes(jobs)


def group_scenes(jobs: Sequence[SceneJob], batch: int) -> list[list[SceneJob]]:
    """Scenes of similar length side by side (fewer idle batch slots), ``batch`` per group."""
    ordered = sorted(jobs, key=lambda j: -len(j.frames))
    return [ordered[i:i + batch] for i in range(0, len(ordered), batch)]
