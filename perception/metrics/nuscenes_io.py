"""Detection evaluation on a nuScenes-format dataset: ground truth, the official results JSON, a split.

Frames: everything is evaluated in each sample's reference ego frame (the ``LIDAR_TOP`` ego pose, as
:meth:`NuScenesDataset.box_set` gives boxes; ``ego_xy`` = (0, 0)). The results JSON is in the global
frame; :func:`load_results` moves its boxes into the ego frame and :func:`results_json` back. The
devkit measures in the global frame: the ground-plane distances, yaw differences and velocity
differences agree exactly when the ego pose turns only about z (our synthetic world); with a
pitched or rolled ego pose (real nuScenes, ~1 degree) they differ at second order.

Ground truth carries ``num_lidar_pts`` only (our reader does not read ``num_radar_pts``; the
synthetic world writes 0): a real nuScenes box hit only by radar points is removed here and kept
by the devkit.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.geometry import (
    invert_rigid,
    quat_to_rotation,
    rotation_to_quat,
    rotz,
    transform_points,
    transform_vectors,
    yaw_from_rotation,
)
from perception.metrics.detection import (
    DetectionConfig,
    DetectionEvaluator,
    DetectionMetrics,
)
from perception.metrics.detection_boxes import EvalBoxes

if TYPE_CHECKING:
    from perception.data.nuscenes import NuScenesDataset, Sample

__all__ = ["boxes_to_global", "evaluate_split", "ground_truth", "load_results", "results_json", "split_samples"]

DEFAULT_META: dict[str, bool] = {
    "use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False,
}


def split_samples(ds: NuScenesDataset, split: str) -> list[Sample]:
    """The samples of the scenes of ``split`` (splits.json), scene by scene, in time order."""
    return [s for scene in ds.scenes_of_split(split) for s in ds.scene_samples(scene)]


def ground_truth(ds: NuScenesDataset, sample: Sample) -> EvalBoxes:
    """The detection-class annotations of ``sample`` in its reference ego frame (velocity as the
    devkit's ``box_velocity``, ``num_pts`` = lidar points)."""
    return EvalBoxes.from_box_set(ds.box_set(sample))


def _ego_from_global(ego_T_global: np.ndarray, records: list[dict[str, Any]]) -> EvalBoxes:
    """Result records (global frame) -> EvalBoxes in the ego frame of ``ego_T_global``."""
    n = len(records)
    translation = np.asarray([r["translation"] for r in records], dtype=np.float64).reshape(n, 3)
    rotation = np.asarray([r["rotation"] for r in records], dtype=np.float64).reshape(n, 4)
    velocity = np.asarray([r["velocity"] for r in records], dtype=np.float64).reshape(n, 2)
    vel3 = np.concatenate([velocity, np.zeros((n, 1))], axis=1)
    yaw = yaw_from_rotation(ego_T_global[:3, :3] @ quat_to_rotation(rotation)) if n else np.zeros(0)
    return EvalBoxes.create(
        center=transform_points(ego_T_global, translation),
        size=[r["size"] for r in records],
        yaw=yaw,
        names=[r["detection_name"] for r in records],
        velocity=transform_vectors(ego_T_global, vel3)[:, :2],
        attributes=[r.get("attribute_name", "") for r in records],
        score=[float(r["detection_score"]) for r in records],
    )


def load_results(
    results: str | Path | Mapping[str, Any], ds: NuScenesDataset, samples: list[Sample]
) -> tuple[dict[str, EvalBoxes], dict[str, Any]]:
    """Predictions of ``samples`` from a results JSON (path or parsed) -> (token -> ego-frame EvalBoxes, meta).

    Every sample must have an entry (possibly empty), as the devkit requires; entries of other
    samples are ignored.
    """
    data = json.loads(Path(results).read_text()) if isinstance(results, (str, Path)) else results
    if "results" not in data or not isinstance(data["results"], Mapping):
        raise ValueError("a results JSON needs a 'results' object mapping sample tokens to box lists")
    missing = [s.token for s in samples if s.token not in data["results"]]
    if missing:
        raise ValueError(f"the results lack {len(missing)} samples of the split, e.g. {missing[:3]}")
    out = {}
    for s in samples:
        records = data["results"][s.token]
        wrong = [r.get("sample_token") for r in records if r.get("sample_token", s.token) != s.token]
        if wrong:
            raise ValueError(f"results of sample {s.token!r} hold boxes of sample {wrong[0]!r}")
        out[s.token] = _ego_from_global(invert_rigid(s.global_T_ego), records)
    return out, dict(data.get("meta", {}))


def boxes_to_global(global_T_ego: np.ndarray, center: np.ndarray, yaw: np.ndarray,
                    velocity: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ego-frame boxes -> the global frame nuScenes records use: (translation [N, 3], rotation quaternions
    wxyz [N, 4], velocity [N, 2]); center [N, 3] m, yaw [N] rad about +z, velocity [N, 2] m/s (or None)."""
    center = np.asarray(center, np.float64).reshape(-1, 3)
    n = len(center)
    yaw = np.asarray(yaw, np.float64).reshape(n)
    vel = np.zeros((n, 2)) if velocity is None else np.asarray(velocity, np.float64).reshape(n, 2)
    if n == 0:
        return np.zeros((0, 3)), np.zeros((0, 4)), np.zeros((0, 2))
    translation = transform_points(global_T_ego, center)
    quat = rotation_to_quat(global_T_ego[:3, :3] @ rotz(yaw))
    vel3 = np.concatenate([vel, np.zeros((n, 1))], axis=1)
    return translation, quat, transform_vectors(global_T_ego, vel3)[:, :2]


def results_json(
    predictions: Mapping[str, EvalBoxes], ds: NuScenesDataset, meta: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The official submission (global frame) of ego-frame predictions: token -> EvalBoxes."""
    results: dict[str, list[dict[str, Any]]] = {}
    for token, boxes in predictions.items():
        n = len(boxes)
        center, quat, velocity = boxes_to_global(ds.sample(token).global_T_ego, boxes.center, boxes.yaw, boxes.velocity)
        results[token] = [
            {
                "sample_token": token, "translation": center[i].tolist(), "size": boxes.size[i].tolist(),
                "rotation": quat[i].tolist(), "velocity": velocity[i].tolist(), "detection_name": boxes.names[i],
                "detection_score": float(boxes.score[i]), "attribute_name": boxes.attributes[i],
            }
            for i in range(n)
        ]
    return {"meta": dict(meta if meta is not None else DEFAULT_META), "results": results}


def evaluate_split(
    ds: NuScenesDataset,
    results: str | Path | Mapping[str, Any] | Mapping[str, EvalBoxes],
    split: str,
    config: DetectionConfig | None = None,
) -> DetectionMetrics:
    """Score predictions of every sample of ``split``: a results JSON (path or parsed, global frame)
    or a mapping token -> ego-frame EvalBoxes."""
    samples = split_samples(ds, split)
    if isinstance(results, Mapping) and all(isinstance(v, EvalBoxes) for v in results.values()):
        missing = [s.token for s in samples if s.token not in results]
        if missing:
            raise ValueError(f"no predictions for {len(missing)} samples of {split!r}, e.g. {missing[:3]}")
        preds: Mapping[str, EvalBoxes] = results  # type: ignore[assignment]
    else:
        preds, _ = load_results(results, ds, samples)  # type: ignore[arg-type]
    evaluator = DetectionEvaluator(config)
    for s in samples:
        evaluator.add_sample(s.token, ground_truth(ds, s), preds[s.token])
    return evaluator.compute()
