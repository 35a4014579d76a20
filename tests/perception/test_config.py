"""The experiment config: defaults, YAML + key=value overrides, errors naming keys and values, round trip."""

from __future__ import annotations

from pathlib import Path

import pytest

from perception.data.augment import AugmentConfig
from perception.config import (
    ConfigError,
    ExperimentConfig,
    TrainConfig,
    dump_yaml,
    from_dict,
    load_config,
    resolve,
    to_dict,
)
from perception.presets import PRESETS

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_defaults_load():
    cfg = load_config(None, [])
    assert cfg == ExperimentConfig()
    assert cfg.train == TrainConfig()
    assert cfg.model == PRESETS["tiny"].model  # the preset's model when not overridden
    assert resolve(cfg) == PRESETS["tiny"]


def test_yaml_and_overrides(tmp_path):
    path = write(tmp_path, """
preset: tiny
model:
  view_transform: sampling
  z_levels: [0.0, 1.0]
augment:
  flip_p: 0.1
  scale_range: [0.8, 1.2]
train:
  name: exp1
  lr: 3e-4          # YAML 1.1 reads this as a string: still a float
  steps: 50
  val_split: null
""")
    cfg = load_config(path, ["train.lr=1e-3", "augment.flip_p=0.2", "train.deterministic=true",
                             "loss.seg_pos_weight=[1, 2, 3, 4]", "train.name=2024"])
    assert cfg.train.lr == 1e-3 and isinstance(cfg.train.lr, float)
    assert cfg.train.steps == 50 and cfg.train.val_split is None and cfg.train.deterministic is True
    assert cfg.train.name == "2024"  # a str field takes the override's text
    assert cfg.augment.flip_p == 0.2 and cfg.augment.scale_range == (0.8, 1.2)
    assert cfg.model.view_transform == "sampling" and cfg.model.z_levels == (0.0, 1.0)
    assert cfg.model.neck_channels == PRESETS["tiny"].model.neck_channels  # the rest from the preset
    assert cfg.loss.seg_pos_weight == (1.0, 2.0, 3.0, 4.0)
    assert resolve(cfg).model.view_transform == "sampling"
    # The dataset configs of both splits: training augmented, validation not.
    train_ds, val_ds = cfg.dataset_config(train=True), cfg.dataset_config(train=False)
    assert train_ds.split == "synth_train" and train_ds.augment == cfg.augment
    assert val_ds.split is None and val_ds.augment == AugmentConfig(enabled=False)
    # Overrides apply in order; the last wins.
    assert load_config(None, ["train.steps=5", "train.steps=7"]).train.steps == 7


def test_preset_override_changes_resolved_input():
    tiny, edge = load_config(None, []), load_config(None, ["preset=edge"])
    assert (resolve(tiny).input.height, resolve(tiny).input.width) == (96, 176)
    assert (resolve(edge).input.height, resolve(edge).input.width) == (224, 400)
    assert edge.model == PRESETS["edge"].model
    # Model overrides apply on top of the chosen preset's model.
    edge = load_config(None, ["model.view_transform=lift_splat", "preset=edge"])
    assert edge.model.view_transform == "lift_splat" and edge.model.neck_channels == PRESETS["edge"].model.neck_channels


@pytest.mark.parametrize("text,key", [
    ("train:\n  lrr: 0.1\n", "train.lrr"),
    ("trian:\n  lr: 0.1\n", "trian"),
    ("augment:\n  flip: 0.5\n", "augment.flip"),
])
def test_unknown_key_in_file(tmp_path, text, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as err:
        load_config(write(tmp_path, text), [])
    assert "valid" in str(err.value)


def test_unknown_key_lists_valid_keys():
    with pytest.raises(ConfigError) as err:
        load_config(None, ["train.lrr=0.1"])
    message = str(err.value)
    assert "'train.lrr'" in message and "warmup_steps" in message and "ema_decay" in message


@pytest.mark.parametrize("override,key", [
    ("train.lrr=0.1", "train.lrr"),
    ("modle.backbone=resnet18", "modle.backbone"),
    ("train.lr.x=1", "train.lr.x"),
    ("dataset.augment={}", "dataset.augment"),  # set by the top-level augment section
    ("dataset.split=x", "dataset.split"),  # set by train.train_split / val_split
])
def test_unknown_key_in_override(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize("override,needles", [
    ("train.steps=abc", ["train.steps", "abc", "int"]),
    ("train.steps=1.5", ["train.steps", "1.5"]),
    ("train.lr=fast", ["train.lr", "fast", "float"]),
    ("train.deterministic=2", ["train.deterministic", "2", "bool"]),
    ("augment.scale_range=0.9", ["augment.scale_range", "0.9"]),
    ("augment.gamma_limit=[1, 2, 3]", ["augment.gamma_limit"]),
    ("model.z_levels=[0.0, up]", ["model.z_levels[1]", "up"]),
    ("loss.weighting=magic", ["loss.weighting", "magic"]),
])
def test_bad_types_named(override, needles):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for needle in needles:
        assert needle in str(err.value)


@pytest.mark.parametrize("override,needles", [
    ("train.lr=-1e-3", ["lr", "-0.001"]),
    ("train.ema_decay=1.0", ["ema_decay", "1.0"]),
    ("train.batch_size=0", ["batch_size", "0"]),
    ("train.amp=fp16", ["amp", "fp16"]),
    ("train.name=a/b", ["name", "a/b"]),
    ("model.bev_stride=3", ["bev_stride", "3", "64x64"]),
    ("model.view_transform=attention", ["view_transform", "attention", "global_attention"]),
    ("train.backbone_lr_scale=-1", ["backbone_lr_scale", "-1"]),
    ("augment.flip_p=1.5", ["augment", "flip_p", "1.5"]),
    ("model.view_transform=voxels", ["model", "view_transform", "voxels"]),
    ("model.backbone=vgg16", ["model.backbone", "vgg16"]),
    ("preset=huge", ["preset", "huge", "tiny"]),
    ("loss.heatmap_weight=-1", ["loss", "weights"]),
])
def test_out_of_range_values_named(override, needles):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    for needle in needles:
        assert needle in str(err.value)


def test_malformed_inputs(tmp_path):
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ConfigError, match="key=value"):
        load_config(None, ["train.lr"])
    with pytest.raises(ConfigError, match="mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), [])
    with pytest.raises(ConfigError, match="train"):
        load_config(write(tmp_path, "train: 3\n"), [])
    with pytest.raises(ConfigError, match="YAML"):
        load_config(write(tmp_path, "train: [\n"), [])
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml", [])
    assert load_config(write(tmp_path, ""), []) == ExperimentConfig()  # an empty file: defaults
    assert load_config(write(tmp_path, "augment:\n"), []) == ExperimentConfig()  # an empty section


def test_round_trip(tmp_path):
    cfg = load_config(None, ["preset=edge", "model.view_transform=sampling", "model.z_levels=[0.5, 1.5]",
                             "augment.gamma_limit=[70, 130]", "loss.seg_pos_weight=2", "train.lr=3e-4",
                             "train.val_split=null", "train.name=rt"])
    path = dump_yaml(cfg, tmp_path / "run" / "config.yaml")
    again = load_config(path, [])
    assert again == cfg
    assert from_dict(to_dict(cfg)) == cfg
    # Everything is written, defaults included (sections are complete).
    data = to_dict(cfg)
    assert set(data) == {"preset", "model", "augment", "dataset", "loss", "train"}
    assert set(data["train"]) == {f for f in TrainConfig.__dataclass_fields__}
    assert "augment" not in data["dataset"] and "split" not in data["dataset"]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_configs_load(path, tmp_path):
    cfg = load_config(path, [])
    assert cfg.train.name == path.stem and cfg.preset in PRESETS
    assert load_config(dump_yaml(cfg, tmp_path / "config.yaml"), []) == cfg


def test_shipped_recipes():
    assert {p.stem for p in CONFIGS} >= {"tiny_cpu", "edge_cpu", "base_gpu"}
    by_name = {p.stem: load_config(p, []) for p in CONFIGS}
    edge, base = by_name["edge_cpu"], by_name["base_gpu"]
    assert edge.preset == "edge" and edge.train.device == "cpu" and edge.train.ema_decay > 0
    assert edge.train.warmup_steps > 0 and edge.train.clip_length in (1, 2)
    assert base.preset == "base" and base.train.amp == "bf16" and base.train.batch_size == 8
    assert base.train.clip_length == 3 and base.train.sync_bn
