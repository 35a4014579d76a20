"""Dataset versions: every ingest of labels writes a new nuScenes-format dataset, and versions are diffed.

A version holds its parent's content plus the frames the batch labeled. The parent is the newest
version of the catalog; the first version starts from every dataset registered as labeled, merged
(categories, attributes, sensors and visibility levels are matched by name; scene names that collide
get a ``-<dataset directory>`` suffix), and every later version also merges a labeled dataset
registered since. Layout, e.g. ``<catalog dir>/versions/v0002``::

    version.json        name, parent, catalog, merged datasets, and each scene's origin (dataset, name)
    v1.0-v0002/         the 13 tables and splits.json, written anew
    samples/ sweeps/ maps/   one symlink per file, to the original file (never a copy)

A newly labeled frame of a pool scene brings its sample, its key-frame sample_data, ego poses,
calibration, sensor, log and map records; the scene holds only its labeled samples, relinked in time
order. New scenes join the train split (the split whose name does not end in "val"); the val split
stays as in the parent. Relabeled frames (``--relabel``) have their annotations replaced. Tokens are
kept as the datasets write them, so datasets must not share tokens (synthesize them with different
seeds): a collision is refused.

The version is written into a hidden temporary directory, loaded back with the reader, and renamed
into place; the catalog then records the batch and the version in one transaction (the directory is
removed if that fails). Ingests into one catalog take turns (an exclusive lock on its ``versions``
directory, from choosing the parent and the name to recording the version), and each first removes
what a killed ingest left: temporary directories of writers that are gone, and version directories
of this catalog it never recorded, so their names are used again.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import json
import os
import posixpath
import re
import shutil
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from perception.data.nuscenes import load_dataset
from perception.data.nuscenes_tables import (
    DatasetError,
    Record,
    find_version,
    read_tables,
)
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES, TABLES
from perception.data.targets import lane_divider_path
from perception.geometry import quat_to_rotation

from .catalog import Catalog, CatalogError, FrameRow
from .labels import (
    LabelsError,
    LabelStudioResult,
    SourceDataset,
    ValidLabels,
    chain_instances,
    labels_from_label_studio,
    load_source,
    parse_labels,
    read_labels_file,
    validate_labels,
)
from perception.errors import BevStackError, one_line
from perception.process import process_alive

__all__ = ["MANIFEST", "IngestSummary", "VersionError", "diff_versions", "ingest", "resolve_version"]

MANIFEST = "version.json"
VERSION_PREFIX = "v1.0-"
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TMP_PATTERN = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)")  # _write_version's temporary directory
# The key that identifies a record of a shared table across datasets.
STATIC_KEYS: dict[str, str] = {"category": "name", "attribute": "name", "sensor": "channel", "visibility": "level"}
MOVED_M, RESIZED_M, ROTATED_RAD = 0.1, 0.01, 0.01  # what counts as a changed annotation in a diff


class VersionError(BevStackError):
    """A version that cannot be written or read; the message names the directory, table and token."""


# --------------------------------------------------------------------------------------------------
# Building a version in memory
# --------------------------------------------------------------------------------------------------


class _Builder:
    """The tables of the version being built, as token -> record per table, with what links them."""

    def __init__(self) -> None:
        self.t: dict[str, dict[str, Record]] = {name: {} for name in TABLES}
        self.by_key: dict[str, dict[str, str]] = {name: {} for name in STATIC_KEYS}  # key -> version token
        self.splits: dict[str, list[str]] = {}
        self.files: dict[str, str] = {}  # path relative to the version root -> absolute original file
        self.origins: dict[str, dict[str, str]] = {}  # scene token -> {"dataset": root, "name": its name there}
        self.sources: list[str] = []  # labeled datasets merged whole
        self.grown: set[str] = set()  # scenes that received samples
        self.touched: set[str] = set()  # instances whose annotations changed
        self._remaps: dict[str, dict[str, dict[str, str]]] = {}
        self._keyframes: dict[str, dict[str, list[Record]]] = {}
        self._anns_of_sample: dict[str, list[str]] | None = None
        self._base_scenes: int | None = None  # scenes before the first frame was added

    def _put(self, table: str, rec: Record, where: str) -> None:
        old = self.t[table].get(rec["token"])
        if old is None:
            self.t[table][rec["token"]] = rec
        elif old != rec:
            raise VersionError(f"{where}: {table} token {rec['token']!r} is already in the version with other content; "
                               "two datasets share tokens (synthesize them with different seeds)")

    def _link(self, root: Path, filename: str, is_map: bool = False) -> None:
        """Link a file of the parent version at its own path (resolved to the original file)."""
        self.files[filename] = os.path.realpath(root / filename)
        lanes = lane_divider_path(root / filename)
        if is_map and lanes.exists():
            self.files[str(Path(filename).with_name(lanes.name))] = os.path.realpath(lanes)

    def _place(self, root: Path, filename: str, is_map: bool = False) -> str:
        """The version's path of a dataset's file: its own path, unless the version holds another file
        there already (synthetic datasets name files by scene and time), then prefixed by the dataset's
        directory name. A map's lane-divider raster follows its map."""
        target = os.path.realpath(root / filename)
        head, name = posixpath.split(filename)
        rel, k = filename, 1
        while self.files.get(rel, target) != target:
            tag = re.sub(r"[^A-Za-z0-9_.-]", "_", root.name) + (str(k) if k > 1 else "")
            rel, k = posixpath.join(head, f"{tag}__{name}"), k + 1
        self.files[rel] = target
        lanes = lane_divider_path(root / filename)
        if is_map and lanes.exists():
            self.files[str(Path(rel).with_name(lane_divider_path(Path(rel)).name))] = os.path.realpath(lanes)
        return rel

    # -- the parent --------------------------------------------------------------------------------
    def add_parent(self, root: Path) -> None:
        """Start from a version written earlier (its tables, splits, manifest and files)."""
        try:
            tables = read_tables(root, find_version(root, None))
            manifest = json.loads((root / MANIFEST).read_text())
            splits_path = root / tables.version / "splits.json"
            self.splits = {k: list(v) for k, v in json.loads(splits_path.read_text()).items()} \
                if splits_path.is_file() else {}
        except (DatasetError, OSError, json.JSONDecodeError) as exc:
            raise VersionError(f"parent version {root} cannot be read: {exc}") from None
        for name in TABLES:
            self.t[name] = {r["token"]: r for r in tables.records[name]}
        for name, key in STATIC_KEYS.items():
            for rec in tables.records[name]:
                self.by_key[name].setdefault(rec[key], rec["token"])
        self.origins = dict(manifest.get("scenes", {}))
        self.sources = list(manifest.get("sources", []))
        for sd in tables.records["sample_data"]:
            self._link(root, sd["filename"])
        for m in tables.records["map"]:
            self._link(root, m["filename"], is_map=True)

    # -- whole datasets and single frames ----------------------------------------------------------
    def _remap(self, src: SourceDataset) -> dict[str, dict[str, str]]:
        """Source token -> version token of every record of the shared tables (added when new)."""
        key = str(src.root)
        if key not in self._remaps:
            remap: dict[str, dict[str, str]] = {}
            for name, field_name in STATIC_KEYS.items():
                remap[name] = {}
                for rec in src.tables.records[name]:
                    tok = self.by_key[name].get(rec[field_name])
                    if tok is None:
                        self._put(name, copy.deepcopy(rec), f"{src.root}/{src.tables.file(name)}")
                        tok = self.by_key[name][rec[field_name]] = rec["token"]
                    remap[name][rec["token"]] = tok
            self._remaps[key] = remap
        return self._remaps[key]

    def _copy(self, src: SourceDataset, table: str, rec: Record) -> Record:
        """A copy of a source record with its references to shared tables moved to the version's tokens."""
        m = self._remap(src)
        out = copy.deepcopy(rec)
        if table == "calibrated_sensor":
            out["sensor_token"] = m["sensor"].get(rec["sensor_token"], rec["sensor_token"])
        elif table == "instance":
            out["category_token"] = m["category"].get(rec["category_token"], rec["category_token"])
        elif table in ("sample_data", "map"):
            out["filename"] = self._place(src.root, rec["filename"], is_map=table == "map")
        elif table == "sample_annotation":
            out["attribute_tokens"] = [m["attribute"].get(t, t) for t in rec["attribute_tokens"]]
            out["visibility_token"] = m["visibility"].get(rec["visibility_token"], rec["visibility_token"])
        return out

    def _scene_name(self, name: str, root: Path) -> str:
        used = {s["name"] for s in self.t["scene"].values()}
        if name not in used:
            return name
        base = f"{name}-{re.sub(r'[^A-Za-z0-9_.-]', '_', root.name)}"
        out, k = base, 2
        while out in used:
            out, k = f"{base}{k}", k + 1
        return out

    def _add_scene(self, src: SourceDataset, scene: Record) -> str:
        rec = dict(scene, name=self._scene_name(scene["name"], src.root))
        self._put("scene", rec, f"{src.root}/{src.tables.file('scene')}")
        self.origins[scene["token"]] = {"dataset": str(src.root), "name": scene["name"]}
        return str(rec["name"])

    def add_dataset(self, src: SourceDataset) -> None:
        """Merge a whole labeled dataset (first version, or one registered since the parent)."""
        where = f"{src.root}/{src.tables.version}"
        renamed = {s["name"]: self._add_scene(src, s) for s in src.tables.records["scene"]}
        for table in ("log", "map", "calibrated_sensor", "ego_pose", "sample", "sample_data", "instance",
                      "sample_annotation"):
            for rec in src.tables.records[table]:
                self._put(table, self._copy(src, table, rec), where)
        for split, names in src.reader.splits.items():
            self.splits.setdefault(split, []).extend(renamed[n] for n in names)
        self.sources.append(str(src.root))

    def _train_split(self, src: SourceDataset) -> str | None:
        train = sorted(s for s in self.splits if not s.endswith("val"))
        if train:
            return train[0]
        if self.splits or self._base_scenes:
            return None  # a dataset without splits (every scene trains), or only val splits: left as it is
        own = sorted(s for s in src.reader.splits if not s.endswith("val"))
        name = own[0] if own else "labeled_train"
        self.splits[name] = []
        return name

    def _keyframes_of(self, src: SourceDataset) -> dict[str, list[Record]]:
        key = str(src.root)
        if key not in self._keyframes:
            index: dict[str, list[Record]] = defaultdict(list)
            for sd in src.tables.records["sample_data"]:
                if sd["is_key_frame"]:
                    index[sd["sample_token"]].append(sd)
            self._keyframes[key] = index
        return self._keyframes[key]

    def _drop_annotations(self, sample_token: str) -> int:
        if self._anns_of_sample is None:
            self._anns_of_sample = defaultdict(list)
            for a in self.t["sample_annotation"].values():
                self._anns_of_sample[a["sample_token"]].append(a["token"])
        tokens = self._anns_of_sample.pop(sample_token, [])
        for tok in tokens:
            self.touched.add(self.t["sample_annotation"].pop(tok)["instance_token"])
        return len(tokens)

    def drop_frames(self, sample_tokens: Iterable[str]) -> None:
        """Drop the annotations of the frames a batch relabels, before any is added back (so an object
        whose every frame is relabeled may change class)."""
        for tok in sample_tokens:
            if tok in self.t["sample"]:
                self._drop_annotations(tok)

    def _orphaned(self, instance_token: str) -> bool:
        """Whether every annotation of an instance in the version was dropped by a relabel (its class may
        then change: the labels correct what the object is); the instance record is then replaced."""
        if instance_token not in self.touched:
            return False
        if any(a["instance_token"] == instance_token for a in self.t["sample_annotation"].values()):
            return False
        del self.t["instance"][instance_token]
        return True

    def add_frame(self, src: SourceDataset, sample_token: str, anns: list[Record], instances: Mapping[str, Record],
                  source: str) -> bool:
        """Add a labeled frame with its annotations; a frame already in the version has its annotations
        replaced. Returns whether the frame is new to the version."""
        if self._base_scenes is None:
            self._base_scenes = len(self.t["scene"])
        sample = src.tables.by_token["sample"][sample_token]
        scene = src.tables.by_token["scene"][sample["scene_token"]]
        origin = self.origins.get(scene["token"])
        if origin is not None and origin["dataset"] != str(src.root):
            raise VersionError(f"{src.root}/{src.tables.file('scene')}: scene token {scene['token']!r} is already in the "
                               f"version, from {origin['dataset']}; two datasets share tokens")
        new = sample_token not in self.t["sample"]
        if not new:
            self._drop_annotations(sample_token)
        else:
            where = f"{src.root}/{src.tables.version}"
            if origin is None:
                name = self._add_scene(src, scene)
                split = self._train_split(src)
                if split is not None:
                    self.splits[split].append(name)
                log = src.tables.by_token["log"][scene["log_token"]]
                self._put("log", self._copy(src, "log", log), where)
                for m in src.tables.records["map"]:
                    if log["token"] in m["log_tokens"]:
                        if m["token"] in self.t["map"]:
                            self.t["map"][m["token"]]["log_tokens"].append(log["token"])
                        else:
                            self._put("map", dict(self._copy(src, "map", m), log_tokens=[log["token"]]), where)
            self._put("sample", self._copy(src, "sample", sample), where)
            for sd in self._keyframes_of(src).get(sample_token, []):
                self._put("sample_data", self._copy(src, "sample_data", sd), where)
                self._put("ego_pose", self._copy(src, "ego_pose", src.tables.by_token["ego_pose"][sd["ego_pose_token"]]),
                          where)
                cs = src.tables.by_token["calibrated_sensor"][sd["calibrated_sensor_token"]]
                self._put("calibrated_sensor", self._copy(src, "calibrated_sensor", cs), where)
            self.grown.add(scene["token"])
        for a in anns:
            inst = self._copy(src, "instance", instances[a["instance_token"]])
            old = self.t["instance"].get(inst["token"])
            if old is None:
                self.t["instance"][inst["token"]] = inst
            elif old["category_token"] != inst["category_token"]:
                if not self._orphaned(inst["token"]):
                    raise VersionError(f"{source}: instance {inst['token']!r} is a {self._category(old)} in the version; "
                                       f"these labels make it a {self._category(inst)}: give the reclassed object a new "
                                       "instance token (or relabel every frame it is in)")
                self.t["instance"][inst["token"]] = inst
            if a["token"] in self.t["sample_annotation"]:
                other = self.t["sample_annotation"][a["token"]]["sample_token"]
                raise VersionError(f"{source}: sample_annotation token {a['token']!r} is already an annotation of "
                                   f"sample {other!r} in the version; tokens must be unique")
            rec = self._copy(src, "sample_annotation", a)
            rec.setdefault("num_radar_pts", 0)
            self.t["sample_annotation"][rec["token"]] = rec
            if self._anns_of_sample is not None:
                self._anns_of_sample[sample_token].append(rec["token"])
            self.touched.add(rec["instance_token"])
        return new

    def _category(self, inst: Record) -> str:
        rec = self.t["category"].get(inst["category_token"])
        return str(rec["name"]) if rec else repr(inst["category_token"])

    # -- relinking ----------------------------------------------------------------------------------
    def finish(self) -> dict[str, list[Record]]:
        """Relink what the additions changed; the tables as lists."""
        t = self.t
        times = {s["token"]: int(s["timestamp"]) for s in t["sample"].values()}
        samples_of: dict[str, list[Record]] = defaultdict(list)
        for s in t["sample"].values():
            if s["scene_token"] in self.grown:
                samples_of[s["scene_token"]].append(s)
        data_of: dict[str, list[Record]] = defaultdict(list)
        grown_samples = {s["token"] for ss in samples_of.values() for s in ss}
        channel = {cs["token"]: t["sensor"][cs["sensor_token"]]["channel"] for cs in t["calibrated_sensor"].values()}
        for sd in t["sample_data"].values():
            if sd["sample_token"] in grown_samples:
                scene = t["sample"][sd["sample_token"]]["scene_token"]
                data_of[f"{scene}/{channel[sd['calibrated_sensor_token']]}"].append(sd)
        for chain in (*samples_of.values(), *data_of.values()):
            chain.sort(key=lambda r: (int(r["timestamp"]), r["token"]))
            for k, rec in enumerate(chain):
                rec["prev"] = chain[k - 1]["token"] if k > 0 else ""
                rec["next"] = chain[k + 1]["token"] if k + 1 < len(chain) else ""
        for scene_tok, ss in samples_of.items():
            t["scene"][scene_tok].update(first_sample_token=ss[0]["token"], last_sample_token=ss[-1]["token"],
                                         nbr_samples=len(ss))
        chain_instances(t["sample_annotation"].values(), t["instance"], self.touched, times)
        for m in t["map"].values():
            m["log_tokens"] = [tok for tok in dict.fromkeys(m["log_tokens"]) if tok in t["log"]]
        return {name: list(t[name].values()) for name in TABLES}


# --------------------------------------------------------------------------------------------------
# Ingest
# --------------------------------------------------------------------------------------------------


@dataclass
class IngestSummary:
    """What an ingest did."""

    source: str  # the labels file
    format: str  # "nuscenes" or "label-studio"
    batch_id: int
    version: str | None  # the version written (None when no frame was labeled)
    root: Path | None  # its directory
    parent: str | None  # the parent version's name
    frames_new: list[str] = field(default_factory=list)  # sample tokens added to the dataset
    frames_relabeled: list[str] = field(default_factory=list)  # sample tokens whose annotations were replaced
    annotations: int = 0  # annotations written by the batch
    version_frames: int = 0  # samples in the version
    version_annotations: int = 0  # annotations in the version
    classes: dict[str, int] = field(default_factory=dict)  # detection class -> annotations written
    full_labeling: list[str] = field(default_factory=list)  # frames sent to full 3D labeling (stay queued)
    incomplete: list[dict[str, Any]] = field(default_factory=list)  # frames not fully reviewed (stay queued)
    details: dict[str, Any] = field(default_factory=dict)  # what the batch recorded
    litter: list[str] = field(default_factory=list)  # leftovers of killed ingests removed first


@contextlib.contextmanager
def _ingest_lock(versions_dir: Path) -> Iterator[None]:
    """One ingest at a time per catalog: an exclusive lock on its versions directory (the kernel releases
    it when the holder dies, so a killed ingest never blocks the next)."""
    versions_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(versions_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_litter(cat: Catalog, versions_dir: Path, out: Path | None) -> list[str]:
    """Remove what killed ingests of this catalog left (call with the ingest lock held): temporary
    directories of dead writers, and version directories whose manifest names this catalog but which the
    catalog never recorded. ``out``: the version directory asked for with ``--out`` (its parent directory
    is searched for its own temporary directories only). Returns the paths removed."""
    roots = {os.path.realpath(r) for (r,) in cat.conn.execute("SELECT root FROM dataset_versions")}
    names = {str(n) for (n,) in cat.conn.execute("SELECT name FROM dataset_versions")}
    catalog = str(cat.path.resolve())
    tmps = [(versions_dir, None)] + ([(out.parent, out.name)] if out is not None else [])
    found: list[Path] = []
    for folder, only in tmps:
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            m = TMP_PATTERN.fullmatch(entry.name)
            if (m and (only is None or m["name"] == only) and entry.is_dir() and not entry.is_symlink()
                    and (int(m["pid"]) == os.getpid() or not process_alive(int(m["pid"])))):
                found.append(entry)
    candidates = [e for e in sorted(versions_dir.iterdir()) if not e.name.startswith(".")] + ([out] if out else [])
    for entry in candidates:
        if not entry.is_dir() or entry.is_symlink() or os.path.realpath(entry) in roots:
            continue
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            continue  # not a version written by an ingest: not ours to remove
        if isinstance(manifest, dict) and manifest.get("catalog") == catalog and manifest.get("name") not in names:
            found.append(entry)
    removed = {os.path.realpath(e): e for e in found}  # --out inside the versions directory is met twice
    for entry in removed.values():
        shutil.rmtree(entry)
    return [str(e) for e in removed.values()]


def _next_name(cat: Catalog, versions_dir: Path) -> str:
    k = int(cat.conn.execute("SELECT COUNT(*) FROM dataset_versions").fetchone()[0]) + 1
    while cat.dataset_version(f"v{k:04d}") is not None or (versions_dir / f"v{k:04d}").exists():
        k += 1
    return f"v{k:04d}"


def _class_counts(valid: ValidLabels, fr: FrameRow) -> dict[str, int]:
    """The category and detection-class counts of a frame's annotations (as Catalog.index_dataset counts)."""
    counts: Counter[str] = Counter()
    src = valid.sources[fr.dataset_root]
    for a in valid.annotations[fr.sample_token]:
        name = src.category_name(valid.instances[a["instance_token"]]["category_token"]) or ""
        for k in {name, CATEGORY_TO_DETECTION.get(name)} - {None, ""}:
            counts[str(k)] += 1
    return dict(counts)


def _write_version(root: Path, name: str, tables: dict[str, list[Record]], splits: dict[str, list[str]],
                   files: Mapping[str, str], manifest: dict[str, Any], check_samples: list[str]) -> None:
    """Write the version into a temporary sibling, load it back, rename it to ``root``."""
    missing = [rel for rel, target in files.items() if not os.path.exists(target)]
    if missing:
        raise VersionError(f"{files[missing[0]]}: the file {missing[0]!r} of the version is missing "
                           f"({len(missing)} missing in all)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        table_dir = tmp / (VERSION_PREFIX + name)
        table_dir.mkdir(parents=True)
        for table in TABLES:
            (table_dir / f"{table}.json").write_text(json.dumps(tables[table], indent=0))
        (table_dir / "splits.json").write_text(json.dumps(splits, indent=1))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        inside = os.path.realpath(tmp) + os.sep
        for rel, target in files.items():
            link = tmp / rel
            # A table path may name a directory the version links (say "samples"), which would make the
            # links under it land in the original dataset: each link's directory, links resolved, must
            # stay inside the version.
            if link.name in ("", ".", "..") or not (os.path.realpath(link.parent) + os.sep).startswith(inside):
                raise VersionError(f"{root}: the version's file {rel!r} (a link to {target}) would be written "
                                   "outside the version directory; a table path names a directory or leaves the dataset")
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
        try:
            reader = load_dataset(tmp)
            for tok in check_samples:
                for cam in reader.sample(tok).cameras.values():
                    if not cam.path.is_file():
                        raise VersionError(f"{cam.path}: image of the new frame {tok} does not resolve")
        except DatasetError as exc:
            raise VersionError(f"the version written for {root} does not load: {exc}") from None
        os.rename(tmp, root)
    except OSError as exc:  # a full disk, a read-only directory: nothing of the version is kept
        shutil.rmtree(tmp, ignore_errors=True)
        raise VersionError(f"{root}: cannot write the version: {one_line(exc)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ingest(cat: Catalog, labels_path: str | Path, name: str | None = None, out: str | Path | None = None,
           relabel: bool = False) -> IngestSummary:
    """Validate a labels file whole, write a new dataset version, and record both in the catalog.

    ``labels_path``: nuScenes records (a JSON object) or a Label Studio export (a JSON list). Nothing is
    written when any record fails; see the module docstring for the version written.
    """
    path = Path(labels_path)
    source = str(path)
    obj = read_labels_file(path)
    sources: dict[str, SourceDataset] = {}
    review: LabelStudioResult | None = None
    if isinstance(obj, list):
        review = labels_from_label_studio(cat, obj, source, relabel, sources)
        labels, fmt = review.labels, "label-studio"
    else:
        labels, fmt = parse_labels(obj, source), "nuscenes"
    valid = validate_labels(cat, labels, source, relabel, sources) if labels.frames or review is None else None
    if review is not None and valid is None and not review.full_labeling:
        raise LabelsError(f"{source}: no frame of the export can be applied: "
                          + "; ".join(f"{x['frame']} lacks reviewed {', '.join(x['missing'])}" for x in review.incomplete[:5]))
    versions_dir = cat.path.parent / "versions"
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise VersionError(f"--name {name!r}: a version name is letters, digits, '.', '_' and '-'")
    # From the parent and the name to the catalog's record of the version, one ingest at a time.
    with _ingest_lock(versions_dir) if valid is not None else contextlib.nullcontext():
        out_root = Path(out).resolve() if out is not None else None
        litter = _remove_litter(cat, versions_dir, out_root) if valid is not None else []
        parent = cat.dataset_version()
        name = name or _next_name(cat, versions_dir)
        if cat.dataset_version(name) is not None:
            raise VersionError(f"{cat.path}: version {name!r} exists; choose another --name")
        root = out_root if out_root is not None else (versions_dir / name).resolve()
        if valid is not None and root.exists():
            raise VersionError(f"{root}: already exists; the version is written to a new directory (give --out or --name)")
        details = dict(review.details) if review is not None else {"format": fmt}
        summary = IngestSummary(source, fmt, 0, None, None, parent["name"] if parent else None,
                                full_labeling=[f.sample_token for f in review.full_labeling] if review else [],
                                incomplete=review.incomplete if review else [], litter=litter)
        version_row = None
        if valid is not None:
            b = _Builder()
            if parent is not None:
                b.add_parent(Path(parent["root"]))
            for droot in cat.labeled_dataset_roots():
                if droot not in b.sources:
                    b.add_dataset(load_source(droot, sources))
            b.drop_frames(fr.sample_token for fr in valid.frames)
            for fr in valid.frames:
                if b.add_frame(valid.sources[fr.dataset_root], fr.sample_token, valid.annotations[fr.sample_token],
                               valid.instances, source):
                    summary.frames_new.append(fr.sample_token)
                else:
                    summary.frames_relabeled.append(fr.sample_token)
            tables = b.finish()
            manifest = {"name": name, "parent": parent["name"] if parent else None, "catalog": str(cat.path.resolve()),
                        "labels": source, "sources": b.sources, "scenes": b.origins}
            _write_version(root, name, tables, b.splits, b.files, manifest, summary.frames_new)
            summary.version, summary.root = name, root
            summary.version_frames, summary.version_annotations = len(tables["sample"]), len(tables["sample_annotation"])
            summary.annotations = valid.annotation_count
            version_row = {"name": name, "root": str(root), "frames": summary.version_frames,
                           "annotations": summary.version_annotations}
            details.update(relabeled=summary.frames_relabeled, new_frames=len(summary.frames_new))
        counts = {fr.id: _class_counts(valid, fr) for fr in valid.frames} if valid else {}
        total: Counter[str] = Counter()
        for cc in counts.values():
            total.update({c: n for c, n in cc.items() if c in DETECTION_CLASSES})
        summary.classes = dict(sorted(total.items()))
        details["classes"] = summary.classes
        summary.details = details
        try:
            summary.batch_id = cat.apply_label_batch(
                source=source, fmt=fmt, labeled=counts,
                annotations={fr.id: len(valid.annotations[fr.sample_token]) for fr in valid.frames} if valid else {},
                full_labeling=[f.id for f in review.full_labeling] if review else [], details=details,
                expect=("queued", "labeled") if relabel else ("queued",), version=version_row,
                parent_id=parent["id"] if parent else None)
        except BaseException:
            if summary.root is not None:
                shutil.rmtree(summary.root, ignore_errors=True)
            raise
    return summary


# --------------------------------------------------------------------------------------------------
# Diff
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


# Every error of the ingest and diff paths, for the command line.
INGEST_ERRORS: tuple[type[Exception], ...] = (LabelsError, VersionError, CatalogError, DatasetError)
