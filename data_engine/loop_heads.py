"""The closed loop's heads-only mode (``mode: heads``): the trained model ``model`` stays frozen, its
BEV features are cached once per frame (seed set, pool and val set), and every round retrains only
light detection heads on them (:mod:`perception.training.head_learner`, the active-learning
benchmark's learner), from the same initialisation, for epochs over the labeled frames. Mining runs
the arm's strategies on the heads' outputs over the cached pool (:mod:`data_engine.mining.cached`)
and records the picks in the arm's catalog as a mining run (engine ``heads``); the queue, the
oracle's labels and the ingest are the full mode's. A round costs about a minute on 2 CPU cores (800
pool frames scored and recorded, the queue, the ingest, the heads' training) instead of a training
and an export.

The heads learn from each labeled frame's detection targets as its cache holds them: the pool's own
annotations, which are what the loop's labeler (the world's oracle) writes. Metrics are the official
mAP and NDS on the val set, each rare class's official AP, and the rare classes' AP with min
precision and recall 0 (``rare_ap_unclipped``, which moves for weak detectors).

    out/features/{seed,pool,val}/        the caches (reused while the model and datasets are the same)
    out/seed<S>/<arm>/round<r>/train/heads.pt   the round's heads; eval.json beside train/
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.data.nuscenes import load_dataset
from perception.digest import file_sha256
from perception.errors import BevStackError
from perception.schema import RARE_CLASSES

from .catalog import Catalog, FrameResult

if TYPE_CHECKING:
    from perception.training.feature_cache import FeatureCache
    from perception.training.head_learner import HeadScores, LightHeads

__all__ = ["HeadsLoop", "HeadsLoopError", "heads_headline"]


class HeadsLoopError(BevStackError):
    """A heads-only loop's input or state that cannot be used; the message names the file or frame."""


def _split_positions(cache: FeatureCache, split: str | None) -> np.ndarray:
    """Positions of ``cache`` in the scenes of ``split`` of its dataset (None: every frame)."""
    if split is None:
        return np.arange(len(cache))
    scenes = {s.token for s in load_dataset(cache.data).scenes_of_split(split)}
    return np.array([i for i, s in enumerate(cache.scenes) if s in scenes], dtype=np.int64)


def heads_headline(scores: HeadScores) -> dict[str, Any]:
    """The loop's metrics of heads scored on the val set (the full mode's keys it can measure)."""
    rare = scores.rare("ap_unclipped")
    out: dict[str, Any] = {"mAP": scores.mAP, "NDS": scores.NDS, "rare_ap_unclipped": rare if np.isfinite(rare) else None}
    for c in RARE_CLASSES:
        out[f"ap_{c}"] = scores.ap.get(c) if scores.num_gt.get(c, 0) > 0 else None
    return out


class HeadsLoop:
    """The caches, learner, evaluator and miner of one heads-only loop (``cfg`` a validated LoopConfig)."""

    def __init__(self, cfg: Any, out: Path, log: Callable[[str], None]) -> None:
        from data_engine.mining.cached import CachedFrames
        from perception.training.feature_cache import build_feature_cache
        from perception.training.head_learner import HeadEvaluator, HeadLearnerConfig

        self.cfg, self.log = cfg, log
        self.model = Path(cfg.model)
        self.model_sha = file_sha256(self.model)
        feats = out / "features"
        log(f"heads mode: caching {self.model}'s BEV features of the seed set, the pool and the val set")
        self.seed_cache = build_feature_cache(self.model, cfg.seed_data, feats / "seed")
        self.pool = build_feature_cache(self.model, cfg.pool, feats / "pool")
        seed_reader = load_dataset(cfg.seed_data)
        if cfg.val_data is None:
            val_cache, val_split = self.seed_cache, cfg.val_split or seed_reader.val_split
        else:
            val_cache, val_split = build_feature_cache(self.model, cfg.val_data, feats / "val"), cfg.val_split
        self.seed_positions = _split_positions(self.seed_cache, seed_reader.train_split)
        if cfg.val_data is None and val_split is None:
            raise HeadsLoopError(f"seed_data: {cfg.seed_data} has no val split; name val_data")
        self.evaluator = HeadEvaluator(val_cache, _split_positions(val_cache, val_split))
        self.learner = HeadLearnerConfig(epochs=cfg.head_epochs, min_steps=cfg.head_min_steps)
        self.frames = CachedFrames.of([(self.seed_cache, self.seed_positions), (self.pool, None)])
        self.pool_position = {tok: i for i, tok in enumerate(self.pool.tokens)}

    def labeled_pool(self, data: Path) -> np.ndarray:
        """Pool positions of the frames dataset version ``data`` holds (none for the seed set)."""
        if Path(data).resolve() == Path(self.cfg.seed_data).resolve():
            return np.zeros(0, dtype=np.int64)
        return np.array(sorted(self.pool_position[s.token] for s in load_dataset(data).samples
                               if s.token in self.pool_position), dtype=np.int64)

    def train(self, data: Path, out_dir: Path, seed: int) -> Path:
        """Heads trained on the seed set and the pool frames labeled in ``data`` (skipped when done)."""
        import torch

        from perception.training.head_learner import train_heads_on

        path = out_dir / "train" / "heads.pt"
        if path.is_file():
            return path
        pool = self.labeled_pool(data)
        self.log(f"train heads on {len(self.seed_positions)} seed + {len(pool)} labeled pool frames "
                 f"({self.learner.epochs} epochs)")
        heads = train_heads_on([(self.seed_cache, self.seed_positions), (self.pool, pool)],
                               replace(self.learner, seed=seed))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        torch.save({"heads": heads.state_dict(), "model": str(self.model), "model_sha256": self.model_sha,
                    "pool_tokens": [self.pool.tokens[int(i)] for i in pool]}, tmp)
        tmp.replace(path)
        return path

    def load(self, path: Path) -> LightHeads:
        import torch

        from perception.training.head_learner import init_heads

        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("model_sha256") != self.model_sha:
            raise HeadsLoopError(f"{path}: heads of another model than {self.model}; delete the loop's outputs to start over")
        heads = init_heads(self.seed_cache, self.learner)
        heads.load_state_dict(state["heads"])
        return heads.eval()

    def evaluate(self, heads_path: Path, out_dir: Path) -> dict[str, Any]:
        path = out_dir / "eval.json"
        if path.is_file():
            return json.loads(path.read_text())
        metrics = {**heads_headline(self.evaluator.score(self.load(heads_path))),
                   "samples": len(self.evaluator.positions)}
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(metrics, indent=2) + "\n")
        tmp.replace(path)
        self.log("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
        return metrics

    def mine(self, strategies: list[str], db: Path, heads_path: Path, data: Path, run: str) -> None:
        """Pick the round's frames of the pool with ``strategies`` on the heads' outputs and record them
        in the catalog ``db`` as mining run ``run``."""
        from data_engine.mining.cached import pick_on_heads, with_exemplars
        from data_engine.mining.scoring import box_predictions
        from data_engine.mining.selection import SelectionConfig

        n_seed = len(self.seed_positions)
        labeled = np.zeros(len(self.frames), dtype=bool)
        labeled[:n_seed] = True
        labeled[n_seed + self.labeled_pool(data)] = True
        held = set().union(*(self.frames.classes[int(i)] for i in np.flatnonzero(labeled)))
        specs = with_exemplars(strategies, held)
        self.log(f"mine {','.join(specs)} budget {self.cfg.budget} on the heads' outputs")
        found = pick_on_heads(specs, self.frames, self.load(heads_path), labeled, self.cfg.budget,
                              SelectionConfig(diversity=self.cfg.diversity, min_gap=self.cfg.min_gap))
        index = {tok: i for i, tok in enumerate(self.frames.tokens)}
        pool_root = str(Path(self.cfg.pool).resolve())
        with Catalog.open(db) as cat:
            run_id, _ = cat.start_run(run, str(heads_path.resolve()), file_sha256(heads_path), specs, self.cfg.budget,
                                      "heads", {"target": "unlabeled", "selection": {"diversity": self.cfg.diversity,
                                                                                     "min_gap": self.cfg.min_gap}})
            # Every unlabeled pool frame's result, as a mining run on the exported model writes them: its
            # embedding, the heads' boxes (the queue's pre-annotations) and each strategy's score.
            ids = {}
            for dataset_id, scene, rows in cat.scene_frames(["unlabeled"], whole_scenes=True):
                results = []
                for f in rows:
                    i = index.get(f.sample_token)
                    if i is None or str(Path(f.dataset_root).resolve()) != pool_root or f.label_state != "unlabeled":
                        continue
                    ids[i] = f.id
                    results.append(FrameResult(f.id, embedding=self.frames.embedding[i],
                                               predictions=box_predictions(found.outputs[i], 100),
                                               scores={k: (float(v[i]), {}) for k, v in found.scores.items()}))
                cat.write_scene(run_id, dataset_id, scene, results)
            missing = [self.frames.tokens[i] for i, _, _ in found.picks if i not in ids]
            if missing:
                raise HeadsLoopError(f"{db}: picked pool frame(s) {missing[:3]} are not unlabeled frames of its catalog")
            cat.write_selection(run_id, [(ids[i], score, reasons) for i, score, reasons in found.picks])
