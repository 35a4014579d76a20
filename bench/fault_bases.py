"""The valid inputs the fault bench mutates, built once per work directory.

A one-scene synthetic world (2 frames, 160x90) is the nuScenes base; a catalog indexes it as an
unlabeled pool with its frames queued and a mining run whose stored boxes are the world's own; the
world's oracle labels those frames (a nuScenes-records label batch) and a Label Studio export reviews
them (every box kept). The ONNX metadata is what ``perception export`` writes for the tiny preset with
a fixed rig; the checkpoint has every entry a training run saves, with small weights. A
:class:`Scratch` puts back the files one input changed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from data_engine.catalog import Catalog, FrameResult
from data_engine.labels.label_studio import BOX_CONTROL, IMAGE_NAME, region_id
from data_engine.sim.oracle import label_samples
from data_engine.sim.synth import SynthConfig, synthesize
from perception.config import ExperimentConfig, to_dict
from perception.data.nuscenes import load_dataset
from perception.presets import get_preset, preset_to_dict

__all__ = ["Bases", "RUN", "Scratch", "build_bases"]

RUN = "fuzz"  # the mining run of the catalog
PRESET = "tiny"


@dataclass(frozen=True)
class Bases:
    """Valid inputs of every reader, and where the on-disk ones live."""

    world: Path  # the synthetic dataset root (never mutated: the catalog points at it)
    catalog: Path  # catalog: the world's frames queued, run RUN holding their boxes
    labels: dict[str, Any]  # nuScenes-records labels of the queued frames
    export: list[dict[str, Any]]  # a Label Studio export reviewing the queued frames
    config: dict[str, Any]  # an experiment config document (every key)
    props: dict[str, str]  # ONNX metadata_props of an exported model
    checkpoint: dict[str, Any]  # a checkpoint's entries


def build_bases(workdir: Path) -> Bases:
    """Write the world and the catalog under ``workdir`` (kept when already there) and build the rest."""
    workdir.mkdir(parents=True, exist_ok=True)
    world = (workdir / "world").resolve()
    if not (world / "synth.json").is_file():
        synthesize(SynthConfig(out=world, scenes=1, frames=2, width=160, height=90, seed=0), progress=False)
    ds = load_dataset(world)
    tokens = [s.token for s in ds.samples]
    predictions = {t: _boxes_of(ds, t) for t in tokens}
    db = workdir / "catalog.db"
    if not db.exists():
        _write_catalog(db, ds, predictions)
    with Catalog.open(db) as cat:
        frames = [cat.frame(t) for t in tokens]
    truth = label_samples(world, tokens, ds)
    labels = {"sample_annotation": truth["sample_annotation"], "instance": truth["instance"], "frames": tokens}
    export = _export(frames, predictions)
    return Bases(world, db, labels, export, to_dict(ExperimentConfig()), _props(), _checkpoint())


def _boxes_of(ds: Any, token: str) -> list[dict[str, Any]]:
    """The annotated detection-class boxes of a frame as a model stores them (ego frame)."""
    boxes = ds.box_set(ds.sample(token))
    return [{"class": cls, "score": 0.9, "center": boxes.center[i].tolist(), "size": boxes.size[i].tolist(),
             "yaw": float(boxes.yaw[i]), "velocity": [0.0, 0.0]}
            for i, cls in enumerate(boxes.detection_classes) if cls is not None]


def _write_catalog(db: Path, ds: Any, predictions: dict[str, list[dict[str, Any]]]) -> None:
    with Catalog.open(db) as cat:
        dataset_id = cat.index_dataset(ds, unlabeled=True)["dataset_id"]
        rows = [cat.frame(t) for t in predictions]
        run_id, _ = cat.start_run(RUN, "model.onnx", "0" * 64, ["random"], len(rows), "local", {})
        for scene in ds.scenes:
            cat.write_scene(run_id, dataset_id, scene.token,
                            [FrameResult(r.id, predictions=predictions[r.sample_token]) for r in rows
                             if r.sample_token in scene.sample_tokens])
        cat.write_selection(run_id, [(r.id, 1.0, ["fuzz"]) for r in rows])


def _export(frames: list[Any], predictions: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """One task per camera image; each stored box shown (and kept) in one camera, round robin."""
    tasks: list[dict[str, Any]] = []
    for fr in frames:
        cameras = list(fr.cameras.items())
        for c, (cam, rel) in enumerate(cameras):
            regions = [{"id": region_id(i), "type": "rectanglelabels", "from_name": BOX_CONTROL, "to_name": IMAGE_NAME,
                        "value": {"x": 10, "y": 10, "width": 5, "height": 5, "rotation": 0,
                                  "rectanglelabels": [p["class"]]}}
                       for i, p in enumerate(predictions[fr.sample_token]) if i % len(cameras) == c]
            url = "/data/local-files/?d=" + (Path(fr.dataset_root) / rel).as_posix().lstrip("/")
            tasks.append({"id": len(tasks) + 1,
                          "data": {IMAGE_NAME: url, "frame": fr.sample_token, "camera": cam, "run": RUN,
                                   "dataset": fr.dataset_root, "score": 0.5},
                          "annotations": [{"result": json.loads(json.dumps(regions)), "was_cancelled": False}],
                          "predictions": [{"model_version": RUN, "result": regions}]})
    return tasks


def _props() -> dict[str, str]:
    """The metadata_props ``perception export --fixed-rig`` writes for the tiny preset."""
    from export.runtime.metadata import ModelMetadata

    preset = get_preset(PRESET)
    n = len(preset.input.cameras)
    K = [[200.0, 0.0, preset.input.width / 2], [0.0, 200.0, preset.input.height / 2], [0.0, 0.0, 1.0]]
    ego_T_cam = [[0.0, 0.0, 1.0, 1.5], [-1.0, 0.0, 0.0, 0.0], [0.0, -1.0, 0.0, 1.6], [0.0, 0.0, 0.0, 1.0]]
    meta = ModelMetadata(preset=preset_to_dict(preset), precision="fp32", checkpoint_sha256="0" * 64,
                         state_shape=preset.state_shape, embedding_dim=preset.model.embedding_dim, static_batch=None,
                         fixed_rig={"K": [K] * n, "ego_T_cam": [ego_T_cam] * n},
                         exporter={"opset": 17, "torch": "2", "onnx": "1"})
    return meta.to_props()


def _checkpoint() -> dict[str, Any]:
    """Every entry a training run saves; small stand-in weights and optimizer state."""
    import torch

    from perception.checkpoint import CHECKPOINT_FORMAT

    preset = get_preset(PRESET)
    weights = {"head.weight": torch.zeros(4, 3), "head.bias": torch.zeros(4)}
    return {
        "format": CHECKPOINT_FORMAT, "preset": preset_to_dict(preset), "config": to_dict(ExperimentConfig()),
        "classes": {"det": list(preset.tasks.det_classes), "seg": list(preset.tasks.seg_classes)},
        "model": weights, "ema": dict(weights), "ema_module": None,
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "scheduler": {"last_epoch": 3}, "criterion": {}, "step": 3, "epoch": 0, "position": 3,
        "video_state": torch.zeros(1, 1, 2, 2), "rng_torch": torch.get_rng_state(),
    }


class Scratch:
    """Files changed for one input, put back afterwards."""

    def __init__(self) -> None:
        self.saved: dict[Path, bytes | None] = {}

    def write(self, path: Path, content: bytes | str | None) -> None:
        """Replace the file at ``path`` with ``content`` (None deletes it), keeping what was there."""
        if path not in self.saved:
            self.saved[path] = path.read_bytes() if path.exists() else None
        if content is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(content.encode() if isinstance(content, str) else content)

    def restore(self) -> None:
        """Put every changed file back as it was."""
        for path, content in self.saved.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        self.saved.clear()
