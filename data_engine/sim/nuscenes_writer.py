"""Records of the nuScenes v1.0 tables for scenes of the synthetic world.

``scene_records`` renders one scene and writes its sensor files, returning the rows it adds to each
table; ``static_records`` gives the tables every dataset shares (sensor, category, attribute,
visibility). Tokens are md5 digests of names, so the same world gives the same tokens.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from perception.schema import (
    ATTRIBUTES,
    CAMERA_NAMES,
    CATEGORY_DESCRIPTIONS,
    LIDAR_NAME,
    VISIBILITY,
)
from perception.geometry import quat_from_yaw, rotation_to_quat

from .rig import SENSOR_CHANNELS
from .world import KEYFRAME_DT, SWEEP_DT, FrameCapture, ObjectTruth, SceneWorld

Rows = dict[str, list[dict[str, Any]]]
JPEG_QUALITY = 90
TIME_BASE_US = 1_700_000_000_000_000


def token(*parts: object) -> str:
    """A deterministic 32-hex-digit token from names."""
    return hashlib.md5("/".join(str(p) for p in parts).encode()).hexdigest()


def static_records(seed: int) -> Rows:
    """sensor, category, attribute and visibility tables."""
    return {
        "sensor": [{"token": token(seed, "sensor", ch), "channel": ch, "modality": mod} for ch, mod in SENSOR_CHANNELS],
        "category": [{"token": token(seed, "category", name), "name": name, "description": desc}
                     for name, desc in CATEGORY_DESCRIPTIONS.items()],
        "attribute": [{"token": token(seed, "attribute", name), "name": name, "description": desc}
                      for name, desc in ATTRIBUTES.items()],
        "visibility": [{"token": tok, "level": level, "description": desc} for tok, (level, desc, _) in VISIBILITY.items()],
    }


def _write_bytes(path: Path, data: bytes) -> None:
    """Write a file through a temporary name and rename it, so no half-written file is ever seen.

    The temporary name is unique to the writer (pid and a random suffix): two writers of one path
    never write into, or rename, each other's temporary file.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _pose_row(tok: str, timestamp: int, global_T_ego: np.ndarray) -> dict[str, Any]:
    return {"token": tok, "timestamp": timestamp, "rotation": rotation_to_quat(global_T_ego[:3, :3]).tolist(),
            "translation": global_T_ego[:3, 3].tolist()}


def scene_records(world: SceneWorld, root: Path, frames: int, *, labeled: bool, sweeps: bool,
                  on_frame: Callable[[], None] | None = None) -> Rows:
    """Render a scene, write its images, lidar sweeps and map, and return its table rows."""
    spec, rig = world.spec, world.rig
    seed, name = spec.seed, spec.name
    rows: Rows = {k: [] for k in ("log", "map", "scene", "calibrated_sensor", "sample", "sample_data", "ego_pose",
                                  "sample_annotation", "instance")}
    log_tok = token(seed, name, "log")
    map_tok = token(seed, name, "map")
    rows["log"].append({"token": log_tok, "logfile": f"{name}-log", "vehicle": "synth-ego",
                        "date_captured": "2026-01-01", "location": f"synth-{seed}-{name}"})
    rows["map"].append({"token": map_tok, "log_tokens": [log_tok], "category": "semantic_prior",
                        "filename": f"maps/{map_tok}.png"})
    ok, png = cv2.imencode(".png", world.drivable)
    _write_bytes(root / "maps" / f"{map_tok}.png", png.tobytes())
    ok, png = cv2.imencode(".png", world.lane_dividers())
    _write_bytes(root / "maps" / f"{map_tok}.lane_divider.png", png.tobytes())
    calib: dict[str, str] = {}
    for ch, _ in SENSOR_CHANNELS:
        calib[ch] = token(seed, name, "calib", ch)
        if ch == LIDAR_NAME:
            ego_T, intr = rig.ego_T_lidar, []
        else:
            cam = rig.camera(ch)
            ego_T, intr = cam.ego_T_cam, cam.K.tolist()
        rows["calibrated_sensor"].append({"token": calib[ch], "sensor_token": token(seed, "sensor", ch),
                                          "translation": ego_T[:3, 3].tolist(),
                                          "rotation": rotation_to_quat(ego_T[:3, :3]).tolist(),
                                          "camera_intrinsic": intr})
    t0_us = TIME_BASE_US + spec.index * 100_000_000
    sample_toks = [token(seed, name, "sample", k) for k in range(frames)]
    last_sd: dict[str, dict[str, Any]] = {}
    objects_by_frame: dict[int, list[ObjectTruth]] = {}

    def add_sd(ch: str, key: str, sample_tok: str, ts: int, pose: np.ndarray, filename: str, is_key: bool) -> None:
        sd_tok = token(seed, name, "sd", ch, key)
        pose_tok = token(seed, name, "pose", ch, key)
        rows["ego_pose"].append(_pose_row(pose_tok, ts, pose))
        is_cam = ch != LIDAR_NAME
        row = {"token": sd_tok, "sample_token": sample_tok, "ego_pose_token": pose_tok,
               "calibrated_sensor_token": calib[ch], "timestamp": ts, "fileformat": "jpg" if is_cam else "pcd",
               "is_key_frame": is_key, "height": rig.cameras[0].height if is_cam else 0,
               "width": rig.cameras[0].width if is_cam else 0, "filename": filename, "prev": "", "next": ""}
        if ch in last_sd:
            row["prev"] = last_sd[ch]["token"]
            last_sd[ch]["next"] = sd_tok
        last_sd[ch] = row
        rows["sample_data"].append(row)

    def write_images(cap: FrameCapture, folder: str, stamp: int, key: str, sample_tok: str, is_key: bool) -> None:
        for ch in CAMERA_NAMES:
            fname = f"{folder}/{ch}/{name}__{ch}__{stamp}.jpg"
            ok, jpg = cv2.imencode(".jpg", cap.images[ch], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
            _write_bytes(root / fname, jpg.tobytes())
            add_sd(ch, key, sample_tok, stamp, cap.global_T_ego, fname, is_key)

    for k in range(frames):
        t = k * KEYFRAME_DT
        ts = t0_us + int(round(t * 1e6))
        cap = world.capture(t, frame_key=k * 100, annotate=labeled)
        write_images(cap, "samples", ts, f"k{k}", sample_toks[k], True)
        fname = f"samples/{LIDAR_NAME}/{name}__{LIDAR_NAME}__{ts}.pcd.bin"
        _write_bytes(root / fname, cap.points.astype(np.float32).tobytes())
        add_sd(LIDAR_NAME, f"k{k}", sample_toks[k], ts, cap.global_T_ego, fname, True)
        rows["sample"].append({"token": sample_toks[k], "timestamp": ts, "scene_token": token(seed, name, "scene"),
                               "prev": sample_toks[k - 1] if k > 0 else "",
                               "next": sample_toks[k + 1] if k + 1 < frames else ""})
        objects_by_frame[k] = cap.objects
        if on_frame:
            on_frame()
        if sweeps and k + 1 < frames:
            for j in range(1, int(round(KEYFRAME_DT / SWEEP_DT))):
                ts_j = t0_us + int(round((t + j * SWEEP_DT) * 1e6))
                cap_j = world.capture(t + j * SWEEP_DT, frame_key=k * 100 + j, lidar_sweep=False, annotate=False)
                write_images(cap_j, "sweeps", ts_j, f"k{k}s{j}", sample_toks[k + 1], False)
    # Keep the sample_data chains in time order (sweeps were appended after their keyframe).
    rows["sample_data"].sort(key=lambda r: (r["timestamp"], r["filename"]))
    rows["sample_annotation"], rows["instance"] = annotation_rows(seed, name, sample_toks, objects_by_frame)
    rows["scene"].append({"token": token(seed, name, "scene"), "log_token": log_tok, "nbr_samples": frames,
                          "first_sample_token": sample_toks[0], "last_sample_token": sample_toks[-1], "name": name,
                          "description": spec.conditions.description()})
    return rows


def annotation_rows(seed: int, scene_name: str, sample_tokens: list[str],
                    objects_by_frame: dict[int, list[ObjectTruth]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """sample_annotation and instance rows for the objects seen at some keyframes of a scene.

    ``objects_by_frame`` maps keyframe index -> objects; annotations of one actor are chained
    prev/next in keyframe order. The rows depend only on the world, so `synth` and the oracle
    write the same records.
    """
    ann_by_actor: dict[int, list[dict[str, Any]]] = {}
    category: dict[int, str] = {}
    for k in sorted(objects_by_frame):
        for obj in objects_by_frame[k]:
            uid = obj.actor.uid
            category[uid] = obj.actor.category or ""
            ann_by_actor.setdefault(uid, []).append({
                "token": token(seed, scene_name, "ann", uid, k), "sample_token": sample_tokens[k],
                "instance_token": token(seed, scene_name, "instance", uid), "visibility_token": obj.visibility,
                "attribute_tokens": [token(seed, "attribute", obj.attribute)] if obj.attribute else [],
                "translation": obj.center.tolist(), "size": [float(v) for v in obj.actor.size],
                "rotation": quat_from_yaw(obj.yaw).tolist(), "prev": "", "next": "",
                "num_lidar_pts": obj.num_lidar_pts, "num_radar_pts": 0})
    annotations: list[dict[str, Any]] = []
    instances: list[dict[str, Any]] = []
    for uid in sorted(ann_by_actor):
        anns = ann_by_actor[uid]
        for a, b in zip(anns[:-1], anns[1:]):
            a["next"], b["prev"] = b["token"], a["token"]
        annotations += anns
        instances.append({"token": token(seed, scene_name, "instance", uid),
                          "category_token": token(seed, "category", category[uid]),
                          "nbr_annotations": len(anns), "first_annotation_token": anns[0]["token"],
                          "last_annotation_token": anns[-1]["token"]})
    return annotations, instances
