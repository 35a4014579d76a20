"""The relabel queue (data_engine/labels/queue.py, `data-engine queue`) on real catalogs of small synthetic worlds,
and the box-to-image rectangle it projects with (perception.box_geometry.box_image_bounds)."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.catalog import Catalog, FrameResult
from data_engine.cli import app
from data_engine.labels.label_studio import BOX_CONTROL, IMAGE_NAME, box_index
from data_engine.labels.queue import DEFAULT_IMAGE_URL_PREFIX, QueueError, write_queue
from data_engine.sim.synth import SynthConfig, synthesize
from perception.data.nuscenes import load_dataset
from perception.schema import DETECTION_CLASSES
from perception.box_geometry import box_corners, box_image_bounds
from perception.geometry import (
    camera_rotation_from_yaw_pitch,
    invert_rigid,
    make_transform,
    project,
    transform_points,
)
from perception.metrics.nuscenes_io import load_results

EVIL_REASON = "<script>alert('x')</script> & co"
THUMB_WIDTH = 96


# -- the projection of boxes to image rectangles ---------------------------------------------------------


def test_box_image_bounds_in_front_behind_straddling_and_outside() -> None:
    K = np.array([[100.0, 0.0, 79.5], [0.0, 100.0, 44.5], [0.0, 0.0, 1.0]])  # 160 x 90 image
    cam_T_ego = invert_rigid(make_transform(camera_rotation_from_yaw_pitch(0.0), np.zeros(3)))  # looks along +x
    center = np.array([[10.0, 0.0, 0.0], [-10.0, 0.0, 0.0], [0.5, 0.0, 0.0], [10.0, 60.0, 0.0], [10.0, 7.5, 0.0]])
    size = np.array([[2.0, 4.0, 1.5], [2.0, 4.0, 1.5], [2.0, 4.0, 1.5], [2.0, 4.0, 1.5], [1.0, 1.0, 1.0]])
    yaw = np.array([0.3, 0.0, 0.0, 0.0, 0.0])
    bounds, visible = box_image_bounds(K, cam_T_ego, center, size, yaw, (90, 160))
    assert bounds.shape == (5, 4) and visible.tolist() == [True, False, True, False, True]
    # Wholly in front and inside: exactly the bounds of the 8 projected corners.
    uv, _ = project(K, transform_points(cam_T_ego, box_corners(center[0], size[0], yaw[0])))
    assert np.allclose(bounds[0], [*uv.min(0), *uv.max(0)]) and uv.min() > -0.5 and uv[:, 0].max() < 159.5
    assert np.isnan(bounds[1]).all() and np.isnan(bounds[3]).all(), "behind the camera, far off to the side"
    # The camera sits inside the box's extent (its rear half is behind the near plane): the clipped box
    # fills the whole image, and its centre projects inside.
    assert np.allclose(bounds[2], [-0.5, -0.5, 159.5, 89.5])
    # Partly beyond the left edge: clipped to the image, still holding the projected centre.
    c_uv, _ = project(K, transform_points(cam_T_ego, center[4]))
    assert bounds[4, 0] == -0.5 and bounds[4, 2] > c_uv[0] > bounds[4, 0] and bounds[4, 1] < c_uv[1] < bounds[4, 3]
    empty, vis = box_image_bounds(K, cam_T_ego, np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), (90, 160))
    assert empty.shape == (0, 4) and vis.shape == (0,)


# -- a catalog with a selected mining run ----------------------------------------------------------------


def _true_predictions(reader, sample) -> list[dict]:
    """The sample's detection-class annotations as the catalog stores a model's boxes (ego frame)."""
    gt = reader.box_set(sample)
    keep = np.flatnonzero(gt.label >= 0)
    return [{"class": DETECTION_CLASSES[int(gt.label[i])], "score": round(0.3 + 0.01 * (k % 60), 3),
             "center": gt.center[i].tolist(), "size": gt.size[i].tolist(), "yaw": float(gt.yaw[i]),
             "velocity": gt.velocity[i].tolist()} for k, i in enumerate(keep)]


@pytest.fixture(scope="module")
def world(tmp_path_factory, synth_world):
    """Two labeled synthetic datasets indexed as an unlabeled pool (the shared world of 2 scenes x 3 frames,
    and one of 1 scene x 2 frames); run "r1" scored every frame with its true boxes and picked five frames
    from both datasets; run "r0" scored nothing and picked nothing."""
    root = tmp_path_factory.mktemp("queue")
    a, b = synth_world, root / "world_b"
    synthesize(SynthConfig(out=b, scenes=1, frames=2, seed=22, width=160, height=90), progress=False)
    db = root / "catalog.db"
    readers = {str(p.resolve()): load_dataset(p) for p in (a, b)}
    preds: dict[int, list[dict]] = {}
    with Catalog.open(db) as cat:
        for p in (a, b):
            cat.index_dataset(p, unlabeled=True)
        run_id, _ = cat.start_run("r1", "model.onnx", "0" * 64, ["det_entropy"], 5, "local", {})
        cat.start_run("r0", "model.onnx", "0" * 64, ["det_entropy"], 5, "local", {})
        for dataset_id, scene_token, frames in cat.scene_frames(["unlabeled"]):
            results = []
            for k, fr in enumerate(frames):
                reader = readers[fr.dataset_root]
                preds[fr.id] = _true_predictions(reader, reader.sample(fr.sample_token))
                results.append(FrameResult(fr.id, embedding=np.full(4, k, np.float32), predictions=preds[fr.id],
                                           scores={"det_entropy": (0.5 + 0.01 * fr.id, {})}))
            cat.write_scene(run_id, dataset_id, scene_token, results)
        frames = [f for _, _, fs in cat.scene_frames(["unlabeled"]) for f in fs]
        picked = [frames[6], frames[2], frames[4], frames[7], frames[0]]  # both datasets, not in id order
        reasons = [["det_entropy high"], [EVIL_REASON], ["det_entropy high", "novel"], ["rare"], ["flicker"]]
        cat.write_selection(run_id, [(f.id, 2.0 - 0.25 * k, r) for k, (f, r) in enumerate(zip(picked, reasons))])
    return {"db": db, "root": root, "picked": picked, "reasons": reasons, "preds": preds, "readers": readers}


def _queue(world, out: Path, *extra: str):
    args = ["queue", "--run", "r1", "--out", str(out), "--catalog", str(world["db"]), "--thumb-width", str(THUMB_WIDTH)]
    return CliRunner().invoke(app, args + list(extra))


# -- the queue's files --------------------------------------------------------------------------------


def test_queue_writes_manifest_predictions_tasks_config_and_page(world, tmp_path) -> None:
    out = tmp_path / "q"
    res = _queue(world, out)
    assert res.exit_code == 0, res.output
    picked, preds, readers = world["picked"], world["preds"], world["readers"]
    n_boxes = sum(len(preds[f.id]) for f in picked)
    assert f"5 frames from 2 dataset(s), {n_boxes} predicted boxes, 30 Label Studio tasks" in res.output
    assert not [p for p in tmp_path.iterdir() if p.name != "q"], "no partial or replaced directory left behind"

    # manifest.jsonl: one line per pick, in rank order.
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [m["frame"] for m in manifest] == [f.sample_token for f in picked]
    assert [m["rank"] for m in manifest] == [0, 1, 2, 3, 4] and [m["score"] for m in manifest] == [2.0, 1.75, 1.5, 1.25, 1.0]
    assert [m["reasons"] for m in manifest] == world["reasons"]
    for m, f in zip(manifest, picked):
        assert (m["frame_id"], m["dataset"], m["scene"], m["frame_index"]) == (f.id, f.dataset_root, f.scene_name, f.frame_index)
        assert m["boxes"] == len(preds[f.id]) > 0 and m["scores"] == {"det_entropy": pytest.approx(0.5 + 0.01 * f.id)}
        assert sorted(m["images"]) == sorted(f.cameras) and all(Path(p).is_absolute() and Path(p).is_file()
                                                                for p in m["images"].values())

    # predictions.json: the official result format, global frame; loaded back into each sample's ego frame.
    results = json.loads((out / "predictions.json").read_text())
    assert results["meta"]["use_camera"] is True and set(results["results"]) == {f.sample_token for f in picked}
    for root, reader in readers.items():
        samples = [reader.sample(f.sample_token) for f in picked if f.dataset_root == root]
        assert samples, "picks from both datasets"
        loaded, _ = load_results(results, reader, samples)
        for f in (f for f in picked if f.dataset_root == root):
            got, want = loaded[f.sample_token], preds[f.id]
            assert list(got.names) == [p["class"] for p in want]
            assert np.abs(got.center - [p["center"] for p in want]).max() < 1e-6
            assert np.abs(got.size - [p["size"] for p in want]).max() < 1e-9
            dyaw = got.yaw - [p["yaw"] for p in want]
            assert np.abs(np.arctan2(np.sin(dyaw), np.cos(dyaw))).max() < 1e-6
            assert np.allclose(got.score, [p["score"] for p in want])
            assert np.abs(got.velocity - np.nan_to_num([p["velocity"] for p in want])).max() < 1e-6

    # Label Studio tasks: one per camera image; regions hold the projected boxes.
    tasks = json.loads((out / "label_studio" / "tasks.json").read_text())
    assert len(tasks) == 30
    checked = 0
    by_token = {f.sample_token: f for f in picked}
    for task in tasks:
        data = task["data"]
        f = by_token[data["frame"]]
        assert (data["run"], data["dataset"]) == ("r1", f.dataset_root)
        assert data["score"] == manifest[picked.index(f)]["score"]
        image = Path(f.dataset_root) / f.cameras[data["camera"]]
        assert data[IMAGE_NAME] == DEFAULT_IMAGE_URL_PREFIX + str(image).lstrip("/")
        (pred,) = task["predictions"]
        assert pred["model_version"] == "r1" and pred["score"] == data["score"]
        sample = readers[f.dataset_root].sample(f.sample_token)
        cam = sample.cameras[data["camera"]]
        centers = np.array([p["center"] for p in preds[f.id]])
        uv, depth = project(cam.K, transform_points(sample.cam_T_ref(data["camera"]), centers))
        inside = (depth > 0.1) & (uv[:, 0] > -0.5) & (uv[:, 0] < cam.width - 0.5) & (uv[:, 1] > -0.5) & (uv[:, 1] < cam.height - 0.5)
        regions = {box_index(r["id"]): r for r in pred["result"]}
        assert len(regions) == len(pred["result"]) and None not in regions
        assert set(np.flatnonzero(inside)) <= set(regions), "a box whose centre is in the image has a region"
        for i, r in regions.items():
            v = r["value"]
            assert (r["type"], r["from_name"], r["to_name"]) == ("rectanglelabels", BOX_CONTROL, IMAGE_NAME)
            assert (r["original_width"], r["original_height"]) == (cam.width, cam.height)
            assert v["rectanglelabels"] == [preds[f.id][i]["class"]] and r["score"] == preds[f.id][i]["score"]
            assert 0 <= v["x"] and v["x"] + v["width"] <= 100 + 1e-9 and v["width"] > 0
            assert 0 <= v["y"] and v["y"] + v["height"] <= 100 + 1e-9 and v["height"] > 0
            if inside[i]:
                u0, u1 = v["x"] / 100 * cam.width - 0.5, (v["x"] + v["width"]) / 100 * cam.width - 0.5
                v0, v1 = v["y"] / 100 * cam.height - 0.5, (v["y"] + v["height"]) / 100 * cam.height - 0.5
                assert u0 - 1e-6 <= uv[i, 0] <= u1 + 1e-6 and v0 - 1e-6 <= uv[i, 1] <= v1 + 1e-6, (f.sample_token, r)
                checked += 1
    assert checked > 20, "enough boxes were checked for the test to mean something"

    # The labeling config lists every detection class under the box control.
    config = ET.fromstring((out / "label_studio" / "config.xml").read_text())
    rect = config.find("RectangleLabels")
    assert rect is not None and rect.get("name") == BOX_CONTROL
    assert [lab.get("value") for lab in rect.findall("Label")] == list(DETECTION_CLASSES)

    # The review page: thumbnails that exist, drawn at the asked width; every string escaped.
    page = (out / "index.html").read_text()
    thumbs = re.findall(r'<img src="([^"]+)"', page)
    assert len(thumbs) == 30 and all(t.startswith("thumbs/") for t in thumbs)
    for t in thumbs:
        img = cv2.imread(str(out / t))
        assert img is not None and img.shape[1] == THUMB_WIDTH
    assert sorted(p.name for p in (out / "thumbs").iterdir()) == sorted(Path(t).name for t in thumbs)
    assert "<script>" not in page and "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt; &amp; co" in page
    for f in picked:
        assert f.sample_token in page and f"{f.scene_name}#{f.frame_index}" in page


def test_write_queue_api_with_an_image_url_prefix(world, tmp_path) -> None:
    summary = write_queue(world["db"], "r1", tmp_path / "q", image_url_prefix="http://files:8081", thumb_width=32)
    assert (summary.picks, summary.tasks, summary.thumbnails, summary.datasets) == (5, 30, 30, 2)
    assert summary.boxes == sum(len(world["preds"][f.id]) for f in world["picked"]) and 0 < summary.regions
    tasks = json.loads(summary.tasks_path.read_text())
    url = tasks[0]["data"][IMAGE_NAME]
    first = world["picked"][0]
    assert url.startswith("http://files:8081/") and Path(unquote(url[len("http://files:8081"):])).is_file()
    assert unquote(url[len("http://files:8081"):]) == str(Path(first.dataset_root) / first.cameras[tasks[0]["data"]["camera"]])
    assert summary.manifest.is_file() and summary.html.is_file() and summary.config_path.is_file()


# -- errors -------------------------------------------------------------------------------------------


def test_queue_errors_name_what_is_wrong(world, tmp_path) -> None:
    res = CliRunner().invoke(app, ["queue", "--run", "nope", "--out", str(tmp_path / "q"), "--catalog", str(world["db"])])
    assert res.exit_code == 1 and "no mining run 'nope'" in res.output and "r1" in res.output
    assert not (tmp_path / "q").exists()
    res = CliRunner().invoke(app, ["queue", "--run", "r0", "--out", str(tmp_path / "q"), "--catalog", str(world["db"])])
    assert res.exit_code == 1 and "'r0' has selected no frames" in res.output
    res = CliRunner().invoke(app, ["queue", "--run", "r1", "--out", str(tmp_path / "q"), "--catalog", str(tmp_path / "no.db")])
    assert res.exit_code == 1 and "no.db: no catalog here" in res.output and not (tmp_path / "no.db").exists()

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("earlier work")
    res = _queue(world, busy)
    assert res.exit_code == 1 and f"{busy}: exists and is not empty" in res.output and "--force" in res.output
    assert [p.name for p in busy.iterdir()] == ["keep.txt"], "a refused queue leaves the directory alone"
    res = _queue(world, world["root"], "--force")
    assert res.exit_code == 1 and "catalog.db, which the queue would replace" in res.output
    assert world["db"].is_file(), "--force never deletes the catalog or a dataset"
    res = _queue(world, busy, "--force")
    assert res.exit_code == 0, res.output
    assert not (busy / "keep.txt").exists() and (busy / "manifest.jsonl").is_file()

    # A missing image fails the whole queue, naming the file, and leaves nothing behind.
    victim = world["picked"][3]
    image = Path(victim.dataset_root) / victim.cameras["CAM_BACK"]
    moved = image.with_suffix(".moved")
    image.rename(moved)
    try:
        with pytest.raises(QueueError, match=re.escape(f"image of CAM_BACK missing: {image}")):
            write_queue(world["db"], "r1", tmp_path / "q2")
        res = _queue(world, tmp_path / "q2")
        assert res.exit_code == 1 and victim.sample_token in res.output and "pick 3" in res.output
    finally:
        moved.rename(image)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy"], "no queue, partial or replaced directory left"
