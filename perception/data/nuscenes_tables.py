"""The raw layer of the nuScenes v1.0 reader: locate a version, read its 13 JSON tables, index them.

Everything here works on the records exactly as nuScenes writes them (plain dicts from ``json``);
:mod:`perception.data.nuscenes` turns them into typed objects. Errors are :class:`DatasetError`
with a message that names the file (``v1.0-mini/calibrated_sensor.json``) and the offending token.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from itertools import chain
from operator import itemgetter
from pathlib import Path
from typing import Any

import numpy as np

from perception.schema import TABLES
from perception.errors import DatasetError, worker_message  # noqa: F401  (re-exported: the readers' error)

__all__ = ["DatasetError", "Record", "Tables", "find_version", "leaves_root", "read_json", "read_tables",
           "worker_message"]

Record = dict[str, Any]

# Fields every record of a table must have: only fields real nuScenes v1.0 writes.
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "attribute": ("token", "name"),
    "calibrated_sensor": ("token", "sensor_token", "translation", "rotation", "camera_intrinsic"),
    "category": ("token", "name"),
    "ego_pose": ("token", "timestamp", "rotation", "translation"),
    "instance": ("token", "category_token"),
    "log": ("token", "location"),
    "map": ("token", "log_tokens", "filename"),
    "sample": ("token", "timestamp", "prev", "next", "scene_token"),
    "sample_annotation": (
        "token", "sample_token", "instance_token", "visibility_token", "attribute_tokens",
        "translation", "size", "rotation", "prev", "next", "num_lidar_pts",
    ),
    "sample_data": (
        "token", "sample_token", "ego_pose_token", "calibrated_sensor_token", "timestamp",
        "is_key_frame", "height", "width", "filename", "prev", "next",
    ),
    "scene": ("token", "log_token", "name", "description", "first_sample_token"),
    "sensor": ("token", "channel", "modality"),
    "visibility": ("token", "level"),
}
QUAT_TOLERANCE = 1e-3  # | |q| - 1 | allowed for stored rotations

# What the reader expects of the fields it uses: a kind of FIELD_KINDS per table and field. Checked
# column by column when the tables are read (sample_annotation's box fields: check_annotation_boxes).
STR, INT, BOOL, TOKENS, VEC3, QUAT = "str", "int", "bool", "tokens", "vec3", "quat"
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1  # integers are read into int64 arrays
_T = {"token": STR}
FIELD_TYPES: dict[str, dict[str, str]] = {
    "attribute": {**_T, "name": STR},
    "calibrated_sensor": {**_T, "sensor_token": STR, "translation": VEC3, "rotation": QUAT},
    "category": {**_T, "name": STR},
    "ego_pose": {**_T, "timestamp": INT, "rotation": QUAT, "translation": VEC3},
    "instance": {**_T, "category_token": STR},
    "log": {**_T, "location": STR},
    "map": {**_T, "log_tokens": TOKENS, "filename": STR},
    "sample": {**_T, "timestamp": INT, "prev": STR, "next": STR, "scene_token": STR},
    "sample_annotation": {**_T, "sample_token": STR, "instance_token": STR, "visibility_token": STR,
                          "attribute_tokens": TOKENS, "prev": STR, "next": STR, "num_lidar_pts": INT},
    "sample_data": {**_T, "sample_token": STR, "ego_pose_token": STR, "calibrated_sensor_token": STR,
                    "timestamp": INT, "is_key_frame": BOOL, "height": INT, "width": INT, "filename": STR,
                    "prev": STR, "next": STR},
    "scene": {**_T, "log_token": STR, "name": STR, "description": STR, "first_sample_token": STR},
    "sensor": {**_T, "channel": STR, "modality": STR},
    "visibility": {**_T, "level": STR},
}
EXPECTED = {STR: "a string", INT: "a 64-bit integer", BOOL: "true or false", TOKENS: "a list of token strings",
            VEC3: "3 finite numbers (x, y, z)", QUAT: "4 finite numbers (w, x, y, z)"}
# Fields that hold a file path relative to the dataset root; a path must stay under the root.
PATH_FIELDS: dict[str, tuple[str, ...]] = {"map": ("filename",), "sample_data": ("filename",)}


def find_version(root: Path, version: str | None) -> str:
    """The version directory name under ``root``: ``version`` if given, else the only ``v1.0-*``
    directory that holds a ``sample.json``. Raises :class:`DatasetError` listing what was found."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    if version is not None:
        if not (root / version).is_dir():
            raise DatasetError(f"{root / version}: version directory not found")
        return version
    candidates = sorted(p.name for p in root.glob("v1.0-*") if (p / "sample.json").is_file())
    if len(candidates) == 1:
        return candidates[0]
    others = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not candidates:
        raise DatasetError(
            f"{root}: no v1.0-* directory with a sample.json found (directories present: {others or 'none'})"
        )
    raise DatasetError(f"{root}: several versions found {candidates}; pass version= to choose one")


class Tables:
    """The 13 tables of one version, each as a list in file order and as a token -> record index."""

    def __init__(self, root: Path, version: str, records: dict[str, list[Record]]) -> None:
        self.root = root
        self.version = version
        self.records = records
        self.by_token: dict[str, dict[str, Record]] = {}
        for name, recs in records.items():
            index = {r["token"]: r for r in recs}
            if len(index) != len(recs):
                raise DatasetError(f"{self.file(name)}: duplicate tokens ({len(recs) - len(index)} repeated)")
            self.by_token[name] = index

    def file(self, table: str) -> str:
        """How error messages name a table: ``v1.0-mini/sample.json``."""
        return f"{self.version}/{table}.json"

    def release(self, names: Iterable[str]) -> None:
        """Forget tables no longer needed (real nuScenes holds millions of sample_data and ego_pose records)."""
        for name in names:
            self.records.pop(name, None)
            self.by_token.pop(name, None)

    def get(self, table: str, token: str, referrer: str, referrer_token: str) -> Record:
        """The record ``token`` of ``table``, referenced by record ``referrer_token`` of ``referrer``.

        Raises :class:`DatasetError` naming both files when the token is not there.
        """
        record = self.by_token[table].get(token)
        if record is None:
            raise DatasetError(
                f"{self.file(referrer)}: record {referrer_token!r} references {table} token {token!r}, "
                f"which is not in {self.file(table)}"
            )
        return record

    def check_refs(self, referrer: str, record: Record, field: str, table: str) -> None:
        """Check that ``record[field]`` (a token, '' for none, or a list of tokens) exists in ``table``."""
        value = record[field]
        tokens: Iterable[str] = value if isinstance(value, list) else ([value] if value else [])
        for token in tokens:
            self.get(table, token, referrer, record["token"])


def read_json(path: Path, label: str) -> Any:
    """The JSON value of ``path``; a :class:`DatasetError` naming ``label`` when it cannot be read or parsed
    (nesting too deep for the parser included)."""
    try:
        with path.open("rb") as f:
            return json.load(f)
    except (OSError, ValueError) as exc:  # ValueError: JSONDecodeError, UnicodeDecodeError
        raise DatasetError(f"{label}: cannot read JSON ({exc})") from None
    except RecursionError:
        raise DatasetError(f"{label}: cannot read JSON (nested too deeply)") from None


def leaves_root(path: str) -> bool:
    """Whether a table path, joined to the dataset root, can name something outside it: empty, absolute,
    holding a ``..`` component or a NUL. Lexical, so no link under the root is needed to decide; links the
    dataset itself holds (a ``samples`` directory on another disk, a version's links) are followed."""
    return not path or path.startswith("/") or "\0" in path or ".." in path.split("/")


def read_tables(root: Path, version: str) -> Tables:
    """Read and index the 13 tables of ``root/version``; check required fields, their types, the paths
    they hold and stored rotations."""
    records: dict[str, list[Record]] = {}
    for name in TABLES:
        path = root / version / f"{name}.json"
        label = f"{version}/{name}.json"
        if not path.is_file():
            raise DatasetError(f"{label}: table missing (expected at {path})")
        recs = read_json(path, label)
        if not isinstance(recs, list):
            raise DatasetError(f"{label}: expected a JSON list of records, got {type(recs).__name__}")
        _check_fields(label, name, recs)
        _check_types(label, name, recs)
        for field in PATH_FIELDS.get(name, ()):
            _check_paths(label, recs, field)
        records[name] = recs
    tables = Tables(root, version, records)
    _check_calibrated_sensors(tables)
    return tables


def _check_fields(label: str, table: str, recs: list[Record]) -> None:
    required = REQUIRED_FIELDS[table]
    required_set = frozenset(required)
    for rec in recs:
        if not isinstance(rec, dict):
            raise DatasetError(f"{label}: records must be JSON objects, found {type(rec).__name__}")
        if not rec.keys() >= required_set:  # a set comparison in C: cheap on millions of records
            missing = [k for k in required if k not in rec]
            raise DatasetError(f"{label}: record {rec.get('token', '?')!r} lacks field(s) {missing}")


def _is_kind(value: Any, kind: str) -> bool:
    """Whether one field value is of ``kind`` (the record-by-record twin of :func:`_column_is_kind`)."""
    if kind == INT:
        return type(value) is int and INT64_MIN <= value <= INT64_MAX
    if kind in (STR, BOOL):
        return type(value) is {STR: str, BOOL: bool}[kind]
    if kind == TOKENS:
        return type(value) is list and all(type(v) is str for v in value)
    n = 3 if kind == VEC3 else 4
    if not (type(value) is list and len(value) == n and all(type(v) in (int, float) for v in value)):
        return False
    try:
        return all(math.isfinite(v) for v in value)
    except OverflowError:  # an integer too large for a float
        return False


def _column_is_kind(recs: list[Record], field: str, kind: str) -> bool:
    """Whether ``field`` of every record is of ``kind``, with loops in C (tables hold millions of records)."""
    values = map(itemgetter(field), recs)
    if kind == INT:
        column = list(values)
        return set(map(type, column)) <= {int} and (not column or INT64_MIN <= min(column) <= max(column) <= INT64_MAX)
    if kind in (STR, BOOL):
        return set(map(type, values)) <= {{STR: str, BOOL: bool}[kind]}
    column = list(values)
    if not set(map(type, column)) <= {list}:
        return False
    if kind == TOKENS:
        return set(map(type, chain.from_iterable(column))) <= {str}
    if set(map(len, column)) - {3 if kind == VEC3 else 4}:
        return False
    if not set(map(type, chain.from_iterable(column))) <= {int, float}:
        return False
    try:
        return all(map(math.isfinite, chain.from_iterable(column)))
    except OverflowError:  # an integer too large for a float
        return False


def _check_types(label: str, table: str, recs: list[Record]) -> None:
    """Raise :class:`DatasetError` naming the record, field, what was expected and what was found, for
    the first field value not of its kind in :data:`FIELD_TYPES`."""
    for field, kind in FIELD_TYPES[table].items():
        if _column_is_kind(recs, field, kind):
            continue
        i = next(i for i, r in enumerate(recs) if not _is_kind(r[field], kind))
        value, tok = recs[i][field], recs[i]["token"]
        who = f"record {tok!r}" if type(tok) is str else f"record #{i}"
        found = _short(value)
        raise DatasetError(f"{label}: {who} field {field!r} must be {EXPECTED[kind]}, found {found} "
                           f"({type(value).__name__})")


def _short(value: Any, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (a field may hold megabytes)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _check_paths(label: str, recs: list[Record], field: str) -> None:
    """Raise :class:`DatasetError` naming the record and field of the first path that :func:`leaves_root`."""
    values = list(map(itemgetter(field), recs))
    joined = "\0" + "\0".join(values) + "\0"  # one pass in C; the record is looked for only on a hit
    if not values or (joined.count("\0") == len(values) + 1 and "\0\0" not in joined and "\0/" not in joined
                      and "/../" not in joined and "\0../" not in joined and "/..\0" not in joined
                      and "\0..\0" not in joined):
        return
    i = next((i for i, v in enumerate(values) if leaves_root(v)), None)
    if i is None:
        return
    raise DatasetError(f"{label}: record {recs[i]['token']!r} field {field!r} is {values[i]!r}, a path that "
                       "leaves the dataset root (expected a path relative to the root, without '..')")


def check_unit_quaternions(tables: Tables, table: str, recs: list[Record]) -> None:
    """Raise :class:`DatasetError` naming the first record of ``table`` whose rotation is not a unit
    quaternion (w, x, y, z) within :data:`QUAT_TOLERANCE`."""
    for rec in recs:
        q = rec["rotation"]
        if not isinstance(q, list) or len(q) != 4:
            raise DatasetError(f"{tables.file(table)}: record {rec['token']!r} rotation must be 4 numbers (w, x, y, z)")
    if not recs:
        return
    norms = np.linalg.norm(np.asarray([r["rotation"] for r in recs], dtype=np.float64), axis=1)
    bad = np.flatnonzero(~(np.abs(norms - 1.0) <= QUAT_TOLERANCE))  # catches NaN too
    if bad.size:
        rec = recs[int(bad[0])]
        raise DatasetError(
            f"{tables.file(table)}: record {rec['token']!r} rotation {rec['rotation']} is not a unit quaternion "
            f"(|q| = {norms[bad[0]]:.6f}, tolerance {QUAT_TOLERANCE})"
        )


def check_annotation_boxes(tables: Tables, recs: list[Record]) -> None:
    """Raise :class:`DatasetError` naming the first sample_annotation whose translation is not 3 finite
    numbers, whose size is not 3 positive numbers, or whose rotation is not a unit quaternion."""

    def numbers(value: object, count: int) -> np.ndarray | None:
        if not isinstance(value, list) or len(value) != count:
            return None
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return None
        try:
            arr = np.asarray(value, dtype=np.float64)
        except OverflowError:  # an integer too large for a float
            return None
        return arr if np.all(np.isfinite(arr)) else None

    for rec in recs:
        if numbers(rec.get("translation"), 3) is None:
            raise DatasetError(f"{tables.file('sample_annotation')}: record {rec['token']!r} translation "
                               f"{_short(rec.get('translation'))} must be 3 finite numbers (x, y, z) in metres")
        size = numbers(rec.get("size"), 3)
        if size is None or not np.all(size > 0):
            raise DatasetError(f"{tables.file('sample_annotation')}: record {rec['token']!r} size "
                               f"{_short(rec.get('size'))} must be 3 positive numbers (w, l, h) in metres")
        if numbers(rec.get("rotation"), 4) is None:
            raise DatasetError(f"{tables.file('sample_annotation')}: record {rec['token']!r} rotation "
                               f"{_short(rec.get('rotation'))} must be 4 finite numbers (w, x, y, z)")
    check_unit_quaternions(tables, "sample_annotation", recs)


def _check_calibrated_sensors(tables: Tables) -> None:
    """Unit rotations everywhere; cameras need positive focal lengths and a [0, 0, 1] bottom row."""
    recs = tables.records["calibrated_sensor"]
    check_unit_quaternions(tables, "calibrated_sensor", recs)
    for rec in recs:
        sensor = tables.get("sensor", rec["sensor_token"], "calibrated_sensor", rec["token"])
        if sensor["modality"] != "camera":
            continue
        where = f"{tables.file('calibrated_sensor')}: record {rec['token']!r} ({sensor['channel']})"
        try:
            rows = rec["camera_intrinsic"]
            if not (type(rows) is list and all(type(r) is list and all(type(v) in (int, float) for v in r) for r in rows)):
                raise TypeError("not a list of lists of numbers")
            K = np.asarray(rows, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):
            raise DatasetError(f"{where}: camera_intrinsic must be a finite 3x3 matrix of numbers, got "
                               f"{_short(rec['camera_intrinsic'])}") from None
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise DatasetError(f"{where}: camera_intrinsic must be a finite 3x3 matrix, got {rec['camera_intrinsic']}")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise DatasetError(f"{where}: camera_intrinsic focal lengths must be > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
            raise DatasetError(f"{where}: camera_intrinsic bottom row must be [0, 0, 1], got {K[2].tolist()}")
