"""The version builder: a dataset version's tables, assembled in memory before ingest writes them.

It starts from the parent version (:meth:`VersionBuilder.add_parent`), merges whole labeled datasets
(:meth:`VersionBuilder.add_dataset`; categories, attributes, sensors and visibility levels are matched
by name, colliding scene names get a ``-<dataset directory>`` suffix) and adds newly labeled frames
(:meth:`VersionBuilder.add_frame`). A newly labeled frame of a pool scene brings its sample, its
key-frame sample_data, ego poses, calibration, sensor, log and map records; the scene holds only its
labeled samples, relinked in time order (:meth:`VersionBuilder.finish`). New scenes join the train split
(the split whose name does not end in "val"); the val split stays as in the parent. Relabeled frames
(``--relabel``) have their annotations replaced. Tokens are kept as the datasets write them, so datasets
must not share tokens (synthesize them with different seeds): a collision is refused.
"""

from __future__ import annotations

import copy
import json
import os
import posixpath
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path

from perception.data.nuscenes_tables import DatasetError, Record, find_version, read_tables
from perception.schema import TABLES
from perception.data.targets import lane_divider_path

from .records import SourceDataset, chain_instances
from .versions import MANIFEST, VersionError

__all__ = ["STATIC_KEYS", "VersionBuilder"]

# The key that identifies a record of a shared table across datasets.
STATIC_KEYS: dict[str, str] = {"category": "name", "attribute": "name", "sensor": "channel", "visibility": "level"}


class VersionBuilder:
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
        name = src.reader.train_split or "labeled_train"
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
