"""Check a nuScenes-format dataset with the official devkit (nuscenes-devkit 1.2.0).

Run with the devkit venv's python (see tests/support/devkit_env.py), never the project's: the devkit pins
numpy<2, so this script imports only the devkit and its dependencies, none of our packages.

    python tests/support/devkit/check_dataset.py --dataroot DIR --version v1.0-synth --split synth_val --out OUT.json

It
  (a) loads ``NuScenes(version, dataroot)``;
  (b) for every sample of the split and every camera, asks ``get_sample_data(cam, BoxVisibility.ANY)``
      for the boxes in the camera frame and writes their projected corners
      (``view_points(corners, K, normalize=True)``, in the devkit's corner order) with the annotation
      and instance tokens and the image file;
  (c) writes predictions equal to the split's ground truth in the official submission format and
      runs the official ``DetectionEval`` (detection_cvpr_2019) on the split, recording mAP, NDS,
      per-class AP and TP errors, and how many ground-truth boxes each class has. Annotations that
      no lidar or radar point hit are left out of the predictions: the evaluator removes them from
      the ground truth, so submitting them would count them as false positives;
  (d) runs consistency checks that the devkit's users rely on but its loader does not enforce
      (linked lists, files present with the recorded size, point clouds readable, map masks
      readable), listing any problem found in ``problems``.

The split must be a custom split named in ``<dataroot>/<version>/splits.json``: predefined names
(train, val, mini_val, ...) make the devkit use its own lists of real nuScenes scenes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
from collections import Counter

import numpy as np
from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.eval.detection.utils import category_to_detection_name
from nuscenes.utils.data_classes import LidarPointCloud
from nuscenes.utils.geometry_utils import BoxVisibility, view_points
from nuscenes.utils.splits import get_scenes_of_split, is_predefined_split

CAMERAS = ("CAM_FRONT", "CAM_FRONT_RIGHT", "CAM_BACK_RIGHT", "CAM_BACK", "CAM_BACK_LEFT", "CAM_FRONT_LEFT")
LIDAR = "LIDAR_TOP"

# The attribute a detector reports for a class when the annotation has none (barrier and cone have
# no attributes): the usual defaults of nuScenes submissions.
DEFAULT_ATTRIBUTE = {
    "car": "vehicle.parked",
    "truck": "vehicle.parked",
    "construction_vehicle": "vehicle.parked",
    "bus": "vehicle.moving",
    "trailer": "vehicle.parked",
    "barrier": "",
    "motorcycle": "cycle.without_rider",
    "bicycle": "cycle.without_rider",
    "pedestrian": "pedestrian.moving",
    "traffic_cone": "",
}

MAX_PROBLEMS = 200  # keep the report readable when a systematic bug repeats everywhere


class Problems:
    """Collects format problems (at most MAX_PROBLEMS are kept, all are counted)."""

    def __init__(self) -> None:
        self.items: list[str] = []
        self.count = 0

    def add(self, message: str) -> None:
        self.count += 1
        if len(self.items) < MAX_PROBLEMS:
            self.items.append(message)


def split_sample_tokens(nusc: NuScenes, split: str) -> tuple[list[str], list[str]]:
    """Scene names and sample tokens (in time order) of a custom split."""
    scene_names = list(get_scenes_of_split(split, nusc))
    by_name = {s["name"]: s for s in nusc.scene}
    missing = [n for n in scene_names if n not in by_name]
    if missing:
        raise SystemExit(f"split {split!r} names scenes missing from scene.json: {missing[:10]}")
    tokens: list[str] = []
    for name in scene_names:
        token = by_name[name]["first_sample_token"]
        while token:
            tokens.append(token)
            token = nusc.get("sample", token)["next"]
    return scene_names, tokens


def project_boxes(nusc: NuScenes, sample_tokens: list[str], problems: Problems) -> list[dict]:
    """(b): the devkit's view of every box in every camera of every sample."""
    frames = []
    for sample_token in sample_tokens:
        sample = nusc.get("sample", sample_token)
        for cam in CAMERAS:
            if cam not in sample["data"]:
                problems.add(f"sample {sample_token} has no key frame of {cam}")
                continue
            sd_token = sample["data"][cam]
            sd = nusc.get("sample_data", sd_token)
            path, boxes, K = nusc.get_sample_data(sd_token, box_vis_level=BoxVisibility.ANY)
            out_boxes = []
            for box in boxes:
                corners_cam = box.corners()  # [3, 8], devkit order: 4 front corners, then 4 rear
                uv = view_points(corners_cam, K, normalize=True)[:2]
                ann = nusc.get("sample_annotation", box.token)
                out_boxes.append(
                    {
                        "annotation_token": box.token,
                        "instance_token": ann["instance_token"],
                        "category_name": ann["category_name"],
                        "corners_2d": uv.T.tolist(),
                        "corners_cam": corners_cam.T.tolist(),
                    }
                )
            frames.append(
                {
                    "sample_token": sample_token,
                    "camera": cam,
                    "sample_data_token": sd_token,
                    "filename": sd["filename"],
                    "width": sd["width"],
                    "height": sd["height"],
                    "intrinsic": np.asarray(K).tolist(),
                    "boxes": out_boxes,
                }
            )
    return frames


def ground_truth_predictions(nusc: NuScenes, sample_tokens: list[str]) -> tuple[dict, Counter, Counter]:
    """(c): a submission whose boxes are the ground truth the evaluator scores against.

    Returns the submission's results, the GT count per detection class, and per class the count of
    annotations left out of the submission because no lidar or radar point hit them: the evaluator
    drops such annotations from the ground truth (``filter_eval_boxes``) but cannot drop predictions
    by point count, so submitting them would score them as false positives.
    """
    results: dict[str, list[dict]] = {}
    counts: Counter = Counter()
    zero_points: Counter = Counter()
    for sample_token in sample_tokens:
        boxes = []
        for ann_token in nusc.get("sample", sample_token)["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            name = category_to_detection_name(ann["category_name"])
            if name is None:
                continue
            counts[name] += 1
            if ann["num_lidar_pts"] + ann["num_radar_pts"] == 0:
                zero_points[name] += 1
                continue
            velocity = nusc.box_velocity(ann_token)[:2]
            velocity = [0.0 if math.isnan(v) else float(v) for v in velocity]
            if ann["attribute_tokens"]:
                attribute = nusc.get("attribute", ann["attribute_tokens"][0])["name"]
            else:
                attribute = DEFAULT_ATTRIBUTE[name]
            boxes.append(
                {
                    "sample_token": sample_token,
                    "translation": [float(v) for v in ann["translation"]],
                    "size": [float(v) for v in ann["size"]],
                    "rotation": [float(v) for v in ann["rotation"]],
                    "velocity": velocity,
                    "detection_name": name,
                    "detection_score": 1.0,
                    "attribute_name": attribute,
                }
            )
        results[sample_token] = boxes
    return results, counts, zero_points


def evaluate(nusc: NuScenes, split: str, results: dict, work_dir: str) -> dict:
    """(c): the official detection evaluation of ``results`` on ``split``."""
    submission = {
        "meta": {"use_camera": True, "use_lidar": False, "use_radar": False, "use_map": False, "use_external": False},
        "results": results,
    }
    result_path = os.path.join(work_dir, "results_gt.json")
    with open(result_path, "w") as f:
        json.dump(submission, f)
    evaluator = DetectionEval(
        nusc,
        config=config_factory("detection_cvpr_2019"),
        result_path=result_path,
        eval_set=split,
        output_dir=os.path.join(work_dir, "eval"),
        verbose=False,
    )
    # The boxes the evaluator keeps after its distance, point-count and bike-rack filters.
    kept_gt = Counter(b.detection_name for b in evaluator.gt_boxes.all)
    kept_pred = Counter(b.detection_name for b in evaluator.pred_boxes.all)
    summary = evaluator.main(render_curves=False)
    return {
        "mAP": summary["mean_ap"],
        "NDS": summary["nd_score"],
        "class_ap": summary["mean_dist_aps"],
        "label_aps": summary["label_aps"],
        "tp_errors": summary["tp_errors"],
        "label_tp_errors": summary["label_tp_errors"],
        "gt_after_filter": dict(kept_gt),
        "pred_after_filter": dict(kept_pred),
    }


def check_consistency(nusc: NuScenes, scene_names: list[str], sample_tokens: list[str], problems: Problems) -> dict:
    """(d): linked lists, files and sizes, point clouds and map masks, for the split's scenes."""
    import cv2  # the devkit depends on opencv

    by_name = {s["name"]: s for s in nusc.scene}
    for name in scene_names:
        scene = by_name[name]
        chain = []
        token, prev = scene["first_sample_token"], ""
        while token:
            sample = nusc.get("sample", token)
            if sample["prev"] != prev:
                problems.add(f"sample {token}: prev is {sample['prev']!r}, expected {prev!r}")
            if sample["scene_token"] != scene["token"]:
                problems.add(f"sample {token} lists scene {sample['scene_token']}, reached from scene {scene['token']}")
            if chain and sample["timestamp"] <= nusc.get("sample", chain[-1])["timestamp"]:
                problems.add(f"sample {token}: timestamp does not increase along the scene")
            chain.append(token)
            prev, token = token, sample["next"]
        if chain[-1] != scene["last_sample_token"]:
            problems.add(f"scene {name}: last_sample_token {scene['last_sample_token']} != end of chain {chain[-1]}")
        if len(chain) != scene["nbr_samples"]:
            problems.add(f"scene {name}: nbr_samples {scene['nbr_samples']} != {len(chain)} samples chained")

    for sample_token in sample_tokens:
        sample = nusc.get("sample", sample_token)
        for channel in CAMERAS + (LIDAR,):
            if channel not in sample["data"]:
                problems.add(f"sample {sample_token}: no key frame of {channel}")
                continue
            sd = nusc.get("sample_data", sample["data"][channel])
            path = nusc.get_sample_data_path(sd["token"])
            if not os.path.isfile(path):
                problems.add(f"{channel} file missing: {sd['filename']}")
                continue
            if sd["timestamp"] != sample["timestamp"]:
                problems.add(f"{sd['filename']}: key frame timestamp {sd['timestamp']} != sample's {sample['timestamp']}")
            for link in ("prev", "next"):  # sweeps chain through sample_data of the same channel
                other = sd[link]
                if other and nusc.get("sample_data", other)["channel"] != channel:
                    problems.add(f"{sd['filename']}: {link} points to another channel")
            cs = nusc.get("calibrated_sensor", sd["calibrated_sensor_token"])
            if channel == LIDAR:
                try:
                    pc = LidarPointCloud.from_file(path)
                    if pc.points.shape[1] == 0:
                        problems.add(f"{sd['filename']}: empty point cloud")
                except Exception as exc:  # noqa: BLE001 - reported, not fatal
                    problems.add(f"{sd['filename']}: LidarPointCloud.from_file failed: {exc!r}")
            else:
                K = np.asarray(cs["camera_intrinsic"], dtype=float)
                if K.shape != (3, 3):
                    problems.add(f"{channel}: camera_intrinsic has shape {K.shape}")
                img = cv2.imread(path)
                if img is None:
                    problems.add(f"{sd['filename']}: not a readable image")
                elif img.shape[:2] != (sd["height"], sd["width"]):
                    problems.add(f"{sd['filename']}: image is {img.shape[1]}x{img.shape[0]}, record says "
                                 f"{sd['width']}x{sd['height']}")
        for ann_token in sample["anns"]:
            ann = nusc.get("sample_annotation", ann_token)
            if len(ann["attribute_tokens"]) > 1:
                problems.add(f"annotation {ann_token}: more than one attribute")
            if ann["visibility_token"] not in {v["token"] for v in nusc.visibility}:
                problems.add(f"annotation {ann_token}: unknown visibility {ann['visibility_token']!r}")
            for link in ("prev", "next"):
                other = ann[link]
                if other and nusc.get("sample_annotation", other)["instance_token"] != ann["instance_token"]:
                    problems.add(f"annotation {ann_token}: {link} belongs to another instance")
            if np.any(np.asarray(ann["size"], dtype=float) <= 0):
                problems.add(f"annotation {ann_token}: non-positive size {ann['size']}")
            if abs(np.linalg.norm(ann["rotation"]) - 1.0) > 1e-6:
                problems.add(f"annotation {ann_token}: rotation is not a unit quaternion")

    # Instances: first/last annotation and count agree with the annotation chain.
    for inst in nusc.instance:
        token, n, last = inst["first_annotation_token"], 0, ""
        while token:
            n, last = n + 1, token
            token = nusc.get("sample_annotation", token)["next"]
            if n > 100000:
                problems.add(f"instance {inst['token']}: annotation chain loops")
                break
        if n != inst["nbr_annotations"] or last != inst["last_annotation_token"]:
            problems.add(f"instance {inst['token']}: chain of {n} ending at {last} vs record "
                         f"({inst['nbr_annotations']}, {inst['last_annotation_token']})")

    # Maps: every log has one (the devkit raises at load otherwise) and the mask reads.
    map_shapes = {}
    for map_record in nusc.map:
        try:
            map_shapes[map_record["filename"]] = list(map_record["mask"].mask().shape)
        except Exception as exc:  # noqa: BLE001
            problems.add(f"map {map_record['filename']}: mask does not load: {exc!r}")
    return {"map_shapes": map_shapes}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-synth")
    parser.add_argument("--split", default="synth_val")
    parser.add_argument("--out", required=True, help="JSON report to write")
    parser.add_argument("--work-dir", default=None, help="where the submission and eval output go (default: temp)")
    parser.add_argument("--skip-eval", action="store_true", help="only load, project and check")
    args = parser.parse_args(argv)

    if is_predefined_split(args.split):
        raise SystemExit(f"{args.split!r} is a predefined nuScenes split; name a custom split from splits.json")

    report: dict = {"dataroot": args.dataroot, "version": args.version, "split": args.split, "loaded": False}
    timings: dict[str, float] = {}
    problems = Problems()
    try:
        t0 = time.perf_counter()
        nusc = NuScenes(version=args.version, dataroot=args.dataroot, verbose=False)
        timings["load"] = time.perf_counter() - t0
        report["loaded"] = True
        report["tables"] = {name: len(getattr(nusc, name)) for name in nusc.table_names}

        scene_names, sample_tokens = split_sample_tokens(nusc, args.split)
        report["scenes"] = scene_names
        report["num_samples"] = len(sample_tokens)

        t0 = time.perf_counter()
        report["frames"] = project_boxes(nusc, sample_tokens, problems)
        timings["project"] = time.perf_counter() - t0

        results, counts, zero_points = ground_truth_predictions(nusc, sample_tokens)
        report["gt_per_class"] = {name: counts.get(name, 0) for name in DEFAULT_ATTRIBUTE}
        report["gt_zero_points_per_class"] = {name: zero_points.get(name, 0) for name in DEFAULT_ATTRIBUTE}

        t0 = time.perf_counter()
        report.update(check_consistency(nusc, scene_names, sample_tokens, problems))
        timings["consistency"] = time.perf_counter() - t0

        if not args.skip_eval:
            t0 = time.perf_counter()
            with tempfile.TemporaryDirectory() as tmp:
                work_dir = args.work_dir or tmp
                os.makedirs(work_dir, exist_ok=True)
                report["eval"] = evaluate(nusc, args.split, results, work_dir)
            timings["eval"] = time.perf_counter() - t0
    except SystemExit:
        raise
    except Exception:  # noqa: BLE001 - the report says what the devkit complained about
        report["error"] = traceback.format_exc()
    report["problems"] = problems.items
    report["num_problems"] = problems.count
    report["timings_s"] = timings
    with open(args.out, "w") as f:
        json.dump(report, f)
    if "error" in report:
        print(report["error"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
