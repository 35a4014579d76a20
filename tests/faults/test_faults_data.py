"""Faults in nuScenes-format data, and what the readers make of them: table paths that leave the dataset
root, fields of the wrong type, JSON nested too deeply, JPEGs cut short with an end marker appended, and
the command lines' one-line reports of them."""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

from nuscenes_fixture import VERSION, Truth, rewrite_table, token, write_nuscenes_fixture

from perception.data.nuscenes import DatasetError, load_dataset
from perception.data.nuscenes_tables import read_tables
from perception.errors import BevStackError


@pytest.fixture()
def fresh(tmp_path: Path) -> Truth:
    """A private copy of the reader's fixture to damage."""
    return write_nuscenes_fixture(tmp_path / "ds")


def _set(table: str, tok: str, field: str, value: object):  # type: ignore[no-untyped-def]
    def mutate(recs: list[dict]) -> None:
        next(r for r in recs if r["token"] == tok)[field] = value

    return table, mutate


# ------------------------------------------------------------------------------------------------
# Table paths that leave the dataset root
# ------------------------------------------------------------------------------------------------

CAM_SD = token("sd", "cam", "CAM_FRONT", 0, 0)  # a key frame of the reader's fixture


@pytest.mark.parametrize("table, tok, value", [
    ("sample_data", CAM_SD, "../outside.jpg"),
    ("sample_data", CAM_SD, "samples/CAM_FRONT/../../../outside.jpg"),
    ("sample_data", CAM_SD, "/etc/hostname"),
    ("sample_data", CAM_SD, ""),
    ("map", token("map"), "../outside.png"),
    ("map", token("map"), "/tmp/outside.png"),
], ids=["dotdot", "dotdot_inside", "absolute", "empty", "map_dotdot", "map_absolute"])
def test_a_table_path_that_leaves_the_root_is_refused(fresh: Truth, table: str, tok: str, value: str) -> None:
    (fresh.root.parent / "outside.jpg").write_bytes(fresh.image_paths[0].read_bytes())
    (fresh.root.parent / "outside.png").write_bytes((fresh.root / "maps" / f"{token('map')}.png").read_bytes())
    rewrite_table(fresh.root, *_set(table, tok, "filename", value))
    where = f"{VERSION}/{table}.json: record '{tok}' field 'filename' is {value!r}, a path that leaves the dataset root"
    with pytest.raises(DatasetError, match=re.escape(where)):
        load_dataset(fresh.root)
    with pytest.raises(DatasetError, match="leaves the dataset root"):
        read_tables(fresh.root, VERSION)  # the raw layer the data engine reads versions with


def test_a_path_through_a_link_inside_the_dataset_is_read(fresh: Truth, tmp_path: Path) -> None:
    """Links the dataset holds are its own (a samples directory on another disk, a version's links)."""
    disk = tmp_path / "disk"
    (fresh.root / "samples").rename(disk)
    (fresh.root / "samples").symlink_to(disk)
    ds = load_dataset(fresh.root)
    frame = ds.sample(0).cameras["CAM_FRONT"]
    assert frame.path.is_file() and os.path.realpath(frame.path).startswith(str(disk))


def _tree(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*")}


def test_ingest_of_a_dataset_whose_table_path_leaves_it_creates_nothing_and_raises(
        tmp_path: Path, synth_world: Path, synth_pool: Path) -> None:
    import shutil

    from data_engine.catalog import Catalog
    from data_engine.labels.autolabel import label_frames
    from data_engine.labels.ingest import ingest

    labeled, pool = tmp_path / "labeled", tmp_path / "pool"  # private copies: the labeled one is damaged below
    shutil.copytree(synth_world, labeled)
    shutil.copytree(synth_pool, pool)
    with Catalog.open(tmp_path / "cat.db") as cat:
        cat.index_dataset(labeled)
        cat.index_dataset(pool, unlabeled=True)
        cat.set_label_state([r.id for r in cat.query(label_state="unlabeled")], "queued")
        labels = label_frames(cat, tmp_path / "labels.json").out
        # The labeled dataset, merged whole into the first version, now names a file beside it.
        (tmp_path / "escape.jpg").write_bytes(b"\xff\xd8 not ours \xff\xd9")
        version = next(labeled.glob("v1.0-*")).name

        def damage(recs: list[dict]) -> None:
            next(r for r in recs if r["filename"].endswith(".jpg"))["filename"] = "../escape.jpg"

        rewrite_table(labeled, "sample_data", damage, version=version)
        before = _tree(tmp_path)
        with pytest.raises(BevStackError, match=r"sample_data\.json: record '\w+' field 'filename' is '\.\./escape\.jpg'"):
            ingest(cat, labels)
    versions = tmp_path / "versions"
    created = _tree(tmp_path) - before
    assert created <= {str(versions)}, sorted(created)  # at most the (empty) versions directory
    assert not versions.exists() or not any(versions.iterdir())


def test_a_version_link_never_lands_outside_the_version_through_a_linked_directory(tmp_path: Path) -> None:
    """A table path naming a directory ("samples") links that directory into the version; the files
    after it must not be written through that link into the original dataset."""
    from data_engine.labels.ingest import _write_version
    from data_engine.labels.versions import VersionError
    from perception.schema import TABLES

    original = tmp_path / "original"
    (original / "samples").mkdir(parents=True)
    (original / "samples" / "a.jpg").write_bytes(b"a")
    (tmp_path / "b.jpg").write_bytes(b"b")
    files = {"samples": str(original / "samples"), "samples/b.jpg": str(tmp_path / "b.jpg")}
    before = _tree(original)
    with pytest.raises(VersionError, match="outside the version directory"):
        _write_version(tmp_path / "versions" / "v0001", "v0001", {t: [] for t in TABLES}, {}, files, {}, [])
    assert _tree(original) == before
    assert not any((tmp_path / "versions").iterdir())


# ------------------------------------------------------------------------------------------------
# Fields of the wrong type, JSON nested too deeply
# ------------------------------------------------------------------------------------------------

POSE = token("pose", "lidar", 0, 1)


@pytest.mark.parametrize("table, tok, field, value, expected, found", [
    ("ego_pose", POSE, "translation", "1,2,3", "3 finite numbers (x, y, z)", "'1,2,3' (str)"),
    ("ego_pose", POSE, "translation", [1.0, 2.0, 3.0, 4.0], "3 finite numbers (x, y, z)", "[1.0, 2.0, 3.0, 4.0] (list)"),
    ("ego_pose", POSE, "rotation", [1.0, 0.0, 0.0], "4 finite numbers (w, x, y, z)", "[1.0, 0.0, 0.0] (list)"),
    ("ego_pose", POSE, "rotation", [1.0, 0.0, "0", 0.0], "4 finite numbers (w, x, y, z)", "[1.0, 0.0, '0', 0.0] (list)"),
    ("ego_pose", POSE, "timestamp", "1532402927647951", "a 64-bit integer", "'1532402927647951' (str)"),
    ("calibrated_sensor", token("calib", "CAM_FRONT"), "translation", [1.0, None, 2.0], "3 finite numbers",
     "[1.0, None, 2.0] (list)"),
    ("sample_data", CAM_SD, "timestamp", 1.5, "a 64-bit integer", "1.5 (float)"),
    ("sample_data", CAM_SD, "is_key_frame", "yes", "true or false", "'yes' (str)"),
    ("sample_data", CAM_SD, "width", "800", "a 64-bit integer", "'800' (str)"),
    ("sample_data", CAM_SD, "filename", 7, "a string", "7 (int)"),
    ("sample_data", CAM_SD, "ego_pose_token", ["a"], "a string", "['a'] (list)"),
    ("map", token("map"), "log_tokens", "abc", "a list of token strings", "'abc' (str)"),
], ids=["translation_str", "translation_4", "rotation_3", "rotation_str_item", "timestamp_str", "calib_none",
        "sd_timestamp_float", "key_frame_str", "width_str", "filename_int", "token_list", "log_tokens_str"])
def test_a_field_of_the_wrong_type_names_table_record_field_and_what_was_expected(
        fresh: Truth, table: str, tok: str, field: str, value: object, expected: str, found: str) -> None:
    rewrite_table(fresh.root, *_set(table, tok, field, value))
    with pytest.raises(DatasetError) as err:
        load_dataset(fresh.root)
    msg = str(err.value)
    assert msg.startswith(f"{VERSION}/{table}.json: record '{tok}' field '{field}' must be {expected}"), msg
    assert msg.endswith(f"found {found}"), msg


@pytest.mark.parametrize("table, field, value, expected", [
    ("ego_pose", "translation", [10**400, 0.0, 0.0], "field 'translation' must be 3 finite numbers"),
    ("sample_annotation", "translation", [10**400, 0.0, 0.0], "must be 3 finite numbers (x, y, z) in metres"),
    ("sample_annotation", "size", [1.0, 10**400, 1.0], "must be 3 positive numbers (w, l, h)"),
    ("sample_annotation", "num_lidar_pts", 10**30, "field 'num_lidar_pts' must be a 64-bit integer"),
    ("calibrated_sensor", "camera_intrinsic", [["1", 0, 0], [0, 1, 0], [0, 0, 1]], "camera_intrinsic must be a finite"),
    ("calibrated_sensor", "camera_intrinsic", [[10**400, 0, 0], [0, 1, 0], [0, 0, 1]], "camera_intrinsic must be a finite"),
], ids=["pose_huge", "box_huge", "size_huge", "lidar_pts_huge", "intrinsic_str", "intrinsic_huge"])
def test_numbers_beyond_float_or_int64_or_given_as_text_name_the_field(fresh: Truth, table: str, field: str,
                                                                       value: object, expected: str) -> None:
    def mutate(recs: list[dict]) -> None:
        rec = next(r for r in recs if field in r and (field != "camera_intrinsic" or r[field]))
        rec[field] = value

    rewrite_table(fresh.root, table, mutate)
    with pytest.raises(DatasetError) as err:
        load_dataset(fresh.root).box_set(load_dataset(fresh.root).samples[0].token) \
            if table == "sample_annotation" else load_dataset(fresh.root)
    assert f"{table}.json" in str(err.value) and expected in str(err.value), str(err.value)
    assert len(str(err.value)) < 300  # the value is cut short, not printed whole


def test_a_sample_timestamp_of_the_wrong_type_and_a_token_that_is_not_a_string(fresh: Truth) -> None:
    first = fresh.sample_tokens[0][0]
    rewrite_table(fresh.root, *_set("sample", first, "timestamp", "0"))
    with pytest.raises(DatasetError, match=rf"{VERSION}/sample\.json: record '{first}' field 'timestamp' must be a "
                                           r"64-bit integer, found '0' \(str\)"):
        load_dataset(fresh.root)

    def list_token(recs: list[dict]) -> None:
        recs[1]["token"] = ["x"]

    rewrite_table(fresh.root, "instance", list_token)
    with pytest.raises(DatasetError, match=rf"{VERSION}/instance\.json: record #1 field 'token' must be a string"):
        read_tables(fresh.root, VERSION)


@pytest.mark.parametrize("name", ["sample.json", "splits.json"])
def test_json_nested_too_deeply_names_the_file(fresh: Truth, name: str) -> None:
    depth = 100_000
    (fresh.root / VERSION / name).write_text("[" * depth + "]" * depth)
    with pytest.raises(DatasetError, match=re.escape(f"{VERSION}/{name}: cannot read JSON (nested too deeply)")):
        load_dataset(fresh.root)


def test_a_table_that_is_not_utf8_names_the_file(fresh: Truth) -> None:
    (fresh.root / VERSION / "log.json").write_bytes(b'[{"token": "\xff\xfe"}]')
    with pytest.raises(DatasetError, match=re.escape(f"{VERSION}/log.json: cannot read JSON")):
        load_dataset(fresh.root)


# ------------------------------------------------------------------------------------------------
# JPEGs cut short, with an end-of-image marker appended
# ------------------------------------------------------------------------------------------------


def _scene_image(h: int = 450, w: int = 800, seed: int = 0) -> np.ndarray:
    """A smooth textured BGR image (JPEG-compressible like a camera frame)."""
    rng = np.random.default_rng(seed)
    coarse = (rng.random((h // 16 + 2, w // 16 + 2, 3)) * 255).astype(np.uint8)
    img = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    return cv2.add(img, (rng.random((h, w, 3)) * 24).astype(np.uint8))


def _cut(jpeg: bytes, fraction: float) -> bytes:
    """``jpeg`` cut at ``fraction`` of its entropy-coded data, with the end-of-image marker appended."""
    start = jpeg.index(b"\xff\xda")
    return jpeg[: start + 16 + int((len(jpeg) - start - 18) * fraction)] + b"\xff\xd9"


FLAGS = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}
ENCODINGS = {  # cv2 writer options: baseline, restart markers, progressive, no chroma subsampling
    "baseline": [], "restart": [cv2.IMWRITE_JPEG_RST_INTERVAL, 2], "progressive": [cv2.IMWRITE_JPEG_PROGRESSIVE, 1],
    "444": [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444],
}


@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.97])
def test_a_jpeg_cut_short_with_an_end_marker_is_an_error_naming_the_file(fresh: Truth, fraction: float) -> None:
    from perception.data.nuscenes import read_image
    from perception.preprocess import ImageDecodeError, decode_image, load_camera

    path = fresh.image_paths[0]
    path.write_bytes(_cut(path.read_bytes(), fraction))
    for reduce in (1, 2, 4):
        with pytest.raises(ImageDecodeError, match=re.escape(f"{path}: image file is corrupt (JPEG data cut short")):
            decode_image(path, reduce)
    with pytest.raises(DatasetError, match=re.escape(f"{path}: image file is corrupt")):
        read_image(path)
    with pytest.raises(ImageDecodeError, match=re.escape("CAM_FRONT of sample 3: image file is corrupt")):
        load_camera(path.read_bytes(), np.eye(3), (90, 160), 2, name="CAM_FRONT of sample 3")


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_jpegs_cut_short_are_caught_in_every_encoding(encoding: str) -> None:
    from perception.preprocess import ImageDecodeError, decode_image

    jpeg = cv2.imencode(".jpg", _scene_image(224, 400), [cv2.IMWRITE_JPEG_QUALITY, 90, *ENCODINGS[encoding]])[1].tobytes()
    for fraction in (0.02, 0.3, 0.7, 0.95):
        for reduce in (1, 2):
            with pytest.raises(ImageDecodeError, match=r"<image bytes>: image file is corrupt \(JPEG data cut short"):
                decode_image(_cut(jpeg, fraction), reduce)


def test_valid_jpegs_decode_unchanged(fresh: Truth) -> None:
    """The fixture's JPEGs, and cv2's at several qualities, with restart markers, progressive, without
    chroma subsampling, grey, of odd sizes, and with a mid-grey corner (which is checked twice)."""
    from perception.preprocess import decode_image

    grey_corner = _scene_image(224, 400, seed=1)
    grey_corner[-40:, -40:] = 128
    images = {"scene": _scene_image(), "odd": _scene_image(209, 385, seed=2), "grey_corner": grey_corner,
              "gray": cv2.cvtColor(_scene_image(224, 400, seed=3), cv2.COLOR_BGR2GRAY)}
    jpegs = [p.read_bytes() for p in fresh.image_paths[:3]]
    for name, image in images.items():
        for quality in (30, 75, 95, 100):
            for encoding, options in ENCODINGS.items():
                ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality, *options])
                assert ok, (name, quality, encoding)
                jpegs.append(buf.tobytes())
    for jpeg in jpegs:
        for reduce, flags in FLAGS.items():
            expected = cv2.imdecode(np.frombuffer(jpeg, np.uint8), flags)
            assert np.array_equal(decode_image(jpeg, reduce), expected)


def test_the_synthetic_worlds_jpegs_decode_unchanged(tmp_path: Path) -> None:
    from data_engine.sim.synth import SynthConfig, synthesize
    from perception.preprocess import decode_image

    synthesize(SynthConfig(out=tmp_path / "w", scenes=1, frames=2, seed=3, width=800, height=450), progress=False)
    paths = sorted((tmp_path / "w" / "samples").glob("CAM_*/*.jpg"))
    assert len(paths) == 12
    for path in paths:
        for reduce in (1, 2):
            assert np.array_equal(decode_image(path, reduce), cv2.imread(str(path), FLAGS[reduce]))
        with pytest.raises(DatasetError, match=re.escape(f"{path}: image file is corrupt")):
            decode_image(_cut(path.read_bytes(), 0.9), name=str(path))


def test_decoding_on_threads_names_only_the_cut_images() -> None:
    """Decodes run side by side on threads, as the edge runtime runs its cameras; the ones decoded
    with stderr captured (progressive here) must not take another thread's warnings for their own."""
    from concurrent.futures import ThreadPoolExecutor

    from perception.preprocess import ImageDecodeError, decode_image

    image = _scene_image(224, 400)
    good = cv2.imencode(".jpg", image)[1].tobytes()
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    jobs = [(good, True), (progressive, True), (_cut(good, 0.5), False), (_cut(progressive, 0.5), False)] * 12

    def decode(job: tuple[bytes, bool]) -> bool:
        try:
            decode_image(job[0])
            return True
        except ImageDecodeError:
            return False

    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(decode, jobs)) == [ok for _, ok in jobs]


# ------------------------------------------------------------------------------------------------
# The command lines: one line "error: ...", exit 1, no traceback
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, synth_world: Path) -> dict[str, Path]:
    """The shared synthetic world, a copy of it whose CAM_FRONT JPEGs are cut short, a copy without its
    CAM_FRONT JPEGs, and an untrained checkpoint."""
    import dataclasses
    import shutil

    import torch

    from perception.models.bev_model import build_model
    from perception.presets import get_preset
    from perception.checkpoint import CHECKPOINT_FORMAT, preset_to_dict, save_checkpoint

    root = tmp_path_factory.mktemp("faults_cli")
    shutil.copytree(synth_world, root / "cut")
    cut = sorted((root / "cut" / "samples" / "CAM_FRONT").glob("*.jpg"))
    for path in cut:
        path.write_bytes(_cut(path.read_bytes(), 0.5))
    shutil.copytree(synth_world, root / "missing")
    for path in (root / "missing" / "samples" / "CAM_FRONT").glob("*.jpg"):
        path.unlink()
    preset = get_preset("tiny")
    preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, pretrained=None))
    torch.manual_seed(0)
    ckpt = save_checkpoint(root / "run" / "last.pt", {
        "format": CHECKPOINT_FORMAT, "preset": preset_to_dict(preset), "model": build_model(preset).state_dict(),
        "ema": None, "step": 0, "classes": {"det": list(preset.tasks.det_classes), "seg": list(preset.tasks.seg_classes)},
    })
    return {"root": root, "data": synth_world, "cut": root / "cut", "missing": root / "missing", "ckpt": ckpt,
            "cut_files": cut}


def _cli(args: list[str]):  # type: ignore[no-untyped-def]
    from typer.testing import CliRunner

    from perception.cli import app

    result = CliRunner().invoke(app, args)
    assert "Traceback" not in result.output, result.output
    return result


def _one_error_line(result, *words: str) -> None:  # type: ignore[no-untyped-def]
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("error: "), result.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])


def _train_args(data: Path, out: Path, workers: int) -> list[str]:
    return ["train", "preset=tiny", f"train.data={data}", f"train.out_root={out}", "train.name=faults",
            "train.steps=1", "train.batch_size=1", "train.train_split=null", "train.val_split=null",
            f"train.num_workers={workers}", "train.log_every=1", "train.warmup_steps=1", "train.vis_every=0",
            "augment.enabled=false", "model.pretrained=null"]


@pytest.mark.parametrize("workers", [0, 2], ids=["main_process", "loader_workers"])
def test_train_on_a_jpeg_cut_short_is_one_error_line_naming_the_file(world: dict, tmp_path: Path, workers: int) -> None:
    result = _cli(_train_args(world["cut"], tmp_path, workers))
    _one_error_line(result, "image file is corrupt", "JPEG data cut short")
    assert any(str(p) in result.stderr for p in world["cut_files"]), result.stderr


def test_eval_on_a_jpeg_cut_short_is_one_error_line_naming_the_file(world: dict, tmp_path: Path) -> None:
    result = _cli(["eval", "--checkpoint", str(world["ckpt"]), "--data", str(world["cut"]), "--out", str(tmp_path)])
    _one_error_line(result, "image file is corrupt", "JPEG data cut short")
    assert any(str(p) in result.stderr for p in world["cut_files"]), result.stderr


def test_train_and_eval_on_a_missing_dataset_are_one_error_line_naming_it(world: dict, tmp_path: Path) -> None:
    missing = tmp_path / "no_such_dataset"
    _one_error_line(_cli(_train_args(missing, tmp_path / "runs", 0)), f"{missing}: dataset root is not a directory")
    _one_error_line(_cli(["eval", "--checkpoint", str(world["ckpt"]), "--data", str(missing), "--out", str(tmp_path)]),
                    f"{missing}: dataset root is not a directory")


@pytest.mark.parametrize("fault, words", [("cut", "image file is corrupt (JPEG data cut short"),
                                          ("missing", "image file missing")])
def test_an_error_raised_in_a_loader_worker_arrives_as_the_project_error_with_its_message(
        world: dict, fault: str, words: str) -> None:
    import dataclasses

    from torch.utils.data import DataLoader

    from perception.data.dataset import BadImageError, DatasetConfig, MultiCamDataset, collate_frames
    from perception.presets import get_preset

    preset = get_preset("tiny")
    preset = dataclasses.replace(preset, model=dataclasses.replace(preset.model, pretrained=None))
    dataset = MultiCamDataset(world[fault], preset, DatasetConfig())
    loader = DataLoader(dataset, batch_size=1, num_workers=1, collate_fn=collate_frames)
    with pytest.raises(BadImageError) as err:
        list(loader)
    first = world[fault] / world["cut_files"][0].relative_to(world["cut"])
    assert str(err.value).startswith(f"{first}: {words}"), str(err.value)
    assert "\n" not in str(err.value) and "Traceback" not in str(err.value)
