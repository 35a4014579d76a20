"""The ``ray`` mining engine: the same scoring as the local engine, on Ray Data.

Each scene is one block (the video state and the temporal triggers need its frames in order, in one
place); an actor pool of ``workers`` onnxruntime sessions (:class:`~data_engine.mining.scoring.SceneScorer`)
maps the blocks; the driver receives each scene's results and is the only writer of the catalog
(:meth:`Catalog.write_scene` is idempotent, so a retried block is counted once). Ray connects to the
cluster named by ``RAY_ADDRESS`` when it is set, else starts a local instance; the workers read the
frames from the paths in the catalog, so a cluster needs the datasets on a shared filesystem. Each actor
scores one scene at a time (``--batch`` applies to the local engine).
Install with ``pip install 'bevstack[ray]'``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np

from ..catalog import FrameResult, FrameRow
from .scoring import MineError, SceneJob, SceneScorer

__all__ = ["score_scenes_ray"]


def _job_to_json(job: SceneJob) -> str:
    return json.dumps({"dataset_id": job.dataset_id, "scene_token": job.scene_token, "labels_root": job.labels_root,
                       "frames": [asdict(f) for f in job.frames]})


def _job_from_json(text: str) -> SceneJob:
    d = json.loads(text)
    frames = tuple(FrameRow(**{**f, "conditions": tuple(f["conditions"])}) for f in d["frames"])
    return SceneJob(int(d["dataset_id"]), d["scene_token"], frames, d["labels_root"])


def _results_to_json(results: Sequence[FrameResult]) -> str:
    return json.dumps([{"frame_id": r.frame_id, "status": r.status, "reason": r.reason,
                        "embedding": None if r.embedding is None else np.asarray(r.embedding, np.float32).tolist(),
                        "predictions": r.predictions, "scores": {k: [v, d] for k, (v, d) in r.scores.items()}}
                       for r in results])


def _results_from_json(text: str) -> list[FrameResult]:
    return [FrameResult(r["frame_id"], r["status"], r["reason"],
                        None if r["embedding"] is None else np.asarray(r["embedding"], np.float32),
                        r["predictions"], {k: (float(v), d) for k, (v, d) in r["scores"].items()})
            for r in json.loads(text)]


class _RayScorer:
    """A Ray actor: one scorer, one scene per batch."""

    def __init__(self, scorer_kwargs: dict[str, Any]) -> None:
        self.scorer = SceneScorer(**scorer_kwargs)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[str]]:
        out = []
        for text in batch["job"]:
            job = _job_from_json(str(text))
            ((_, results),) = self.scorer.score_scenes([job])
            out.append(_results_to_json(results))
        return {"job": [str(t) for t in batch["job"]], "results": out}


def score_scenes_ray(jobs: Sequence[SceneJob], scorer_kwargs: dict[str, Any],
                     workers: int) -> Iterator[tuple[SceneJob, list[FrameResult]]]:
    """Score scenes on Ray Data; yields (scene, results) to the driver as blocks finish."""
    try:
        import ray
    except ImportError:
        raise MineError("--engine ray needs Ray: pip install 'bevstack[ray]'") from None
    if not jobs:
        return
    workers = max(1, workers)
    if not ray.is_initialized():
        ray.init(include_dashboard=False, log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.preserve_order = False
    ds = ray.data.from_items([{"job": _job_to_json(j)} for j in jobs], override_num_blocks=len(jobs))
    # An actor asks for as many CPUs as it runs threads, but never more than the largest node has (else it
    # could never be scheduled).
    node_cpus = max((n.get("Resources", {}).get("CPU", 1) for n in ray.nodes() if n.get("Alive")), default=1)
    threads = int(min(int(scorer_kwargs.get("threads") or 1), node_cpus))
    scored = ds.map_batches(_RayScorer, fn_constructor_kwargs={"scorer_kwargs": scorer_kwargs}, batch_size=1,
                            compute=ray.data.ActorPoolStrategy(size=workers), num_cpus=threads, batch_format="numpy")
    for row in scored.iter_rows():
        yield _job_from_json(str(row["job"])), _results_from_json(str(row["results"]))
