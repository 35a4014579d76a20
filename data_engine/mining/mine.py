"""`data-engine mine`: run an exported model over the catalog's frames, score them, select a budget.

The model runs as shadow mode runs it in the car: scene by scene, frames in time order, the video
state carried from frame to frame (so temporal triggers such as flicker see what the car would see).
Scenes are the unit of work everywhere: a worker scores whole scenes (``batch`` scenes side by side,
one batched forward per step), and the driver writes each scene's results in one catalog transaction.
A killed run is resumed by running the same command again: written scenes are skipped, an unfinished
scene is scored again from its first frame, and a frame already holding a result in the run is never
written twice. The driver is the only writer of the catalog, with either engine:

- ``local``: ``workers`` processes (0 or 1: in this process), each with its own onnxruntime session;
- ``ray``: Ray Data, one onnxruntime actor per worker, one block per scene.

Memory stays flat: only the scenes in flight are held, and results leave for the catalog per scene.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from perception.digest import file_sha256
from perception.schema import DETECTION_CLASSES

from ..catalog import Catalog, CatalogError, FrameResult, FrameRow
from .scoring import MineError, SceneJob, SceneScorer, group_scenes, init_worker, score_in_worker
from .selection import SelectionConfig, select
from .strategies import (
    RunContext,
    RunStrategy,
    Strategy,
    StrategyError,
    load_plugins,
    make_strategy,
    plugin_file,
    strategy_failure,
)

__all__ = ["MineConfig", "MineError", "MineSummary", "SceneJob", "file_sha256", "mine", "run_context", "score_scenes"]

_T = TypeVar("_T")

ENGINES = ("local", "ray")
_DETECTION = frozenset(DETECTION_CLASSES)


@dataclass
class MineConfig:
    model: Path  # the exported .onnx
    catalog: Path
    strategies: list[str]  # specs, e.g. ["det_entropy", "rare:trailer@0.3"]
    budget: int  # frames to select
    run: str | None = None  # run name; default derived from the model and strategies (so a re-run resumes)
    engine: str = "local"
    workers: int = 1
    threads: int | None = None  # onnxruntime threads per worker (default: cores / workers)
    batch: int = 1  # scenes scored side by side per worker
    plugins: list[Path] = field(default_factory=list)  # user strategy files
    score_threshold: float = 0.1  # boxes kept in the catalog (for the queue and the triggers)
    max_boxes: int = 100  # per frame, stored
    reference_frames: int = 500  # labeled frames embedded (whole scenes, evenly spread) for diversity and novelty
    selection: SelectionConfig = field(default_factory=SelectionConfig)
    progress: bool = True


@dataclass
class MineSummary:
    run: str
    resumed: bool
    scenes: int  # scored by this invocation
    scenes_skipped: int  # already done by an earlier invocation
    frames_scored: int
    frames_failed: int
    failures: list[tuple[str, str]]  # (sample token, reason), first ones
    selected: int
    picks: list[dict[str, Any]]  # the first picks: frame, score, reasons


def _finished(cat: Catalog, name: str, sha: str, cfg: MineConfig) -> MineSummary | None:
    """The summary of run ``name`` when it already selected its frames with this model, these
    strategies and this budget (running the same command again, after a kill that came just after the
    selection, changes nothing); None otherwise (a new run, one to resume, or a clash start_run names)."""
    try:
        info = cat.run_info(name)
    except CatalogError:
        return None
    if (info["status"] != "selected" or info["model_sha256"] != sha or info["strategies"] != list(cfg.strategies)
            or info["budget"] != cfg.budget):
        return None
    counts = dict(cat.conn.execute("SELECT status, COUNT(*) FROM frame_results WHERE run_id = ? GROUP BY status",
                                   (info["id"],)).fetchall())
    picks = cat.selections(name)
    first = [{"frame": p.frame.sample_token, "score": round(p.score, 4), "reasons": p.reasons} for p in picks[:5]]
    return MineSummary(name, True, 0, len(cat.done_scenes(info["id"])), int(counts.get("scored", 0)),
                       int(counts.get("failed", 0)), [], len(picks), first)


def score_scenes(jobs: Sequence[SceneJob], scorer_kwargs: dict[str, Any], workers: int, batch: int,
                 engine: str = "local") -> Iterator[tuple[SceneJob, list[FrameResult]]]:
    """Score scenes with the chosen engine; yields each scene's results as it finishes."""
    if engine == "ray":
        from .ray_engine import score_scenes_ray

        yield from score_scenes_ray(jobs, scorer_kwargs, workers)
        return
    groups = group_scenes(jobs, batch)
    if workers <= 1:
        scorer = SceneScorer(**scorer_kwargs)
        for group in groups:
            yield from scorer.score_scenes(group)
        return
    ctx = mp.get_context("spawn")  # a fresh interpreter per worker: no inherited sessions or threads
    with ctx.Pool(workers, initializer=init_worker, initargs=(scorer_kwargs,)) as pool:
        for done in pool.imap_unordered(score_in_worker, groups):
            yield from done


# -- the run ---------------------------------------------------------------------------------------------
def default_run_name(model_sha: str, strategies: Sequence[str], budget: int) -> str:
    key = hashlib.sha256(json.dumps([list(strategies), budget]).encode()).hexdigest()[:6]
    return f"mine-{model_sha[:8]}-{key}"


def make_strategies(specs: Sequence[str], plugins: Sequence[str | Path] = ()) -> list[Strategy]:
    """The strategies of one run, after loading the plugin files that register more: all rank the
    unlabeled pool or all rank labeled frames (label QA). :class:`StrategyError` names what is wrong."""
    load_plugins(plugins)
    strategies = [make_strategy(s) for s in specs]
    if len({s.target for s in strategies}) > 1:
        qa = [s.name for s in strategies if s.target == "labeled"]
        raise StrategyError(f"{', '.join(qa)} rank labeled frames (label QA) and the others rank unlabeled ones; "
                            "mine them in separate runs")
    return strategies


def _check(cfg: MineConfig) -> list[Strategy]:
    if not cfg.model.is_file():
        raise MineError(f"{cfg.model}: model file missing (export one with `perception export`)")
    if cfg.engine not in ENGINES:
        raise MineError(f"--engine {cfg.engine!r}: expected one of {', '.join(ENGINES)}")
    if cfg.budget < 1:
        raise MineError(f"--budget must be >= 1, got {cfg.budget}")
    if cfg.workers < 0 or cfg.batch < 1:
        raise MineError(f"--workers must be >= 0 and --batch >= 1, got {cfg.workers} and {cfg.batch}")
    if not cfg.strategies:
        raise MineError("name at least one strategy with --strategy")
    strategies = make_strategies(cfg.strategies, cfg.plugins)
    unknown = set(cfg.selection.weights) - {s.name for s in strategies}
    if unknown:
        raise MineError(f"--weights names {sorted(unknown)}, which are not among the strategies {cfg.strategies}")
    try:  # open the model here: a worker that cannot would fail far from the user
        from export.runtime import EdgeModel

        classes = EdgeModel(cfg.model, threads=1).metadata.class_names
    except Exception as exc:  # noqa: BLE001 - onnxruntime and the metadata check raise many kinds
        raise MineError(f"{cfg.model}: not a usable exported model ({type(exc).__name__}: {exc})") from None
    for s in strategies:
        cls = getattr(s, "cls", None)
        if cls is not None and cls not in classes:
            raise MineError(f"{s.name}: the model {cfg.model} has no class {cls!r} (classes: {', '.join(classes)})")
    return strategies


def _reference_scenes(scenes: list[tuple[int, str, list[FrameRow]]], limit: int) -> list[tuple[int, str, list[FrameRow]]]:
    """Whole scenes, evenly spread over the list, holding about ``limit`` frames (at least one scene)."""
    total = sum(len(f) for _, _, f in scenes)
    if total <= limit or not scenes:
        return scenes
    n = max(1, int(limit // (total / len(scenes))))
    return [scenes[i] for i in sorted({round(float(x)) for x in np.linspace(0, len(scenes) - 1, n)})]


def run_context(cat: Catalog, run_id: int, strategies: Sequence[Strategy], budget: int) -> RunContext:
    """What the strategies may know of run ``run_id`` before ranking: the budget and the run's scored
    labeled frames, with their scores and (when a strategy needs_reference_labels) their labeled classes."""
    ids, emb = cat.run_embeddings(run_id, ["labeled"])
    raw = cat.run_scores(run_id)
    scores = {name: np.array([by_frame.get(int(i), np.nan) for i in ids]) for name, by_frame in raw.items()}
    classes: tuple[frozenset[str], ...] = ()
    wanting = [s.name for s in strategies if s.needs_reference_labels]
    if wanting:
        classes = tuple(c & _DETECTION for c in cat.labeled_classes(ids))
        if not any(classes):
            raise StrategyError(f"{', '.join(wanting)}: no labeled frame of the run holds labels "
                                f"({len(ids)} labeled frames embedded); index a labeled dataset first")
    return RunContext(budget, emb, classes, scores)


def _guarded(s: Strategy, where: str, fn: Callable[..., _T], *args: Any) -> _T:
    """``fn(*args)``, a strategy's code: a plugin's error becomes a :class:`StrategyError` naming its file."""
    try:
        return fn(*args)
    except StrategyError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's code may raise anything
        if plugin_file(s) is None:
            raise  # a built-in strategy's bug keeps its traceback
        raise strategy_failure(s, where, exc) from None


def _mark_failed(cat: Catalog, run_id: int) -> None:
    """Mark a run that ended early as failed (it stays resumable); on the way out of an error, so a
    failure to write the mark (the disk that is full) must not replace the error being raised."""
    try:
        cat.set_run_status(run_id, "failed")
    except Exception:  # noqa: BLE001, S110 - the original error is the one to report
        pass


def mine(cfg: MineConfig, log: Callable[[str], None] = print) -> MineSummary:
    """Score the catalog's frames with ``cfg.strategies`` and select ``cfg.budget`` of them (resumable)."""
    try:
        strategies = _check(cfg)
    except StrategyError as exc:
        raise MineError(str(exc)) from None
    target = strategies[0].target
    reference = target == "unlabeled" and (any(s.needs_reference for s in strategies) or cfg.selection.diversity > 0)
    sha = file_sha256(cfg.model)
    name = cfg.run or default_run_name(sha, cfg.strategies, cfg.budget)
    with Catalog.open(cfg.catalog, create=False) as cat:
        # Whole scenes, in time order, whatever the state of each frame: the video state and the temporal
        # triggers need every frame. Scenes holding target frames, and (for diversity and novelty) some
        # scenes of labeled frames as the reference.
        scenes = cat.scene_frames([target], whole_scenes=True)
        if not scenes:
            raise MineError(f"{cfg.catalog}: no {target} frames to mine")
        if reference:
            have = {(d, t) for d, t, _ in scenes}
            labeled = [x for x in cat.scene_frames(["labeled"], whole_scenes=True) if (x[0], x[1]) not in have]
            scenes += _reference_scenes(labeled, cfg.reference_frames)
        settings = {"target": target, "reference": reference, "batch": cfg.batch, "score_threshold": cfg.score_threshold,
                    "selection": asdict(cfg.selection), "plugins": [str(p) for p in cfg.plugins]}
        finished = _finished(cat, name, sha, cfg)
        if finished is not None:
            log(f"mining run {name} is finished: its {finished.selected} picks stand (name a new run to mine again)")
            return finished
        run_id, resumed = cat.start_run(name, str(cfg.model.resolve()), sha, cfg.strategies, cfg.budget, cfg.engine,
                                        settings)
        try:  # whatever ends the run early (a strategy, a worker, a full disk), it is not left running
            labels_root = cat.latest_version_root()
            labeled_ds = {int(i) for (i,) in cat.conn.execute("SELECT id FROM datasets WHERE labeled = 1")}
            done = cat.done_scenes(run_id)
            todo = [SceneJob(d, tok, tuple(frames), labels_root, d in labeled_ds)
                    for d, tok, frames in scenes if (d, tok) not in done]
            log(f"mining run {name} ({'resumed' if resumed else 'new'}): {len(todo)} scenes to score, "
                f"{len(scenes) - len(todo)} already scored; engine {cfg.engine}, {cfg.workers} worker(s)")
            threads = cfg.threads or max(1, (os.cpu_count() or 1) // max(1, cfg.workers))
            scorer_kwargs = {"model": str(cfg.model.resolve()), "strategies": list(cfg.strategies),
                             "plugins": [str(p) for p in cfg.plugins], "threads": threads,
                             "score_threshold": cfg.score_threshold, "max_boxes": cfg.max_boxes}
            scored = failed = 0
            failures: list[tuple[str, str]] = []
            from tqdm import tqdm

            total = sum(len(j.frames) for j in todo)
            tokens = {f.id: f.sample_token for j in todo for f in j.frames}
            with tqdm(total=total, unit="frame", desc="scoring", disable=not cfg.progress) as bar:
                for job, results in score_scenes(todo, scorer_kwargs, cfg.workers, cfg.batch, cfg.engine):
                    cat.write_scene(run_id, job.dataset_id, job.scene_token, results)
                    for r in results:
                        if r.status == "failed":
                            failed += 1
                            if len(failures) < 20:
                                failures.append((tokens.get(r.frame_id, str(r.frame_id)), r.reason or ""))
                        else:
                            scored += 1
                    bar.update(len(results))
            context = run_context(cat, run_id, strategies, cfg.budget)
            for s in strategies:  # calibrations on the labeled frames, before any ranking
                _guarded(s, "preparing the run", s.prepare, context)
            if any(isinstance(s, RunStrategy) for s in strategies):
                ids, emb = cat.run_embeddings(run_id, [target])
                for s in strategies:
                    if isinstance(s, RunStrategy):
                        values = _guarded(s, "scoring the run", s.score_run, emb, context.reference_embeddings)
                        cat.add_scores(run_id, s.name, {int(f): v for f, v in zip(ids, values)})
            picks = select(cat, run_id, strategies, cfg.budget, target, cfg.selection)
            cat.write_selection(run_id, [(p.frame_id, p.score, p.reasons) for p in picks], queue=target == "unlabeled")
        except BaseException as exc:
            _mark_failed(cat, run_id)
            if isinstance(exc, StrategyError):
                raise MineError(str(exc)) from None
            raise
        first = [{"frame": p.token, "score": round(p.score, 4), "reasons": p.reasons} for p in picks[:5]]
        all_failed = cat.conn.execute("SELECT COUNT(*) FROM frame_results WHERE run_id = ? AND status = 'failed'",
                                      (run_id,)).fetchone()[0]
        all_scored = cat.conn.execute("SELECT COUNT(*) FROM frame_results WHERE run_id = ? AND status = 'scored'",
                                      (run_id,)).fetchone()[0]
    return MineSummary(name, resumed, len(todo), len(scenes) - len(todo), int(all_scored), int(all_failed),
                       failures, len(picks), first)

