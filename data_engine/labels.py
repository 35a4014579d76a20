"""Label files: the world's oracle, label-QA error injection, validation, and Label Studio reviews.

A labels file in the "nuScenes records" format is one JSON object::

    {"sample_annotation": [records], "instance": [records], "frames": [sample tokens]}

whose records are exactly those nuScenes (and `data-engine synth`) write: boxes in the global frame,
``translation`` (x, y, z) m, ``size`` (w, l, h) m, ``rotation`` a unit quaternion (w, x, y, z); an
instance carries the ``category_token`` of the category table of its frame's dataset. ``frames`` is
optional: the frames the file labels, so that a frame with no object can be labeled too (default: the
frames its annotations name). Annotation ``prev``/``next`` and instance ``nbr_annotations`` /
``first_annotation_token`` / ``last_annotation_token`` are recomputed when a version is written.

A Label Studio export (a JSON list of tasks, see :mod:`data_engine.label_studio`) is turned into such
records by :func:`labels_from_label_studio` and checked by the same :func:`validate_labels`.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import posixpath
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import numpy as np

from perception.data.nuscenes import NuScenesDataset
from perception.data.nuscenes_tables import (
    REQUIRED_FIELDS,
    DatasetError,
    Record,
    Tables,
    check_annotation_boxes,
    find_version,
    read_tables,
)
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES, VISIBILITY
from perception.metrics.nuscenes_io import boxes_to_global

from .catalog import Catalog, CatalogError, FrameRow
from .label_studio import BOX_CONTROL, FRAME_CONTROL, MISSING_CHOICE, box_index
from perception.errors import BevStackError

__all__ = ["CLASS_CATEGORY", "INJECT_KINDS", "MAX_LABELS_FILE_BYTES", "LabelRun", "LabelStudioResult", "Labels",
           "LabelsError", "SourceDataset", "ValidLabels", "chain_instances", "errors_path", "image_path", "inject_errors",
           "label_frames", "labels_from_label_studio", "load_source", "oracle_labels", "parse_inject", "parse_labels",
           "read_labels_file", "validate_labels", "write_json"]

LABEL_TABLES: tuple[str, ...] = ("sample_annotation", "instance")
_TOKEN_FIELDS = {"sample_annotation": ("token", "sample_token", "instance_token"), "instance": ("token", "category_token")}
_OPTIONAL_TOKEN_FIELDS = {"sample_annotation": ("visibility_token", "prev", "next"), "instance": ()}
INJECT_KINDS: tuple[str, ...] = ("missing", "class", "shift")
SHIFT_RANGE_M = (1.5, 3.0)  # an injected shift moves the centre this far, horizontally
MAX_EGO_DISTANCE_M = 200.0  # an annotation's centre must lie this close to its frame's ego pose
LS_NUM_LIDAR_PTS = 1  # Label Studio boxes have no lidar count; 1 keeps them in evaluation (0 would drop them)
# The largest labels file (either format) read: parsing holds about 5x the file in memory and an ingest about
# 12x, so 64 MiB (some 100k annotations) bounds an ingest near 0.8 GB. Split a larger batch into several files.
MAX_LABELS_FILE_BYTES = 64 * 2**20

# Detection class -> the nuScenes category a box of that class is written with (the one category of
# the class, or the usual one where the class has several).
_PREFERRED = {"bus": "vehicle.bus.rigid", "pedestrian": "human.pedestrian.adult"}
CLASS_CATEGORY: dict[str, str] = {
    cls: _PREFERRED.get(cls) or next(c for c, d in CATEGORY_TO_DETECTION.items() if d == cls)
    for cls in DETECTION_CLASSES
}


class LabelsError(BevStackError):
    """Labels that cannot be used; the message names the file, the record (table, index, token) and the
    field, with what was expected."""


@dataclass
class Labels:
    """The content of a labels file (nuScenes records)."""

    annotations: list[Record]  # sample_annotation records, global frame
    instances: list[Record]  # instance records
    frames: list[str]  # sample tokens the labels cover (frames without objects included)

    def to_json(self) -> dict[str, Any]:
        return {"sample_annotation": self.annotations, "instance": self.instances, "frames": self.frames}


@dataclass
class SourceDataset:
    """A catalogued dataset read once: its raw tables (every record) and the typed reader over them."""

    root: Path
    tables: Tables
    reader: NuScenesDataset

    def category_token(self, name: str) -> str | None:
        """The token of category ``name`` in this dataset's category table, None when absent."""
        return next((r["token"] for r in self.tables.records["category"] if r["name"] == name), None)

    def category_name(self, token: str) -> str | None:
        rec = self.tables.by_token["category"].get(token)
        return None if rec is None else str(rec["name"])


def load_source(root: str | Path, cache: dict[str, SourceDataset] | None = None) -> SourceDataset:
    """Read a dataset's 13 tables once and build its reader on them (kept in ``cache`` by root)."""
    key = str(Path(root).resolve())
    if cache is not None and key in cache:
        return cache[key]
    path = Path(key)
    version = find_version(path, None)
    tables = read_tables(path, version)
    # The reader releases some tables once indexed: give it its own lists (the records are shared, not copied).
    reader = NuScenesDataset(path, version, Tables(path, version, {k: list(v) for k, v in tables.records.items()}))
    src = SourceDataset(path, tables, reader)
    if cache is not None:
        cache[key] = src
    return src


def write_json(path: Path, obj: Any) -> None:
    """Write JSON through a temporary file and a rename: a reader never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(json.dumps(obj, indent=1))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def errors_path(labels_path: Path) -> Path:
    """Where the injected errors of ``LABELS.json`` are listed: ``LABELS.errors.json``."""
    stem = labels_path.name.removesuffix(".json")
    return labels_path.with_name(stem + ".errors.json")


def _token(*parts: object) -> str:
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Reading and the oracle
# --------------------------------------------------------------------------------------------------


def read_labels_file(path: Path, max_bytes: int | None = None) -> Any:
    """The parsed JSON of a labels file (a nuScenes-records object or a Label Studio export list); a file
    larger than ``max_bytes`` (default :data:`MAX_LABELS_FILE_BYTES`) is refused before it is parsed."""
    limit = MAX_LABELS_FILE_BYTES if max_bytes is None else max_bytes
    too_big = (f"{path}: the labels file is larger than the limit of {limit / 2**20:g} MiB "
               "(data_engine.labels.MAX_LABELS_FILE_BYTES, which bounds the memory an ingest takes); "
               "split the batch into several files and ingest each")
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size > limit:
                raise LabelsError(too_big)
            data = f.read(limit + 1)  # a pipe or a growing file is bounded too
        if len(data) > limit:
            raise LabelsError(too_big)
        return json.loads(data)
    except FileNotFoundError:
        raise LabelsError(f"{path}: labels file not found") from None
    except LabelsError:
        raise
    except (OSError, ValueError) as exc:  # not UTF-8, not JSON, or an integer of more digits than int() converts
        raise LabelsError(f"{path}: cannot read JSON ({exc})") from None
    except RecursionError:
        raise LabelsError(f"{path}: cannot read JSON (nested too deeply)") from None


def _is_token(value: Any) -> bool:
    """A non-empty string UTF-8 can encode (a lone surrogate, which a JSON escape can write, cannot be
    looked up in the catalog nor written into a version)."""
    if not isinstance(value, str) or not value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse_labels(obj: Any, source: str) -> Labels:
    """Check the JSON shape of a nuScenes-records labels file: the two tables, each record an object
    with nuScenes' fields, tokens as strings. Raises :class:`LabelsError` naming the first bad record."""
    if not isinstance(obj, dict):
        raise LabelsError(f"{source}: expected a JSON object {{\"sample_annotation\": [...], \"instance\": [...]}} "
                          f"(or a Label Studio export list), got {type(obj).__name__}")
    unknown = sorted(set(obj) - {*LABEL_TABLES, "frames"})
    if unknown:
        raise LabelsError(f"{source}: unknown key(s) {unknown}; expected sample_annotation, instance and optionally frames")
    for table in LABEL_TABLES:
        if not isinstance(obj.get(table), list):
            raise LabelsError(f"{source}: {table} must be a list of records, got {type(obj.get(table)).__name__}")
        for i, rec in enumerate(obj[table]):
            where = f"{source}: {table}[{i}]"
            if not isinstance(rec, dict):
                raise LabelsError(f"{where}: expected a JSON object, got {type(rec).__name__}")
            missing = [k for k in REQUIRED_FIELDS[table] if k not in rec]
            if missing:
                raise LabelsError(f"{where} (token {rec.get('token')!r}): lacks field(s) {missing}")
            for key in _TOKEN_FIELDS[table]:
                if not _is_token(rec[key]):
                    raise LabelsError(f"{where} (token {rec.get('token')!r}): {key} {rec[key]!r} must be a token "
                                      "(a non-empty UTF-8 string)")
            for key in _OPTIONAL_TOKEN_FIELDS[table]:
                if rec[key] != "" and not _is_token(rec[key]):
                    raise LabelsError(f"{where} (token {rec.get('token')!r}): {key} {rec[key]!r} must be a token or ''")
            if table == "sample_annotation" and not (isinstance(rec["attribute_tokens"], list)
                                                     and all(_is_token(t) for t in rec["attribute_tokens"])):
                raise LabelsError(f"{where} (token {rec['token']!r}): attribute_tokens must be a list of tokens")
    frames = obj.get("frames")
    if frames is not None and not (isinstance(frames, list) and all(_is_token(t) for t in frames)):
        raise LabelsError(f"{source}: frames must be a list of sample tokens")
    anns, insts = obj["sample_annotation"], obj["instance"]
    first: dict[tuple[Any, ...], int] = {}
    for i, rec in enumerate(anns):
        key = _box_key(rec)
        if key is None:
            continue  # not numbers: the box check names it
        j = first.setdefault(key, i)
        if j != i:
            raise LabelsError(f"{source}: sample_annotation[{i}] (token {rec['token']!r}): frame {rec['sample_token']!r}: "
                              f"box {i} is an exact duplicate of box {j} (sample_annotation[{j}], token "
                              f"{anns[j]['token']!r}): same translation, size and rotation; label each object once")
    return Labels(anns, insts, list(dict.fromkeys([*(frames or []), *(a["sample_token"] for a in anns)])))


def _box_key(rec: Record) -> tuple[Any, ...] | None:
    """(frame, translation, size, rotation) of an annotation, to find exact duplicates; None if not numbers."""
    try:
        return (rec["sample_token"], *(tuple(float(v) for v in rec[k]) for k in ("translation", "size", "rotation")))
    except (TypeError, ValueError, OverflowError):
        return None


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
    from .sim.oracle import OracleError, label_samples, read_recipe

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


# --------------------------------------------------------------------------------------------------
# Instance chains and error injection
# --------------------------------------------------------------------------------------------------


def chain_instances(annotations: Iterable[Record], instances: dict[str, Record], touched: Iterable[str],
                    sample_time: Mapping[str, int]) -> None:
    """Relink, in time order, the annotations of the ``touched`` instances (``prev``/``next``) and set the
    instances' ``nbr_annotations``, ``first_annotation_token``, ``last_annotation_token``, in place; an
    instance left without annotations is removed from ``instances``. ``sample_time``: sample token -> us."""
    touched = set(touched)
    by_instance: dict[str, list[Record]] = defaultdict(list)
    for a in annotations:
        if a["instance_token"] in touched:
            by_instance[a["instance_token"]].append(a)
    for tok in touched:
        anns = sorted(by_instance.get(tok, []), key=lambda a: (sample_time[a["sample_token"]], a["token"]))
        if not anns:
            instances.pop(tok, None)
            continue
        for k, a in enumerate(anns):
            a["prev"] = anns[k - 1]["token"] if k > 0 else ""
            a["next"] = anns[k + 1]["token"] if k + 1 < len(anns) else ""
        instances[tok].update(nbr_annotations=len(anns), first_annotation_token=anns[0]["token"],
                              last_annotation_token=anns[-1]["token"])


def parse_inject(spec: str) -> dict[str, float]:
    """``missing=0.05,class=0.02,shift=0.03`` -> fractions of the annotations per error kind."""
    rates: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if kind not in INJECT_KINDS or not sep:
            raise LabelsError(f"--inject: expected KIND=FRACTION[,...] with KIND one of {', '.join(INJECT_KINDS)}, "
                              f"got {part!r}")
        try:
            rate = float(value)
        except ValueError:
            raise LabelsError(f"--inject: {kind} fraction {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise LabelsError(f"--inject: {kind} fraction {rate} must be within 0..1")
        rates[kind] = rate
    if sum(rates.values()) > 1.0:
        raise LabelsError(f"--inject: the fractions add up to {sum(rates.values()):g}, more than every annotation")
    return rates


def inject_errors(labels: Labels, rates: Mapping[str, float], seed: int,
                  source_of: Mapping[str, SourceDataset]) -> tuple[Labels, list[dict[str, Any]]]:
    """A copy of ``labels`` with known errors, and the list of them (label-QA experiments).

    round(rate * annotations) distinct annotations get each kind of error: ``missing`` drops it;
    ``class`` gives its object another detection class's category, under a new instance of its own (the
    object's other frames are unaffected); ``shift`` moves its centre 1.5-3 m in a random horizontal
    direction. ``source_of``: sample token -> its dataset (for category tokens and times). Deterministic
    in ``seed``. Each error: {kind, sample_token, annotation_token, instance_token (both original), detail}.
    """
    out = copy.deepcopy(labels)
    anns = out.annotations
    instances = {r["token"]: r for r in out.instances}
    n = len(anns)
    want = {k: round(rates.get(k, 0.0) * n) for k in INJECT_KINDS}
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(n)]

    def category(a: Record) -> str:
        return source_of[a["sample_token"]].category_name(instances[a["instance_token"]]["category_token"]) or ""

    picked: dict[str, list[int]] = {}
    free = order
    for kind in ("class", "missing", "shift"):  # class first: only detection-class boxes can be reclassed
        ok = [i for i in free if kind != "class" or category(anns[i]) in CATEGORY_TO_DETECTION]
        if len(ok) < want[kind]:
            raise LabelsError(f"--inject: {want[kind]} {kind} errors asked for, but only {len(ok)} annotations can "
                              f"take one ({n} annotations in all)")
        picked[kind] = ok[: want[kind]]
        taken = set(picked[kind])
        free = [i for i in free if i not in taken]
    errors: list[dict[str, Any]] = []
    touched: set[str] = set()
    dropped: set[int] = set()
    for kind in INJECT_KINDS:
        for i in sorted(picked[kind]):
            a = anns[i]
            err = {"kind": kind, "sample_token": a["sample_token"], "annotation_token": a["token"],
                   "instance_token": a["instance_token"], "detail": {}}
            src = source_of[a["sample_token"]]
            if kind == "missing":
                dropped.add(i)
                touched.add(a["instance_token"])
                err["detail"] = {"category": category(a)}
            elif kind == "shift":
                dist, angle = rng.uniform(*SHIFT_RANGE_M), rng.uniform(0.0, 2.0 * np.pi)
                offset = [float(dist * np.cos(angle)), float(dist * np.sin(angle)), 0.0]
                a["translation"] = [float(v + d) for v, d in zip(a["translation"], offset)]
                err["detail"] = {"offset": offset, "distance": float(dist)}
            else:
                old = category(a)
                choices = [c for c in DETECTION_CLASSES if c != CATEGORY_TO_DETECTION[old]
                           and src.category_token(CLASS_CATEGORY[c]) is not None]
                new = CLASS_CATEGORY[choices[int(rng.integers(len(choices)))]]
                inst = _token("injected-class", a["token"])
                instances[inst] = {"token": inst, "category_token": src.category_token(new), "nbr_annotations": 1,
                                   "first_annotation_token": a["token"], "last_annotation_token": a["token"]}
                touched.update({a["instance_token"], inst})
                a["instance_token"] = inst
                err["detail"] = {"from": old, "to": new, "new_instance_token": inst}
            errors.append(err)
    out.annotations = [a for i, a in enumerate(anns) if i not in dropped]
    times = {tok: src.reader.sample(tok).timestamp for tok, src in source_of.items()}
    chain_instances(out.annotations, instances, touched, times)
    out.instances = list(instances.values())
    return out, errors


# --------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Label Studio reviews
# --------------------------------------------------------------------------------------------------


@dataclass
class LabelStudioResult:
    """What a Label Studio export says: the records of the frames it labels, and what it does not apply."""

    labels: Labels  # accepted and reclassed boxes of the unflagged, complete frames (nuScenes records)
    full_labeling: list[FrameRow]  # flagged frames (missing objects, or a region drawn): none of their boxes kept
    incomplete: list[dict[str, Any]]  # {"frame", "missing": [cameras], "flagged"}: left queued, not applied
    details: dict[str, Any]  # counts and per-frame outcomes, recorded with the label batch


@dataclass
class _Task:
    """One reviewed camera image of a frame."""

    id: Any
    camera: str
    annotated: bool = False  # a non-cancelled annotation exists
    regions: dict[int, str] = field(default_factory=dict)  # box index -> label the reviewer left
    predicted: set[int] = field(default_factory=set)  # box indices of the task's pre-annotations
    flags: list[str] = field(default_factory=list)  # why the frame needs full 3D labeling


def image_path(url: str, dataset_root: str) -> str:
    """The file a task's image URL names, normalized ("." and ".." resolved, links not followed).

    Accepted: a Label Studio local-files URL (``...?d=PATH``, PATH absolute without its leading "/"),
    a ``file://`` or ``http(s)://`` URL whose path is the absolute file path, or a plain path (absolute,
    or relative to the dataset root).
    """
    from urllib.parse import parse_qs

    parsed = urlparse(url)
    d = parse_qs(parsed.query).get("d")
    if d:
        path = "/" + d[0].lstrip("/")
    elif parsed.scheme in ("file", "http", "https"):
        path = unquote(parsed.path)
    else:
        path = url if url.startswith("/") else posixpath.join(dataset_root, url)
    return posixpath.normpath(path)


def _task_fields(task: Any, i: int, source: str) -> tuple[str, dict[str, str]]:
    if not isinstance(task, dict):
        raise LabelsError(f"{source}: task [{i}] is a {type(task).__name__}, expected a JSON object")
    where = f"{source}: task {task.get('id', f'[{i}]')}"
    data = task.get("data")
    if not isinstance(data, dict):
        raise LabelsError(f"{where}: data must be an object with image, frame, camera, run and dataset")
    for key in ("image", "frame", "camera", "run", "dataset"):
        if not _is_token(data.get(key)):
            raise LabelsError(f"{where}: data.{key} {data.get(key)!r} must be a non-empty UTF-8 string")
    return where, data


def _read_results(task: dict[str, Any], t: _Task, where: str) -> list[tuple[int, str]]:
    """Fill ``t`` from the task's last non-cancelled annotation and its predictions; returns the
    (box index, where) of every region that names a stored box, for range checks."""
    named: list[tuple[int, str]] = []
    annotations = task.get("annotations") or []
    preds = task.get("predictions") or []
    if not isinstance(annotations, list) or not isinstance(preds, list):
        raise LabelsError(f"{where}: annotations and predictions must be lists")
    for k, p in enumerate(preds):
        pred_results = (p.get("result") or []) if isinstance(p, dict) else []
        if not isinstance(pred_results, list):
            raise LabelsError(f"{where}: predictions[{k}].result must be a list")
        for j, r in enumerate(pred_results):
            if isinstance(r, dict) and r.get("from_name") == BOX_CONTROL:
                idx = box_index(str(r.get("id", "")))
                if idx is not None:
                    t.predicted.add(idx)
                    named.append((idx, f"{where}: predictions[{k}].result[{j}] region {r.get('id')!r}"))
    done = [(k, a) for k, a in enumerate(annotations) if isinstance(a, dict) and not a.get("was_cancelled", False)]
    if not done:
        return named
    k, ann = done[-1]
    t.annotated = True
    results = ann.get("result") or []
    if not isinstance(results, list):
        raise LabelsError(f"{where}: annotations[{k}].result must be a list")
    for j, r in enumerate(results):
        at = f"{where}: annotations[{k}].result[{j}]"
        if not isinstance(r, dict):
            raise LabelsError(f"{at}: expected a JSON object")
        value = r.get("value") if isinstance(r.get("value"), dict) else {}
        if r.get("from_name") == FRAME_CONTROL:
            choices = value.get("choices") or []
            if not isinstance(choices, list):
                raise LabelsError(f"{at}.value.choices {choices!r}: expected a list of choices")
            if MISSING_CHOICE in choices:
                t.flags.append(f"{t.camera}: {MISSING_CHOICE}")
        elif r.get("from_name") == BOX_CONTROL:
            labels = value.get("rectanglelabels")
            if not (isinstance(labels, list) and len(labels) == 1 and labels[0] in DETECTION_CLASSES):
                raise LabelsError(f"{at}.value.rectanglelabels {labels!r}: expected one detection class "
                                  f"({', '.join(DETECTION_CLASSES)})")
            idx = box_index(str(r.get("id", "")))
            if idx is None:
                t.flags.append(f"{t.camera}: region {r.get('id')!r} drawn by the reviewer")
            else:
                t.regions[idx] = labels[0]
                named.append((idx, f"{at} region {r.get('id')!r}"))
        else:
            raise LabelsError(f"{at}.from_name {r.get('from_name')!r}: not a control of the labeling config "
                              f"(expected {BOX_CONTROL!r} or {FRAME_CONTROL!r})")
    return named


def labels_from_label_studio(cat: Catalog, export: Any, source: str = "export", relabel: bool = False,
                             sources: dict[str, SourceDataset] | None = None) -> LabelStudioResult:
    """Turn a Label Studio export of relabel-queue tasks into nuScenes records, per the contract of
    :mod:`data_engine.label_studio`.

    Per 3D box (a region id names a box of the frame's stored predictions in the task's run), over all
    camera tasks of its frame: deleted in a task that pre-annotated it -> rejected; else its label changed
    -> reclassed (different new labels in different cameras are an error); else accepted. A box no task
    showed is unreviewed and not written. A frame with MISSING_CHOICE ticked or a region the reviewer
    drew goes to full 3D labeling (none of its boxes written); a frame with a camera task not annotated
    (or cancelled) is incomplete and left as it is. Kept boxes become records in the global frame, one
    new instance each, with the class's category (:data:`CLASS_CATEGORY`), the highest visibility, no
    attributes and ``num_lidar_pts`` 1 so that evaluation keeps them.
    """
    if not isinstance(export, list):
        raise LabelsError(f"{source}: a Label Studio export is a JSON list of tasks, got {type(export).__name__}")
    sources = {} if sources is None else sources
    states = ("queued", "labeled") if relabel else ("queued",)
    parsed = [_task_fields(task, i, source) for i, task in enumerate(export)]
    found = cat.frames_by_token(data["frame"] for _, data in parsed)
    runs: dict[str, int] = {}
    frames: dict[int, FrameRow] = {}
    frame_run: dict[int, str] = {}
    tasks: dict[int, dict[str, _Task]] = defaultdict(dict)
    named: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for task, (where, data) in zip(export, parsed):
        root = str(Path(data["dataset"]).resolve())
        rows = [r for r in found.get(data["frame"], []) if len(found[data["frame"]]) == 1 or r.dataset_root == root]
        if len(rows) != 1:
            raise LabelsError(f"{where}: data.frame {data['frame']!r} is not a frame of the catalog {cat.path}")
        fr = rows[0]
        if fr.dataset_root != root:
            raise LabelsError(f"{where}: data.dataset {data['dataset']!r} is not the frame's dataset ({fr.dataset_root})")
        if fr.label_state not in states:
            raise LabelsError(f"{where}: data.frame {fr.sample_token!r} is {fr.label_state}, expected {' or '.join(states)}")
        if data["run"] not in runs:
            try:
                runs[data["run"]] = cat.run_id(data["run"])
            except CatalogError:
                raise LabelsError(f"{where}: data.run {data['run']!r} is not a mining run of {cat.path}") from None
        if frame_run.setdefault(fr.id, data["run"]) != data["run"]:
            raise LabelsError(f"{where}: data.run {data['run']!r} differs from run {frame_run[fr.id]!r} of the frame's "
                              "other tasks")
        if data["camera"] not in fr.cameras:
            raise LabelsError(f"{where}: data.camera {data['camera']!r} is not a camera of frame {fr.sample_token!r} "
                              f"({', '.join(fr.cameras)})")
        path = image_path(data["image"], fr.dataset_root)
        if not (path + "/").startswith(fr.dataset_root.rstrip("/") + "/"):
            raise LabelsError(f"{where}: data.image {data['image']!r} is {path}, a path that leaves the dataset "
                              f"{fr.dataset_root}")
        expected = posixpath.normpath(posixpath.join(fr.dataset_root, fr.cameras[data["camera"]]))
        if path != expected:
            raise LabelsError(f"{where}: data.image {data['image']!r} is {path}, not the frame's {data['camera']} "
                              f"image {expected}")
        if data["camera"] in tasks[fr.id]:
            raise LabelsError(f"{where}: frame {fr.sample_token!r} camera {data['camera']} already has task "
                              f"{tasks[fr.id][data['camera']].id}")
        t = _Task(task.get("id"), data["camera"])
        named[fr.id] += _read_results(task, t, where)
        frames[fr.id] = fr
        tasks[fr.id][data["camera"]] = t

    anns: list[Record] = []
    insts: list[Record] = []
    labeled: list[str] = []
    full: list[FrameRow] = []
    incomplete: list[dict[str, Any]] = []
    per_frame: dict[str, dict[str, Any]] = {}
    counts = dict.fromkeys(("accepted", "rejected", "reclassed", "unreviewed"), 0)
    for fid, fr in frames.items():
        run = frame_run[fid]
        preds = cat.frame_predictions(runs[run], fid)
        for idx, at in named[fid]:
            if idx >= len(preds):
                raise LabelsError(f"{at}: names box {idx}, but run {run!r} stored {len(preds)} boxes for frame "
                                  f"{fr.sample_token!r}")
        ts = tasks[fid]
        missing = sorted(c for c in fr.cameras if c not in ts or not ts[c].annotated)
        flags = [f for t in ts.values() if t.annotated for f in t.flags]
        if missing:
            incomplete.append({"frame": fr.sample_token, "missing": missing, "flagged": bool(flags)})
            continue
        if flags:
            full.append(fr)
            per_frame[fr.sample_token] = {"outcome": "full_labeling", "reasons": flags}
            continue
        outcome: dict[str, Any] = {"outcome": "labeled", "accepted": [], "rejected": [], "reclassed": [], "unreviewed": []}
        reviewed = set().union(*(t.predicted | set(t.regions) for t in ts.values()))
        src = load_source(fr.dataset_root, sources)
        for idx in range(len(preds)):
            pred = preds[idx]
            if idx not in reviewed:
                outcome["unreviewed"].append(idx)
                continue
            if any(idx in t.predicted and idx not in t.regions for t in ts.values()):
                outcome["rejected"].append(idx)
                continue
            new = {t.regions[idx] for t in ts.values() if idx in t.regions and t.regions[idx] != pred.get("class")}
            if len(new) > 1:
                raise LabelsError(f"{source}: frame {fr.sample_token!r} box {idx}: relabeled {sorted(new)} in different "
                                  "cameras; the new labels must agree")
            cls = new.pop() if new else str(pred.get("class"))
            if cls not in DETECTION_CLASSES:
                raise LabelsError(f"{source}: frame {fr.sample_token!r} box {idx}: stored class {cls!r} of run {run!r} "
                                  "is not a detection class")
            if cls != pred.get("class"):
                outcome["reclassed"].append({"box": idx, "from": pred.get("class"), "to": cls})
            else:
                outcome["accepted"].append(idx)
            ann, inst = _box_record(src, fr, run, idx, pred, cls)
            anns.append(ann)
            insts.append(inst)
        for key in counts:
            counts[key] += len(outcome[key])
        per_frame[fr.sample_token] = outcome
        labeled.append(fr.sample_token)
    details = {"run": sorted(set(frame_run.values())), "tasks": len(export), "boxes": counts,
               "frames": {"labeled": len(labeled), "full_labeling": len(full), "incomplete": len(incomplete)},
               "full_labeling": [fr.sample_token for fr in full], "incomplete": incomplete, "per_frame": per_frame}
    return LabelStudioResult(Labels(anns, insts, labeled), full, incomplete, details)


def _box_record(src: SourceDataset, fr: FrameRow, run: str, idx: int, pred: Mapping[str, Any],
                cls: str) -> tuple[Record, Record]:
    """The sample_annotation and instance records of a stored box (ego frame of the sample's reference
    pose) written in the global frame, as ``results_json`` converts predictions."""
    sample = src.reader.sample(fr.sample_token)
    global_T_ego = sample.global_T_ego
    try:
        translation, quats, _ = boxes_to_global(global_T_ego, np.asarray(pred["center"], np.float64).reshape(1, 3),
                                                np.array([float(pred["yaw"])]))
        center, quat = translation[0], quats[0]
        size = [float(v) for v in pred["size"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LabelsError(f"run {run!r}: stored box {idx} of frame {fr.sample_token!r} is malformed ({exc})") from None
    category = src.category_token(CLASS_CATEGORY[cls])
    if category is None:
        raise LabelsError(f"{src.root}/{src.tables.file('category')}: no category {CLASS_CATEGORY[cls]!r} for class {cls!r}")
    visibility = max(VISIBILITY) if max(VISIBILITY) in src.tables.by_token["visibility"] \
        else max(src.tables.by_token["visibility"], default="")
    ann_tok = _token("label-studio", run, fr.sample_token, idx)
    inst_tok = _token("label-studio-instance", run, fr.sample_token, idx)
    ann = {"token": ann_tok, "sample_token": fr.sample_token, "instance_token": inst_tok, "visibility_token": visibility,
           "attribute_tokens": [], "translation": center.tolist(), "size": size, "rotation": quat.tolist(),
           "prev": "", "next": "", "num_lidar_pts": LS_NUM_LIDAR_PTS, "num_radar_pts": 0}
    inst = {"token": inst_tok, "category_token": category, "nbr_annotations": 1, "first_annotation_token": ann_tok,
            "last_annotation_token": ann_tok}
    return ann, inst
