"""The active-learning benchmark's worlds and their cached features.

Three worlds of one seed with disjoint scenes, rendered at the edge preset's resolution:

- ``pool``: many scenes of two frames each (the unlabeled pool; the world's labels stand in for the
  labelers and are read only for frames an arm has picked, and by the oracle arm);
- ``test``: a rare-enriched test split, scenes drawn until each rare class fills its quota;
- ``val``: scenes as the world draws them (the natural distribution, for overall mAP).

Each world is run once through the frozen model (:func:`perception.training.feature_cache.build_feature_cache`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from perception.schema import RARE_CLASSES

if TYPE_CHECKING:
    from perception.training.feature_cache import FeatureCache

W, H = 400, 225  # px: the edge preset's 400 x 224 input, at the world's 16:9
WORLD_SEED = 7


@dataclass(frozen=True)
class WorldSize:
    pool_scenes: int  # scenes of 2 frames in the pool
    test_quota: int  # test scenes drawn per rare class
    val_scenes: int  # natural-distribution scenes of 2 frames
    frames: int = 2


SIZES = {
    "full": WorldSize(pool_scenes=400, test_quota=40, val_scenes=40),
    "quick": WorldSize(pool_scenes=30, test_quota=3, val_scenes=4),
}


def render_worlds(root: Path, size: WorldSize, progress: bool = True) -> dict[str, Path]:
    """Render (or resume, or reuse) the pool, test and val worlds under ``root``."""
    from data_engine.sim.synth import SynthConfig, default_workers, synthesize

    common = {"frames": size.frames, "seed": WORLD_SEED, "width": W, "height": H, "workers": default_workers()}
    cfgs = {
        "pool": SynthConfig(out=root / "pool", scenes=size.pool_scenes, first_scene=0, **common),
        "test": SynthConfig(out=root / "test", scenes=size.test_quota * len(RARE_CLASSES), first_scene=100_000,
                            quotas={c: size.test_quota for c in RARE_CLASSES}, **common),
        "val": SynthConfig(out=root / "val", scenes=size.val_scenes, first_scene=200_000, **common),
    }
    for cfg in cfgs.values():
        synthesize(cfg, progress=progress)
    return {k: c.out for k, c in cfgs.items()}


def feature_caches(checkpoint: Path, worlds: dict[str, Path], root: Path, progress: bool = True) -> dict[str, FeatureCache]:
    """name -> FeatureCache of each world under ``root``/features (built once per checkpoint)."""
    from perception.training.feature_cache import build_feature_cache

    return {k: build_feature_cache(checkpoint, path, root / "features" / k, progress=progress)
            for k, path in worlds.items()}
