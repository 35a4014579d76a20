"""Dataset versions: every ingest of labels writes a new nuScenes-format dataset, and versions are diffed.

A version holds its parent's content plus the frames the batch labeled. The parent is the newest
version of the catalog; the first version starts from every dataset registered as labeled, merged
(categories, attributes, sensors and visibility levels are matched by name; scene names that collide
get a ``-<dataset directory>`` suffix), and every later version also merges a labeled dataset
registered since. Layout, e.g. ``<catalog dir>/versions/v0002``::

    version.json        name, parent, catalog, merged datasets, and each scene's origin (dataset, name)
    v1.0-v0002/         the 13 tables and splits.json, written anew
    samples/ sweeps/ maps/   one symlink per file, to the original file (never a copy)

Versions are built in memory by :mod:`data_engine.labels.builder` and written by
:func:`data_engine.labels.ingest.ingest`; this module finds a version (:func:`resolve_version`) and
says what changed between two (:func:`diff_versions`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from perception.data.nuscenes_tables import DatasetError, find_version, read_tables
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES
from perception.geometry import quat_to_rotation

from ..catalog import Catalog
from perception.errors import BevStackError

__all__ = ["MANIFEST", "VERSION_PREFIX", "VersionError", "diff_versions", "resolve_version"]

MANIFEST = "version.json"
VERSION_PREFIX = "v1.0-"
MOVED_M, RESIZED_M, ROTATED_RAD = 0.1, 0.01, 0.01  # what counts as a changed annotation in a diff


class VersionError(BevStackError):
    """A version that cannot be written or read; the message names the directory, table and token."""


# --------------------------------------------------------------------------------------------------
# Finding and diffing versions
# --------------------------------------------------------------------------------------------------


def resolve_version(ref: str | Path, cat: Catalog | None = None) -> Path:
    """A version's directory from a path, or from its name in the catalog."""
    path = Path(ref)
    if path.is_dir():
        return path
    if cat is not None:
        row = cat.dataset_version(str(ref))
        if row is not None:
            return Path(row["root"])
        raise VersionError(f"{cat.path}: no dataset version {str(ref)!r} and no such directory")
    raise VersionError(f"{ref}: no such version directory (give --catalog to look names up)")


def _snapshot(root: Path) -> dict[str, Any]:
    """Per annotation token: sample, class, box; per sample: scene name."""
    try:
        t = read_tables(root, find_version(root, None))
    except DatasetError as exc:
        raise VersionError(f"{root}: cannot read the version ({exc})") from None
    scene_name = {s["token"]: s["name"] for s in t.records["scene"]}
    category = {c["token"]: c["name"] for c in t.records["category"]}
    inst = {i["token"]: category.get(i["category_token"], "") for i in t.records["instance"]}
    anns = {a["token"]: {"sample": a["sample_token"], "category": inst.get(a["instance_token"], ""),
                         "translation": a["translation"], "size": a["size"], "rotation": a["rotation"]}
            for a in t.records["sample_annotation"]}
    return {"samples": {s["token"]: scene_name.get(s["scene_token"], "") for s in t.records["sample"]},
            "annotations": anns}


def _changes(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    out = []
    if np.linalg.norm(np.subtract(a["translation"], b["translation"])) > MOVED_M:
        out.append("moved")
    if np.max(np.abs(np.subtract(a["size"], b["size"]))) > RESIZED_M:
        out.append("resized")
    ra, rb = quat_to_rotation(np.asarray(a["rotation"], np.float64)), quat_to_rotation(np.asarray(b["rotation"], np.float64))
    if np.arccos(np.clip((np.trace(ra.T @ rb) - 1.0) / 2.0, -1.0, 1.0)) > ROTATED_RAD:
        out.append("rotated")
    if a["category"] != b["category"]:
        out.append("reclassed")
    return out


def diff_versions(a: str | Path, b: str | Path) -> dict[str, Any]:
    """What changed from version ``a`` to version ``b`` (directories).

    Frames (sample tokens) added and removed; annotations (by token) added, removed and changed (moved
    more than 0.1 m, resized by more than 1 cm, rotated by more than 0.01 rad, or given another
    category); annotations per detection class before and after; frames and annotations per scene.
    """
    sa, sb = _snapshot(Path(a)), _snapshot(Path(b))
    fa, fb = set(sa["samples"]), set(sb["samples"])
    aa, ab = sa["annotations"], sb["annotations"]
    changed: dict[str, list[str]] = {}
    for tok in sorted(set(aa) & set(ab)):
        kinds = _changes(aa[tok], ab[tok])
        if kinds:
            changed[tok] = kinds
    classes = {}
    for cls in DETECTION_CLASSES:
        before = sum(1 for x in aa.values() if CATEGORY_TO_DETECTION.get(x["category"]) == cls)
        after = sum(1 for x in ab.values() if CATEGORY_TO_DETECTION.get(x["category"]) == cls)
        classes[cls] = {"before": before, "after": after, "delta": after - before}
    scenes: dict[str, dict[str, int]] = {}
    for side, snap in (("a", sa), ("b", sb)):
        for tok, scene in snap["samples"].items():
            scenes.setdefault(scene, dict.fromkeys(("frames_a", "frames_b", "annotations_a", "annotations_b"), 0))
            scenes[scene][f"frames_{side}"] += 1
        for x in snap["annotations"].values():
            scenes[snap["samples"].get(x["sample"], "")][f"annotations_{side}"] += 1
    kinds = Counter(k for ks in changed.values() for k in ks)
    return {
        "a": str(a), "b": str(b),
        "frames": {"a": len(fa), "b": len(fb), "added": sorted(fb - fa), "removed": sorted(fa - fb)},
        "annotations": {"a": len(aa), "b": len(ab), "added": sorted(set(ab) - set(aa)),
                        "removed": sorted(set(aa) - set(ab)), "changed": changed,
                        "changes": {k: kinds.get(k, 0) for k in ("moved", "resized", "rotated", "reclassed")}},
        "classes": classes,
        "scenes": dict(sorted(scenes.items())),
    }
