"""A tiny but valid nuScenes v1.0 dataset with known ground truth, written from scratch for tests.

Two scenes (by default) of three samples; six cameras with nuScenes-like intrinsics (fx 630 at
800x450, CAM_BACK wider) and extrinsics; a LIDAR_TOP mounted yawed by -90 degrees as in nuScenes; a
RADAR_FRONT key frame and one CAM_FRONT sweep per scene that the reader must skip; cameras fire
12 ms apart after the lidar, each with its own ego pose; one map PNG at 0.1 m/px.

Objects move linearly in the global frame, so their true velocity is known. Scene template A has
samples at 0, 0.5, 1.0 s: a car seen by CAM_FRONT at a chosen pixel, a pedestrian seen once, a cone
annotated at samples 0 and 2 only, an animal (not a detection class). Template B has samples at
0, 0.5, 2.3 s: a truck in all three (the last one-sided gap, 1.8 s, is too long), a bus in the last
two only.

The fixture builds its transforms with explicit matrices and ``np.linalg.inv``, independently of
the reader, and writes rotations as quaternions.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from perception.schema import ATTRIBUTES, CATEGORY_DESCRIPTIONS, VISIBILITY
from perception.geometry import camera_rotation_from_yaw_pitch, rotation_to_quat

VERSION = "v1.0-fixture"
WIDTH, HEIGHT = 800, 450
MAP_SIZE_PX = 1000  # 100 m x 100 m at 0.1 m/px
CAM_DELAY_US = 12_000  # camera i fires at lidar time + (i + 1) * 12 ms
# channel: (translation in ego, yaw rad, pitch rad, fx)
RIG: dict[str, tuple[tuple[float, float, float], float, float, float]] = {
    "CAM_FRONT": ((1.70, 0.016, 1.51), 0.0, 0.01, 630.0),
    "CAM_FRONT_RIGHT": ((1.55, -0.49, 1.50), -0.96, 0.0, 630.0),
    "CAM_BACK_RIGHT": ((1.03, -0.48, 1.56), -1.92, 0.0, 630.0),
    "CAM_BACK": ((0.03, 0.0, 1.57), np.pi, 0.0, 405.0),
    "CAM_BACK_LEFT": ((1.04, 0.48, 1.56), 1.92, 0.0, 630.0),
    "CAM_FRONT_LEFT": ((1.52, 0.49, 1.51), 0.96, 0.0, 630.0),
}
CX, CY = 404.0, 229.0
LIDAR_T = (0.94, 0.0, 1.84)
LIDAR_YAW = -np.pi / 2
CAR_PIXEL = (500.0, 260.0)  # where the template-A car's centre appears in CAM_FRONT at sample 0
CAR_DEPTH = 15.0  # metres along CAM_FRONT's optical axis


def token(*parts: object) -> str:
    """A deterministic 32-hex token, as nuScenes writes them."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def rigid(rotation: np.ndarray, translation: Any) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = rotation
    out[:3, 3] = translation
    return out


def rot_z(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def intrinsics(channel: str) -> np.ndarray:
    fx = RIG[channel][3]
    return np.array([[fx, 0.0, CX], [0.0, fx, CY], [0.0, 0.0, 1.0]])


def ego_T_cam(channel: str) -> np.ndarray:
    t, yaw, pitch, _ = RIG[channel]
    return rigid(camera_rotation_from_yaw_pitch(yaw, pitch), t)


def ego_T_lidar() -> np.ndarray:
    return rigid(rot_z(LIDAR_YAW), LIDAR_T)


@dataclass
class Truth:
    """What the fixture put where."""

    root: Path
    version: str
    sample_tokens: list[list[str]]  # per scene, in time order
    scene_names: list[str]
    global_T_ego: dict[str, np.ndarray] = field(default_factory=dict)  # sample token -> lidar ego pose [4, 4]
    ann_global: dict[str, np.ndarray] = field(default_factory=dict)  # annotation token -> centre [3]
    ann_yaw: dict[str, float] = field(default_factory=dict)  # annotation token -> global yaw (rad)
    ann_velocity: dict[str, np.ndarray] = field(default_factory=dict)  # annotation token -> expected global v [3] or NaN
    ann_category: dict[str, str] = field(default_factory=dict)
    car_pixel_ann: str = ""  # annotation seen at CAR_PIXEL in CAM_FRONT of the first sample
    image_paths: list[Path] = field(default_factory=list)


# Per template: sample times (s), ego start (x, y, yaw), ego speed, and objects:
# (name, category, attribute, size wlh, velocity xyz, sample indices present, visibility).
TEMPLATES: dict[str, dict[str, Any]] = {
    "A": {
        "times": (0.0, 0.5, 1.0), "ego": (30.0, 40.0, 0.4), "speed": 4.0, "description": "day, clear",
        "objects": [
            ("car", "vehicle.car", "vehicle.moving", (1.9, 4.5, 1.6), (3.0, -1.0, 0.0), (0, 1, 2), "4"),
            ("ped", "human.pedestrian.adult", "pedestrian.standing", (0.7, 0.7, 1.8), (0.0, 0.0, 0.0), (0,), "3"),
            ("cone", "movable_object.trafficcone", None, (0.4, 0.4, 0.8), (0.0, 0.0, 0.0), (0, 2), "2"),
            ("animal", "animal", None, (0.5, 1.0, 0.8), (0.5, 0.0, 0.0), (1,), "4"),
        ],
    },
    "B": {
        "times": (0.0, 0.5, 2.3), "ego": (60.0, 30.0, 2.0), "speed": 2.0, "description": "night, rain",
        "objects": [
            ("truck", "vehicle.truck", "vehicle.moving", (2.5, 7.0, 3.0), (-2.0, 1.5, 0.0), (0, 1, 2), "4"),
            ("bus", "vehicle.bus.rigid", "vehicle.moving", (2.9, 11.0, 3.4), (1.0, 1.0, 0.0), (1, 2), "1"),
        ],
    },
}
OBJECT_OFFSETS = {  # where each object starts, in the ego frame of the scene's first sample (x, y)
    "ped": (9.0, 5.0), "cone": (12.0, -4.0), "animal": (-10.0, 1.5), "truck": (14.0, -3.0), "bus": (-18.0, 4.0),
}


def write_nuscenes_fixture(root: Path, num_scenes: int = 2, images: bool = True, version: str = VERSION) -> Truth:
    """Write the dataset under ``root`` and return its ground truth. ``images=False`` skips the JPEGs
    (for timing the reader on many scenes)."""
    root = Path(root)
    (root / version).mkdir(parents=True, exist_ok=True)
    (root / "maps").mkdir(parents=True, exist_ok=True)
    tb: dict[str, list[dict[str, Any]]] = {name: [] for name in (
        "attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map", "sample",
        "sample_annotation", "sample_data", "scene", "sensor", "visibility")}
    tb["attribute"] = [{"token": token("attr", n), "name": n, "description": d} for n, d in ATTRIBUTES.items()]
    categories = dict(CATEGORY_DESCRIPTIONS, animal="All animals.")
    tb["category"] = [{"token": token("cat", n), "name": n, "description": d} for n, d in categories.items()]
    tb["visibility"] = [{"token": k, "level": v[0], "description": v[1]} for k, v in VISIBILITY.items()]
    sensors = {**{ch: "camera" for ch in RIG}, "LIDAR_TOP": "lidar", "RADAR_FRONT": "radar"}
    for ch, modality in sensors.items():
        tb["sensor"].append({"token": token("sensor", ch), "channel": ch, "modality": modality})
        if modality == "camera":
            m, K = ego_T_cam(ch), intrinsics(ch).tolist()
        else:
            m, K = (ego_T_lidar(), []) if ch == "LIDAR_TOP" else (rigid(np.eye(3), (3.4, 0.0, 0.5)), [])
        tb["calibrated_sensor"].append({
            "token": token("calib", ch), "sensor_token": token("sensor", ch), "translation": m[:3, 3].tolist(),
            "rotation": rotation_to_quat(m[:3, :3]).tolist(), "camera_intrinsic": K})
    log_tokens = [token("log", i) for i in range(num_scenes)]
    for i, lt in enumerate(log_tokens):
        tb["log"].append({"token": lt, "logfile": f"fixture-log-{i}", "vehicle": "fixture-car",
                          "date_captured": "2020-01-01", "location": "fixture-town"})
    map_token = token("map")
    tb["map"].append({"token": map_token, "log_tokens": log_tokens, "category": "semantic_prior",
                      "filename": f"maps/{map_token}.png"})
    truth = Truth(root=root, version=version, sample_tokens=[], scene_names=[])
    road = np.zeros((MAP_SIZE_PX, MAP_SIZE_PX), np.uint8)
    for s in range(num_scenes):
        _write_scene(root, tb, truth, s, "AB"[s % 2], log_tokens[s], images, road)
    cv2.imwrite(str(root / "maps" / f"{map_token}.png"), road)
    for name, recs in tb.items():
        (root / version / f"{name}.json").write_text(json.dumps(recs, indent=0))
    splits = {"fixture_train": truth.scene_names[::2], "fixture_val": truth.scene_names[1::2]}
    (root / version / "splits.json").write_text(json.dumps(splits))
    return truth


def _write_scene(root: Path, tb: dict[str, list[dict[str, Any]]], truth: Truth, s: int, tpl_name: str,
                 log_token: str, images: bool, road: np.ndarray) -> None:
    tpl = TEMPLATES[tpl_name]
    x0, y0, yaw0 = tpl["ego"]
    t0_us = 1_600_000_000_000_000 + s * 100_000_000
    heading = np.array([np.cos(yaw0), np.sin(yaw0), 0.0])

    def global_T_ego_at(t: float) -> np.ndarray:
        return rigid(rot_z(yaw0), np.array([x0, y0, 0.0]) + tpl["speed"] * t * heading)

    # Drivable area: a 12 m wide road along the ego path (map rows grow with -y).
    p0, p1 = np.array([x0, y0]) - 30 * heading[:2], np.array([x0, y0]) + 40 * heading[:2]
    pix = [(int(p[0] * 10), int(MAP_SIZE_PX - p[1] * 10)) for p in (p0, p1)]
    cv2.line(road, pix[0], pix[1], 255, thickness=120)

    scene_token, name = token("scene", s), f"scene-{s + 1:04d}"
    sample_tokens = [token("sample", s, k) for k in range(len(tpl["times"]))]
    truth.sample_tokens.append(sample_tokens)
    truth.scene_names.append(name)
    tb["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": len(sample_tokens),
                        "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                        "name": name, "description": tpl["description"]})
    times_us = [t0_us + int(round(t * 1e6)) for t in tpl["times"]]
    for k, st in enumerate(sample_tokens):
        tb["sample"].append({"token": st, "timestamp": times_us[k], "scene_token": scene_token,
                             "prev": sample_tokens[k - 1] if k else "",
                             "next": sample_tokens[k + 1] if k + 1 < len(sample_tokens) else ""})

    # Objects: start position in the global frame, then linear motion.
    start: dict[str, np.ndarray] = {}
    for obj in tpl["objects"]:
        if obj[0] == "car":  # placed so its centre is at CAR_PIXEL, CAR_DEPTH in CAM_FRONT's first frame
            t_cam = CAM_DELAY_US * 1e-6
            u, v = CAR_PIXEL
            K = intrinsics("CAM_FRONT")
            cam_pt = np.array([(u - K[0, 2]) / K[0, 0] * CAR_DEPTH, (v - K[1, 2]) / K[1, 1] * CAR_DEPTH, CAR_DEPTH, 1.0])
            at_cam_time = (global_T_ego_at(t_cam) @ ego_T_cam("CAM_FRONT") @ cam_pt)[:3]
            start[obj[0]] = at_cam_time  # the annotation at sample 0 (time 0) is this very point
        else:
            ox, oy = OBJECT_OFFSETS[obj[0]]
            start[obj[0]] = (global_T_ego_at(0.0) @ np.array([ox, oy, obj[3][2] / 2, 1.0]))[:3]

    frames: dict[str, list[dict[str, Any]]] = {}
    first_ann = len(tb["sample_annotation"])
    for k, st in enumerate(sample_tokens):
        objects_now = []
        for name_, cat, attr, size, vel, present, vis in tpl["objects"]:
            if k not in present:
                continue
            t_obj = tpl["times"][k]  # positions are taken at the sample (lidar) time
            centre = start[name_] + np.asarray(vel) * t_obj
            obj_yaw = float(np.arctan2(vel[1], vel[0])) if np.any(vel) else 0.3
            objects_now.append((name_, cat, attr, size, centre, obj_yaw, vis, np.asarray(vel, dtype=float)))
        frames.setdefault("LIDAR_TOP", []).append(
            _write_lidar(root, tb, truth, s, k, times_us[k], global_T_ego_at(tpl["times"][k]), st, objects_now))
        for i, ch in enumerate(RIG):
            t_us = times_us[k] + (i + 1) * CAM_DELAY_US
            g_T_e = global_T_ego_at(tpl["times"][k] + (i + 1) * CAM_DELAY_US * 1e-6)
            frames.setdefault(ch, []).append(_write_camera(root, tb, truth, ch, s, k, t_us, g_T_e, st, objects_now, images))
        radar = _sample_data(tb, ("radar", s, k), st, "RADAR_FRONT", times_us[k] + 5000,
                             global_T_ego_at(tpl["times"][k] + 0.005), f"samples/RADAR_FRONT/{token('radar', s, k)}.pcd", "pcd", 0, 0)
        frames.setdefault("RADAR_FRONT", []).append(radar)
        if k == 0:  # one CAM_FRONT sweep between the first two samples
            sweep = _sample_data(tb, ("sweep", s), st, "CAM_FRONT", times_us[0] + 250_000, global_T_ego_at(0.25),
                                 f"sweeps/CAM_FRONT/{token('sweep', s)}.jpg", "jpg", WIDTH, HEIGHT, is_key_frame=False)
            frames["CAM_FRONT"].append(sweep)
    for chain in frames.values():  # prev/next per channel in time order
        chain.sort(key=lambda r: r["timestamp"])
        for a, b in zip(chain, chain[1:]):
            a["next"], b["prev"] = b["token"], a["token"]

    # Annotations with prev/next along each instance; expected velocities as the devkit computes them.
    ann_index = {r["token"]: r for r in tb["sample_annotation"][first_ann:]}
    for name_, cat, attr, size, vel, present, vis in tpl["objects"]:
        inst = token("inst", s, name_)
        anns = [token("ann", s, name_, k) for k in present]
        tb["instance"].append({"token": inst, "category_token": token("cat", cat), "nbr_annotations": len(anns),
                               "first_annotation_token": anns[0], "last_annotation_token": anns[-1]})
        for j, (k, at) in enumerate(zip(present, anns)):
            rec = ann_index[at]
            rec["prev"] = anns[j - 1] if j else ""
            rec["next"] = anns[j + 1] if j + 1 < len(anns) else ""
            ks = [present[max(j - 1, 0)], present[min(j + 1, len(present) - 1)]]
            gap = tpl["times"][ks[1]] - tpl["times"][ks[0]]
            limit = 3.0 if 0 < j < len(present) - 1 else 1.5
            ok = len(present) > 1 and gap <= limit
            truth.ann_velocity[at] = np.asarray(vel, dtype=float) if ok else np.full(3, np.nan)
            truth.ann_category[at] = cat
            if name_ == "car" and k == 0:
                truth.car_pixel_ann = at


def _sample_data(tb: dict[str, list[dict[str, Any]]], key: tuple[Any, ...], sample_token: str, channel: str,
                 t_us: int, global_T_ego: np.ndarray, filename: str, fmt: str, w: int, h: int,
                 is_key_frame: bool = True) -> dict[str, Any]:
    pose_token = token("pose", *key)
    tb["ego_pose"].append({"token": pose_token, "timestamp": t_us, "translation": global_T_ego[:3, 3].tolist(),
                           "rotation": rotation_to_quat(global_T_ego[:3, :3]).tolist()})
    rec = {"token": token("sd", *key), "sample_token": sample_token, "ego_pose_token": pose_token,
           "calibrated_sensor_token": token("calib", channel), "timestamp": t_us, "fileformat": fmt,
           "is_key_frame": is_key_frame, "height": h, "width": w, "filename": filename, "prev": "", "next": ""}
    tb["sample_data"].append(rec)
    return rec


def _write_lidar(root: Path, tb: dict[str, list[dict[str, Any]]], truth: Truth, s: int, k: int, t_us: int,
                 global_T_ego: np.ndarray, sample_token: str, objects: list[tuple[Any, ...]]) -> dict[str, Any]:
    rng = np.random.default_rng(1000 * s + k)
    ego_T_global = np.linalg.inv(global_T_ego)
    ang, rad = rng.uniform(-np.pi, np.pi, 600), rng.uniform(3.0, 30.0, 600)
    pts_ego = [np.stack([rad * np.cos(ang), rad * np.sin(ang), np.full(600, -0.02)], 1)]  # ground, off box bottoms
    ego_T_boxes = [ego_T_global @ rigid(rot_z(obj[5]), obj[4]) for obj in objects]
    for (_, _, _, (w, l, h), *_), ego_T_box in zip(objects, ego_T_boxes):
        local = rng.uniform(-0.45, 0.45, (40, 3)) * np.array([l, w, h])  # strictly inside the box
        pts_ego.append(local @ ego_T_box[:3, :3].T + ego_T_box[:3, 3])
    pts = np.concatenate(pts_ego)
    for (name_, cat, attr, size, centre, yaw, vis, vel), ego_T_box in zip(objects, ego_T_boxes):
        box_T_ego = np.linalg.inv(ego_T_box)
        in_box = np.abs(pts @ box_T_ego[:3, :3].T + box_T_ego[:3, 3]) <= np.array([size[1], size[0], size[2]]) / 2
        at = token("ann", s, name_, k)
        truth.ann_global[at] = centre
        truth.ann_yaw[at] = yaw
        tb["sample_annotation"].append({
            "token": at, "sample_token": sample_token, "instance_token": token("inst", s, name_),
            "visibility_token": vis, "attribute_tokens": [token("attr", attr)] if attr else [],
            "translation": centre.tolist(), "size": list(size), "rotation": rotation_to_quat(rot_z(yaw)).tolist(),
            "prev": "", "next": "", "num_lidar_pts": int(in_box.all(axis=1).sum()), "num_radar_pts": 0})
    lidar_T_ego = np.linalg.inv(ego_T_lidar())
    pts_lidar = pts @ lidar_T_ego[:3, :3].T + lidar_T_ego[:3, 3]
    cloud = np.concatenate([pts_lidar, rng.uniform(0, 100, (len(pts), 1)), (np.arange(len(pts)) % 32)[:, None]], 1)
    filename = f"samples/LIDAR_TOP/{token('lidar', s, k)}.pcd.bin"
    (root / filename).parent.mkdir(parents=True, exist_ok=True)
    cloud.astype(np.float32).tofile(root / filename)
    rec = _sample_data(tb, ("lidar", s, k), sample_token, "LIDAR_TOP", t_us, global_T_ego, filename, "pcd", 0, 0)
    truth.global_T_ego[sample_token] = global_T_ego
    return rec


def _write_camera(root: Path, tb: dict[str, list[dict[str, Any]]], truth: Truth, ch: str, s: int, k: int, t_us: int,
                  global_T_ego: np.ndarray, sample_token: str, objects: list[tuple[Any, ...]], images: bool) -> dict[str, Any]:
    filename = f"samples/{ch}/{token('cam', ch, s, k)}.jpg"
    if images:
        img = np.empty((HEIGHT, WIDTH, 3), np.uint8)
        img[: HEIGHT // 2], img[HEIGHT // 2:] = (200, 170, 140), (90, 95, 100)  # sky, ground (BGR)
        cam_T_global = np.linalg.inv(global_T_ego @ ego_T_cam(ch))
        for *_, size, centre, yaw, _vis, _vel in objects:  # each object as a filled silhouette of its corners
            w, l, h = size
            signs = np.array([[a, b, c] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)], float) / 2
            corners = (rigid(rot_z(yaw), centre) @ np.c_[signs * [l, w, h], np.ones(8)].T)[:3].T
            cam = corners @ cam_T_global[:3, :3].T + cam_T_global[:3, 3]
            if np.all(cam[:, 2] > 0.5):
                uv = cam @ intrinsics(ch).T
                uv = (uv[:, :2] / uv[:, 2:]).astype(np.int32)
                cv2.fillConvexPoly(img, cv2.convexHull(uv), (60, 60, 200))
        cv2.putText(img, ch, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 2)
        (root / filename).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / filename), img, [cv2.IMWRITE_JPEG_QUALITY, 80])
        truth.image_paths.append(root / filename)
    return _sample_data(tb, ("cam", ch, s, k), sample_token, ch, t_us, global_T_ego, filename, "jpg", WIDTH, HEIGHT)


def rewrite_table(root: Path, table: str, mutate: Callable[[list[dict[str, Any]]], None], version: str = VERSION) -> None:
    """Load ``table``, let ``mutate`` change its records in place, write it back."""
    path = Path(root) / version / f"{table}.json"
    recs = json.loads(path.read_text())
    mutate(recs)
    path.write_text(json.dumps(recs))
