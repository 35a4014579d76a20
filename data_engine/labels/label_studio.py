"""Label Studio reviews: the contract shared by the relabel queue (which writes tasks,
:mod:`data_engine.labels.queue`) and ingest (which reads the reviewers' export), and the reading of an
export into label records (:func:`labels_from_label_studio`).

One task per camera image of a picked frame. The model's 3D boxes, projected into that camera, are the
task's prediction: one ``rectanglelabels`` region per visible box, whose region id names the 3D box
(:func:`region_id`). A reviewer keeps a region (accepted), deletes it (rejected) or changes its label
(reclassed), and ticks :data:`MISSING_CHOICE` when the image shows objects no box covers. Regions the
reviewer draws are 2D only; they count as a missing-object flag for the frame.

    <View>
      <Image name="image" value="$image"/>
      <RectangleLabels name="box" toName="image"> one <Label> per detection class </RectangleLabels>
      <Choices name="frame" toName="image" choice="multiple"> <Choice value="missing objects"/> </Choices>
    </View>

Task ``data``: ``image`` (URL), ``frame`` (sample token), ``camera``, ``run`` (mining run name),
``dataset`` (absolute dataset root), ``score`` (the frame's combined mining score).
"""

from __future__ import annotations

import posixpath
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse
from xml.sax.saxutils import quoteattr

import numpy as np

from perception.data.nuscenes_tables import Record
from perception.schema import DETECTION_CLASSES, VISIBILITY
from perception.metrics.nuscenes_io import boxes_to_global

from ..catalog import Catalog, CatalogError, FrameRow
from .records import CLASS_CATEGORY, Labels, LabelsError, SourceDataset, hash_token, is_token, load_source

__all__ = ["BOX_CONTROL", "FRAME_CONTROL", "IMAGE_NAME", "MISSING_CHOICE", "LabelStudioResult", "box_index",
           "image_path", "labeling_config", "labels_from_label_studio", "region_id"]

IMAGE_NAME = "image"  # the <Image> control's name, and the task data key holding the image URL
BOX_CONTROL = "box"  # <RectangleLabels name=...>
FRAME_CONTROL = "frame"  # <Choices name=...> for per-image flags
MISSING_CHOICE = "missing objects"
REGION_PREFIX = "b"
MAX_ID_DIGITS = 18  # a longer number names no box (and int() refuses numbers of over 4300 digits)
LS_NUM_LIDAR_PTS = 1  # Label Studio boxes have no lidar count; 1 keeps them in evaluation (0 would drop them)


def region_id(box_index: int) -> str:
    """The region id of 3D box ``box_index`` (its position in the frame's stored predictions)."""
    return f"{REGION_PREFIX}{int(box_index)}"


def box_index(region: str) -> int | None:
    """The 3D box a region id names, or None for a region the reviewer drew (ids such as "b²" or "b١",
    digits to str.isdigit but not ASCII ones, are the reviewer's too)."""
    digits = region[len(REGION_PREFIX):]
    if region.startswith(REGION_PREFIX) and digits.isascii() and digits.isdigit() and len(digits) <= MAX_ID_DIGITS:
        return int(digits)
    return None


def labeling_config(classes: Sequence[str]) -> str:
    """The labeling config XML matching the tasks, with one label per detection class."""
    labels = "\n".join(f"    <Label value={quoteattr(c)}/>" for c in classes)
    return (
        "<View>\n"
        f"  <Image name={quoteattr(IMAGE_NAME)} value=\"${IMAGE_NAME}\"/>\n"
        f"  <RectangleLabels name={quoteattr(BOX_CONTROL)} toName={quoteattr(IMAGE_NAME)}>\n{labels}\n"
        "  </RectangleLabels>\n"
        f"  <Choices name={quoteattr(FRAME_CONTROL)} toName={quoteattr(IMAGE_NAME)} choice=\"multiple\">\n"
        f"    <Choice value={quoteattr(MISSING_CHOICE)}/>\n"
        "  </Choices>\n"
        "</View>\n"
    )


# --------------------------------------------------------------------------------------------------
# Reading the reviewers' export
# --------------------------------------------------------------------------------------------------


@dataclass
class LabelStudioResult:
    """What a Label Studio export says: the records of the frames it labels, and what it does not apply."""

    labels: Labels  # accepted and reclassed boxes of the unflagged, complete frames (nuScenes records)
    full_labeling: list[FrameRow]  # flagged frames (missing objects, or a region drawn): none of their boxes kept
    incomplete: list[dict[str, Any]]  # {"frame", "missing": [cameras], "flagged"}: left queued, not applied
    details: dict[str, Any]  # counts and per-frame outcomes, recorded with the label batch


@dataclass
class _Task:
    """One reviewed camera image of a frame."""

    id: Any
    camera: str
    annotated: bool = False  # a non-cancelled annotation exists
    regions: dict[int, str] = field(default_factory=dict)  # box index -> label the reviewer left
    predicted: set[int] = field(default_factory=set)  # box indices of the task's pre-annotations
    flags: list[str] = field(default_factory=list)  # why the frame needs full 3D labeling


def image_path(url: str, dataset_root: str) -> str:
    """The file a task's image URL names, normalized ("." and ".." resolved, links not followed).

    Accepted: a Label Studio local-files URL (``...?d=PATH``, PATH absolute without its leading "/"),
    a ``file://`` or ``http(s)://`` URL whose path is the absolute file path, or a plain path (absolute,
    or relative to the dataset root).
    """
    from urllib.parse import parse_qs

    parsed = urlparse(url)
    d = parse_qs(parsed.query).get("d")
    if d:
        path = "/" + d[0].lstrip("/")
    elif parsed.scheme in ("file", "http", "https"):
        path = unquote(parsed.path)
    else:
        path = url if url.startswith("/") else posixpath.join(dataset_root, url)
    return posixpath.normpath(path)


def _task_fields(task: Any, i: int, source: str) -> tuple[str, dict[str, str]]:
    if not isinstance(task, dict):
        raise LabelsError(f"{source}: task [{i}] is a {type(task).__name__}, expected a JSON object")
    where = f"{source}: task {task.get('id', f'[{i}]')}"
    data = task.get("data")
    if not isinstance(data, dict):
        raise LabelsError(f"{where}: data must be an object with image, frame, camera, run and dataset")
    for key in ("image", "frame", "camera", "run", "dataset"):
        if not is_token(data.get(key)):
            raise LabelsError(f"{where}: data.{key} {data.get(key)!r} must be a non-empty UTF-8 string")
    return where, data


def _read_results(task: dict[str, Any], t: _Task, where: str) -> list[tuple[int, str]]:
    """Fill ``t`` from the task's last non-cancelled annotation and its predictions; returns the
    (box index, where) of every region that names a stored box, for range checks."""
    named: list[tuple[int, str]] = []
    annotations = task.get("annotations") or []
    preds = task.get("predictions") or []
    if not isinstance(annotations, list) or not isinstance(preds, list):
        raise LabelsError(f"{where}: annotations and predictions must be lists")
    for k, p in enumerate(preds):
        pred_results = (p.get("result") or []) if isinstance(p, dict) else []
        if not isinstance(pred_results, list):
            raise LabelsError(f"{where}: predictions[{k}].result must be a list")
        for j, r in enumerate(pred_results):
            if isinstance(r, dict) and r.get("from_name") == BOX_CONTROL:
                idx = box_index(str(r.get("id", "")))
                if idx is not None:
                    t.predicted.add(idx)
                    named.append((idx, f"{where}: predictions[{k}].result[{j}] region {r.get('id')!r}"))
    done = [(k, a) for k, a in enumerate(annotations) if isinstance(a, dict) and not a.get("was_cancelled", False)]
    if not done:
        return named
    k, ann = done[-1]
    t.annotated = True
    results = ann.get("result") or []
    if not isinstance(results, list):
        raise LabelsError(f"{where}: annotations[{k}].result must be a list")
    for j, r in enumerate(results):
        at = f"{where}: annotations[{k}].result[{j}]"
        if not isinstance(r, dict):
            raise LabelsError(f"{at}: expected a JSON object")
        value = r.get("value") if isinstance(r.get("value"), dict) else {}
        if r.get("from_name") == FRAME_CONTROL:
            choices = value.get("choices") or []
            if not isinstance(choices, list):
                raise LabelsError(f"{at}.value.choices {choices!r}: expected a list of choices")
            if MISSING_CHOICE in choices:
                t.flags.append(f"{t.camera}: {MISSING_CHOICE}")
        elif r.get("from_name") == BOX_CONTROL:
            labels = value.get("rectanglelabels")
            if not (isinstance(labels, list) and len(labels) == 1 and labels[0] in DETECTION_CLASSES):
                raise LabelsError(f"{at}.value.rectanglelabels {labels!r}: expected one detection class "
                                  f"({', '.join(DETECTION_CLASSES)})")
            idx = box_index(str(r.get("id", "")))
            if idx is None:
                t.flags.append(f"{t.camera}: region {r.get('id')!r} drawn by the reviewer")
            else:
                t.regions[idx] = labels[0]
                named.append((idx, f"{at} region {r.get('id')!r}"))
        else:
            raise LabelsError(f"{at}.from_name {r.get('from_name')!r}: not a control of the labeling config "
                              f"(expected {BOX_CONTROL!r} or {FRAME_CONTROL!r})")
    return named


def labels_from_label_studio(cat: Catalog, export: Any, source: str = "export", relabel: bool = False,
                             sources: dict[str, SourceDataset] | None = None) -> LabelStudioResult:
    """Turn a Label Studio export of relabel-queue tasks into nuScenes records, per the review
    contract of the module docstring.

    Per 3D box (a region id names a box of the frame's stored predictions in the task's run), over all
    camera tasks of its frame: deleted in a task that pre-annotated it -> rejected; else its label changed
    -> reclassed (different new labels in different cameras are an error); else accepted. A box no task
    showed is unreviewed and not written. A frame with MISSING_CHOICE ticked or a region the reviewer
    drew goes to full 3D labeling (none of its boxes written); a frame with a camera task not annotated
    (or cancelled) is incomplete and left as it is. Kept boxes become records in the global frame, one
    new instance each, with the class's category (:data:`CLASS_CATEGORY`), the highest visibility, no
    attributes and ``num_lidar_pts`` 1 so that evaluation keeps them.
    """
    if not isinstance(export, list):
        raise LabelsError(f"{source}: a Label Studio export is a JSON list of tasks, got {type(export).__name__}")
    sources = {} if sources is None else sources
    states = ("queued", "labeled") if relabel else ("queued",)
    parsed = [_task_fields(task, i, source) for i, task in enumerate(export)]
    found = cat.frames_by_token(data["frame"] for _, data in parsed)
    runs: dict[str, int] = {}
    frames: dict[int, FrameRow] = {}
    frame_run: dict[int, str] = {}
    tasks: dict[int, dict[str, _Task]] = defaultdict(dict)
    named: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for task, (where, data) in zip(export, parsed):
        root = str(Path(data["dataset"]).resolve())
        rows = [r for r in found.get(data["frame"], []) if len(found[data["frame"]]) == 1 or r.dataset_root == root]
        if len(rows) != 1:
            raise LabelsError(f"{where}: data.frame {data['frame']!r} is not a frame of the catalog {cat.path}")
        fr = rows[0]
        if fr.dataset_root != root:
            raise LabelsError(f"{where}: data.dataset {data['dataset']!r} is not the frame's dataset ({fr.dataset_root})")
        if fr.label_state not in states:
            raise LabelsError(f"{where}: data.frame {fr.sample_token!r} is {fr.label_state}, expected {' or '.join(states)}")
        if data["run"] not in runs:
            try:
                runs[data["run"]] = cat.run_id(data["run"])
            except CatalogError:
                raise LabelsError(f"{where}: data.run {data['run']!r} is not a mining run of {cat.path}") from None
        if frame_run.setdefault(fr.id, data["run"]) != data["run"]:
            raise LabelsError(f"{where}: data.run {data['run']!r} differs from run {frame_run[fr.id]!r} of the frame's "
                              "other tasks")
        if data["camera"] not in fr.cameras:
            raise LabelsError(f"{where}: data.camera {data['camera']!r} is not a camera of frame {fr.sample_token!r} "
                              f"({', '.join(fr.cameras)})")
        path = image_path(data["image"], fr.dataset_root)
        if not (path + "/").startswith(fr.dataset_root.rstrip("/") + "/"):
            raise LabelsError(f"{where}: data.image {data['image']!r} is {path}, a path that leaves the dataset "
                              f"{fr.dataset_root}")
        expected = posixpath.normpath(posixpath.join(fr.dataset_root, fr.cameras[data["camera"]]))
        if path != expected:
            raise LabelsError(f"{where}: data.image {data['image']!r} is {path}, not the frame's {data['camera']} "
                              f"image {expected}")
        if data["camera"] in tasks[fr.id]:
            raise LabelsError(f"{where}: frame {fr.sample_token!r} camera {data['camera']} already has task "
                              f"{tasks[fr.id][data['camera']].id}")
        t = _Task(task.get("id"), data["camera"])
        named[fr.id] += _read_results(task, t, where)
        frames[fr.id] = fr
        tasks[fr.id][data["camera"]] = t

    anns: list[Record] = []
    insts: list[Record] = []
    labeled: list[str] = []
    full: list[FrameRow] = []
    incomplete: list[dict[str, Any]] = []
    per_frame: dict[str, dict[str, Any]] = {}
    counts = dict.fromkeys(("accepted", "rejected", "reclassed", "unreviewed"), 0)
    for fid, fr in frames.items():
        run = frame_run[fid]
        preds = cat.frame_predictions(runs[run], fid)
        for idx, at in named[fid]:
            if idx >= len(preds):
                raise LabelsError(f"{at}: names box {idx}, but run {run!r} stored {len(preds)} boxes for frame "
                                  f"{fr.sample_token!r}")
        ts = tasks[fid]
        missing = sorted(c for c in fr.cameras if c not in ts or not ts[c].annotated)
        flags = [f for t in ts.values() if t.annotated for f in t.flags]
        if missing:
            incomplete.append({"frame": fr.sample_token, "missing": missing, "flagged": bool(flags)})
            continue
        if flags:
            full.append(fr)
            per_frame[fr.sample_token] = {"outcome": "full_labeling", "reasons": flags}
            continue
        outcome: dict[str, Any] = {"outcome": "labeled", "accepted": [], "rejected": [], "reclassed": [], "unreviewed": []}
        reviewed = set().union(*(t.predicted | set(t.regions) for t in ts.values()))
        src = load_source(fr.dataset_root, sources)
        for idx in range(len(preds)):
            pred = preds[idx]
            if idx not in reviewed:
                outcome["unreviewed"].append(idx)
                continue
            if any(idx in t.predicted and idx not in t.regions for t in ts.values()):
                outcome["rejected"].append(idx)
                continue
            new = {t.regions[idx] for t in ts.values() if idx in t.regions and t.regions[idx] != pred.get("class")}
            if len(new) > 1:
                raise LabelsError(f"{source}: frame {fr.sample_token!r} box {idx}: relabeled {sorted(new)} in different "
                                  "cameras; the new labels must agree")
            cls = new.pop() if new else str(pred.get("class"))
            if cls not in DETECTION_CLASSES:
                raise LabelsError(f"{source}: frame {fr.sample_token!r} box {idx}: stored class {cls!r} of run {run!r} "
                                  "is not a detection class")
            if cls != pred.get("class"):
                outcome["reclassed"].append({"box": idx, "from": pred.get("class"), "to": cls})
            else:
                outcome["accepted"].append(idx)
            ann, inst = _box_record(src, fr, run, idx, pred, cls)
            anns.append(ann)
            insts.append(inst)
        for key in counts:
            counts[key] += len(outcome[key])
        per_frame[fr.sample_token] = outcome
        labeled.append(fr.sample_token)
    details = {"run": sorted(set(frame_run.values())), "tasks": len(export), "boxes": counts,
               "frames": {"labeled": len(labeled), "full_labeling": len(full), "incomplete": len(incomplete)},
               "full_labeling": [fr.sample_token for fr in full], "incomplete": incomplete, "per_frame": per_frame}
    return LabelStudioResult(Labels(anns, insts, labeled), full, incomplete, details)


def _box_record(src: SourceDataset, fr: FrameRow, run: str, idx: int, pred: Mapping[str, Any],
                cls: str) -> tuple[Record, Record]:
    """The sample_annotation and instance records of a stored box (ego frame of the sample's reference
    pose) written in the global frame, as ``results_json`` converts predictions."""
    sample = src.reader.sample(fr.sample_token)
    global_T_ego = sample.global_T_ego
    try:
        translation, quats, _ = boxes_to_global(global_T_ego, np.asarray(pred["center"], np.float64).reshape(1, 3),
                                                np.array([float(pred["yaw"])]))
        center, quat = translation[0], quats[0]
        size = [float(v) for v in pred["size"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise LabelsError(f"run {run!r}: stored box {idx} of frame {fr.sample_token!r} is malformed ({exc})") from None
    category = src.category_token(CLASS_CATEGORY[cls])
    if category is None:
        raise LabelsError(f"{src.root}/{src.tables.file('category')}: no category {CLASS_CATEGORY[cls]!r} for class {cls!r}")
    visibility = max(VISIBILITY) if max(VISIBILITY) in src.tables.by_token["visibility"] \
        else max(src.tables.by_token["visibility"], default="")
    ann_tok = hash_token("label-studio", run, fr.sample_token, idx)
    inst_tok = hash_token("label-studio-instance", run, fr.sample_token, idx)
    ann = {"token": ann_tok, "sample_token": fr.sample_token, "instance_token": inst_tok, "visibility_token": visibility,
           "attribute_tokens": [], "translation": center.tolist(), "size": size, "rotation": quat.tolist(),
           "prev": "", "next": "", "num_lidar_pts": LS_NUM_LIDAR_PTS, "num_radar_pts": 0}
    inst = {"token": inst_tok, "category_token": category, "nbr_annotations": 1, "first_annotation_token": ann_tok,
            "last_annotation_token": ann_tok}
    return ann, inst
