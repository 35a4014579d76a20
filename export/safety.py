"""What `perception export` fits for the runtime's safety outputs, from the exported FP32 model itself:

- the score calibration (per-class Platt scaling of detection scores and segmentation probabilities),
  fitted on the val split (:func:`perception.confidence.collect_confidence`);
- the novelty indices (k-means centres of the train split's frame embeddings and of its frames'
  appearance statistics, :class:`perception.metrics.novelty.FrameNovelty`).

Both go into the model's metadata; every precision carries the FP32 model's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from export.runtime import EdgeModel
from perception.confidence import collect_confidence
from perception.data.dataset import MultiCamDataset
from perception.metrics.calibration import ScoreCalibration
from perception.metrics.novelty import FrameNovelty, appearance_features
from perception.presets import Preset
from perception.schema import parse_conditions

__all__ = ["fit_calibration_on", "fit_novelty_on", "frame_embeddings", "scene_clips"]

MAX_NOVELTY_FRAMES = 2000  # train frames embedded for the novelty index (whole scenes, spread over the split)
MIN_NOVELTY_FRAMES = 10  # fewer train frames than this give no index


def scene_clips(dataset: MultiCamDataset, exclude_conditions: Sequence[str] = (), max_frames: int | None = None
                ) -> list[list[int]]:
    """The dataset's scenes (clips of positions in time order), without the scenes of any condition in
    ``exclude_conditions``; with ``max_frames``, scenes evenly spread over the split up to that many frames."""
    description = {sc.token: sc.description for sc in dataset.scenes}
    clips = []
    for clip in dataset.clips():
        if not clip:
            continue
        scene = dataset.reader.samples[dataset.indices[clip[0]]].scene_token
        if not set(parse_conditions(description.get(scene, ""))) & set(exclude_conditions):
            clips.append(clip)
    if max_frames is not None and sum(map(len, clips)) > max_frames:
        mean_len = max(1, sum(map(len, clips)) // len(clips))
        keep = max(1, max_frames // mean_len)
        picks = np.unique(np.linspace(0, len(clips) - 1, keep).round().astype(int))
        clips = [clips[i] for i in picks]
    return clips


def frame_embeddings(edge: EdgeModel, dataset: MultiCamDataset, clips: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    """([F, E] the exported model's frame embeddings, [F, A] the frames' appearance features) over
    ``clips``, the video state carried in each."""
    from export.dataset_runs import run_edge

    emb, look = [], []
    for batch, out in run_edge(edge, dataset, clips):
        emb.append(out["embedding"][0])
        look.append(appearance_features(batch.images[0].numpy(), batch.cam_valid[0].numpy()))
    if not emb:
        return np.zeros((0, edge.metadata.embedding_dim), np.float32), np.zeros((0, 4))
    return np.stack(emb), np.stack(look)


def fit_calibration_on(edge: EdgeModel, preset: Preset, val: MultiCamDataset) -> tuple[ScoreCalibration, dict[str, Any]]:
    """The calibration fitted on ``val`` and its in-sample report (ECE raw and calibrated per class)."""
    from export.dataset_runs import run_edge

    where = f"{val.config.split} of {val.reader.root}"
    samples = collect_confidence(preset, val, run_edge(edge, val))
    calibration = samples.fit(f"{where}: {samples.frames} frames")
    samples.calibration = calibration
    refit = collect_confidence(preset, val, run_edge(edge, val), calibration)  # in-sample, for the report
    return calibration, refit.report()


def fit_novelty_on(edge: EdgeModel, train: MultiCamDataset, exclude_conditions: Sequence[str] = (),
                   max_frames: int = MAX_NOVELTY_FRAMES, log: Callable[[str], None] | None = None
                   ) -> FrameNovelty | None:
    """The novelty index of the train split's embeddings (scenes of ``exclude_conditions`` left out);
    None when the split has fewer than MIN_NOVELTY_FRAMES frames to fit it on."""
    clips = scene_clips(train, exclude_conditions, max_frames)
    emb, look = frame_embeddings(edge, train, clips)
    left_out = f", without {'/'.join(exclude_conditions)} scenes" if exclude_conditions else ""
    if len(emb) < MIN_NOVELTY_FRAMES:
        if log is not None:
            log(f"no novelty index: {len(emb)} train frames{left_out}, at least {MIN_NOVELTY_FRAMES} are needed")
        return None
    index = FrameNovelty.fit(emb, look, fitted_on=f"{train.config.split} of {train.reader.root}: {len(emb)} frames{left_out}")
    if log is not None:
        log(f"novelty index: {len(index.embedding.centers)} embedding and {len(index.appearance.centers)} appearance "
            f"centres of {len(emb)} train frames{left_out}")
    return index
