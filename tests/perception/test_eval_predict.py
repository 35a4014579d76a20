"""`perception eval` and `perception predict` (perception/evaluate.py, perception/predict.py) on a tiny
synthetic dataset with an untrained tiny model."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import torch
from model_inputs import preset_with, random_tiny_checkpoint
from typer.testing import CliRunner

from perception.cli import app
from perception.data.nuscenes import load_dataset
from perception.schema import ATTRIBUTES, DETECTION_CLASSES
from perception.evaluate import EvalReport, evaluate_model, run_model
from perception.schema import EVAL_CONDITIONS, RARE_CLASSES
from perception.metrics.nuscenes_io import evaluate_split

W, H = 352, 198  # recorded camera size of the synthetic dataset
VAL = "synth_val"
RESULT_KEYS = {"sample_token", "translation", "size", "rotation", "velocity", "detection_name", "detection_score",
               "attribute_name"}
DEVKIT_SUMMARY_KEYS = {"label_aps", "mean_dist_aps", "mean_ap", "label_tp_errors", "tp_errors", "tp_scores",
                       "nd_score", "eval_time", "cfg", "meta"}


@pytest.fixture(scope="module")
def world(tmp_path_factory, synth_world):
    """The shared synthetic world (2 scenes of 3 frames, W x H cameras) and an untrained tiny model."""
    root = tmp_path_factory.mktemp("evalpred")
    data = synth_world
    ckpt, model = random_tiny_checkpoint(root / "run" / "last.pt", pretrained=False)
    preset = preset_with("tiny", pretrained=None)
    return {"root": root, "data": data, "ckpt": ckpt, "model": model, "preset": preset}


def test_eval_writes_submission_metrics_and_tables(world, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["eval", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
                                      "--split", VAL, "--out", str(out)])
    assert result.exit_code == 0, result.output
    text = result.stdout
    for word in ("mAP", "NDS", "ATE", "ASE", "AOE", "AVE", "AAE", "BEV segmentation IoU", "RANGE-CAPPED",
                 "Per scene condition", "Rare classes", *EVAL_CONDITIONS, *RARE_CLASSES):
        assert word in text, word

    # The results JSON is a valid submission: meta, and every sample of the split with its boxes.
    reader = load_dataset(world["data"])
    tokens = {t for sc in reader.scenes_of_split(VAL) for t in sc.sample_tokens}
    sub = json.loads((out / "results_nusc.json").read_text())
    assert set(sub["meta"]) == {"use_camera", "use_lidar", "use_radar", "use_map", "use_external"}
    assert set(sub["results"]) == tokens
    boxes = [b for recs in sub["results"].values() for b in recs]
    assert boxes, "an untrained model still scores some cells above 0.1"
    for token, recs in sub["results"].items():
        assert len(recs) <= 500
        for b in recs:
            assert set(b) == RESULT_KEYS and b["sample_token"] == token
            assert len(b["translation"]) == 3 and len(b["size"]) == 3 and len(b["rotation"]) == 4
            assert len(b["velocity"]) == 2 and b["detection_name"] in DETECTION_CLASSES
            assert b["attribute_name"] in set(ATTRIBUTES) | {""} and 0 <= b["detection_score"] <= 1
            assert abs(np.linalg.norm(b["rotation"]) - 1) < 1e-6 and min(b["size"]) > 0

    # metrics_summary.json in the devkit's layout; the submission scores the same through the reader.
    summary = json.loads((out / "metrics_summary.json").read_text())
    assert DEVKIT_SUMMARY_KEYS <= set(summary)
    assert set(summary["label_aps"]) == set(DETECTION_CLASSES)
    assert set(summary["tp_errors"]) == {"trans_err", "scale_err", "orient_err", "vel_err", "attr_err"}
    rescored = evaluate_split(reader, out / "results_nusc.json", VAL)
    assert rescored.mean_ap == pytest.approx(summary["mean_ap"], abs=1e-9)
    assert rescored.nd_score == pytest.approx(summary["nd_score"], abs=1e-9)
    capped = json.loads((out / "metrics_summary_capped.json").read_text())
    assert "capped" in capped["meta"]["eval_config"] and max(capped["cfg"]["class_range"].values()) == 25.6

    raw = json.loads((out / "eval_report.json").read_text())  # strict JSON: NaN written as null
    report = EvalReport.from_json(raw)
    assert report.to_json() == raw  # reads back whole
    with pytest.raises(ValueError, match="format 1"):  # a report of the earlier layout is refused, not misread
        EvalReport.from_json({k: v for k, v in raw.items() if k != "format"})
    assert report.split == VAL and report.samples == len(tokens) and report.video_state == "carried"
    assert report.detection.mAP == pytest.approx(summary["mean_ap"]) and report.detection.NDS == pytest.approx(summary["nd_score"])
    assert report.detection.classes["car"].AP == pytest.approx(summary["mean_dist_aps"]["car"])
    assert report.detection_capped.mAP == pytest.approx(capped["mean_ap"])
    assert set(report.bev_iou) == set(world["preset"].tasks.seg_classes)
    assert set(report.conditions) == set(EVAL_CONDITIONS) and set(report.rare) == set(RARE_CLASSES)
    scene_conds = reader.scenes_of_split(VAL)[0].description
    for cond, entry in report.conditions.items():
        if cond in scene_conds:
            assert entry.samples == len(tokens) and entry.detection is not None and entry.detection_capped is not None
            assert entry.detection.mAP == pytest.approx(summary["mean_ap"])  # the one scene is the whole split
        else:
            assert entry.samples == 0 and entry.detection is None
    assert report.meta == {"checkpoint": str(world["ckpt"])} and report.files["report"] == str(out / "eval_report.json")
    assert (out / "eval_report.txt").read_text().strip() == report.table.strip()


class _Spy(torch.nn.Module):
    """Wraps a model, recording the norm of each prev_state slot it receives."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.norms: list[list[float]] = []

    def forward(self, images, K, ego_T_cam, cam_valid, prev_state, prev_T_curr, dt):
        self.norms.append(prev_state.flatten(1).norm(dim=1).tolist())
        return self.model(images, K, ego_T_cam, cam_valid, prev_state, prev_T_curr, dt)

    def initial_state(self, batch, device="cpu"):
        return self.model.initial_state(batch, device)


@pytest.mark.parametrize("batch_size", [1, 2])
def test_video_state_is_carried_and_reset_at_scene_starts(world, batch_size):
    spy = _Spy(world["model"])
    report = evaluate_model(spy, world["preset"], world["data"], None, batch_size=batch_size, print_fn=None)
    assert report.samples == 6 and report.scenes == 2
    # Frames of each scene in order: the state is zero at a scene's first frame, non-zero after it.
    steps = spy.norms
    assert len(steps) == 6 // batch_size and all(len(s) == batch_size for s in steps)
    per_scene_frame = 3
    for i, norms in enumerate(steps):
        first = i % per_scene_frame == 0 if batch_size == 1 else i == 0
        assert all((n == 0) if first else (n > 0) for n in norms), (i, norms)

    spy.norms.clear()
    reset = evaluate_model(spy, world["preset"], world["data"], None, batch_size=batch_size, reset_state=True,
                           print_fn=None)
    assert all(n == 0 for norms in spy.norms for n in norms)
    assert reset.video_state == "reset every frame"


def test_carried_state_changes_the_outputs(world):
    from perception.data.dataset import MultiCamDataset

    ds = MultiCamDataset(world["data"], world["preset"])
    clips = ds.clips()[:1]
    carried = [o["seg"] for _, o in run_model(world["model"], ds, clips)]
    reset = [o["seg"] for _, o in run_model(world["model"], ds, clips, reset_state=True)]
    assert torch.equal(carried[0], reset[0])  # the first frame starts from zeros either way
    assert not torch.allclose(carried[2], reset[2])


def test_predict_writes_pictures_and_video(world, tmp_path):
    out = tmp_path / "pred"
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
                                      "--out", str(out), "--video", "--score-threshold", "0.1"])
    assert result.exit_code == 0, result.output
    pngs = sorted(out.glob("*.png"))
    assert [p.name for p in pngs] == [f"scene-0001_{i:04d}.png" for i in range(3)]  # the val scene, whole
    # compose_sample_view: 36 px title, 2 rows of 480 px wide tiles of the camera aspect, and the BEV
    # (two 480 px panels and a 4 px gap) resized to the tiles' height.
    th = round(480 * H / W)
    expected = (36 + 2 * th, 3 * 480 + round(2 * th * (480 + 4 + 480) / 480))
    expected = (expected[0] + expected[0] % 2, expected[1] + expected[1] % 2)
    for p in pngs:
        img = cv2.imread(str(p))
        assert img is not None and img.shape == (*expected, 3)
    video = out / "scene-0001.mp4"
    assert video.is_file() and video.stat().st_size > 0
    cap = cv2.VideoCapture(str(video))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    cap.release()
    assert len(frames) == 3 and frames[0].shape == (*expected, 3)
    # The BEV prediction panel is not blank: the overlay or the boxes left colour there.
    first = cv2.imread(str(pngs[0]))
    assert first[36:, 3 * 480:].std() > 5


def test_predict_scene_and_max_frames(world, tmp_path):
    out = tmp_path / "pred1"
    result = CliRunner().invoke(app, ["predict", "--checkpoint", str(world["ckpt"]), "--data", str(world["data"]),
                                      "--out", str(out), "--scene", "scene-0000", "--max-frames", "1"])
    assert result.exit_code == 0, result.output
    assert [p.name for p in out.glob("*.png")] == ["scene-0000_0000.png"] and not list(out.glob("*.mp4"))


def test_clear_errors(world, tmp_path):
    runner = CliRunner()
    data, ckpt = str(world["data"]), str(world["ckpt"])
    missing = str(tmp_path / "nope.pt")
    res = runner.invoke(app, ["eval", "--checkpoint", missing, "--data", data])
    assert res.exit_code == 1 and f"{missing}: checkpoint file missing" in res.stderr
    res = runner.invoke(app, ["predict", "--checkpoint", missing, "--data", data, "--out", str(tmp_path / "p")])
    assert res.exit_code == 1 and f"{missing}: checkpoint file missing" in res.stderr
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    res = runner.invoke(app, ["eval", "--checkpoint", str(junk), "--data", data])
    assert res.exit_code == 1 and str(junk) in res.stderr and "Traceback" not in res.output
    res = runner.invoke(app, ["eval", "--checkpoint", ckpt, "--data", data, "--split", "bogus", "--out", str(tmp_path / "e")])
    assert res.exit_code == 1 and "unknown split 'bogus'" in res.stderr and "synth_val" in res.stderr
    assert not (tmp_path / "e").exists()
    res = runner.invoke(app, ["predict", "--checkpoint", ckpt, "--data", data, "--out", str(tmp_path / "p"),
                              "--scene", "scene-9999"])
    assert res.exit_code == 1 and "unknown scene 'scene-9999'" in res.stderr and "scene-0000" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
