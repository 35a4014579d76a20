"""The world as labeling service: it re-simulates any keyframe it rendered and returns the same
sample_annotation and instance records that `synth` writes for a labeled dataset.

The dataset's ``synth.json`` holds the recipe (seed, image size, frames); a sample is found by its
scene name and its position in the scene.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from perception.data.nuscenes import NuScenesDataset, load_dataset

from .synth_output import RECIPE_FILE
from .nuscenes_writer import annotation_rows, token
from .rig import nuscenes_like_rig
from .world import KEYFRAME_DT, SceneWorld, scene_spec
from perception.errors import BevStackError


class OracleError(BevStackError):
    """The dataset was not rendered by the synthetic world, or a sample is not in it."""


def read_recipe(root: str | Path) -> dict[str, Any]:
    path = Path(root) / RECIPE_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise OracleError(f"{path} is missing: only datasets written by `data-engine synth` can be labeled by the world") from None
    except json.JSONDecodeError as exc:
        raise OracleError(f"{path} is not valid JSON ({exc})") from None


@lru_cache(maxsize=4)
def _world(seed: int, index: int, frames: int, width: int, height: int) -> SceneWorld:
    return SceneWorld(scene_spec(seed, index, frames), nuscenes_like_rig(width, height))


def _scene_index(name: str) -> int:
    try:
        return int(name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        raise OracleError(f"scene name {name!r} is not one the synthetic world writes (scene-NNNN)") from None


def world_for_scene(root: str | Path, scene_name: str) -> SceneWorld:
    """The world of one scene of a synthesized dataset."""
    r = read_recipe(root)
    return _world(int(r["seed"]), _scene_index(scene_name), int(r["frames"]), int(r["width"]), int(r["height"]))


def label_samples(root: str | Path, sample_tokens: list[str],
                  dataset: NuScenesDataset | None = None) -> dict[str, list[dict[str, Any]]]:
    """sample_annotation and instance rows for the given keyframes, as `synth` writes them.

    Annotations of an object are chained prev/next across the requested keyframes of its scene.
    """
    ds = dataset or load_dataset(root)
    recipe = read_recipe(root)
    seed = int(recipe["seed"])
    by_scene: dict[str, list[int]] = {}
    for tok in sample_tokens:
        try:
            sample = ds.sample(tok)
        except (KeyError, IndexError, ValueError):
            raise OracleError(f"sample {tok!r} is not in {ds.root}") from None
        by_scene.setdefault(sample.scene_token, []).append(sample.scene_index)
    rows: dict[str, list[dict[str, Any]]] = {"sample_annotation": [], "instance": []}
    for scene_tok, frame_idx in by_scene.items():
        scene = ds.scene(scene_tok)
        world = world_for_scene(root, scene.name)
        objects = {k: world.capture(k * KEYFRAME_DT, frame_key=k * 100, cameras=False, lidar_sweep=False).objects
                   for k in sorted(set(frame_idx))}
        sample_toks = [token(seed, scene.name, "sample", k) for k in range(len(scene.sample_tokens))]
        anns, insts = annotation_rows(seed, scene.name, sample_toks, objects)
        rows["sample_annotation"] += anns
        rows["instance"] += insts
    return rows


def render_instance_masks(root: str | Path, sample_token: str) -> dict[str, tuple[np.ndarray, dict[str, int]]]:
    """Per camera of a keyframe: the instance-id map [H, W] int32 (-1: none) and instance token -> id."""
    ds = load_dataset(root)
    sample = ds.sample(sample_token)
    scene = ds.scene(sample.scene_token)
    world = world_for_scene(root, scene.name)
    seed = int(read_recipe(root)["seed"])
    k = sample.scene_index
    cap = world.capture(k * KEYFRAME_DT, frame_key=k * 100, cameras=False, lidar_sweep=False)
    ids = {token(seed, scene.name, "instance", o.actor.uid): o.actor.uid for o in cap.objects}
    return {cam: (img.instance, ids) for cam, img in cap.renders.items()}
