"""Labeling catalogued frames with an oracle: `data-engine label`.

The oracle "sim" is the synthetic world (:mod:`data_engine.sim.oracle`): it re-simulates the truth of the
frames of a dataset `data-engine synth` wrote. The labels are written as nuScenes records
(:mod:`data_engine.labels.records`), optionally with planted errors (:mod:`data_engine.labels.inject`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perception.data.nuscenes_tables import Record

from ..catalog import Catalog, FrameRow
from .inject import INJECT_KINDS, inject_errors
from .records import Labels, LabelsError, SourceDataset, errors_path, load_source, write_json

__all__ = ["LabelRun", "label_frames", "oracle_labels"]


def _frames_to_label(cat: Catalog, state: str, run: str | None) -> list[FrameRow]:
    if run is None:
        return cat.query(label_state=state)
    return [s.frame for s in cat.selections(run) if s.frame.label_state == state]


def oracle_labels(frames: Sequence[FrameRow], oracle: str = "sim",
                  sources: dict[str, SourceDataset] | None = None) -> Labels:
    """Label catalogued frames with the oracle.

    ``oracle`` "sim": the synthetic world re-simulates the truth of every frame of a dataset written
    by `data-engine synth` (also one written with --unlabeled). Frames are grouped by dataset root.
    """
    from ..sim.oracle import OracleError, label_samples, read_recipe

    if oracle != "sim":
        raise LabelsError(f"--oracle {oracle!r}: unknown oracle; the only one is 'sim' (the synthetic world)")
    by_root: dict[str, list[str]] = defaultdict(list)
    for fr in frames:
        by_root[fr.dataset_root].append(fr.sample_token)
    sources = {} if sources is None else sources
    anns: list[Record] = []
    insts: list[Record] = []
    for root, tokens in by_root.items():
        try:
            read_recipe(root)
            rows = label_samples(root, tokens, load_source(root, sources).reader)
        except OracleError as exc:
            raise LabelsError(f"{root}: the sim oracle labels only datasets written by `data-engine synth` ({exc})") from None
        anns += rows["sample_annotation"]
        insts += rows["instance"]
    return Labels(anns, insts, [fr.sample_token for fr in frames])


@dataclass
class LabelRun:
    """What :func:`label_frames` wrote."""

    out: Path  # the labels file
    frames: int  # frames labeled
    annotations: int  # annotations written (after injection)
    datasets: int  # dataset roots the frames come from
    errors_file: Path | None = None  # LABELS.errors.json, with --inject
    errors: dict[str, int] = field(default_factory=dict)  # injected errors per kind


def label_frames(cat: Catalog, out: Path, oracle: str = "sim", state: str = "queued", run: str | None = None,
                 inject: Mapping[str, float] | None = None, seed: int = 0) -> LabelRun:
    """`data-engine label`: label the catalog's frames with the oracle into ``out`` (nuScenes records),
    with ``inject`` corrupting known fractions of the annotations (listed in ``LABELS.errors.json``)."""
    if oracle != "sim":
        raise LabelsError(f"--oracle {oracle!r}: unknown oracle; the only one is 'sim' (the synthetic world)")
    frames = _frames_to_label(cat, state, run)
    if not frames:
        which = f" picked by run {run!r}" if run else ""
        raise LabelsError(f"{cat.path}: no {state} frames{which} to label")
    sources: dict[str, SourceDataset] = {}
    labels = oracle_labels(frames, oracle, sources)
    errors: list[dict[str, Any]] | None = None
    if inject:
        source_of = {fr.sample_token: sources[fr.dataset_root] for fr in frames}
        labels, errors = inject_errors(labels, inject, seed, source_of)
    result = LabelRun(out, len(labels.frames), len(labels.annotations), len(sources))
    if errors is not None:  # the list of planted errors first: noisy labels never exist without it
        result.errors_file = errors_path(out)
        write_json(result.errors_file, errors)
        result.errors = {k: sum(1 for e in errors if e["kind"] == k) for k in INJECT_KINDS}
    write_json(out, labels.to_json())
    return result
