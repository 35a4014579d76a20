"""`data-engine synth`: render scenes of the synthetic world into a nuScenes v1.0 dataset.

Scenes are rendered in parallel worker processes, each writing its own sensor files and a record
file under ``DIR/.synth/`` when it is complete. The tables are assembled from those records at the
end and written atomically. A killed run is resumed by running the same command again: finished
scenes are kept, unfinished ones are rendered again from their first frame. A directory made with
other arguments, or one that holds something else, is refused rather than mixed.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from perception.data.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES, TABLES

SYNTH_FORMAT = 1
VERSION = "v1.0-synth"
RECIPE_FILE = "synth.json"
STATE_DIR = ".synth"
TRAIN_SPLIT, VAL_SPLIT = "synth_train", "synth_val"


class SynthError(ValueError):
    """Impossible arguments or an output directory that cannot be used."""


@dataclass(frozen=True)
class SynthConfig:
    """What to render. Everything but ``workers`` decides the bytes written."""

    out: Path
    scenes: int
    frames: int
    seed: int = 0
    width: int = 800
    height: int = 450
    workers: int = 1
    unlabeled: bool = False
    sweeps: bool = False

    def validate(self) -> None:
        problems = []
        if self.scenes < 1:
            problems.append(f"--scenes must be >= 1, got {self.scenes}")
        if self.frames < 2:
            problems.append(f"--frames must be >= 2 (velocities need two keyframes), got {self.frames}")
        if self.frames > 400:
            problems.append(f"--frames must be <= 400 (200 s per scene), got {self.frames}")
        if not (32 <= self.width <= 4096) or not (32 <= self.height <= 4096):
            problems.append(f"--width and --height must be within 32..4096 px, got {self.width}x{self.height}")
        if self.workers < 1:
            problems.append(f"--workers must be >= 1, got {self.workers}")
        if self.seed < 0:
            problems.append(f"--seed must be >= 0, got {self.seed}")
        if problems:
            raise SynthError("; ".join(problems))

    def recipe(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out")
        d.pop("workers")
        d["format"] = SYNTH_FORMAT
        return d


@dataclass
class SynthSummary:
    """What a run wrote: per detection class the annotations and the scenes holding it, and the
    scenes per condition."""

    root: Path
    scenes: int
    samples: int
    seconds: float
    rendered_scenes: int
    class_boxes: dict[str, int]
    class_scenes: dict[str, int]
    conditions: dict[str, int]
    splits: dict[str, list[str]]


def split_scenes(names: list[str]) -> dict[str, list[str]]:
    """The last 20 % of scenes (at least one, when there are two or more) form the val split."""
    n_val = max(1, round(0.2 * len(names))) if len(names) >= 2 else 0
    return {TRAIN_SPLIT: names[: len(names) - n_val], VAL_SPLIT: names[len(names) - n_val:]}


_progress: Any = None


def _init_worker(counter: Any) -> None:
    global _progress
    _progress = counter
    import cv2

    cv2.setNumThreads(1)


def _tick() -> None:
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += 1


def _render_scene(cfg: SynthConfig, index: int) -> str:
    """Worker: render one scene and write its record file; returns the scene name."""
    from .sim.nuscenes_writer import _write_bytes, scene_records
    from .sim.rig import nuscenes_like_rig
    from .sim.world import SceneWorld, scene_spec

    spec = scene_spec(cfg.seed, index, cfg.frames)
    world = SceneWorld(spec, nuscenes_like_rig(cfg.width, cfg.height))
    rows = scene_records(world, cfg.out, cfg.frames, labeled=not cfg.unlabeled, sweeps=cfg.sweeps, on_frame=_tick)
    _write_bytes(_scene_file(cfg.out, index), json.dumps(rows).encode())
    return spec.name


def _scene_file(root: Path, index: int) -> Path:
    return root / STATE_DIR / f"scene-{index:04d}.json"


def prepare_output(cfg: SynthConfig) -> list[int]:
    """Check the output directory; return the indices of scenes still to render.

    A directory made by an earlier run with the same recipe is resumed; anything else that is not
    empty is refused.
    """
    root = cfg.out
    recipe_path = root / RECIPE_FILE
    if root.exists() and not root.is_dir():
        raise SynthError(f"--out {root} exists and is not a directory")
    if recipe_path.exists():
        try:
            old = json.loads(recipe_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise SynthError(f"{recipe_path} is unreadable ({exc}); delete {root} or choose another --out") from None
        if old != cfg.recipe():
            diff = {k: (old.get(k), v) for k, v in cfg.recipe().items() if old.get(k) != v}
            raise SynthError(f"{root} holds a dataset made with other arguments {diff} (was, now); "
                             "refusing to mix them: choose another --out or delete it")
    elif root.exists() and any(root.iterdir()):
        raise SynthError(f"--out {root} is not empty and holds no {RECIPE_FILE}; refusing to write into it")
    root.mkdir(parents=True, exist_ok=True)
    (root / STATE_DIR).mkdir(exist_ok=True)
    if not recipe_path.exists():
        from .sim.nuscenes_writer import _write_bytes

        _write_bytes(recipe_path, json.dumps(cfg.recipe(), indent=1).encode())
    todo = []
    for i in range(cfg.scenes):
        f = _scene_file(root, i)
        try:
            json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            todo.append(i)
    return todo


def synthesize(cfg: SynthConfig, progress: bool = True) -> SynthSummary:
    """Render the dataset described by ``cfg`` (resuming an interrupted run) and write its tables."""
    from tqdm import tqdm

    cfg.validate()
    start = time.perf_counter()
    todo = prepare_output(cfg)
    ctx = mp.get_context("forkserver")
    counter = ctx.Value("i", 0)
    frames_per_scene = cfg.frames
    bar = tqdm(total=len(todo) * frames_per_scene, unit="frame", desc="synth", disable=not progress,
               mininterval=0.5, dynamic_ncols=True)
    if todo:
        if cfg.workers == 1:
            _init_worker(counter)
            for i in todo:
                _render_scene(cfg, i)
                bar.n = counter.value
                bar.refresh()
        else:
            with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_worker,
                                     initargs=(counter,)) as pool:
                pending = {pool.submit(_render_scene, cfg, i) for i in todo}
                while pending:
                    done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                    for fut in done:
                        fut.result()  # re-raise a worker's error here
                    bar.n = counter.value
                    bar.refresh()
    bar.close()
    summary = assemble(cfg)
    summary.rendered_scenes = len(todo)
    summary.seconds = time.perf_counter() - start
    return summary


def assemble(cfg: SynthConfig) -> SynthSummary:
    """Merge the scenes' records into the 13 tables and splits.json, written atomically."""
    from .sim.nuscenes_writer import _write_bytes, static_records

    root = cfg.out
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
    for name, rows in static_records(cfg.seed).items():
        tables[name] = rows
    names = []
    for i in range(cfg.scenes):
        rows = json.loads(_scene_file(root, i).read_text())
        for name, part in rows.items():
            tables[name] += part
        names += [s["name"] for s in rows["scene"]]
    table_dir = root / VERSION
    table_dir.mkdir(exist_ok=True)
    for name in TABLES:
        _write_bytes(table_dir / f"{name}.json", json.dumps(tables[name], indent=0).encode())
    splits = split_scenes(names)
    _write_bytes(table_dir / "splits.json", json.dumps(splits, indent=1).encode())
    # Histograms of classes and conditions.
    cat_by_token = {c["token"]: c["name"] for c in tables["category"]}
    inst_cat = {i["token"]: cat_by_token[i["category_token"]] for i in tables["instance"]}
    scene_of_sample = {s["token"]: s["scene_token"] for s in tables["sample"]}
    class_boxes: Counter[str] = Counter()
    class_scenes: dict[str, set[str]] = {c: set() for c in DETECTION_CLASSES}
    for ann in tables["sample_annotation"]:
        det = CATEGORY_TO_DETECTION.get(inst_cat[ann["instance_token"]])
        if det:
            class_boxes[det] += 1
            class_scenes[det].add(scene_of_sample[ann["sample_token"]])
    conditions: Counter[str] = Counter()
    for s in tables["scene"]:
        for word in s["description"].split(","):
            conditions[word.strip().split(" ")[0]] += 1
    return SynthSummary(root, len(names), len(tables["sample"]), 0.0, 0,
                        {c: class_boxes[c] for c in DETECTION_CLASSES},
                        {c: len(class_scenes[c]) for c in DETECTION_CLASSES}, dict(conditions), splits)


def default_workers() -> int:
    return max(1, min(len(os.sched_getaffinity(0)), 8))
