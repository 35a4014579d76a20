"""`data-engine synth`: render scenes of the synthetic world into a nuScenes v1.0 dataset.

Scenes are rendered in parallel worker processes, each writing its own sensor files and a record
file under ``DIR/.synth/`` when it is complete. The tables are assembled from those records at the
end and written atomically. A killed run is resumed by running the same command again: finished
scenes are kept, unfinished ones are rendered again from their first frame. A directory made with
other arguments or by another version of the world's code, or one that holds something else, is
refused rather than mixed. A run holds an exclusive lock on ``DIR/.synth/lock`` throughout, so a
second run on the same directory fails at once; workers exit when the run that started them dies.
The output directory's layout, lock and resume checks are in :mod:`data_engine.sim.synth_output`.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import select
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import perception
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES, TABLES
from perception.process import process_alive

from .synth_output import SynthError, output_lock, prepare_output, scene_file

SYNTH_FORMAT = 1
VERSION = "v1.0-synth"
TRAIN_SPLIT, VAL_SPLIT = "synth_train", "synth_val"


@lru_cache(maxsize=1)
def world_digest() -> str:
    """A short sha256 of the world's source: ``data_engine/sim/*.py`` (by name) and ``perception/geometry.py``.

    It is part of the recipe, so a directory rendered by other code is not resumed with new scenes.
    """
    files = sorted((p for p in Path(__file__).parent.glob("*.py") if not p.name.startswith("synth")),
                   key=lambda p: p.name)  # the world, not this driver (synth*.py)
    files.append(Path(perception.__file__).with_name("geometry.py"))
    h = hashlib.sha256()
    for f in files:
        data = f.read_bytes()
        h.update(f"{f.parent.name}/{f.name}:{len(data)}:".encode())
        h.update(data)
    return h.hexdigest()[:16]


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
    first_scene: int = 0  # index of the first scene: worlds of one seed with disjoint scenes (a seed set and a pool)
    # Scene quotas per condition ("night": 4, ...) or rare class ("trailer": 40, drawn by the scene's
    # spec): the first scenes from first_scene on that fill a quota are rendered (``scenes`` must be
    # the quotas' sum), all in the val split. A condition-balanced or rare-enriched val set, since the
    # world draws night, fog and the rare classes rarely.
    quotas: dict[str, int] | None = None

    def validate(self) -> None:
        problems = []
        if self.first_scene < 0:
            problems.append(f"--first-scene must be >= 0, got {self.first_scene}")
        if self.quotas is not None:
            from perception.schema import CONDITIONS, RARE_CLASSES

            bad = sorted(set(self.quotas) - set(CONDITIONS) - set(RARE_CLASSES))
            if bad:
                problems.append(f"--quotas: unknown keys {bad}; expected conditions ({', '.join(CONDITIONS)}) "
                                f"or rare classes ({', '.join(RARE_CLASSES)})")
            if any(v < 1 for v in self.quotas.values()) or sum(self.quotas.values()) != self.scenes:
                problems.append(f"--quotas {self.quotas}: each >= 1, summing to --scenes {self.scenes}")
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
        for key, default in (("first_scene", 0), ("quotas", None)):  # recipes written before these keys stay valid
            if d[key] == default:
                d.pop(key)
        d["format"] = SYNTH_FORMAT
        d["world"] = world_digest()
        return d

    def scene_indices(self) -> list[int]:
        """The world's scene indices this config renders, in order (see ``quotas``).

        With quotas, a scene is described by its condition words, then "construction_vehicle" if its
        spec draws a work zone (``SceneSpec.construction``) and "trailer" if it draws trailers
        (``SceneSpec.trailers``); it fills the quota of its first word that still needs scenes, so
        it counts once. Quotas of rare classes, e.g. {"construction_vehicle": 40, "trailer": 40},
        give a rare-enriched test split.
        """
        if self.quotas is None:
            return list(range(self.first_scene, self.first_scene + self.scenes))
        from perception.schema import parse_conditions

        from .world import scene_spec

        need, picked, i = dict(self.quotas), [], self.first_scene
        while any(need.values()):
            if i - self.first_scene > 100_000:
                raise SynthError(f"--quotas {self.quotas}: the world did not draw enough such scenes")
            spec = scene_spec(self.seed, i, self.frames)
            words = parse_conditions(spec.conditions.description())
            words += ("construction_vehicle",) * spec.construction + ("trailer",) * spec.trailers
            hit = next((w for w in words if need.get(w, 0) > 0), None)
            if hit is not None:
                need[hit] -= 1
                picked.append(i)
            i += 1
        return picked


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


def _exit_with(pid: int) -> None:
    """Exit this process as soon as process ``pid`` exits.

    Pool workers are children of the forkserver, not of the run, so a killed run would otherwise
    leave them rendering queued scenes and then waiting on their queue forever (with the forkserver
    and the resource tracker, which live as long as they do). A daemon thread waits on a pidfd of
    the run (polls it on systems without pidfds) and ends the worker the moment the run is gone.
    """
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        os._exit(1)
    except (AttributeError, OSError):
        fd = -1

    def watch() -> None:
        if fd >= 0:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            while not poller.poll():
                pass
        else:
            while process_alive(pid):
                time.sleep(0.2)
        os._exit(1)

    threading.Thread(target=watch, name="synth-exit-with-run", daemon=True).start()


def _init_worker(counter: Any, run_pid: int) -> None:
    global _progress
    _progress = counter
    _exit_with(run_pid)
    import cv2

    cv2.setNumThreads(1)


def _tick() -> None:
    if _progress is not None:
        with _progress.get_lock():
            _progress.value += 1


def _render_scene(cfg: SynthConfig, index: int) -> str:
    """Worker: render one scene and write its record file; returns the scene name."""
    from .nuscenes_writer import _write_bytes, scene_records
    from .rig import nuscenes_like_rig
    from .world import SceneWorld, scene_spec

    spec = scene_spec(cfg.seed, index, cfg.frames)
    world = SceneWorld(spec, nuscenes_like_rig(cfg.width, cfg.height))
    rows = scene_records(world, cfg.out, cfg.frames, labeled=not cfg.unlabeled, sweeps=cfg.sweeps, on_frame=_tick)
    _write_bytes(scene_file(cfg.out, index), json.dumps(rows).encode())
    return spec.name


def synthesize(cfg: SynthConfig, progress: bool = True) -> SynthSummary:
    """Render the dataset described by ``cfg`` (resuming an interrupted run) and write its tables.

    The output directory is locked for the whole run: a second run on it raises ``OutputLocked``.
    """
    from tqdm import tqdm

    cfg.validate()
    start = time.perf_counter()
    with output_lock(cfg.out):
        todo = prepare_output(cfg)
        ctx = mp.get_context("forkserver")
        counter = ctx.Value("i", 0)
        bar = tqdm(total=len(todo) * cfg.frames, unit="frame", desc="synth", disable=not progress,
                   mininterval=0.5, dynamic_ncols=True)
        try:
            if todo and cfg.workers == 1:
                _render_in_process(cfg, todo, counter, bar)
            elif todo:
                with ProcessPoolExecutor(max_workers=cfg.workers, mp_context=ctx, initializer=_init_worker,
                                         initargs=(counter, os.getpid())) as pool:
                    pending = {pool.submit(_render_scene, cfg, i) for i in todo}
                    try:
                        while pending:
                            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
                            for fut in done:
                                fut.result()  # re-raise a worker's error here
                            bar.n = counter.value
                            bar.refresh()
                    except BaseException:
                        pool.shutdown(wait=False, cancel_futures=True)  # do not render the queued scenes
                        raise
        finally:
            bar.close()
        summary = assemble(cfg)
    summary.rendered_scenes = len(todo)
    summary.seconds = time.perf_counter() - start
    return summary


def _render_in_process(cfg: SynthConfig, todo: list[int], counter: Any, bar: Any) -> None:
    """Render scenes in this process, with OpenCV on one thread as in a worker, restored afterwards."""
    global _progress
    import cv2

    threads = cv2.getNumThreads()
    _progress = counter
    cv2.setNumThreads(1)
    try:
        for i in todo:
            _render_scene(cfg, i)
            bar.n = counter.value
            bar.refresh()
    finally:
        _progress = None
        cv2.setNumThreads(threads)


def assemble(cfg: SynthConfig) -> SynthSummary:
    """Merge the scenes' records into the 13 tables and splits.json, written atomically."""
    from .nuscenes_writer import _write_bytes, static_records

    root = cfg.out
    tables: dict[str, list[dict[str, Any]]] = {name: [] for name in TABLES}
    for name, rows in static_records(cfg.seed).items():
        tables[name] = rows
    names = []
    for i in cfg.scene_indices():
        rows = json.loads(scene_file(root, i).read_text())
        for name, part in rows.items():
            tables[name] += part
        names += [s["name"] for s in rows["scene"]]
    table_dir = root / VERSION
    table_dir.mkdir(exist_ok=True)
    for name in TABLES:
        _write_bytes(table_dir / f"{name}.json", json.dumps(tables[name], indent=0).encode())
    splits = split_scenes(names) if cfg.quotas is None else {TRAIN_SPLIT: [], VAL_SPLIT: names}
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
