"""Labels checked against the catalog and the frames' datasets before a version is written.

:func:`validate_labels` names the first failing record (file, table, index, token, field) with what was
expected; :class:`ValidLabels` is what passed, grouped by frame, ready for the version builder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from perception.data.nuscenes_tables import DatasetError, Record, Tables, check_annotation_boxes

from ..catalog import Catalog, FrameRow
from .records import Labels, LabelsError, SourceDataset, load_source

__all__ = ["MAX_EGO_DISTANCE_M", "ValidLabels", "validate_labels"]

MAX_EGO_DISTANCE_M = 200.0  # an annotation's centre must lie this close to its frame's ego pose


@dataclass
class ValidLabels:
    """Labels checked against the catalog and the frames' datasets, ready to be written into a version."""

    source: str  # the labels file
    frames: list[FrameRow]  # the frames labeled, in file order
    annotations: dict[str, list[Record]]  # sample token -> its annotations (possibly none)
    instances: dict[str, Record]  # instance token -> record
    sources: dict[str, SourceDataset] = field(default_factory=dict)  # dataset root -> dataset

    @property
    def annotation_count(self) -> int:
        return sum(len(v) for v in self.annotations.values())


def _frame_of(cat: Catalog, found: Mapping[str, list[FrameRow]], token: str, where: str, states: Sequence[str],
              relabel: bool) -> FrameRow:
    rows = found.get(token, [])
    if not rows:
        raise LabelsError(f"{where}: sample_token {token!r} is not a frame of the catalog {cat.path}")
    if len(rows) > 1:
        raise LabelsError(f"{where}: sample_token {token!r} is a frame of {len(rows)} datasets "
                          f"({', '.join(r.dataset_root for r in rows)}); it must name one frame")
    fr = rows[0]
    if fr.label_state not in states:
        hint = "" if relabel or fr.label_state != "labeled" else " (pass --relabel to replace its annotations)"
        raise LabelsError(f"{where}: frame {token!r} is {fr.label_state}, expected {' or '.join(states)}{hint}")
    return fr


def validate_labels(cat: Catalog, labels: Labels, source: str, relabel: bool = False,
                    sources: dict[str, SourceDataset] | None = None) -> ValidLabels:
    """Check every record before anything is written; the first failing record is named.

    Frames: each a catalog frame in state queued (or labeled, with ``relabel``). Tokens unique.
    Instances: every reference resolves, the category is one of the frame's dataset. Boxes: finite
    translation, size > 0, a unit rotation quaternion, centre within 200 m of the frame's ego pose,
    known visibility and attribute tokens.
    """
    sources = {} if sources is None else sources
    states = ("queued", "labeled") if relabel else ("queued",)
    for table, recs in (("sample_annotation", labels.annotations), ("instance", labels.instances)):
        first: dict[str, int] = {}
        for i, rec in enumerate(recs):
            if rec["token"] in first:
                raise LabelsError(f"{source}: {table}[{i}] token {rec['token']!r} repeats {table}[{first[rec['token']]}]; "
                                  "tokens must be unique")
            first[rec["token"]] = i
    if not labels.frames:
        raise LabelsError(f"{source}: no frames to label (no annotations and no frames list)")
    found = cat.frames_by_token(labels.frames)
    frames: dict[str, FrameRow] = {}
    ann_index = {a["sample_token"]: i for i, a in reversed(list(enumerate(labels.annotations)))}
    for k, tok in enumerate(labels.frames):
        i = ann_index.get(tok)
        where = (f"{source}: sample_annotation[{i}] (token {labels.annotations[i]['token']!r})" if i is not None
                 else f"{source}: frames[{k}]")
        frames[tok] = _frame_of(cat, found, tok, where, states, relabel)
    for root in {fr.dataset_root for fr in frames.values()}:
        try:
            load_source(root, sources)
        except DatasetError as exc:
            raise LabelsError(f"{source}: the frames' dataset cannot be read: {exc}") from None
    instances = {r["token"]: r for r in labels.instances}
    inst_root: dict[str, str] = {}
    for i, a in enumerate(labels.annotations):
        where = f"{source}: sample_annotation[{i}] (token {a['token']!r})"
        if a["instance_token"] not in instances:
            raise LabelsError(f"{where}: instance_token {a['instance_token']!r} is not among the file's instance records")
        root = frames[a["sample_token"]].dataset_root
        if inst_root.setdefault(a["instance_token"], root) != root:
            raise LabelsError(f"{where}: instance {a['instance_token']!r} has annotations in two datasets "
                              f"({inst_root[a['instance_token']]} and {root}); an instance belongs to one dataset")
        src = sources[root]
        if a["visibility_token"] and a["visibility_token"] not in src.tables.by_token["visibility"]:
            raise LabelsError(f"{where}: visibility_token {a['visibility_token']!r} is not in {src.tables.file('visibility')}"
                              f" (expected one of {sorted(src.tables.by_token['visibility'])})")
        for t in a["attribute_tokens"]:
            if t not in src.tables.by_token["attribute"]:
                raise LabelsError(f"{where}: attribute_tokens holds {t!r}, not an attribute of {src.tables.file('attribute')}")
    for j, inst in enumerate(labels.instances):
        where = f"{source}: instance[{j}] (token {inst['token']!r})"
        if inst["token"] not in inst_root:
            raise LabelsError(f"{where}: no sample_annotation references this instance")
        src = sources[inst_root[inst["token"]]]
        if src.category_name(inst["category_token"]) is None:
            known = ", ".join(r["name"] for r in src.tables.records["category"])
            raise LabelsError(f"{where}: category_token {inst['category_token']!r} is not a category of "
                              f"{src.root}/{src.tables.file('category')} (categories: {known})")
    _check_boxes(labels.annotations, source)
    for i, a in enumerate(labels.annotations):
        src = sources[frames[a["sample_token"]].dataset_root]
        ego = src.reader.sample(a["sample_token"]).global_T_ego[:3, 3]
        dist = float(np.linalg.norm(np.asarray(a["translation"], np.float64) - ego))
        if dist > MAX_EGO_DISTANCE_M:
            raise LabelsError(f"{source}: sample_annotation[{i}] (token {a['token']!r}): translation {a['translation']} "
                              f"is {dist:.1f} m from the frame's ego pose, expected within {MAX_EGO_DISTANCE_M:g} m "
                              "(global frame)")
    per_frame: dict[str, list[Record]] = {tok: [] for tok in frames}
    for a in labels.annotations:
        per_frame[a["sample_token"]].append(a)
    return ValidLabels(source, list(frames.values()), per_frame, instances,
                       {fr.dataset_root: sources[fr.dataset_root] for fr in frames.values()})


def _check_boxes(anns: list[Record], source: str) -> None:
    """translation, size and rotation of every annotation, by the reader's own check (the first failing
    record is named by its index)."""
    name = Path(source).name
    stub = Tables(Path(source).parent, name, {"sample_annotation": anns})
    try:
        check_annotation_boxes(stub, anns)
        return
    except DatasetError as exc:
        prefix = stub.file("sample_annotation") + ": "
        message = str(exc)
        for i, a in enumerate(anns):
            try:
                check_annotation_boxes(stub, [a])
            except DatasetError as one:
                message = str(one)
                break
        else:  # pragma: no cover - the batch check failed, so one record does
            i = -1
        detail = message.removeprefix(prefix)
        token = f"record {anns[i]['token']!r} "
        if detail.startswith(token):
            detail = f"(token {anns[i]['token']!r}): " + detail[len(token):]
        raise LabelsError(f"{source}: sample_annotation[{i}] {detail}") from None
