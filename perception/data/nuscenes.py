"""A minimal, fast, typed reader of the nuScenes v1.0 format (no devkit).

It reads real nuScenes, nuScenes-mini and our synthetic world alike, and only fields real nuScenes
has. Loading indexes the tables once (dicts, no quadratic scans) and builds frozen dataclasses for
scenes, samples and their key frames; boxes are computed on request, in the ego frame of the
sample's ``LIDAR_TOP`` ego pose (the devkit's convention), as one :class:`BoxSet` of arrays.

Frames and names follow :mod:`perception.geometry`: every 4x4 is ``dst_T_src``; ``global`` is the map
frame of the log; ``ego`` is the vehicle at the time of the frame that carries the pose; the
*reference* ego frame of a sample is the ego at its ``LIDAR_TOP`` timestamp.

    ds = load_dataset("data/nuscenes")            # version auto-detected
    s = ds.sample(0)
    img = read_image(s.cameras["CAM_FRONT"].path)  # BGR uint8 [H, W, 3]
    boxes = ds.box_set(s)                          # arrays in the reference ego frame
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np

from perception.data.box_set import Box3D, BoxSet, annotation_velocities
from perception.data.nuscenes_tables import (
    DatasetError,
    Record,
    Tables,
    check_annotation_boxes,
    check_unit_quaternions,
    find_version,
    read_json,
    read_tables,
)
from perception.data.records import CameraFrame, LidarFrame, Sample, Scene
from perception.data.sensor_files import MapMask, load_lidar_points, read_image, read_map_mask
from perception.schema import CAMERA_NAMES, LIDAR_NAME
from perception.geometry import invert_rigid, make_transform, quat_to_rotation

__all__ = [
    "Box3D",
    "BoxSet",
    "CameraFrame",
    "DatasetError",
    "LidarFrame",
    "MapMask",
    "NuScenesDataset",
    "Sample",
    "Scene",
    "load_dataset",
    "load_lidar_points",
    "read_image",
]


MAP_CACHE_SIZE = 4  # map rasters kept in memory per process


def load_dataset(root: str | Path, version: str | None = None) -> NuScenesDataset:
    """Load ``root/version`` (version auto-detected when exactly one ``v1.0-*`` holds a sample.json)."""
    root = Path(root).expanduser().resolve()
    version = find_version(root, version)
    return NuScenesDataset(root, version, read_tables(root, version))


class NuScenesDataset:
    """Scenes, samples, boxes, splits and maps of one nuScenes version, indexed once at load."""

    def __init__(self, root: Path, version: str, tables: Tables) -> None:
        self.root = root
        self.version = version
        self._t = tables
        self._map_cache: dict[str, MapMask] = {}
        self._intrinsics: dict[str, np.ndarray] = {}
        self.scenes: list[Scene] = []
        self.samples: list[Sample] = []
        self._sample_index: dict[str, int] = {}
        self._scene_index: dict[str, int] = {}
        self._build()
        self._t.release(("sample_data", "ego_pose", "sample"))  # now held by the typed samples
        self.splits: dict[str, tuple[str, ...]] = self._read_splits()

    # ---------------------------------------------------------------------------------------------
    # Lookups
    # ---------------------------------------------------------------------------------------------

    def sample(self, token_or_index: str | int) -> Sample:
        """A sample by token or by position in :attr:`samples` (negative counts from the end)."""
        if isinstance(token_or_index, (int, np.integer)):
            i = int(token_or_index)
            if not -len(self.samples) <= i < len(self.samples):
                raise DatasetError(f"{self.version}: sample index {i} out of range ({len(self.samples)} samples)")
            return self.samples[i]
        i = self._sample_index.get(token_or_index)
        if i is None:
            raise DatasetError(f"{self._t.file('sample')}: no sample with token {token_or_index!r}")
        return self.samples[i]

    def scene(self, token: str) -> Scene:
        """A scene by token."""
        i = self._scene_index.get(token)
        if i is None:
            raise DatasetError(f"{self._t.file('scene')}: no scene with token {token!r}")
        return self.scenes[i]

    def scene_of(self, sample: Sample) -> Scene:
        """The scene a sample belongs to."""
        return self.scene(sample.scene_token)

    def scene_samples(self, scene: Scene) -> list[Sample]:
        """The samples of a scene in time order."""
        return [self.samples[self._sample_index[t]] for t in scene.sample_tokens]

    def scenes_of_split(self, name: str) -> list[Scene]:
        """The scenes named by split ``name`` of splits.json, in the order the file lists them."""
        if name not in self.splits:
            raise DatasetError(f"{self.version}/splits.json: no split {name!r} (splits: {sorted(self.splits)})")
        by_name = {s.name: s for s in self.scenes}
        return [by_name[n] for n in self.splits[name]]

    @property
    def train_split(self) -> str | None:
        """The training split of splits.json (the first name, sorted, not ending in "val"), else None."""
        trains = sorted(s for s in self.splits if not s.endswith("val"))
        return trains[0] if trains else None

    @property
    def val_split(self) -> str | None:
        """The validation split of splits.json (the first name ending in "val"), else None (every scene)."""
        vals = sorted(s for s in self.splits if s.endswith("val"))
        return vals[0] if vals else None

    @property
    def camera_channels(self) -> tuple[str, ...]:
        """The camera channels every sample has, in schema.CAMERA_NAMES order first."""
        return tuple(self.samples[0].cameras) if self.samples else ()

    # ---------------------------------------------------------------------------------------------
    # Annotations and maps
    # ---------------------------------------------------------------------------------------------

    def box_set(self, sample: Sample, max_time_diff: float = 1.5) -> BoxSet:
        """All annotations of ``sample`` as arrays in its reference ego frame (see :class:`BoxSet`).

        Velocities follow the devkit's ``box_velocity`` (``max_time_diff`` seconds, doubled for a
        central difference; NaN when no estimate), rotated into the reference ego frame.
        """
        t = self._t
        anns = [t.by_token["sample_annotation"][tok] for tok in sample.annotation_tokens]
        v_global = annotation_velocities(anns, t.by_token["sample_annotation"], self._sample_time, max_time_diff)
        categories, attributes = [], []
        for a in anns:
            instance = t.by_token["instance"][a["instance_token"]]
            categories.append(t.by_token["category"][instance["category_token"]]["name"])
            attributes.append(tuple(t.by_token["attribute"][tok]["name"] for tok in a["attribute_tokens"]))
        return BoxSet.from_global(
            ego_T_global=invert_rigid(sample.global_T_ego),
            translation=np.asarray([a["translation"] for a in anns], dtype=np.float64).reshape(-1, 3),
            size_wlh=np.asarray([a["size"] for a in anns], dtype=np.float64).reshape(-1, 3),
            rotation=np.asarray([a["rotation"] for a in anns], dtype=np.float64).reshape(-1, 4),
            velocity_global=v_global,
            categories=tuple(categories),
            attributes=tuple(attributes),
            visibility=tuple(a["visibility_token"] for a in anns),
            num_lidar_pts=np.asarray([a["num_lidar_pts"] for a in anns], dtype=np.int64),
            tokens=tuple(a["token"] for a in anns),
            instance_tokens=tuple(a["instance_token"] for a in anns),
        )

    def boxes(self, sample: Sample, max_time_diff: float = 1.5) -> list[Box3D]:
        """The annotations of ``sample`` as a list of :class:`Box3D` (same values as :meth:`box_set`)."""
        return self.box_set(sample, max_time_diff).to_boxes(sample.token)

    def map_mask(self, map_token: str, resolution: float = 0.1) -> MapMask:
        """The map PNG of ``map_token``; ``resolution`` is its metres per pixel (nuScenes: 0.1).

        The last few maps read stay cached (maps are large; frames are read scene by scene)."""
        if map_token not in self._map_cache:
            rec = self._t.by_token["map"].get(map_token)
            if rec is None:
                raise DatasetError(f"{self._t.file('map')}: no map with token {map_token!r}")
            while len(self._map_cache) >= MAP_CACHE_SIZE:
                self._map_cache.pop(next(iter(self._map_cache)))
            self._map_cache[map_token] = read_map_mask(map_token, self.root / rec["filename"], resolution)
        return self._map_cache[map_token]

    # ---------------------------------------------------------------------------------------------
    # Building the index
    # ---------------------------------------------------------------------------------------------

    def _build(self) -> None:
        t = self._t
        self._sample_time = {r["token"]: int(r["timestamp"]) for r in t.records["sample"]}
        keyframes = self._key_frames()
        channels = self._check_channels(keyframes)
        sweeps = self._sweep_chains(keyframes, channels)
        used = [f for frames in keyframes.values() for f in frames.values()]
        used += [f for chains in sweeps.values() for chain in chains.values() for f in chain]
        calib = _transforms(t, "calibrated_sensor", {f["calibrated_sensor_token"] for f in used})
        poses = _transforms(t, "ego_pose", {f["ego_pose_token"] for f in used})
        anns_of_sample = self._index_annotations()

        samples_of_scene: dict[str, list[Record]] = defaultdict(list)
        for rec in t.records["sample"]:
            t.get("scene", rec["scene_token"], "sample", rec["token"])
            samples_of_scene[rec["scene_token"]].append(rec)
        map_of_log = {log: m["token"] for m in t.records["map"] for log in m["log_tokens"]}
        for scene_rec in t.records["scene"]:
            log = t.get("log", scene_rec["log_token"], "scene", scene_rec["token"])
            recs = sorted(samples_of_scene.get(scene_rec["token"], []), key=lambda r: int(r["timestamp"]))
            for k, rec in enumerate(recs):
                frames = keyframes.get(rec["token"], {})
                cams = {ch: self._camera(frames[ch], ch, calib, poses) for ch in channels}
                self._sample_index[rec["token"]] = len(self.samples)
                self.samples.append(Sample(
                    token=rec["token"], index=len(self.samples), scene_token=scene_rec["token"], scene_index=k,
                    timestamp=int(rec["timestamp"]), prev=rec["prev"], next=rec["next"],
                    cameras=cams, lidar=self._lidar(frames[LIDAR_NAME], calib, poses),
                    annotation_tokens=tuple(anns_of_sample.get(rec["token"], ())),
                    sweeps={ch: tuple(self._camera(sd, ch, calib, poses) for sd in chain)
                            for ch, chain in sweeps.get(rec["token"], {}).items()},
                ))
            self._scene_index[scene_rec["token"]] = len(self.scenes)
            self.scenes.append(Scene(
                token=scene_rec["token"], name=scene_rec["name"], description=scene_rec["description"],
                log_token=scene_rec["log_token"], location=log["location"],
                map_token=map_of_log.get(scene_rec["log_token"]), sample_tokens=tuple(r["token"] for r in recs),
            ))

    def _key_frames(self) -> dict[str, dict[str, Record]]:
        """sample token -> channel -> key-frame sample_data record (cameras and LIDAR_TOP only)."""
        t = self._t
        modality_of_calib: dict[str, tuple[str, str]] = {}
        for cs in t.records["calibrated_sensor"]:
            sensor = t.by_token["sensor"][cs["sensor_token"]]  # checked by read_tables
            modality_of_calib[cs["token"]] = (sensor["channel"], sensor["modality"])
        out: dict[str, dict[str, Record]] = defaultdict(dict)
        for sd in t.records["sample_data"]:
            if not sd["is_key_frame"]:
                continue
            kind = modality_of_calib.get(sd["calibrated_sensor_token"])
            if kind is None:
                t.get("calibrated_sensor", sd["calibrated_sensor_token"], "sample_data", sd["token"])
                continue
            channel, modality = kind
            if modality != "camera" and channel != LIDAR_NAME:
                continue  # radars are not read
            t.get("sample", sd["sample_token"], "sample_data", sd["token"])
            t.get("ego_pose", sd["ego_pose_token"], "sample_data", sd["token"])
            if channel in out[sd["sample_token"]]:
                raise DatasetError(
                    f"{t.file('sample_data')}: sample {sd['sample_token']!r} has two key frames of {channel} "
                    f"({out[sd['sample_token']][channel]['token']!r} and {sd['token']!r})"
                )
            out[sd["sample_token"]][channel] = sd
        return out

    def _sweep_chains(self, keyframes: dict[str, dict[str, Record]],
                      channels: tuple[str, ...]) -> dict[str, dict[str, list[Record]]]:
        """sample token -> camera -> the non-key frames that follow its key frame (by the ``next``
        links), up to the next key frame."""
        t = self._t
        by_token = t.by_token["sample_data"]
        out: dict[str, dict[str, list[Record]]] = {}
        for sample_token, frames in keyframes.items():
            chains: dict[str, list[Record]] = {}
            for ch in channels:
                chain: list[Record] = []
                nxt = frames[ch]["next"]
                while nxt:
                    sd = by_token.get(nxt)
                    if sd is None:
                        raise DatasetError(f"{t.file('sample_data')}: {frames[ch]['token']!r} links next to "
                                           f"missing sample_data {nxt!r}")
                    if sd["is_key_frame"]:
                        break
                    t.get("ego_pose", sd["ego_pose_token"], "sample_data", sd["token"])
                    chain.append(sd)
                    nxt = sd["next"]
                if chain:
                    chains[ch] = chain
            if chains:
                out[sample_token] = chains
        return out

    def _check_channels(self, keyframes: dict[str, dict[str, Record]]) -> tuple[str, ...]:
        """Every sample must have LIDAR_TOP and the same set of cameras; returns the camera channels."""
        t = self._t
        expected: set[str] | None = None
        first = ""
        for rec in t.records["sample"]:
            frames = keyframes.get(rec["token"], {})
            if LIDAR_NAME not in frames:
                raise DatasetError(f"{t.file('sample_data')}: sample {rec['token']!r} has no {LIDAR_NAME} key frame")
            cams = set(frames) - {LIDAR_NAME}
            if expected is None:
                expected, first = cams, rec["token"]
            elif cams != expected:
                raise DatasetError(
                    f"{t.file('sample_data')}: sample {rec['token']!r} has cameras {sorted(cams)} but sample "
                    f"{first!r} has {sorted(expected)} (missing {sorted(expected - cams)}, "
                    f"extra {sorted(cams - expected)}); "
                    "every sample must have the same cameras"
                )
        known = [c for c in CAMERA_NAMES if c in (expected or set())]
        return tuple(known + sorted((expected or set()) - set(known)))

    def _index_annotations(self) -> dict[str, list[str]]:
        """sample token -> annotation tokens, checking every token an annotation references."""
        t = self._t
        out: dict[str, list[str]] = defaultdict(list)
        check_annotation_boxes(t, t.records["sample_annotation"])
        for ann in t.records["sample_annotation"]:
            t.check_refs("sample_annotation", ann, "sample_token", "sample")
            instance = t.get("instance", ann["instance_token"], "sample_annotation", ann["token"])
            t.check_refs("instance", instance, "category_token", "category")
            t.check_refs("sample_annotation", ann, "visibility_token", "visibility")
            t.check_refs("sample_annotation", ann, "attribute_tokens", "attribute")
            t.check_refs("sample_annotation", ann, "prev", "sample_annotation")
            t.check_refs("sample_annotation", ann, "next", "sample_annotation")
            out[ann["sample_token"]].append(ann["token"])
        return out

    def _camera(
        self, sd: Record, channel: str, calib: dict[str, np.ndarray], poses: dict[str, np.ndarray]
    ) -> CameraFrame:
        K = self._intrinsics.get(sd["calibrated_sensor_token"])
        if K is None:  # one read-only array per calibrated sensor, shared by its frames
            cs = self._t.by_token["calibrated_sensor"][sd["calibrated_sensor_token"]]
            K = self._intrinsics[sd["calibrated_sensor_token"]] = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
            K.setflags(write=False)
        return CameraFrame(
            token=sd["token"], channel=channel, root=self.root, filename=sd["filename"], K=K,
            ego_T_cam=calib[sd["calibrated_sensor_token"]], global_T_ego=poses[sd["ego_pose_token"]],
            timestamp=int(sd["timestamp"]), width=int(sd["width"]), height=int(sd["height"]),
        )

    def _lidar(self, sd: Record, calib: dict[str, np.ndarray], poses: dict[str, np.ndarray]) -> LidarFrame:
        return LidarFrame(
            token=sd["token"], channel=LIDAR_NAME, root=self.root, filename=sd["filename"],
            ego_T_lidar=calib[sd["calibrated_sensor_token"]], global_T_ego=poses[sd["ego_pose_token"]],
            timestamp=int(sd["timestamp"]),
        )

    def _read_splits(self) -> dict[str, tuple[str, ...]]:
        path = self.root / self.version / "splits.json"
        label = f"{self.version}/splits.json"
        if not path.is_file():
            return {}
        raw = read_json(path, label)
        if not isinstance(raw, dict) or not all(isinstance(v, list) and all(isinstance(n, str) for n in v)
                                                for v in raw.values()):
            raise DatasetError(f"{label}: expected an object mapping split names to lists of scene names")
        names = {s.name for s in self.scenes}
        for split, scenes in raw.items():
            unknown = [n for n in scenes if n not in names]
            if unknown:
                raise DatasetError(
                    f"{label}: split {split!r} names scenes not in {self._t.file('scene')}: {unknown[:5]}"
                )
        return {split: tuple(scenes) for split, scenes in raw.items()}


def _transforms(tables: Tables, table: str, tokens: set[str]) -> dict[str, np.ndarray]:
    """token -> read-only 4x4 ``dst_T_src`` of the (rotation, translation) records ``tokens`` of ``table``,
    converted in one batched call; rotations must be unit quaternions."""
    order = sorted(tokens)
    recs = [tables.by_token[table][tok] for tok in order]
    check_unit_quaternions(tables, table, recs)
    if not recs:
        return {}
    rot = quat_to_rotation(np.asarray([r["rotation"] for r in recs], dtype=np.float64))
    mats = make_transform(rot, np.asarray([r["translation"] for r in recs], dtype=np.float64))
    mats.setflags(write=False)
    return {tok: mats[i] for i, tok in enumerate(order)}
