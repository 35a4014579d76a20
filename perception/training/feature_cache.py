"""Frozen BEV features of a trained model, computed once per frame, for a learner that retrains only heads.

A trained model (its backbone, view transform, video module and BEV encoder, all frozen) runs over
every frame of a dataset, scene by scene in time order with the video state carried, and the input
of its heads, the BEV trunk features, is stored in float16 beside each frame's detection targets.
Every arm and round of the active-learning benchmark reuses one cache: retraining the heads on it
(:mod:`perception.training.head_learner`) costs a few milliseconds per frame instead of a second.

A cache directory holds:

    features.npy   float16 [N, C, Xt, Yt]  the heads' input on the trunk grid (ego frame, x forward)
    heatmap.npy    float16 [N, K, Xd, Yd]  Gaussian detection targets on the detection grid (1 at centres)
    boxes.npz      det_indices int64 [N, M] (flat cells), det_mask bool [N, M],
                   det_regression float32 [N, M, 10], det_velocity_valid bool [N, M]
    embedding.npy  float32 [N, 2C]         the frame embedding: features pooled over the grid (mean, max)
    frames.json    the dataset, the checkpoint and its sha256, and per frame its sample token, scene,
                   scene conditions and the detection classes on the grid

Writing is all or nothing (a directory renamed into place); a cache of the same checkpoint and
dataset is reused as it stands.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..checkpoint import load_model_from_checkpoint
from ..data.dataset import DatasetConfig, MultiCamDataset
from ..data.nuscenes import load_dataset
from ..digest import file_sha256
from ..evaluate import run_model
from ..presets import Preset, preset_from_dict, preset_to_dict
from ..schema import parse_conditions

__all__ = ["FeatureCache", "build_feature_cache", "pooled_embedding"]

CACHE_FORMAT = 1


def pooled_embedding(features: np.ndarray) -> np.ndarray:
    """features [N, C, X, Y] -> [N, 2C] float32: the mean and the max of each channel over the grid."""
    f = np.asarray(features, dtype=np.float32)
    return np.concatenate([f.mean(axis=(2, 3)), f.max(axis=(2, 3))], axis=1)


@dataclass
class FeatureCache:
    """A cache directory, loaded: arrays are memory-mapped where large."""

    root: Path
    preset: Preset
    data: Path  # the dataset the frames are from
    tokens: list[str]  # sample token per frame
    scenes: list[str]  # scene token per frame
    conditions: list[tuple[str, ...]]  # the scene's condition words per frame
    classes: list[frozenset[str]]  # detection classes with an object on the detection grid, per frame
    features: np.ndarray  # float16 [N, C, Xt, Yt] (memory-mapped)
    heatmap: np.ndarray  # float16 [N, K, Xd, Yd] (memory-mapped)
    boxes: dict[str, np.ndarray]  # det_indices, det_mask, det_regression, det_velocity_valid, [N, M, ...]
    embedding: np.ndarray  # float32 [N, 2C]

    def __len__(self) -> int:
        return len(self.tokens)

    @classmethod
    def load(cls, root: str | Path) -> FeatureCache:
        root = Path(root)
        try:
            meta = json.loads((root / "frames.json").read_text())
        except (OSError, ValueError) as exc:
            raise FileNotFoundError(f"{root}: not a feature cache (frames.json: {exc})") from None
        if meta.get("format") != CACHE_FORMAT:
            raise ValueError(f"{root}: feature cache format {meta.get('format')!r}, expected {CACHE_FORMAT}; "
                             "delete the directory to build it again")
        with np.load(root / "boxes.npz") as z:
            boxes = {k: z[k] for k in z.files}
        return cls(root, preset_from_dict(meta["preset"]), Path(meta["data"]), meta["tokens"], meta["scenes"],
                   [tuple(c) for c in meta["conditions"]], [frozenset(c) for c in meta["classes"]],
                   np.load(root / "features.npy", mmap_mode="r"), np.load(root / "heatmap.npy", mmap_mode="r"),
                   boxes, np.load(root / "embedding.npy"))

    def holds(self, cls_name: str) -> np.ndarray:
        """bool [N]: the frames with an object of ``cls_name`` on the detection grid."""
        return np.array([cls_name in c for c in self.classes], dtype=bool)


def build_feature_cache(checkpoint: str | Path, data: str | Path, out: str | Path, *, batch_size: int = 4,
                        device: str | None = None, progress: bool = True) -> FeatureCache:
    """Run the checkpoint's model over every frame of ``data`` and cache its heads' input (see the module doc).

    Reuses ``out`` when it already holds this checkpoint's features of this dataset."""
    checkpoint, data, out = Path(checkpoint), Path(data), Path(out)
    sha = file_sha256(checkpoint)
    if (out / "frames.json").is_file():
        meta = json.loads((out / "frames.json").read_text())
        if meta.get("format") == CACHE_FORMAT and meta.get("checkpoint_sha256") == sha and meta.get("data") == str(data):
            return FeatureCache.load(out)
    model, preset, _ = load_model_from_checkpoint(checkpoint)
    reader = load_dataset(data)
    dataset = MultiCamDataset(reader, preset, DatasetConfig(split=None))
    classes = preset.tasks.det_classes
    captured: list[torch.Tensor] = []
    hook = model.bev_encoder.register_forward_hook(lambda _m, _i, output: captured.append(output.detach()))
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(dataset)
    C, Xt, Yt = preset.state_shape
    K, (Xd, Yd) = len(classes), preset.det_grid.shape
    feats = np.lib.format.open_memmap(tmp / "features.npy", mode="w+", dtype=np.float16, shape=(n, C, Xt, Yt))
    heat = np.lib.format.open_memmap(tmp / "heatmap.npy", mode="w+", dtype=np.float16, shape=(n, K, Xd, Yd))
    boxes: dict[str, list[np.ndarray]] = {k: [None] * n for k in  # type: ignore[misc]
                                          ("det_indices", "det_mask", "det_regression", "det_velocity_valid")}
    tokens, scenes, conds, present = [""] * n, [""] * n, [()] * n, [[]] * n  # type: ignore[var-annotated]
    position = {idx: pos for pos, idx in enumerate(dataset.indices)}
    from tqdm import tqdm

    try:
        with tqdm(total=n, unit="frame", desc=f"features of {data.name}", disable=not progress) as bar:
            for batch, _ in run_model(model, dataset, dataset.clips(), batch_size, device):
                bev = captured.pop().float().cpu().numpy()
                for b in range(len(batch)):
                    sample = reader.samples[int(batch.sample_index[b])]
                    i = position[int(batch.sample_index[b])]
                    feats[i] = bev[b].astype(np.float16)
                    heat[i] = batch.heatmap[b].numpy().astype(np.float16)
                    for k in boxes:
                        boxes[k][i] = getattr(batch, k)[b].numpy()
                    mask = batch.det_mask[b].numpy().astype(bool)
                    tokens[i], scenes[i] = sample.token, sample.scene_token
                    conds[i] = tuple(parse_conditions(reader.scene(sample.scene_token).description))
                    present[i] = sorted({classes[int(c)] for c in batch.det_labels[b].numpy()[mask]})
                bar.update(len(batch))
    finally:
        hook.remove()
    feats.flush()
    heat.flush()
    np.save(tmp / "embedding.npy", pooled_embedding(feats))
    np.savez(tmp / "boxes.npz", **{k: np.stack(v) for k, v in boxes.items()})
    meta: dict[str, Any] = {"format": CACHE_FORMAT, "data": str(data), "checkpoint": str(checkpoint),
                            "checkpoint_sha256": sha, "preset": preset_to_dict(preset), "tokens": tokens,
                            "scenes": scenes, "conditions": [list(c) for c in conds], "classes": present}
    (tmp / "frames.json").write_text(json.dumps(meta))
    del feats, heat
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return FeatureCache.load(out)
