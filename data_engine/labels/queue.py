"""The relabel queue of a mining run: what the labeling team receives, as ``data-engine queue`` writes it.

    queue/
      manifest.jsonl            one JSON object per pick, in rank order
      predictions.json          the model's boxes, nuScenes detection result format (global frame)
      index.html                a static review page: scores, reasons, camera thumbnails with the boxes
      thumbs/RANK_CAMERA.jpg    the thumbnails it shows
      label_studio/tasks.json   one Label Studio task per camera image, pre-annotated with the boxes
      label_studio/config.xml   the labeling config the tasks belong to

The picks are read from the catalog (:meth:`Catalog.selections`); each pick's boxes are in the ego
frame of its sample's reference pose (``NuScenesDataset.box_set``), so every frame is converted and
projected with the reader of its own dataset. Label Studio tasks follow
:mod:`data_engine.labels.label_studio`: a box is a region of a camera's task when
:func:`perception.box_geometry.box_image_bounds` finds it visible there, and the region is the rectangle of
the box clipped at the camera's near plane.

Image URLs are ``image_url_prefix`` + the image's absolute path (percent-encoded). The default,
``/data/local-files/?d=`` + the path without its leading ``/``, is Label Studio's local file serving:
start Label Studio with ``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/``. Give a prefix such as ``http://files.example:8081`` when
another server serves the dataset roots under their absolute paths.

The queue is written into a hidden sibling directory and renamed into place at the end, so a failure
leaves no half-written queue behind.
"""

from __future__ import annotations

import html
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from data_engine.catalog import PREDICTION_KEYS, Catalog, Selection
from .label_studio import BOX_CONTROL, IMAGE_NAME, labeling_config, region_id
from perception.data.nuscenes import (
    DatasetError,
    NuScenesDataset,
    load_dataset,
    read_image,
)
from perception.schema import DETECTION_CLASSES
from perception.box_geometry import box_image_bounds
from perception.metrics.detection_boxes import EvalBoxes, attributes_from_velocity
from perception.metrics.nuscenes_io import results_json
from perception.preprocess import ResizeCrop
from perception.vis import CAMERA_LAYOUT, BoxLayer, draw_boxes_on_image
from perception.errors import BevStackError

__all__ = ["DEFAULT_IMAGE_URL_PREFIX", "QueueError", "QueueSummary", "image_url", "write_queue"]

DEFAULT_IMAGE_URL_PREFIX = "/data/local-files/?d="  # Label Studio local files, document root "/"
_CLASS_INDEX = {name: i for i, name in enumerate(DETECTION_CLASSES)}
_LAYOUT_ORDER = [c for row in CAMERA_LAYOUT for c in row]  # the review page's camera order, rows of CAMERA_LAYOUT


class QueueError(BevStackError):
    """A relabel queue that cannot be written; the message names the run, frame, file or directory."""


@dataclass(frozen=True)
class QueueSummary:
    """What :func:`write_queue` wrote."""

    out: Path  # the queue directory
    run: str  # the mining run
    picks: int  # frames in the queue
    tasks: int  # Label Studio tasks (one per camera image)
    boxes: int  # predicted boxes over all picks
    regions: int  # Label Studio regions: boxes visible in a camera, counted once per camera
    thumbnails: int  # JPEGs in thumbs/
    datasets: int  # dataset roots the picks come from

    @property
    def manifest(self) -> Path:
        return self.out / "manifest.jsonl"

    @property
    def predictions(self) -> Path:
        return self.out / "predictions.json"

    @property
    def html(self) -> Path:
        return self.out / "index.html"

    @property
    def tasks_path(self) -> Path:
        return self.out / "label_studio" / "tasks.json"

    @property
    def config_path(self) -> Path:
        return self.out / "label_studio" / "config.xml"


def image_url(path: str | Path, prefix: str | None = None) -> str:
    """The URL Label Studio loads an image from: ``prefix`` + its absolute path, percent-encoded.

    Without a prefix: :data:`DEFAULT_IMAGE_URL_PREFIX` + the absolute path without its leading "/".
    """
    absolute = Path(path).absolute().as_posix()
    if prefix is None:
        return DEFAULT_IMAGE_URL_PREFIX + quote(absolute.lstrip("/"), safe="/")
    return prefix + quote(absolute, safe="/")


@dataclass(frozen=True, eq=False)
class _Boxes:
    """A pick's predicted boxes as arrays (ego frame of the sample's reference pose)."""

    names: tuple[str, ...]  # [B] detection classes
    center: np.ndarray  # [B, 3] m
    size: np.ndarray  # [B, 3] (w, l, h) m
    yaw: np.ndarray  # [B] rad
    velocity: np.ndarray  # [B, 2] m/s, may be NaN
    score: np.ndarray  # [B]

    def layer(self) -> BoxLayer:
        label = np.array([_CLASS_INDEX[n] for n in self.names], np.int64)
        return BoxLayer(self.center, self.size, self.yaw, label, score=self.score, velocity=self.velocity, style="pred")

    def eval_boxes(self) -> EvalBoxes:
        """As EvalBoxes for the result file: an unknown (NaN) velocity is written as (0, 0), the result
        format's default; attributes follow the velocity (:func:`attributes_from_velocity`)."""
        velocity = np.where(np.isfinite(self.velocity), self.velocity, 0.0)
        return EvalBoxes.create(self.center, self.size, self.yaw, self.names, velocity=velocity,
                                attributes=attributes_from_velocity(self.names, velocity), score=self.score)


def _pick_boxes(sel: Selection, where: str) -> _Boxes:
    """The stored predictions of a pick, checked: every key of PREDICTION_KEYS, a known class, finite
    numbers, sizes > 0."""
    preds = sel.predictions
    for i, p in enumerate(preds):
        missing = [k for k in PREDICTION_KEYS if k not in p]
        if missing:
            raise QueueError(f"{where}: predicted box {i} lacks {missing}; expected keys {list(PREDICTION_KEYS)}")
        if p["class"] not in _CLASS_INDEX:
            raise QueueError(f"{where}: predicted box {i} has class {p['class']!r}; expected one of {DETECTION_CLASSES}")
    n = len(preds)
    try:
        boxes = _Boxes(
            names=tuple(str(p["class"]) for p in preds),
            center=np.asarray([p["center"] for p in preds], np.float64).reshape(n, 3),
            size=np.asarray([p["size"] for p in preds], np.float64).reshape(n, 3),
            yaw=np.asarray([p["yaw"] for p in preds], np.float64).reshape(n),
            velocity=np.asarray([p["velocity"] for p in preds], np.float64).reshape(n, 2),
            score=np.asarray([p["score"] for p in preds], np.float64).reshape(n),
        )
    except (TypeError, ValueError) as exc:
        raise QueueError(f"{where}: predicted boxes are malformed ({exc}); expected center [x, y, z], "
                         "size [w, l, h], yaw, velocity [vx, vy] and score numbers") from None
    bad = ~(np.isfinite(boxes.center).all(1) & np.isfinite(boxes.size).all(1) & (boxes.size > 0).all(1)
            & np.isfinite(boxes.yaw) & np.isfinite(boxes.score))
    if bad.any():
        raise QueueError(f"{where}: predicted box {int(np.flatnonzero(bad)[0])} has a non-finite centre, yaw or "
                         "score, or a size that is not > 0")
    return boxes


def _camera_order(cameras: Any) -> list[str]:
    """Camera names in the order of :data:`perception.vis.CAMERA_LAYOUT` (front row, then back row), others after."""
    return sorted(cameras, key=lambda c: (_LAYOUT_ORDER.index(c) if c in _LAYOUT_ORDER else len(_LAYOUT_ORDER), c))


def _dumps(obj: Any, what: str, **kw: Any) -> str:
    try:
        return json.dumps(obj, allow_nan=False, **kw)
    except ValueError as exc:
        raise QueueError(f"{what}: holds a non-finite number ({exc})") from None


def _regions(boxes: _Boxes, bounds: np.ndarray, visible: np.ndarray, hw: tuple[int, int]) -> list[dict[str, Any]]:
    """Label Studio rectanglelabels regions of the visible boxes; bounds [B, 4] (u0, v0, u1, v1) px in
    K's pixel-centre convention, so the image spans [-0.5, W - 0.5] x [-0.5, H - 0.5]."""
    H, W = hw
    out = []
    for i in np.flatnonzero(visible):
        u0, v0, u1, v1 = bounds[i]
        x, y = float(np.clip((u0 + 0.5) / W * 100, 0, 100)), float(np.clip((v0 + 0.5) / H * 100, 0, 100))
        out.append({
            "id": region_id(int(i)), "type": "rectanglelabels", "from_name": BOX_CONTROL, "to_name": IMAGE_NAME,
            "original_width": W, "original_height": H, "image_rotation": 0,
            "value": {"x": x, "y": y, "width": float(np.clip((u1 + 0.5) / W * 100, 0, 100)) - x,
                      "height": float(np.clip((v1 + 0.5) / H * 100, 0, 100)) - y, "rotation": 0,
                      "rectanglelabels": [boxes.names[i]]},
            "score": float(boxes.score[i]),
        })
    return out


def _thumbnail(image: np.ndarray, K: np.ndarray, cam_T_ref: np.ndarray, layer: BoxLayer, width: int) -> np.ndarray:
    """The image resized to ``width`` (K' = dst_T_src @ K) with the boxes drawn at that size."""
    h, w = image.shape[:2]
    plan = ResizeCrop.plan((h, w), (max(1, round(h * width / w)), width))
    return draw_boxes_on_image(plan.apply(image), plan.dst_T_src @ K, cam_T_ref, layer)


def _prepare_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise QueueError(f"{out}: exists and is not a directory; give another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise QueueError(f"{out}: exists and is not empty; give another --out, or --force to replace it")


def write_queue(
    catalog: str | Path | Catalog,
    run: str,
    out: str | Path,
    *,
    image_url_prefix: str | None = None,
    thumb_width: int = 320,
    force: bool = False,
) -> QueueSummary:
    """Write the relabel queue of mining run ``run`` into directory ``out`` (see the module docstring).

    ``catalog``: the catalog file (it must exist) or an open :class:`Catalog`. An existing non-empty
    ``out`` is refused unless ``force``, which replaces it. Raises CatalogError for an unknown run or
    catalog, QueueError for a run without selections, a missing or unreadable image, malformed boxes.
    """
    if thumb_width < 16:
        raise QueueError(f"thumbnail width must be >= 16 px, got {thumb_width}")
    out = Path(out).absolute()
    _prepare_out(out, force)
    if isinstance(catalog, Catalog):
        selections, info = catalog.selections(run), catalog.run_info(run)
    else:
        with Catalog.open(catalog, create=False) as cat:
            selections, info = cat.selections(run), cat.run_info(run)
    if not selections:
        raise QueueError(f"mining run {run!r} has selected no frames (status {info['status']}); "
                         "select its picks before writing a queue")
    cat_path = catalog.path if isinstance(catalog, Catalog) else Path(catalog)
    for precious in [cat_path, *{Path(s.frame.dataset_root) for s in selections}]:
        if precious.absolute().is_relative_to(out):
            raise QueueError(f"{out}: holds {precious}, which the queue would replace; give another --out")
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    (tmp / "thumbs").mkdir(parents=True)
    (tmp / "label_studio").mkdir()
    try:
        summary = _write(tmp, out, run, info, selections, image_url_prefix, thumb_width)
        _prepare_out(out, force)  # again: another process may have filled it meanwhile
        trash = out.parent / f".{out.name}.replaced-{os.getpid()}"
        if out.is_dir():
            out.rename(trash)
        try:
            tmp.rename(out)
        except OSError:
            if trash.exists():
                trash.rename(out)  # put the replaced queue back
            raise
        shutil.rmtree(trash, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary


def _write(tmp: Path, out: Path, run: str, info: dict[str, Any], selections: list[Selection],
           prefix: str | None, thumb_width: int) -> QueueSummary:
    """Write every file of the queue into ``tmp`` (which becomes ``out``)."""
    readers: dict[str, NuScenesDataset] = {}
    manifest, tasks, rows = [], [], []
    by_root: dict[str, dict[str, EvalBoxes]] = {}
    n_boxes = n_regions = n_thumbs = 0
    for sel in selections:
        fr = sel.frame
        where = f"mining run {run!r}, pick {sel.rank} (frame {fr.sample_token} of {fr.dataset_root})"
        boxes = _pick_boxes(sel, where)
        images = {cam: Path(fr.dataset_root) / fr.cameras[cam] for cam in _camera_order(fr.cameras)}
        for cam, path in images.items():
            if not path.is_file():
                raise QueueError(f"{where}: image of {cam} missing: {path}")
        try:
            if fr.dataset_root not in readers:
                readers[fr.dataset_root] = load_dataset(fr.dataset_root)
            sample = readers[fr.dataset_root].sample(fr.sample_token)
            layer = boxes.layer()
            thumbs: dict[str, tuple[str, int]] = {}  # camera -> (thumbnail path relative to out, regions)
            for cam, path in images.items():
                if cam not in sample.cameras:
                    raise QueueError(f"{where}: the catalog lists camera {cam}, the dataset's sample has "
                                     f"{list(sample.cameras)}")
                calib = sample.cameras[cam]
                hw = (calib.height, calib.width)
                image = read_image(path, hw)
                cam_T_ref = sample.cam_T_ref(cam)
                bounds, visible = box_image_bounds(calib.K, cam_T_ref, boxes.center, boxes.size, boxes.yaw, hw)
                regions = _regions(boxes, bounds, visible, hw)
                n_regions += len(regions)
                tasks.append({
                    "data": {IMAGE_NAME: image_url(path, prefix), "frame": fr.sample_token, "camera": cam,
                             "run": run, "dataset": fr.dataset_root, "score": sel.score},
                    "predictions": [{"model_version": run, "score": sel.score, "result": regions}],
                })
                rel = f"thumbs/{sel.rank:04d}_{cam}.jpg"
                if not cv2.imwrite(str(tmp / rel), _thumbnail(image, calib.K, cam_T_ref, layer, thumb_width)):
                    raise QueueError(f"{out / rel}: cannot write the thumbnail")
                thumbs[cam] = (rel, len(regions))
                n_thumbs += 1
        except DatasetError as exc:
            raise QueueError(f"{where}: {exc}") from None
        predictions = by_root.setdefault(fr.dataset_root, {})
        if any(fr.sample_token in p for p in by_root.values()):
            raise QueueError(f"{where}: sample token {fr.sample_token} is picked twice (in two datasets?); "
                             "the result format keys boxes by sample token")
        predictions[fr.sample_token] = boxes.eval_boxes()
        n_boxes += len(boxes.names)
        manifest.append({
            "frame": fr.sample_token, "frame_id": fr.id, "dataset": fr.dataset_root, "scene": fr.scene_name,
            "frame_index": fr.frame_index, "timestamp": fr.timestamp, "conditions": list(fr.conditions),
            "rank": sel.rank, "score": sel.score, "scores": sel.scores, "reasons": sel.reasons,
            "images": {cam: str(p) for cam, p in images.items()}, "boxes": len(boxes.names),
        })
        rows.append((sel, images, thumbs))

    results: dict[str, Any] = {"meta": None, "results": {}}
    for root, preds in by_root.items():
        part = results_json(preds, readers[root])  # meta: camera only
        results["meta"] = part["meta"]
        results["results"].update(part["results"])
    (tmp / "manifest.jsonl").write_text("".join(_dumps(m, f"manifest of frame {m['frame']}") + "\n" for m in manifest))
    (tmp / "predictions.json").write_text(_dumps(results, "predictions.json"))
    (tmp / "label_studio" / "tasks.json").write_text(_dumps(tasks, "label_studio/tasks.json", indent=1))
    (tmp / "label_studio" / "config.xml").write_text(labeling_config(DETECTION_CLASSES))
    (tmp / "index.html").write_text(_review_page(run, info, rows, n_boxes))
    return QueueSummary(out=out, run=run, picks=len(selections), tasks=len(tasks), boxes=n_boxes, regions=n_regions,
                        thumbnails=n_thumbs, datasets=len(by_root))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em; background: #fafafa; color: #222; }
table { border-collapse: collapse; } td, th { border-bottom: 1px solid #ddd; padding: 6px; vertical-align: top; }
th { text-align: left; background: #eee; position: sticky; top: 0; } .mono { font-family: monospace; font-size: 85%; }
figure { display: inline-block; margin: 2px; } figcaption { font-size: 75%; color: #555; }
ul { margin: 0; padding-left: 1.2em; } .cams { min-width: 40em; }
"""


def _review_page(run: str, info: dict[str, Any], rows: list[tuple[Selection, dict[str, Path], dict[str, tuple[str, int]]]],
                 n_boxes: int) -> str:
    """The static review page: one table row per pick. Every string from the catalog is HTML-escaped."""
    e = html.escape
    head = (f"<h1>Relabel queue of mining run {e(run)}</h1>\n<p>{len(rows)} frames, {n_boxes} predicted boxes; "
            f"model <span class=mono>{e(str(info.get('model', '')))}</span>; strategies "
            f"{e(', '.join(map(str, info.get('strategies', []))))}; status {e(str(info.get('status', '')))}. "
            "Thumbnails show the model's boxes (dashed, with scores); click one for the full image.</p>\n")
    body = []
    for sel, images, thumbs in rows:
        fr = sel.frame
        scores = "".join(f"<li>{e(k)}: {v:.4g}</li>" for k, v in sorted(sel.scores.items()))
        reasons = "".join(f"<li>{e(r)}</li>" for r in sel.reasons)
        rows_of_cams = [[c for c in row if c in thumbs] for row in CAMERA_LAYOUT]
        rows_of_cams.append([c for c in thumbs if c not in _LAYOUT_ORDER])
        figures = "".join("<div>" + "".join(
            f'<figure><a href="{e(images[cam].as_uri())}"><img src="{e(thumbs[cam][0])}" alt="{e(cam)}" '
            f'loading="lazy"></a><figcaption>{e(cam)}: {thumbs[cam][1]} boxes</figcaption></figure>'
            for cam in cams) + "</div>" for cams in rows_of_cams if cams)
        body.append(
            f"<tr><td>{sel.rank}</td><td class=mono>{e(fr.sample_token)}<br>{e(fr.dataset_root)}</td>"
            f"<td>{e(fr.scene_name)}#{fr.frame_index}</td><td>{e(', '.join(fr.conditions) or '-')}</td>"
            f"<td>{sel.score:.4g}</td><td><ul>{scores}</ul></td><td><ul>{reasons}</ul></td>"
            f"<td class=cams>{figures}</td></tr>")
    return ("<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
            f"<title>Relabel queue: {e(run)}</title><style>{_STYLE}</style></head><body>\n{head}"
            "<table><tr><th>rank</th><th>frame</th><th>scene#index</th><th>conditions</th><th>score</th>"
            "<th>strategy scores</th><th>reasons</th><th>cameras</th></tr>\n" + "\n".join(body)
            + "\n</table></body></html>\n")
