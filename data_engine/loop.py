"""`data-engine loop`: the closed loop, measured. Rounds of train -> export -> mine -> queue -> label
(the world's oracle) -> ingest -> retrain, one arm per selection strategy and one for random
selection at the same budget, from the same seed labeled set and the same unlabeled pool.

Every round retrains from the same initialization (the run's seed) for the same number of steps on
the arm's newest dataset version, and is evaluated on the same val set (the seed dataset's val split
or a separate ``val_data``, never part of the pool). Round 0 (the seed set) is trained once and
shared by the arms. Each round's metrics are recorded in the arm's catalog (``loop_rounds``) and in
``loop_report.json`` / ``loop_report.md`` with learning curves (metric against labeled frames) in
``learning_curves.png``. In the heads-only mode (``mode: heads``, :mod:`data_engine.loop_heads`) a trained
``model`` stays frozen and each round retrains light heads on its cached BEV features, mining on their
outputs, instead of a training and an export per round. The loop resumes round by round: every step leaves a file or a catalog row,
and a step whose output exists is not done again.

    out/
      loop.yaml                          the configuration as run
      seed<S>/round0/train/last.pt       the shared seed-set model, eval.json
      seed<S>/<arm>/catalog.db           the arm's catalog (the seed set, the pool, runs, versions)
      seed<S>/<arm>/versions/round<r>/   the dataset version the round-r model trains on
      seed<S>/<arm>/round<r>/            train/, eval.json, export/, queue/, labels.json
      loop_report.json, loop_report.md, learning_curves.png
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .catalog import Catalog, CatalogError
from .loop_report import format_report, plot_curves, summarize
from perception.errors import BevStackError
from perception.typed_config import ConfigError, build_dataclass, parse_override, read_yaml_mapping
from perception.metrics.report import EvalReport
from perception.schema import RARE_CLASSES, RARE_CONDITIONS

__all__ = ["Arm", "LoopConfig", "LoopError", "evaluate_round", "load_loop_config", "run_loop", "train_round"]



class LoopError(BevStackError):
    """A loop configuration or state that cannot be used; the message names the key or file."""


@dataclass
class Arm:
    name: str  # a directory name
    strategies: list[str]  # `data-engine mine --strategy` specs; ["random"] for the baseline


@dataclass
class LoopConfig:
    seed_data: str  # labeled nuScenes-format dataset: its train split seeds the loop
    pool: str  # unlabeled pool (a dataset written by `data-engine synth`, so the oracle can label it)
    out: str = "runs/loop"
    val_data: str | None = None  # the labeled val set; default: seed_data's val split
    val_split: str | None = None  # its split (default: the dataset's val split)
    train_config: str = "configs/tiny_cpu.yaml"  # `perception train` config every round trains with
    train_overrides: list[str] = field(default_factory=list)  # key=value overrides of it
    steps: int = 300  # optimizer steps per round, from the same initialization
    rounds: int = 3  # mining rounds (so rounds + 1 models per arm)
    budget: int = 20  # frames labeled per round
    arms: list[Arm] = field(default_factory=lambda: [Arm("uncertainty", ["det_entropy"]), Arm("random", ["random"])])
    seeds: list[int] = field(default_factory=lambda: [0])
    precision: str = "fp32"  # the exported model mining runs
    engine: str = "local"
    workers: int = 1
    diversity: float = 0.3
    min_gap: float = 2.0
    device: str = "auto"
    plugins: list[str] = field(default_factory=list)  # user strategy files for the arms (`data-engine mine --plugin`)
    # "full": every round trains train_config for `steps`, exports and mines the ONNX model; "heads": `model`
    # stays frozen and every round retrains light heads on its cached BEV features (data_engine.loop_heads)
    mode: str = "full"
    model: str | None = None  # heads mode: the trained checkpoint whose features are cached
    head_epochs: int = 40  # heads mode: passes over the labeled frames per round
    head_min_steps: int = 100  # heads mode: at least this many optimizer steps per round

    def validate(self) -> None:
        """Check everything that can be checked before any work: the paths, the rounds, and what mining
        will need (:meth:`validate_mining`)."""
        for key in ("seed_data", "pool"):
            if not Path(getattr(self, key)).is_dir():
                raise LoopError(f"{key}: {getattr(self, key)} is not a dataset directory")
        if self.val_data is not None and not Path(self.val_data).is_dir():
            raise LoopError(f"val_data: {self.val_data} is not a dataset directory")
        if not Path(self.train_config).is_file():
            raise LoopError(f"train_config: {self.train_config} is missing")
        for key in ("rounds", "budget", "steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoopError(f"{key}: expected an integer >= 1, got {value!r}")
        names = [a.name for a in self.arms]
        if not names or len(set(names)) != len(names) or not all(n.replace("_", "").replace("-", "").isalnum()
                                                                  for n in names):
            raise LoopError(f"arms: need unique names of letters, digits, '-' and '_', got {names}")
        pool = Path(self.pool).resolve()
        for key in ("seed_data", "val_data"):
            value = getattr(self, key)
            if value is not None and Path(value).resolve() == pool:
                raise LoopError(f"{key}: {value} is the pool; the val and seed sets must never be in the pool")
        if self.mode not in ("full", "heads"):
            raise LoopError(f"mode: full or heads, got {self.mode!r}")
        if self.mode == "heads" and (self.model is None or not Path(self.model).is_file()):
            raise LoopError(f"model: heads mode needs the trained checkpoint whose features it caches, got {self.model!r}")
        for key in ("head_epochs", "head_min_steps"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise LoopError(f"{key}: expected an integer >= 1, got {value!r}")
        if self.precision not in ("fp32", "int8"):
            raise LoopError(f"precision: fp32 or int8, got {self.precision!r}")
        self.validate_mining()

    def validate_mining(self) -> None:
        """The arms' strategies (loading the plugins), the engine and the selection settings, so that a
        mistake stops the loop before round 0 trains rather than after."""
        from .mining.mine import ENGINES, make_strategies
        from .mining.selection import SelectionConfig
        from .mining.strategies import StrategyError, load_plugins

        if self.engine not in ENGINES:
            raise LoopError(f"engine: expected one of {', '.join(ENGINES)}, got {self.engine!r}")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise LoopError(f"workers: expected an integer >= 0, got {self.workers!r}")
        if not self.seeds or not all(isinstance(x, int) and not isinstance(x, bool) for x in self.seeds):
            raise LoopError(f"seeds: expected a non-empty list of integers, got {self.seeds!r}")
        try:
            SelectionConfig(diversity=self.diversity, min_gap=self.min_gap)
        except (TypeError, ValueError) as exc:
            raise LoopError(f"diversity / min_gap: {exc}") from None
        try:
            load_plugins(self.plugins)
        except StrategyError as exc:
            raise LoopError(f"plugins: {exc}") from None
        for arm in self.arms:
            if not arm.strategies:
                raise LoopError(f"arms: {arm.name}: name at least one strategy")
            try:
                strategies = make_strategies(arm.strategies)
            except StrategyError as exc:
                raise LoopError(f"arms: {arm.name}: {exc}") from None
            if strategies[0].target != "unlabeled":
                raise LoopError(f"arms: {arm.name}: {', '.join(arm.strategies)} ranks labeled frames (label QA); a "
                                "loop arm picks frames of the unlabeled pool")


def load_loop_config(path: str | Path, overrides: Sequence[str] = (), check_paths: bool = True) -> LoopConfig:
    """Read a loop YAML (keys of :class:`LoopConfig`; arms as a list of {name, strategies}) with
    ``key=value`` ``overrides``, each value checked against its field's type by the loader of
    experiment configs (:mod:`perception.typed_config`); with ``check_paths`` the datasets and the
    training config must exist (:meth:`LoopConfig.validate`)."""
    sources: dict[str, str] = {}
    texts: dict[str, str] = {}
    try:
        raw = read_yaml_mapping(path, "a loop config is a mapping of the keys of LoopConfig")
        sources.update({str(k): str(path) for k in raw})
        for item in overrides:
            key, value, text = parse_override(item)
            raw[key], sources[key], texts[key] = value, f"override {item!r}", text
        if isinstance(raw.get("plugins"), str):  # one plugin file
            raw["plugins"] = [raw["plugins"]]
        for arm in raw.get("arms") or []:  # strategies as "a,b"
            if isinstance(arm, dict) and isinstance(arm.get("strategies"), str):
                arm["strategies"] = [s.strip() for s in arm["strategies"].split(",") if s.strip()]
        cfg = build_dataclass(LoopConfig, raw, "", texts, sources)
    except ConfigError as exc:
        message = str(exc)
        raise LoopError(message if str(path) in message else f"{path}: {message}") from None
    if check_paths:
        cfg.validate()
    return cfg


# -- the steps of a round -----------------------------------------------------------------------------------
def train_round(cfg: LoopConfig, data: Path, out_dir: Path, seed: int, log: Callable[[str], None]) -> Path:
    """Train the round's model (skipped when its final checkpoint exists); returns last.pt."""
    ckpt = out_dir / "train" / "last.pt"
    done = out_dir / "train" / "done"
    if done.is_file() and ckpt.is_file():
        return ckpt
    from perception.config import load_config
    from perception.training.trainer import train

    overrides = [*cfg.train_overrides, f"train.data={data}", f"train.out_root={out_dir}", "train.name=train",
                 f"train.steps={cfg.steps}", f"train.seed={seed}", "train.val_split=null", "train.vis_every=0",
                 f"train.ckpt_every={cfg.steps}", f"train.device={cfg.device}"]
    exp = load_config(cfg.train_config, overrides)
    log(f"train {cfg.steps} steps on {data} -> {out_dir / 'train'}")
    train(exp, resume=(out_dir / "train" / "last.pt").is_file())
    done.write_text(time.strftime("%Y-%m-%d %H:%M:%S\n"))
    return ckpt


def evaluate_round(cfg: LoopConfig, ckpt: Path, out_dir: Path, log: Callable[[str], None]) -> dict[str, Any]:
    path = out_dir / "eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    from perception.evaluate import evaluate

    val = cfg.val_data or cfg.seed_data
    report = evaluate(ckpt, val, cfg.val_split, out=out_dir / "eval", device=None if cfg.device == "auto" else cfg.device,
                      print_fn=None)
    metrics = headline(report)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(metrics, indent=2) + "\n")
    tmp.replace(path)
    log("eval: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)))
    return metrics


def headline(report: EvalReport) -> dict[str, Any]:
    """The loop's metrics from an evaluation report (None where the val set cannot measure one)."""

    def value(x: float | None) -> float | None:
        return None if x is None else float(x)

    out: dict[str, Any] = {"mAP": report.detection.mAP, "NDS": report.detection.NDS,
                           "vehicle_iou": value(report.bev_iou.get("vehicle")),
                           "drivable_iou": value(report.bev_iou.get("drivable_area")), "samples": report.samples}
    for c in RARE_CLASSES:
        scores = report.rare.get(c)
        out[f"ap_{c}"] = None if scores is None else scores.AP
    for cond in RARE_CONDITIONS:
        entry = report.conditions.get(cond)
        seen = entry is not None and entry.detection is not None
        out[f"mAP_{cond}"] = entry.detection.mAP if seen else None
        out[f"vehicle_iou_{cond}"] = value(entry.bev_iou.get("vehicle")) if seen else None
        out[f"samples_{cond}"] = entry.samples if entry is not None else 0
    return out


def _export(cfg: LoopConfig, ckpt: Path, data: Path, out_dir: Path, log: Callable[[str], None]) -> Path:
    model = out_dir / "export" / f"model.{cfg.precision}.onnx"
    if model.is_file():
        return model
    from export.exporter import export_checkpoint

    log(f"export {cfg.precision} -> {model}")
    export_checkpoint(ckpt, out_dir / "export", [cfg.precision], calib_data=data if cfg.precision == "int8" else None,
                      calib_frames=16, evaluate=False, log=lambda _: None)
    return model


def _catalog(cfg: LoopConfig, arm_dir: Path) -> Path:
    db = arm_dir / "catalog.db"
    with Catalog.open(db) as cat:
        cat.index_dataset(cfg.seed_data)
        cat.index_dataset(cfg.pool, unlabeled=True)
    return db


def _labeled_train_frames(data: Path) -> int:
    from perception.data.nuscenes import load_dataset

    reader = load_dataset(data)
    if reader.train_split is None:
        return len(reader.samples)
    return sum(len(sc.sample_tokens) for sc in reader.scenes_of_split(reader.train_split))


def _arm_strategies(arm: Arm, seed: int) -> list[str]:
    """The arm's strategy specs for ``seed`` (a bare ``random`` draws with the seed)."""
    return [s if not s.startswith("random") or ":" in s else f"random:{seed + 1}" for s in arm.strategies]


def _selected(db: Path, run: str) -> bool:
    """Whether mining run ``run`` of the catalog has selected its frames (so the round's mining is done)."""
    with Catalog.open(db) as cat:
        try:
            return cat.run_info(run)["status"] == "selected"
        except CatalogError:
            return False


def _mine(cfg: LoopConfig, arm: Arm, db: Path, model: Path, rnd: int, seed: int, log: Callable[[str], None]) -> None:
    """Mine the round's picks (mining run ``round<rnd>``) with the exported model."""
    from .mining.mine import MineConfig, mine
    from .mining.selection import SelectionConfig

    run = f"round{rnd}"
    strategies = _arm_strategies(arm, seed)
    log(f"mine {','.join(strategies)} budget {cfg.budget}")
    mine(MineConfig(model=model, catalog=db, strategies=strategies, budget=cfg.budget, run=run, engine=cfg.engine,
                    workers=cfg.workers, selection=SelectionConfig(diversity=cfg.diversity, min_gap=cfg.min_gap),
                    plugins=[Path(x) for x in cfg.plugins], progress=False), log=lambda _: None)


def _label_ingest(arm: Arm, db: Path, rnd: int, out_dir: Path, log: Callable[[str], None]) -> Path:
    """Queue the round's picks, label them with the oracle and ingest a new version (each step once)."""
    from .labels.autolabel import label_frames
    from .labels.queue import write_queue
    from .labels.ingest import ingest

    version, run = f"round{rnd + 1}", f"round{rnd}"
    with Catalog.open(db) as cat:
        existing = cat.dataset_version(version)
    if existing is not None:
        return Path(existing["root"])
    queue = out_dir / "queue"
    if not queue.is_dir():
        write_queue(db, run, queue)
    labels = out_dir / "labels.json"
    if not labels.is_file():
        try:
            with Catalog.open(db, create=False) as cat:
                label_frames(cat, labels, oracle="sim", state="queued", run=run)
        except BevStackError as exc:
            raise LoopError(f"labeling round {rnd} of {arm.name}: {exc}") from None
    log(f"ingest {labels.name} -> version {version}")
    with Catalog.open(db) as cat:
        summary = ingest(cat, labels, name=version)
    if summary.root is None:
        raise LoopError(f"round {rnd} of {arm.name}: the labels made no dataset version")
    return Path(summary.root)


def _record(db: Path, loop: str, arm: str, seed: int, rnd: int, frames: int, version: str, metrics: dict[str, Any]) -> None:
    with Catalog.open(db) as cat:
        cat.record_loop_round(loop, arm, seed, rnd, frames, version, metrics)


def run_loop(cfg: LoopConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run (or resume) the loop; returns the report also written to loop_report.json."""
    cfg.validate()
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "loop.yaml").write_text(_yaml(cfg))
    heads = None
    if cfg.mode == "heads":
        from .loop_heads import HeadsLoop

        heads = HeadsLoop(cfg, out, log)
    rows: list[dict[str, Any]] = []
    t0 = time.perf_counter()
    for seed in cfg.seeds:
        base = out / f"seed{seed}"
        r0 = base / "round0"
        r0.mkdir(parents=True, exist_ok=True)
        log(f"[seed {seed}] round 0: the seed set")

        def train(data: Path, out_dir: Path) -> Path:  # the round's model: a checkpoint, or heads
            return heads.train(data, out_dir, seed) if heads else train_round(cfg, data, out_dir, seed, log)

        def evaluate(model: Path, out_dir: Path) -> dict[str, Any]:
            return heads.evaluate(model, out_dir) if heads else evaluate_round(cfg, model, out_dir, log)

        ckpt0 = train(Path(cfg.seed_data), r0)
        metrics0 = evaluate(ckpt0, r0)
        frames0 = _labeled_train_frames(Path(cfg.seed_data))
        model0: Path | None = None
        for arm in cfg.arms:
            arm_dir = base / arm.name
            arm_dir.mkdir(parents=True, exist_ok=True)
            db = _catalog(cfg, arm_dir)
            _record(db, out.name, arm.name, seed, 0, frames0, "seed", metrics0)
            rows.append({"seed": seed, "arm": arm.name, "round": 0, "labeled_frames": frames0, **metrics0})
            ckpt, data = ckpt0, Path(cfg.seed_data)
            for rnd in range(cfg.rounds):
                rdir = arm_dir / f"round{rnd}"
                rdir.mkdir(parents=True, exist_ok=True)
                log(f"[seed {seed}] {arm.name} round {rnd + 1}/{cfg.rounds}")
                if not _selected(db, f"round{rnd}"):  # else mined before a restart
                    if heads:
                        heads.mine(_arm_strategies(arm, seed), db, ckpt, data, f"round{rnd}")
                    else:  # the round-0 model is exported once for every arm
                        if rnd == 0:
                            model0 = model0 or _export(cfg, ckpt0, data, r0, log)
                        model = model0 if rnd == 0 else _export(cfg, ckpt, data, rdir, log)
                        _mine(cfg, arm, db, model, rnd, seed, log)
                data = _label_ingest(arm, db, rnd, rdir, log)
                nxt = arm_dir / f"round{rnd + 1}"
                nxt.mkdir(parents=True, exist_ok=True)
                ckpt = train(data, nxt)
                metrics = evaluate(ckpt, nxt)
                frames = _labeled_train_frames(data)
                _record(db, out.name, arm.name, seed, rnd + 1, frames, f"round{rnd + 1}", metrics)
                rows.append({"seed": seed, "arm": arm.name, "round": rnd + 1, "labeled_frames": frames, **metrics})
    report = {"config": asdict(cfg), "rows": rows, "summary": summarize(rows), "wall_s": round(time.perf_counter() - t0, 1)}
    (out / "loop_report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "loop_report.md").write_text(format_report(report))
    plot_curves(rows, out / "learning_curves.png")
    return report


def _yaml(cfg: LoopConfig) -> str:
    import yaml

    return yaml.safe_dump(asdict(cfg), sort_keys=False)


def remove_outputs(cfg: LoopConfig) -> None:
    """Delete a loop's outputs (to start over)."""
    shutil.rmtree(cfg.out, ignore_errors=True)
