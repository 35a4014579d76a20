"""The experiment configuration of ``perception train``: typed, from YAML plus ``key=value`` overrides.

One frozen dataclass per component (the model, augmentation, dataset, loss and training loop), nested
into :class:`ExperimentConfig`. A YAML file is a mapping whose top-level keys are those sections (and
``preset``); overrides use dotted keys::

    perception train --config configs/edge_cpu.yaml train.lr=3e-4 model.view_transform=sampling

The preset names the stack's shapes (input size, BEV grid, tasks) and the model's defaults; the
``model`` section overrides single fields of the preset's model. There is no inheritance between
files: a file plus its overrides is the whole experiment, and :func:`dump_yaml` writes every value
(defaults included) into the run directory, loadable again with :func:`load_config`.

Unknown keys and bad values are a :class:`ConfigError` naming the dotted key (and the valid keys, or
the offending value). Values are parsed with ``yaml.safe_load``: numbers, booleans, ``null`` and
lists (``[0.9, 1.1]`` for tuple fields) work on the command line too.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from .presets import PRESETS, Preset, get_preset, with_backbone_normalization
from .specs import BACKBONE_NAMES, AugmentConfig, DatasetConfig, LossConfig, ModelConfig
from .typed_config import ConfigError, build_dataclass, coerce, parse_override, read_yaml_mapping


@dataclass(frozen=True)
class TrainConfig:
    """The training loop: data, schedule, precision, logging. Step counts are optimizer steps."""

    name: str = "run"  # run name: the run directory is <out_root>/<name>
    data: str = "data/synth"  # root of a nuScenes-format dataset (any, including data-engine versions)
    train_split: str | None = "synth_train"  # split of splits.json to train on; None: every scene
    val_split: str | None = "synth_val"  # split of splits.json to validate on; None: no validation
    out_root: str = "runs/train"  # parent directory of run directories
    steps: int = 1000  # total optimizer steps
    batch_size: int = 2  # clips per rank per micro-step (frames per micro-step: batch_size * clip_length)
    clip_length: int = 1  # consecutive frames per clip, video state carried through them; 1 = frame-level
    grad_accum: int = 1  # micro-steps accumulated per optimizer step
    lr: float = 5e-4  # AdamW peak learning rate
    backbone_lr_scale: float = 1.0  # learning-rate multiplier of the (pretrained) image backbone
    weight_decay: float = 0.01  # AdamW decoupled weight decay (not on norms, biases, uncertainty weights)
    warmup_steps: int = 100  # linear warm-up from 0 to lr over this many steps
    min_lr_ratio: float = 0.05  # cosine decay floor, as a fraction of lr
    grad_clip: float = 5.0  # max global gradient L2 norm; 0 disables clipping
    ema_decay: float = 0.999  # EMA of the weights per optimizer step; 0 disables EMA
    val_every: int = 500  # steps between validations (and at the end); 0: only at the end
    ckpt_every: int = 500  # steps between last.pt checkpoints (and at the end); 0: only at the end
    vis_every: int = 500  # steps between prediction pictures in vis/; 0: none
    num_workers: int = 2  # DataLoader worker processes per rank
    seed: int = 0  # seed of model init, sampling order and augmentation
    deterministic: bool = False  # deterministic algorithms (bitwise-reproducible resume on CPU), slower
    amp: str = "auto"  # auto | bf16 | off; auto = bf16 autocast on CUDA, off on CPU
    sync_bn: bool = False  # convert BatchNorm to SyncBatchNorm under DDP
    device: str = "auto"  # auto | cpu | cuda | cuda:N; auto = cuda when available
    log_every: int = 20  # steps between log lines and metrics.csv rows

    def __post_init__(self) -> None:
        if not self.name or self.name in (".", "..") or "/" in self.name or "\\" in self.name:
            raise ValueError(f"train.name must be a plain directory name, got {self.name!r}")
        if not self.data:
            raise ValueError("train.data must name a dataset directory")
        positive = ("steps", "batch_size", "clip_length", "grad_accum", "log_every")
        non_negative = ("warmup_steps", "val_every", "ckpt_every", "vis_every", "num_workers", "seed")
        for key in positive:
            if getattr(self, key) < 1:
                raise ValueError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in non_negative:
            if getattr(self, key) < 0:
                raise ValueError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not self.lr > 0:
            raise ValueError(f"train.lr must be > 0, got {self.lr}")
        if not self.backbone_lr_scale >= 0:
            raise ValueError(f"train.backbone_lr_scale must be >= 0 (0 freezes the backbone), got {self.backbone_lr_scale}")
        if not self.weight_decay >= 0:
            raise ValueError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if not self.grad_clip >= 0:
            raise ValueError(f"train.grad_clip must be >= 0 (0 disables), got {self.grad_clip}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError(f"train.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"train.ema_decay must be in [0, 1) (0 disables), got {self.ema_decay}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"train.amp must be auto, bf16 or off, got {self.amp!r}")
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device):
            raise ValueError(f"train.device must be auto, cpu, cuda or cuda:N, got {self.device!r}")


# Sections of an experiment: top-level key -> component config class.
SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "augment": AugmentConfig,
    "dataset": DatasetConfig,
    "loss": LossConfig,
    "train": TrainConfig,
}
TOP_LEVEL_KEYS: tuple[str, ...] = ("preset", *SECTIONS)
# Fields of a section's class that the experiment sets from another section (not keys of the section).
SET_ELSEWHERE: dict[str, dict[str, str]] = {
    "dataset": {"augment": "the top-level 'augment' section (training only; validation is never augmented)",
                "split": "train.train_split / train.val_split"},
}


@dataclass(frozen=True)
class ExperimentConfig:
    """One whole experiment: the preset and every component's config."""

    preset: str = "tiny"  # name of the base preset: input size, BEV grid, tasks and the model's defaults
    model: ModelConfig | None = None  # the preset's model with overrides applied; None: the preset's own
    augment: AugmentConfig = field(default_factory=AugmentConfig)  # training augmentation (val: none)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)  # reading options (split, augment: see above)
    loss: LossConfig = field(default_factory=LossConfig)  # loss terms and weights
    train: TrainConfig = field(default_factory=TrainConfig)  # the training loop

    def __post_init__(self) -> None:
        preset = get_preset(self.preset)
        if self.model is None:
            object.__setattr__(self, "model", preset.model)
        replace(preset, model=self.model)  # the preset's own checks (grid divisible by the strides)
        default = DatasetConfig()
        if self.dataset.split != default.split or self.dataset.augment != default.augment:
            raise ValueError("dataset.split and dataset.augment are set by train.train_split / "
                             "train.val_split and the top-level augment section")

    def dataset_config(self, train: bool) -> DatasetConfig:
        """The :class:`DatasetConfig` of the training split (augmented) or the validation split (not)."""
        if train:
            return replace(self.dataset, split=self.train.train_split, augment=self.augment)
        return replace(self.dataset, split=self.train.val_split, augment=AugmentConfig(enabled=False))


def resolve(cfg: ExperimentConfig) -> Preset:
    """The experiment's preset with its model overrides applied (what the model and dataset are built from)."""
    return with_backbone_normalization(replace(get_preset(cfg.preset), model=cfg.model))


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> ExperimentConfig:
    """The experiment of YAML file ``path`` (None: all defaults) with ``key=value`` ``overrides`` applied
    in order. Raises :class:`ConfigError` naming any unknown key or bad value."""
    if path is None:
        return from_dict({}, overrides, origin="defaults")
    data = read_yaml_mapping(path, f"a config is a mapping of sections {list(TOP_LEVEL_KEYS)}")
    return from_dict(data, overrides, origin=str(path))


def from_dict(data: Mapping[str, Any], overrides: Sequence[str] = (), origin: str = "dict") -> ExperimentConfig:
    """The experiment of a mapping shaped like the YAML file (e.g. :func:`to_dict` of a checkpoint's
    config), with ``key=value`` overrides applied. ``origin`` names the source in error messages."""
    tree: dict[str, Any] = {}
    texts: dict[str, str] = {}  # dotted key -> override text (a str field takes the text as written)
    sources: dict[str, str] = {}  # dotted key -> where its value came from
    for key, value in data.items():
        _set(tree, str(key), value, origin, sources)
    for item in overrides:
        key, value, text = parse_override(item)
        _set(tree, key, value, f"override {item!r}", sources)
        texts[key] = text
    return _build(tree, texts, sources)


def _set(tree: dict[str, Any], key: str, value: Any, source: str, sources: dict[str, str]) -> None:
    """Put ``value`` at dotted ``key`` of the raw tree, checking the section names."""
    section, _, sub = key.partition(".")
    if section not in TOP_LEVEL_KEYS:
        raise ConfigError(f"unknown key {key!r} (from {source}); valid top-level keys: {', '.join(TOP_LEVEL_KEYS)}")
    if section == "preset":
        if sub:
            raise ConfigError(f"unknown key {key!r} (from {source}): 'preset' is a name, not a section")
        tree["preset"] = value
        sources["preset"] = source
        return
    values = tree.setdefault(section, {})
    if sub:
        if "." in sub:
            raise ConfigError(f"unknown key {key!r} (from {source}): {section}.{sub.split('.')[0]} is not a section")
        values[sub] = value
        sources[key] = source
        return
    if value is None:  # an empty section
        return
    if not isinstance(value, Mapping):
        raise ConfigError(f"section {section!r} (from {source}) must be a mapping of its keys, got {value!r}")
    for k, v in value.items():
        values[str(k)] = v
        sources[f"{section}.{k}"] = source


def _build(tree: dict[str, Any], texts: dict[str, str], sources: dict[str, str]) -> ExperimentConfig:
    name = coerce(tree.get("preset", ExperimentConfig.preset), str, "preset", texts.get("preset"), sources)
    if name not in PRESETS:
        raise ConfigError(f"preset: unknown preset {name!r} (from {sources.get('preset')}); "
                          f"known presets: {', '.join(PRESETS)}")
    bases = {"model": get_preset(name).model}
    sections = {}
    for section, cls in SECTIONS.items():
        base = bases.get(section) or cls()
        sections[section] = _build_section(section, base, tree.get(section, {}), texts, sources)
    try:
        return ExperimentConfig(preset=name, **sections)
    except (ValueError, TypeError) as e:
        raise ConfigError(str(e)) from None


def _build_section(section: str, base: Any, values: Mapping[str, Any], texts: dict[str, str],
                   sources: dict[str, str]) -> Any:
    """``base`` with ``values`` replaced, each checked against its field type; runs the class's validation."""
    built = build_dataclass(base, values, section, texts, sources, SET_ELSEWHERE.get(section))
    if section == "model" and built.backbone not in BACKBONE_NAMES:
        raise ConfigError(f"model.backbone: unknown backbone {built.backbone!r}; known: {', '.join(BACKBONE_NAMES)}")
    return built


# --------------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------------


def to_dict(cfg: ExperimentConfig) -> dict[str, Any]:
    """Every value of ``cfg`` (defaults included) as plain YAML/JSON data, shaped like a config file:
    ``from_dict(to_dict(cfg)) == cfg``. Tuples become lists."""
    out: dict[str, Any] = {"preset": cfg.preset}
    for section in SECTIONS:
        obj = getattr(cfg, section)
        excluded = SET_ELSEWHERE.get(section, {})
        out[section] = {f.name: _plain(getattr(obj, f.name)) for f in fields(obj) if f.name not in excluded}
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def dump_yaml(cfg: ExperimentConfig, path: str | Path) -> Path:
    """Write the resolved ``cfg`` to ``path`` (e.g. the run directory's config.yaml); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=120)
    path.write_text("# Resolved experiment config (every value); load with: perception train --config THIS\n" + text)
    return path
