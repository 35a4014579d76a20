"""Label records: the labels file format, its reading and JSON checks, and the datasets labels refer to.

A labels file in the "nuScenes records" format is one JSON object::

    {"sample_annotation": [records], "instance": [records], "frames": [sample tokens]}

whose records are exactly those nuScenes (and `data-engine synth`) write: boxes in the global frame,
``translation`` (x, y, z) m, ``size`` (w, l, h) m, ``rotation`` a unit quaternion (w, x, y, z); an
instance carries the ``category_token`` of the category table of its frame's dataset. ``frames`` is
optional: the frames the file labels, so that a frame with no object can be labeled too (default: the
frames its annotations name). Annotation ``prev``/``next`` and instance ``nbr_annotations`` /
``first_annotation_token`` / ``last_annotation_token`` are recomputed when a version is written
(:func:`chain_instances`).

A Label Studio export (a JSON list of tasks) is turned into such records by
:func:`data_engine.labels.label_studio.labels_from_label_studio`; both are checked against the catalog
by :func:`data_engine.labels.validate.validate_labels`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from perception.data.nuscenes import NuScenesDataset
from perception.data.nuscenes_tables import REQUIRED_FIELDS, Record, Tables, find_version, read_tables
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES
from perception.errors import BevStackError

__all__ = ["CLASS_CATEGORY", "LABEL_TABLES", "MAX_LABELS_FILE_BYTES", "Labels", "LabelsError", "SourceDataset",
           "chain_instances", "errors_path", "hash_token", "is_token", "load_source", "parse_labels",
           "read_labels_file", "write_json"]

LABEL_TABLES: tuple[str, ...] = ("sample_annotation", "instance")
_TOKEN_FIELDS = {"sample_annotation": ("token", "sample_token", "instance_token"), "instance": ("token", "category_token")}
_OPTIONAL_TOKEN_FIELDS = {"sample_annotation": ("visibility_token", "prev", "next"), "instance": ()}
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


def hash_token(*parts: object) -> str:
    """A record token derived from ``parts`` (the same parts give the same token)."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def read_labels_file(path: Path, max_bytes: int | None = None) -> Any:
    """The parsed JSON of a labels file (a nuScenes-records object or a Label Studio export list); a file
    larger than ``max_bytes`` (default :data:`MAX_LABELS_FILE_BYTES`) is refused before it is parsed."""
    limit = MAX_LABELS_FILE_BYTES if max_bytes is None else max_bytes
    too_big = (f"{path}: the labels file is larger than the limit of {limit / 2**20:g} MiB "
               "(data_engine.labels.records.MAX_LABELS_FILE_BYTES, which bounds the memory an ingest takes); "
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


def is_token(value: Any) -> bool:
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
                if not is_token(rec[key]):
                    raise LabelsError(f"{where} (token {rec.get('token')!r}): {key} {rec[key]!r} must be a token "
                                      "(a non-empty UTF-8 string)")
            for key in _OPTIONAL_TOKEN_FIELDS[table]:
                if rec[key] != "" and not is_token(rec[key]):
                    raise LabelsError(f"{where} (token {rec.get('token')!r}): {key} {rec[key]!r} must be a token or ''")
            if table == "sample_annotation" and not (isinstance(rec["attribute_tokens"], list)
                                                     and all(is_token(t) for t in rec["attribute_tokens"])):
                raise LabelsError(f"{where} (token {rec['token']!r}): attribute_tokens must be a list of tokens")
    frames = obj.get("frames")
    if frames is not None and not (isinstance(frames, list) and all(is_token(t) for t in frames)):
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


# --------------------------------------------------------------------------------------------------
# Instance chains
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
