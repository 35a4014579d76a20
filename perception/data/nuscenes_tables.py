"""The raw layer of the nuScenes v1.0 reader: locate a version, read its 13 JSON tables, index them.

Everything here works on the records exactly as nuScenes writes them (plain dicts from ``json``);
:mod:`perception.data.nuscenes` turns them into typed objects. Errors are :class:`DatasetError`
with a message that names the file (``v1.0-mini/calibrated_sensor.json``) and the offending token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from perception.data.schema import TABLES
from perception.errors import BevStackError

__all__ = ["DatasetError", "Record", "Tables", "find_version", "read_tables"]

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


class DatasetError(BevStackError):
    """A dataset on disk is missing, malformed or inconsistent; the message names the file."""


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


def read_tables(root: Path, version: str) -> Tables:
    """Read and index the 13 tables of ``root/version``; check required fields and stored rotations."""
    records: dict[str, list[Record]] = {}
    for name in TABLES:
        path = root / version / f"{name}.json"
        label = f"{version}/{name}.json"
        if not path.is_file():
            raise DatasetError(f"{label}: table missing (expected at {path})")
        try:
            with path.open("rb") as f:
                recs = json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise DatasetError(f"{label}: cannot read JSON ({exc})") from exc
        if not isinstance(recs, list):
            raise DatasetError(f"{label}: expected a JSON list of records, got {type(recs).__name__}")
        _check_fields(label, name, recs)
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
        arr = np.asarray(value, dtype=np.float64)
        return arr if np.all(np.isfinite(arr)) else None

    for rec in recs:
        if numbers(rec.get("translation"), 3) is None:
            raise DatasetError(f"{tables.file('sample_annotation')}: record {rec['token']!r} translation "
                               f"{rec.get('translation')!r} must be 3 finite numbers (x, y, z) in metres")
        size = numbers(rec.get("size"), 3)
        if size is None or not np.all(size > 0):
            raise DatasetError(f"{tables.file('sample_annotation')}: record {rec['token']!r} size "
                               f"{rec.get('size')!r} must be 3 positive numbers (w, l, h) in metres")
        if numbers(rec.get("rotation"), 4) is None:
            raise DatasetError(f"{tables.file('sample_annotation')}: record {rec['token']!r} rotation "
                               f"{rec.get('rotation')!r} must be 4 finite numbers (w, x, y, z)")
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
            K = np.asarray(rec["camera_intrinsic"], dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise DatasetError(f"{where}: camera_intrinsic is not a 3x3 matrix") from exc
        if K.shape != (3, 3) or not np.all(np.isfinite(K)):
            raise DatasetError(f"{where}: camera_intrinsic must be a finite 3x3 matrix, got {rec['camera_intrinsic']}")
        if not (K[0, 0] > 0 and K[1, 1] > 0):
            raise DatasetError(f"{where}: camera_intrinsic focal lengths must be > 0, got fx={K[0, 0]}, fy={K[1, 1]}")
        if not np.allclose(K[2], [0.0, 0.0, 1.0], atol=1e-9):
            raise DatasetError(f"{where}: camera_intrinsic bottom row must be [0, 0, 1], got {K[2].tolist()}")
