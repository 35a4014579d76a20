"""Malformed input against every reader: property-based (hypothesis), counting inputs and tracebacks.

    python -m bench.fault_inputs [--examples 100] [--workdir DIR]

Each reader gets ``examples`` inputs, each one valid input (:mod:`bench.fault_bases`) with one thing
broken (:mod:`bench.fault_strategies`): a field of a record, a key of a config, an entry of a
checkpoint, a whole file replaced by bytes, truncated or deleted. A reader may accept the input or
refuse it with a project error (:class:`~perception.errors.BevStackError`) or an OS error: both
become one line on the command line. Any other exception is a traceback, recorded with the input
that raised it. Readers:

    nuscenes     perception.data.nuscenes.load_dataset, then every sample's boxes, images, lidar, maps, splits
    config       perception.config.load_config(path, overrides)
    labels       a nuScenes-records label batch through ingest's checks (read, parse, validate)
    label_studio a Label Studio export through ingest's checks (read, review, validate)
    metadata     export.runtime.metadata.ModelMetadata.from_props, then what the edge runtime reads
    checkpoint   perception.checkpoint.load_checkpoint, then the preset that every user reads

Writes bench/results/fault_inputs.json and prints a table.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.strategies import DataObject

from bench.fault_bases import Bases, Scratch, build_bases
from bench.fault_strategies import (ODD_STRINGS, RAW_FILES, YAML_TEXTS, dump_json, file_contents, mutate, number_paths,
                                    odd_values, short)
from bench.machine import machine
from perception.errors import BevStackError

__all__ = ["READERS", "ReaderResult", "fuzz_all", "fuzz_checkpoint", "fuzz_config", "fuzz_label_studio",
           "fuzz_labels", "fuzz_metadata", "fuzz_nuscenes"]

RESULTS = Path(__file__).parent / "results" / "fault_inputs.json"
Attempt = tuple[str, Callable[[], object]]  # (input summary, the call that reads it)


@dataclass
class ReaderResult:
    """What one reader did with its malformed inputs."""

    reader: str
    tried: int = 0  # inputs fed
    accepted: int = 0  # read without an error
    refused: int = 0  # refused with a project error or an OS error (one line on the command line)
    tracebacks: list[tuple[str, str, str]] = field(default_factory=list)  # (input, exception type, first line)
    seconds: float = 0.0


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return (lines[0] if lines else "")[:200]


def _fuzz(reader: str, examples: int, draw: Callable[[DataObject], Attempt]) -> ReaderResult:
    """Feed ``examples`` inputs drawn by ``draw`` and sort out what each one did."""
    result = ReaderResult(reader)
    start = time.perf_counter()

    @settings(max_examples=examples, database=None, deadline=None, derandomize=True, print_blob=False,
              suppress_health_check=list(HealthCheck), phases=(Phase.explicit, Phase.generate))
    @given(st.data())
    def one(data: DataObject) -> None:
        summary, call = draw(data)
        result.tried += 1
        try:
            with warnings.catch_warnings():  # numpy's overflow and torch's warnings on odd values are not the point
                warnings.simplefilter("ignore")
                call()
            result.accepted += 1
        except (BevStackError, OSError):
            result.refused += 1
        except Exception as exc:  # the defects this bench counts
            result.tracebacks.append((summary, type(exc).__name__, _first_line(exc)))

    one()
    result.seconds = time.perf_counter() - start
    return result


_BASES: dict[Path, Bases] = {}


def _bases(workdir: Path) -> Bases:
    key = workdir.resolve()
    if key not in _BASES:
        _BASES[key] = build_bases(key)
    return _BASES[key]


# --------------------------------------------------------------------------------------------------
# nuScenes tables
# --------------------------------------------------------------------------------------------------


def _read_nuscenes(root: Path) -> None:
    """Load the dataset and read everything a training run reads of it."""
    from perception.data.nuscenes import load_dataset, load_lidar_points, read_image

    ds = load_dataset(root)
    for name in ds.splits:
        ds.scenes_of_split(name)
    for sample in ds.samples:
        ds.box_set(sample)
        for cam in sample.cameras.values():
            read_image(cam.path, (cam.height, cam.width))
        load_lidar_points(sample.lidar.path)
    for scene in ds.scenes:
        if scene.map_token is not None:
            ds.map_mask(scene.map_token)


def fuzz_nuscenes(examples: int, workdir: Path) -> ReaderResult:
    """A dataset root whose JSON tables (or sensor files) have one thing broken."""
    world = _bases(workdir).world
    root = workdir / "nuscenes"
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(world, root)
    table_dir = next(p for p in root.glob("v1.0-*") if p.is_dir())
    docs = {p.stem: json.loads(p.read_text()) for p in sorted(table_dir.glob("*.json"))}
    texts = {name: (table_dir / f"{name}.json").read_bytes() for name in docs}
    sensors = sorted(p for p in root.rglob("*") if p.suffix in (".jpg", ".bin", ".png"))[::5]
    scratch = Scratch()
    values = odd_values()
    numbers = number_paths(docs)

    def draw(data: DataObject) -> Attempt:
        scratch.restore()
        mode = data.draw(st.sampled_from(("field", "field", "field", "file", "sensor")), label="mode")
        if mode == "field":
            new, summary = mutate(data, docs, values, min_depth=2, numbers=numbers)
            for name in docs:
                if new[name] is not docs[name]:
                    scratch.write(table_dir / f"{name}.json", dump_json(new[name]))
        elif mode == "file":
            name = data.draw(st.sampled_from(sorted(docs)), label="table")
            content = data.draw(file_contents(texts[name]), label="content")
            scratch.write(table_dir / f"{name}.json", content)
            summary = f"{name}.json := {short(content)}"
        else:
            path = data.draw(st.sampled_from(sensors), label="sensor file")
            content = data.draw(file_contents(path.read_bytes()), label="content")
            scratch.write(path, content)
            summary = f"{path.relative_to(root)} := {short(content)}"
        return summary, lambda: _read_nuscenes(root)

    try:
        return _fuzz("nuscenes", examples, draw)
    finally:
        scratch.restore()


# --------------------------------------------------------------------------------------------------
# Experiment configs
# --------------------------------------------------------------------------------------------------


def fuzz_config(examples: int, workdir: Path) -> ReaderResult:
    """A YAML experiment file (a config with one key broken, or raw text) and key=value overrides."""
    from perception.config import load_config

    base = _bases(workdir).config
    path = workdir / "config.yaml"
    keys = ["preset"] + [f"{s}.{k}" for s, sec in base.items() if isinstance(sec, dict) for k in sec]
    value_texts = st.one_of(st.sampled_from(YAML_TEXTS), st.sampled_from(ODD_STRINGS), st.text(max_size=16),
                            odd_values().map(dump_json))
    override = st.one_of(st.tuples(st.sampled_from(keys), value_texts).map("=".join),
                         st.tuples(st.text(max_size=12), value_texts).map("=".join), st.text(max_size=16))
    values = odd_values()
    numbers = number_paths(base)

    def draw(data: DataObject) -> Attempt:
        mode = data.draw(st.sampled_from(("doc", "doc", "raw", "overrides")), label="mode")
        overrides = data.draw(st.lists(override, max_size=3), label="overrides")
        target: Path | None = path
        if mode == "doc":
            doc, summary = mutate(data, base, values, numbers=numbers)
            path.write_text(dump_json(doc))
        elif mode == "raw":
            content = data.draw(st.one_of(st.sampled_from(YAML_TEXTS).map(str.encode), st.sampled_from(RAW_FILES),
                                          st.binary(max_size=64)), label="content")
            path.write_bytes(content)
            summary = f"file := {short(content)}"
        else:
            target, summary = None, "no file"
        return f"{summary}; overrides {short(overrides, 120)}", lambda: load_config(target, overrides)

    return _fuzz("config", examples, draw)


# --------------------------------------------------------------------------------------------------
# Label batches and Label Studio exports (ingest's checks, nothing written)
# --------------------------------------------------------------------------------------------------


def _check_labels_file(cat: Any, path: Path, sources: dict[str, Any]) -> None:
    """What ``data_engine.labels.ingest.ingest`` does with a labels file before it writes anything."""
    from data_engine.labels.label_studio import labels_from_label_studio
    from data_engine.labels.records import parse_labels, read_labels_file
    from data_engine.labels.validate import validate_labels

    obj = read_labels_file(path)
    review = None
    if isinstance(obj, list):
        review = labels_from_label_studio(cat, obj, str(path), False, sources)
        labels = review.labels
    else:
        labels = parse_labels(obj, str(path))
    if labels.frames or review is None:
        validate_labels(cat, labels, str(path), False, sources)


def _fuzz_labels_file(reader: str, examples: int, workdir: Path, base: Any, max_depth: int) -> ReaderResult:
    from data_engine.catalog import Catalog

    path = workdir / f"{reader}.json"
    text = dump_json(base).encode()
    values = odd_values()
    numbers = number_paths(base)
    sources: dict[str, Any] = {}

    def draw(data: DataObject) -> Attempt:
        if data.draw(st.integers(0, 3), label="raw file") == 0:
            content = data.draw(file_contents(text), label="content")
            summary = f"file := {short(content)}"
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        else:
            doc, summary = mutate(data, base, values, max_depth=max_depth, numbers=numbers)
            path.write_text(dump_json(doc))
        return summary, lambda: _check_labels_file(cat, path, sources)

    with Catalog.open(_bases(workdir).catalog) as cat:
        return _fuzz(reader, examples, draw)


def fuzz_labels(examples: int, workdir: Path) -> ReaderResult:
    """A nuScenes-records label batch of the queued frames with one record field broken."""
    return _fuzz_labels_file("labels", examples, workdir, _bases(workdir).labels, max_depth=4)


def fuzz_label_studio(examples: int, workdir: Path) -> ReaderResult:
    """A Label Studio export of the queued frames with one thing of one task broken."""
    return _fuzz_labels_file("label_studio", examples, workdir, _bases(workdir).export, max_depth=8)


# --------------------------------------------------------------------------------------------------
# ONNX metadata
# --------------------------------------------------------------------------------------------------


def _use_metadata(props: dict[str, str]) -> None:
    """Read the metadata, then everything the edge runtime reads of it to set up a model."""
    from export.runtime.metadata import ModelMetadata
    from perception.boxes import BoxCodec

    meta = ModelMetadata.from_props(props, "model.onnx")
    _ = (meta.input_names, meta.camera_names, meta.input_hw, meta.class_names, meta.seg_classes, meta.bev_grid,
         meta.static_batch, tuple(meta.state_shape), meta.embedding_dim)
    BoxCodec.from_preset(meta.preset_obj)
    if meta.fixed_rig is not None:  # as EdgeModel.prepare compares a frame's rig with the fixed one
        K, ego_T_cam = meta.rig_arrays()
        for i in range(len(meta.camera_names)):
            np.allclose(K[i], np.eye(3), atol=0.5)
            np.allclose(ego_T_cam[i], np.eye(4), atol=1e-3)


def fuzz_metadata(examples: int, workdir: Path) -> ReaderResult:
    """``metadata_props`` of an exported model with one value of the metadata JSON broken."""
    from export.runtime.metadata import METADATA_KEY

    props = _bases(workdir).props
    body = json.loads(props[METADATA_KEY])
    values = odd_values()
    numbers = number_paths(body)
    strings = st.one_of(st.text(max_size=16), st.sampled_from(ODD_STRINGS),
                        st.sampled_from(RAW_FILES).map(lambda b: b.decode("utf-8", "replace")))

    def draw(data: DataObject) -> Attempt:
        mode = data.draw(st.sampled_from(("body", "body", "body", "props")), label="mode")
        if mode == "body":
            new_body, summary = mutate(data, body, values, max_depth=6, numbers=numbers)
            new = {**props, METADATA_KEY: dump_json(new_body)}
        else:  # metadata_props is a string -> string map
            new, summary = mutate(data, props, strings, max_depth=1)
        return summary, lambda: _use_metadata(new)

    return _fuzz("metadata", examples, draw)


# --------------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------------


def _read_checkpoint(path: Path, preset: dict[str, Any]) -> None:
    """Load the checkpoint, then what its users read before building a model: the preset
    (``load_model_from_checkpoint``) and its differences from the config's (resuming a run)."""
    from perception.checkpoint import load_checkpoint, preset_differences, preset_from_dict

    state = load_checkpoint(path)
    preset_from_dict(state["preset"])
    preset_differences(state["preset"], preset)


def fuzz_checkpoint(examples: int, workdir: Path) -> ReaderResult:
    """Random bytes, a truncated checkpoint, or a checkpoint dict with one entry broken (torch.save)."""
    import torch

    base = _bases(workdir).checkpoint
    buf = io.BytesIO()
    torch.save(base, buf)
    raw = buf.getvalue()
    path = workdir / "checkpoint.pt"
    tensors = st.sampled_from([torch.tensor(float("nan")), torch.zeros(0), torch.zeros(2, dtype=torch.int64),
                               torch.ones(3, dtype=torch.bool), torch.zeros(4, 3, dtype=torch.float16)])
    values = odd_values(tensors)
    numbers = number_paths(base)

    def draw(data: DataObject) -> Attempt:
        mode = data.draw(st.sampled_from(("entry", "entry", "entry", "bytes", "top")), label="mode")
        if mode == "entry":
            state, summary = mutate(data, base, values, max_depth=3, numbers=numbers)
            torch.save(state, path)
        elif mode == "top":
            state = data.draw(values, label="value")
            torch.save(state, path)
            summary = f"checkpoint := {short(state)}"
        else:
            content = data.draw(file_contents(raw), label="content")
            summary = f"file := {short(content)}"
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)
        return summary, lambda: _read_checkpoint(path, base["preset"])

    return _fuzz("checkpoint", examples, draw)


# --------------------------------------------------------------------------------------------------
# All of them
# --------------------------------------------------------------------------------------------------

READERS: dict[str, Callable[[int, Path], ReaderResult]] = {
    "nuscenes": fuzz_nuscenes, "config": fuzz_config, "labels": fuzz_labels, "label_studio": fuzz_label_studio,
    "metadata": fuzz_metadata, "checkpoint": fuzz_checkpoint,
}


def fuzz_all(examples: int, workdir: Path) -> list[ReaderResult]:
    """Every reader, ``examples`` inputs each; the valid bases are built once under ``workdir``."""
    return [fuzz(examples, workdir) for fuzz in READERS.values()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=100, help="inputs per reader")
    parser.add_argument("--workdir", type=Path, default=None, help="where the bases are written (default: a temp dir)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        start = time.perf_counter()
        _bases(workdir)
        setup = time.perf_counter() - start
        results = fuzz_all(args.examples, workdir)
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "examples": args.examples,
              "setup_seconds": round(setup, 2), "readers": [asdict(r) for r in results]}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(f"| reader | tried | accepted | refused | tracebacks | s |  (bases built in {setup:.1f} s)")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r.reader} | {r.tried} | {r.accepted} | {r.refused} | {len(r.tracebacks)} | {r.seconds:.1f} |")
    for r in results:
        for summary, kind, message in r.tracebacks:
            print(f"{r.reader}: {kind}: {message}\n    input: {summary}")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
