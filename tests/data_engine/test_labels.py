"""Labels in, dataset versions out: `data-engine label | ingest | diff` and Label Studio reviews, on small
synthetic worlds, a real SQLite catalog and real version directories."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.catalog import Catalog, FrameResult
from data_engine.cli import app
from data_engine.labels.label_studio import (
    BOX_CONTROL,
    FRAME_CONTROL,
    IMAGE_NAME,
    MISSING_CHOICE,
    region_id,
)
from data_engine.labels.ingest import ingest
from data_engine.labels.records import CLASS_CATEGORY, LabelsError, errors_path
from data_engine.labels.versions import diff_versions
from data_engine.sim.oracle import label_samples
from perception.data.nuscenes import load_dataset
from perception.data.nuscenes_tables import find_version, read_tables
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES
from perception.geometry import (
    invert_rigid,
    quat_to_rotation,
    transform_points,
    yaw_from_rotation,
)

runner = CliRunner()


@pytest.fixture(scope="module")
def worlds(synth_world, synth_pool):
    """The shared labeled world and pool (tests/conftest.py), side by side: 2 scenes of 3 frames each."""
    return {"labeled": synth_world, "pool": synth_pool}


def make_catalog(tmp_path: Path, worlds, queue: list[tuple[int, int]]) -> tuple[Path, list[str]]:
    """A catalog of both worlds with the pool frames (scene position, frame index) queued; their tokens."""
    db = tmp_path / "cat.db"
    with Catalog.open(db) as cat:
        cat.index_dataset(worlds["labeled"])
        cat.index_dataset(worlds["pool"], unlabeled=True)
        pool = cat.query(label_state="unlabeled")
        scenes = sorted({r.scene_name for r in pool})
        rows = [r for s, k in queue for r in pool if r.scene_name == scenes[s] and r.frame_index == k]
        cat.set_label_state([r.id for r in rows], "queued")
    return db, [r.sample_token for r in rows]


def snapshot(db: Path) -> tuple[dict, list[str]]:
    """The catalog's counts and the versions directory listing (to prove nothing changed)."""
    with Catalog.open(db) as cat:
        st = cat.status()
        st["classes"] = cat.conn.execute("SELECT COUNT(*) FROM frame_classes").fetchone()[0]
        st["batch_frames"] = cat.conn.execute("SELECT COUNT(*) FROM label_batch_frames").fetchone()[0]
    versions = db.parent / "versions"
    return st, sorted(p.name for p in versions.iterdir()) if versions.exists() else []


def run_ok(args: list[str]) -> str:
    res = runner.invoke(app, args)
    assert res.exit_code == 0, (res.output, res.exception)
    return res.output


QUEUE = [(0, 0), (0, 2), (1, 1)]  # pool scene 0 frames 0 and 2 (not 1), scene 1 frame 1


@pytest.fixture(scope="module")
def oracle_file(worlds, tmp_path_factory) -> Path:
    """The oracle's labels of the QUEUE frames, written once by `data-engine label`."""
    tmp = tmp_path_factory.mktemp("oracle")
    db, _ = make_catalog(tmp, worlds, QUEUE)
    out = tmp / "labels.json"
    run_ok(["label", "--catalog", str(db), "--oracle", "sim", "--out", str(out)])
    return out


def test_label_ingest_writes_a_version_that_trains(worlds, oracle_file, tmp_path) -> None:
    db, tokens = make_catalog(tmp_path, worlds, QUEUE)
    labels = json.loads(oracle_file.read_text())
    truth = label_samples(worlds["pool"], tokens)
    assert labels["sample_annotation"] == truth["sample_annotation"] and labels["instance"] == truth["instance"]
    assert sorted(labels["frames"]) == sorted(tokens) and len(labels["sample_annotation"]) > 10

    out = run_ok(["ingest", str(oracle_file), "--catalog", str(db)])
    root = tmp_path / "versions" / "v0001"
    assert "version v0001" in out and "3 new frames" in out and root.is_dir()
    assert (root / "v1.0-v0001" / "splits.json").is_file() and json.loads((root / "version.json").read_text())["parent"] is None

    # The version loads like any dataset: the labeled dataset whole plus the new frames with the oracle's labels.
    ds = load_dataset(root)
    base = load_dataset(worlds["labeled"])
    assert {s.token for s in ds.samples} == {s.token for s in base.samples} | set(tokens)
    t = read_tables(root, find_version(root, None))
    cat_name = {c["token"]: c["name"] for c in t.records["category"]}
    inst_cat = {i["token"]: cat_name[i["category_token"]] for i in t.records["instance"]}
    pool_t = read_tables(worlds["pool"], find_version(worlds["pool"], None))
    pool_cat = {c["token"]: c["name"] for c in pool_t.records["category"]}
    truth_cat = {i["token"]: pool_cat[i["category_token"]] for i in truth["instance"]}
    attr = {a["token"]: a["name"] for a in t.records["attribute"]}
    pool_attr = {a["token"]: a["name"] for a in pool_t.records["attribute"]}
    got = {a["token"]: a for a in t.records["sample_annotation"] if a["sample_token"] in tokens}
    assert set(got) == {a["token"] for a in truth["sample_annotation"]}
    for a in truth["sample_annotation"]:
        g = got[a["token"]]
        for key in ("sample_token", "instance_token", "translation", "size", "rotation", "prev", "next",
                    "visibility_token", "num_lidar_pts"):
            assert g[key] == a[key], key
        assert inst_cat[g["instance_token"]] == truth_cat[a["instance_token"]]
        assert [attr[x] for x in g["attribute_tokens"]] == [pool_attr[x] for x in a["attribute_tokens"]]
    for s in base.samples:  # the labeled dataset's annotations are untouched
        assert ds.box_set(ds.sample(s.token)).tokens == base.box_set(s).tokens

    # The pool scenes hold only their labeled samples, relinked; they joined the train split.
    pool_ds = load_dataset(worlds["pool"])
    scene0 = pool_ds.scene(pool_ds.sample(tokens[0]).scene_token)
    new_scene = ds.scene(scene0.token)
    assert new_scene.sample_tokens == (tokens[0], tokens[1]) and new_scene.name != scene0.name  # renamed: collision
    assert ds.sample(tokens[0]).next == tokens[1] and ds.sample(tokens[1]).prev == tokens[0]
    scene_rec = next(s for s in t.records["scene"] if s["token"] == scene0.token)
    assert scene_rec["nbr_samples"] == 2 and scene_rec["last_sample_token"] == tokens[1]
    assert new_scene.name in ds.splits["synth_train"] and ds.splits["synth_val"] == base.splits["synth_val"]

    # Images are symlinks to the original files, each to its own dataset's file (names collide across worlds).
    for s in ds.samples:
        origin = pool_ds if s.token in tokens else base
        for ch, cam in s.cameras.items():
            assert cam.path.is_symlink() and cam.path.is_file()
            assert os.path.realpath(cam.path) == str(origin.sample(s.token).cameras[ch].path)
    assert not any(p.is_file() and not p.is_symlink() for p in (root / "samples").rglob("*"))

    # The catalog: frames labeled with their classes, one batch, one version.
    with Catalog.open(db) as cat:
        assert all(cat.frame(tok).label_state == "labeled" for tok in tokens)
        car_frames = {r.sample_token for r in cat.query(has_class="car")} & set(tokens)
        assert car_frames == {tok for tok in tokens if any(
            CATEGORY_TO_DETECTION.get(truth_cat[a["instance_token"]]) == "car"
            for a in truth["sample_annotation"] if a["sample_token"] == tok)}
        (batch,) = cat.conn.execute("SELECT id, format, frames, annotations FROM label_batches").fetchall()
        assert batch[1:] == ("nuscenes", 3, len(truth["sample_annotation"]))
        outcomes = cat.conn.execute("SELECT outcome, COUNT(*), SUM(annotations) FROM label_batch_frames").fetchone()
        assert outcomes == ("labeled", 3, len(truth["sample_annotation"]))
        v = cat.dataset_version("v0001")
        assert v is not None and v["label_batch_id"] == batch[0] and v["frames"] == len(ds.samples)
        assert v["annotations"] == len(t.records["sample_annotation"])

    # Training reads it: an item of a new frame.
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.presets import get_preset

    mc = MultiCamDataset(ds, get_preset("tiny"), DatasetConfig(split=None))
    item = mc[mc.indices.index(ds.sample(tokens[2]).index)]
    assert item.sample_index == ds.sample(tokens[2]).index and item.images.any()

    # The same file again: its frames are no longer queued; nothing changes.
    before = snapshot(db)
    res = runner.invoke(app, ["ingest", str(oracle_file), "--catalog", str(db)])
    assert res.exit_code == 1 and "is labeled, expected queued" in res.output and "sample_annotation[0]" in res.output
    assert snapshot(db) == before


def _bad(kind: str, labels: dict) -> str:
    """Corrupt ``labels`` in place; returns what the error must name."""
    anns, insts = labels["sample_annotation"], labels["instance"]
    if kind == "unknown frame":
        anns[3]["sample_token"] = "f" * 32
        return f"sample_annotation[3] (token {anns[3]['token']!r}): sample_token '{'f' * 32}' is not a frame"
    if kind == "unknown category":
        insts[2]["category_token"] = "c" * 32
        return f"instance[2] (token {insts[2]['token']!r}): category_token '{'c' * 32}' is not a category"
    if kind == "size <= 0":
        anns[5]["size"][1] = 0.0
        return f"sample_annotation[5] (token {anns[5]['token']!r}): size"
    if kind == "non-unit quaternion":
        anns[7]["rotation"] = [0.9, 0.0, 0.0, 0.1]
        return f"sample_annotation[7] (token {anns[7]['token']!r}): rotation"
    if kind == "duplicate token":
        anns[6]["token"] = anns[1]["token"]
        return f"sample_annotation[6] token {anns[1]['token']!r} repeats sample_annotation[1]"
    if kind == "far from the ego":
        anns[4]["translation"][0] += 500.0
        return f"sample_annotation[4] (token {anns[4]['token']!r}): translation"
    if kind == "dangling instance":
        anns[2]["instance_token"] = "e" * 32
        return f"sample_annotation[2] (token {anns[2]['token']!r}): instance_token '{'e' * 32}' is not among"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["unknown frame", "unknown category", "size <= 0", "non-unit quaternion",
                                  "duplicate token", "far from the ego", "dangling instance"])
def test_bad_records_are_refused_and_nothing_changes(worlds, oracle_file, tmp_path, kind) -> None:
    db, _ = make_catalog(tmp_path, worlds, QUEUE)
    labels = json.loads(oracle_file.read_text())
    expected = _bad(kind, labels)
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(labels))
    before = snapshot(db)
    res = runner.invoke(app, ["ingest", str(bad), "--catalog", str(db)])
    assert res.exit_code == 1 and expected in " ".join(res.output.split()), res.output
    assert str(bad) in res.output
    assert snapshot(db) == before and not (tmp_path / "versions").exists()


def test_inject_errors_known_counts_and_deterministic(worlds, tmp_path) -> None:
    db, tokens = make_catalog(tmp_path, worlds, [(0, 0), (0, 1), (0, 2), (1, 0)])
    spec = "missing=0.1,class=0.05,shift=0.08"
    out = tmp_path / "noisy.json"
    text = run_ok(["label", "--catalog", str(db), "--out", str(out), "--inject", spec, "--seed", "5"])
    truth = label_samples(worlds["pool"], tokens)
    n = len(truth["sample_annotation"])
    want = {"missing": round(0.1 * n), "class": round(0.05 * n), "shift": round(0.08 * n)}
    assert all(v > 0 for v in want.values())
    errors = json.loads(errors_path(out).read_text())
    assert {k: sum(e["kind"] == k for e in errors) for k in want} == want
    assert f"missing {want['missing']}, class {want['class']}, shift {want['shift']}" in text
    assert len({e["annotation_token"] for e in errors}) == len(errors), "one error per annotation"

    labels = json.loads(out.read_text())
    got = {a["token"]: a for a in labels["sample_annotation"]}
    orig = {a["token"]: a for a in truth["sample_annotation"]}
    insts = {i["token"]: i for i in labels["instance"]}
    pool_t = read_tables(worlds["pool"], find_version(worlds["pool"], None))
    cat_name = {c["token"]: c["name"] for c in pool_t.records["category"]}
    truth_inst = {i["token"]: i for i in truth["instance"]}
    assert len(got) == n - want["missing"]
    for e in errors:
        tok = e["annotation_token"]
        if e["kind"] == "missing":
            assert tok not in got
        elif e["kind"] == "shift":
            d = np.subtract(got[tok]["translation"], orig[tok]["translation"])
            assert 1.5 <= np.hypot(d[0], d[1]) <= 3.0 and d[2] == 0.0
        else:
            a = got[tok]
            old_cls = CATEGORY_TO_DETECTION[cat_name[truth_inst[e["instance_token"]]["category_token"]]]
            new_cat = cat_name[insts[a["instance_token"]]["category_token"]]
            assert a["instance_token"] != e["instance_token"] and CATEGORY_TO_DETECTION[new_cat] != old_cls
            assert new_cat == e["detail"]["to"] and insts[a["instance_token"]]["nbr_annotations"] == 1
            assert a["prev"] == "" and a["next"] == ""
    # Other annotations of an object whose one annotation was reclassed or dropped keep their instance, rechained.
    for tok, a in got.items():
        if a["instance_token"] in truth_inst:
            inst = insts[a["instance_token"]]
            chain = [x for x in got.values() if x["instance_token"] == a["instance_token"]]
            assert inst["nbr_annotations"] == len(chain)
            assert a["prev"] in ("", *[x["token"] for x in chain]) and a["next"] in ("", *[x["token"] for x in chain])
    untouched = set(orig) - {e["annotation_token"] for e in errors}
    assert all(got[t]["translation"] == orig[t]["translation"] for t in untouched)

    again = tmp_path / "again.json"
    run_ok(["label", "--catalog", str(db), "--out", str(again), "--inject", spec, "--seed", "5"])
    assert again.read_text() == out.read_text()
    other = tmp_path / "other.json"
    run_ok(["label", "--catalog", str(db), "--out", str(other), "--inject", spec, "--seed", "6"])
    assert other.read_text() != out.read_text()
    run_ok(["ingest", str(out), "--catalog", str(db)])  # injected errors are valid records

    res = runner.invoke(app, ["label", "--catalog", str(db), "--out", str(tmp_path / "x.json"), "--oracle", "human"])
    assert res.exit_code == 1 and "--oracle 'human': unknown oracle" in res.output
    res = runner.invoke(app, ["label", "--catalog", str(db), "--out", str(tmp_path / "x.json"), "--inject", "bogus=1"])
    assert res.exit_code == 1 and "--inject" in res.output


def test_oracle_refuses_a_dataset_not_made_by_synth(worlds, tmp_path) -> None:
    pool = tmp_path / "pool"  # a private copy of the pool: its recipe is taken away below
    shutil.copytree(worlds["pool"], pool)
    worlds = {**worlds, "pool": pool}
    db, _ = make_catalog(tmp_path, worlds, [(0, 0)])
    recipe = worlds["pool"] / "synth.json"
    saved = recipe.read_bytes()
    recipe.unlink()
    try:
        res = runner.invoke(app, ["label", "--catalog", str(db), "--out", str(tmp_path / "x.json")])
    finally:
        recipe.write_bytes(saved)
    assert res.exit_code == 1 and "only datasets written by `data-engine synth`" in res.output
    assert not (tmp_path / "x.json").exists()


def test_diff_counts_added_frames_and_changed_annotations(worlds, tmp_path) -> None:
    db, first = make_catalog(tmp_path, worlds, [(0, 0)])
    run_ok(["label", "--catalog", str(db), "--out", str(tmp_path / "a.json")])
    run_ok(["ingest", str(tmp_path / "a.json"), "--catalog", str(db)])
    with Catalog.open(db) as cat:  # two more frames, one in the scene already in v0001
        pool = [r for r in cat.query(label_state="unlabeled")]
        more = [pool[0], pool[-1]]
        cat.set_label_state([r.id for r in more], "queued")
    run_ok(["label", "--catalog", str(db), "--out", str(tmp_path / "b.json")])
    run_ok(["ingest", str(tmp_path / "b.json"), "--catalog", str(db), "--name", "second"])
    b_labels = json.loads((tmp_path / "b.json").read_text())

    res = run_ok(["diff", "v0001", "second", "--catalog", str(db), "--json"])
    d = json.loads(res)
    assert sorted(d["frames"]["added"]) == sorted(r.sample_token for r in more) and d["frames"]["removed"] == []
    assert sorted(d["annotations"]["added"]) == sorted(a["token"] for a in b_labels["sample_annotation"])
    assert d["annotations"]["removed"] == [] and d["annotations"]["changed"] == {}
    assert sum(c["delta"] for c in d["classes"].values()) == len(b_labels["sample_annotation"])
    assert sum(s["frames_b"] - s["frames_a"] for s in d["scenes"].values()) == 2
    second = load_dataset(tmp_path / "versions" / "second")
    grown = second.scene(second.sample(first[0]).scene_token)  # the scene of v0001 got its new frame, in order
    assert more[0].sample_token in grown.sample_tokens and len(grown.sample_tokens) == 2
    assert [second.sample(t).scene_index for t in grown.sample_tokens] == [0, 1]
    # An object seen in both frames, labeled by two batches, is one instance with its annotations chained.
    t2 = read_tables(second.root, second.version)
    anns = {a["token"]: a for a in t2.records["sample_annotation"]}
    both = [i for i in t2.records["instance"] if {anns[i["first_annotation_token"]]["sample_token"],
                                                   anns[i["last_annotation_token"]]["sample_token"]} == set(grown.sample_tokens)]
    assert both
    for inst in both:
        first_ann, last_ann = anns[inst["first_annotation_token"]], anns[inst["last_annotation_token"]]
        assert inst["nbr_annotations"] == 2 and first_ann["next"] == last_ann["token"] and last_ann["prev"] == first_ann["token"]
        assert first_ann["sample_token"] == grown.sample_tokens[0]

    # Relabel every labeled frame with known errors: the diff finds exactly them.
    noisy = tmp_path / "noisy.json"
    run_ok(["label", "--catalog", str(db), "--out", str(noisy), "--state", "labeled",
            "--inject", "missing=0.03,class=0.03,shift=0.03", "--seed", "1"])
    res = runner.invoke(app, ["ingest", str(noisy), "--catalog", str(db)])
    assert res.exit_code == 1 and "--relabel" in res.output
    run_ok(["ingest", str(noisy), "--catalog", str(db), "--relabel", "--name", "third"])
    errors = json.loads(errors_path(noisy).read_text())
    d = diff_versions(tmp_path / "versions" / "second", tmp_path / "versions" / "third")
    kinds = {k: {e["annotation_token"] for e in errors if e["kind"] == k} for k in ("missing", "class", "shift")}
    assert set(d["annotations"]["removed"]) == kinds["missing"] and d["annotations"]["added"] == []
    assert {t for t, k in d["annotations"]["changed"].items() if "reclassed" in k} == kinds["class"]
    assert {t for t, k in d["annotations"]["changed"].items() if "moved" in k} == kinds["shift"]
    assert d["frames"]["added"] == [] and d["frames"]["removed"] == []
    text = run_ok(["diff", str(tmp_path / "versions" / "second"), str(tmp_path / "versions" / "third")])
    assert f"-{len(kinds['missing'])}, {len(kinds['class']) + len(kinds['shift'])} changed" in text


# --------------------------------------------------------------------------------------------------
# Label Studio
# --------------------------------------------------------------------------------------------------


def _ego_boxes(ds, token: str, truth: dict) -> list[dict]:
    """The oracle's boxes of a frame as a model would predict them: ego frame of the sample's reference pose."""
    sample = ds.sample(token)
    ego_T_global = invert_rigid(sample.global_T_ego)
    cats = {c["token"]: c["name"] for c in read_tables(ds.root, ds.version).records["category"]}
    inst = {i["token"]: cats[i["category_token"]] for i in truth["instance"]}
    out = []
    for a in truth["sample_annotation"]:
        if a["sample_token"] != token:
            continue
        yaw = yaw_from_rotation(ego_T_global[:3, :3] @ quat_to_rotation(np.asarray(a["rotation"])))
        out.append({"class": CATEGORY_TO_DETECTION[inst[a["instance_token"]]], "score": 0.9,
                    "center": transform_points(ego_T_global, np.asarray(a["translation"])).tolist(),
                    "size": a["size"], "yaw": float(yaw), "velocity": [0.0, 0.0]})
    return out


@pytest.fixture()
def review(worlds, tmp_path):
    """A mining run over three pool frames with the truth as predictions, and a hand-made export: frame A
    with box 0 deleted and box 1 reclassed, frame B flagged (missing objects), frame C with a cancelled task."""
    db = tmp_path / "cat.db"
    ds = load_dataset(worlds["pool"])
    with Catalog.open(db) as cat:
        cat.index_dataset(worlds["labeled"])
        counts = cat.index_dataset(worlds["pool"], unlabeled=True)
        rows = [r for r in cat.query(label_state="unlabeled")][:3]
        truth = label_samples(worlds["pool"], [r.sample_token for r in rows])
        preds = {r.id: _ego_boxes(ds, r.sample_token, truth) for r in rows}
        run_id, _ = cat.start_run("r1", "model.onnx", "0" * 64, ["random"], 3, "local", {})
        for scene in {r.scene_name for r in rows}:
            scene_rows = [r for r in rows if r.scene_name == scene]
            cat.write_scene(run_id, counts["dataset_id"], ds.sample(scene_rows[0].sample_token).scene_token,
                            [FrameResult(r.id, predictions=preds[r.id]) for r in scene_rows])
        cat.write_selection(run_id, [(r.id, 1.0 - 0.1 * k, ["test"]) for k, r in enumerate(rows)])
    tasks = []
    for fr in rows:
        for c, (cam, rel) in enumerate(fr.cameras.items()):
            regions = [{"id": region_id(i), "type": "rectanglelabels", "from_name": BOX_CONTROL, "to_name": IMAGE_NAME,
                        "value": {"x": 10, "y": 10, "width": 5, "height": 5, "rotation": 0,
                                  "rectanglelabels": [p["class"]]}}
                       for i, p in enumerate(preds[fr.id]) if i % len(fr.cameras) == c]  # each box in one camera
            url = "/data/local-files/?d=" + (Path(fr.dataset_root) / rel).as_posix().lstrip("/")
            tasks.append({"id": len(tasks) + 1,
                          "data": {IMAGE_NAME: url, "frame": fr.sample_token, "camera": cam, "run": "r1",
                                   "dataset": fr.dataset_root, "score": 0.5},
                          "annotations": [{"result": json.loads(json.dumps(regions)), "was_cancelled": False}],
                          "predictions": [{"model_version": "r1", "result": regions}]})
    a, b, c = rows
    first = {t["data"]["camera"]: t for t in tasks if t["data"]["frame"] == a.sample_token}
    by_box = {int(r["id"][1:]): (cam, r) for cam, t in first.items() for r in t["annotations"][0]["result"]}
    cam0, _ = by_box[0]
    first[cam0]["annotations"][0]["result"] = [r for r in first[cam0]["annotations"][0]["result"] if r["id"] != "b0"]
    old = preds[a.id][1]["class"]
    new = next(x for x in DETECTION_CLASSES if x != old)
    by_box[1][1]["value"]["rectanglelabels"] = [new]
    flagged = next(t for t in tasks if t["data"]["frame"] == b.sample_token)
    flagged["annotations"][0]["result"].append({"id": "f1", "type": "choices", "from_name": FRAME_CONTROL,
                                                "to_name": IMAGE_NAME, "value": {"choices": [MISSING_CHOICE]}})
    next(t for t in tasks if t["data"]["frame"] == c.sample_token)["annotations"][0]["was_cancelled"] = True
    return {"db": db, "tasks": tasks, "rows": rows, "preds": preds, "truth": truth, "new_class": new}


def test_label_studio_review_becomes_a_version(review, worlds, tmp_path) -> None:
    db, (a, b, c), preds = review["db"], review["rows"], review["preds"]
    export = tmp_path / "export.json"
    export.write_text(json.dumps(review["tasks"]))
    out = run_ok(["ingest", str(export), "--catalog", str(db)])
    assert "1 frames flagged for full 3D labeling" in out and f"incomplete, left queued: {c.sample_token}" in out

    ds = load_dataset(tmp_path / "versions" / "v0001")
    boxes = ds.box_set(ds.sample(a.sample_token))
    n = len(preds[a.id])
    assert len(boxes) == n - 1 and n >= 3, "box 0 rejected, the others kept"
    # Kept boxes are the stored ones, moved to the global frame and read back in the ego frame.
    kept = preds[a.id][1:]
    order = [int(np.argmin([np.linalg.norm(np.subtract(p["center"], x)) for x in boxes.center])) for p in kept]
    assert sorted(order) == list(range(n - 1))
    for p, i in zip(kept, order):
        np.testing.assert_allclose(boxes.center[i], p["center"], atol=1e-6)
        np.testing.assert_allclose(boxes.size[i], p["size"], atol=1e-9)
        assert abs(np.angle(np.exp(1j * (boxes.yaw[i] - p["yaw"])))) < 1e-6
        assert boxes.num_lidar_pts[i] == 1 and boxes.visibility[i] == "4" and boxes.attributes[i] == ()
    assert boxes.categories[order[0]] == CLASS_CATEGORY[review["new_class"]]
    assert all(boxes.detection_classes[i] == p["class"] for p, i in zip(kept[1:], order[1:]))
    assert b.sample_token not in {s.token for s in ds.samples} and c.sample_token not in {s.token for s in ds.samples}

    with Catalog.open(db) as cat:
        assert [cat.frame(r.id).label_state for r in (a, b, c)] == ["labeled", "queued", "queued"]
        rows = cat.conn.execute("SELECT frame_id, outcome, annotations FROM label_batch_frames ORDER BY frame_id").fetchall()
        assert sorted(rows) == sorted([(a.id, "labeled", n - 1), (b.id, "full_labeling", 0)])
        fmt, details = cat.conn.execute("SELECT format, details FROM label_batches").fetchone()
        details = json.loads(details)
    assert fmt == "label-studio" and details["full_labeling"] == [b.sample_token]
    assert details["boxes"] == {"accepted": n - 2, "rejected": 1, "reclassed": 1, "unreviewed": 0}
    assert details["incomplete"][0]["frame"] == c.sample_token and len(details["incomplete"][0]["missing"]) == 1
    assert details["per_frame"][a.sample_token]["reclassed"] == [{"box": 1, "from": preds[a.id][1]["class"],
                                                                  "to": review["new_class"]}]
    assert details["per_frame"][b.sample_token]["reasons"] == [f"{next(iter(b.cameras))}: {MISSING_CHOICE}"]

    # The frames still queued (flagged, incomplete) go to full labeling by the oracle: `label --run` picks them.
    out = tmp_path / "full.json"
    run_ok(["label", "--catalog", str(db), "--run", "r1", "--out", str(out)])
    assert sorted(json.loads(out.read_text())["frames"]) == sorted([b.sample_token, c.sample_token])
    res = runner.invoke(app, ["label", "--catalog", str(db), "--run", "nope", "--out", str(out)])
    assert res.exit_code == 1 and "no mining run 'nope'" in res.output


def _conflict(tasks, rows):
    a = rows[0]
    ts = [t for t in tasks if t["data"]["frame"] == a.sample_token]
    box = ts[0]["annotations"][0]["result"][0]
    extra = json.loads(json.dumps(box))
    box["value"]["rectanglelabels"] = ["bus" if box["value"]["rectanglelabels"][0] != "bus" else "car"]
    extra["value"]["rectanglelabels"] = ["barrier" if box["value"]["rectanglelabels"][0] != "barrier" else "truck"]
    ts[1]["annotations"][0]["result"].append(extra)
    return f"frame {a.sample_token!r} box {int(box['id'][1:])}: relabeled"


def _leave(tasks, rows):
    t = tasks[0]
    t["data"][IMAGE_NAME] = t["data"][IMAGE_NAME].replace("/samples/", "/../labeled/samples/")
    return f"task {t['id']}: data.image"


def _unknown_class(tasks, rows):
    t = next(t for t in tasks if t["annotations"][0]["result"])
    t["annotations"][0]["result"][0]["value"]["rectanglelabels"] = ["spaceship"]
    return f"task {t['id']}: annotations[0].result[0].value.rectanglelabels ['spaceship']: expected one detection class"


def _unknown_run(tasks, rows):
    tasks[2]["data"]["run"] = "nope"
    return f"task {tasks[2]['id']}: data.run 'nope' is not a mining run"


def _out_of_range(tasks, rows):
    t = next(t for t in tasks if t["annotations"][0]["result"])
    t["annotations"][0]["result"][0]["id"] = region_id(999)
    return f"task {t['id']}: annotations[0].result[0] region 'b999': names box 999, but run 'r1' stored"


def _unknown_frame(tasks, rows):
    tasks[4]["data"]["frame"] = "0" * 32
    return f"task {tasks[4]['id']}: data.frame '{'0' * 32}' is not a frame of the catalog"


@pytest.mark.parametrize("corrupt", [_conflict, _leave, _unknown_class, _unknown_run, _out_of_range, _unknown_frame])
def test_label_studio_bad_exports_are_refused(review, tmp_path, corrupt) -> None:
    tasks = review["tasks"]
    expected = corrupt(tasks, review["rows"])
    export = tmp_path / "export.json"
    export.write_text(json.dumps(tasks))
    before = snapshot(review["db"])
    with Catalog.open(review["db"]) as cat, pytest.raises(LabelsError) as info:
        ingest(cat, export)
    assert expected in str(info.value) and str(export) in str(info.value)
    if corrupt is _leave:
        assert "a path that leaves the dataset" in str(info.value)
    assert snapshot(review["db"]) == before and not (tmp_path / "versions").exists()


def test_failed_catalog_transaction_removes_the_version(worlds, oracle_file, tmp_path) -> None:
    db, _ = make_catalog(tmp_path, worlds, QUEUE)
    conn = sqlite3.connect(db)  # the catalog refuses the version row, the last write of the transaction
    conn.execute("CREATE TRIGGER refuse BEFORE INSERT ON dataset_versions BEGIN SELECT RAISE(ABORT, 'refused'); END")
    conn.close()
    before = snapshot(db)
    with Catalog.open(db) as cat, pytest.raises(sqlite3.DatabaseError, match="refused"):
        ingest(cat, oracle_file)
    assert snapshot(db) == before and os.listdir(tmp_path / "versions") == []


def test_relabeling_every_frame_of_an_object_may_change_its_class(worlds, tmp_path) -> None:
    db, _ = make_catalog(tmp_path, worlds, [])
    full = tmp_path / "full.json"
    run_ok(["label", "--catalog", str(db), "--oracle", "sim", "--out", str(full), "--state", "labeled"])
    labels = json.loads(full.read_text())
    per_instance: dict[str, set[str]] = {}
    for a in labels["sample_annotation"]:
        per_instance.setdefault(a["instance_token"], set()).add(a["sample_token"])
    tok = next(t for t, samples in per_instance.items() if len(samples) >= 2)
    cats = {c["name"]: c["token"] for c in read_tables(worlds["labeled"], find_version(worlds["labeled"], None))
            .records["category"]}
    inst = next(i for i in labels["instance"] if i["token"] == tok)
    new_cat = cats["vehicle.trailer"] if inst["category_token"] != cats["vehicle.trailer"] else cats["vehicle.car"]
    inst["category_token"] = new_cat
    fixed = tmp_path / "fixed.json"
    fixed.write_text(json.dumps(labels))
    run_ok(["ingest", str(fixed), "--catalog", str(db), "--relabel"])  # every frame of the object relabeled
    with Catalog.open(db) as cat:
        root = Path(cat.dataset_version()["root"])
    version = read_tables(root, find_version(root, None))
    assert version.by_token["instance"][tok]["category_token"] == new_cat
    # Relabeling only some of its frames cannot change what the object is in the others.
    one = min(per_instance[tok])
    part = {"sample_annotation": [a for a in labels["sample_annotation"] if a["sample_token"] == one],
            "frames": [one]}
    keep = {a["instance_token"] for a in part["sample_annotation"]}
    part["instance"] = [dict(i, category_token=cats["vehicle.car"] if i["token"] == tok and new_cat != cats["vehicle.car"]
                             else (cats["vehicle.bus.rigid"] if i["token"] == tok else i["category_token"]))
                        for i in labels["instance"] if i["token"] in keep]
    partial = tmp_path / "partial.json"
    partial.write_text(json.dumps(part))
    before = snapshot(db)
    res = runner.invoke(app, ["ingest", str(partial), "--catalog", str(db), "--relabel"])
    assert res.exit_code == 1 and "relabel every frame it is in" in res.output, res.output
    assert snapshot(db) == before
