"""Faults in nuScenes-format data, and what the readers make of them: table paths that leave the dataset
root, fields of the wrong type, JSON nested too deeply, JPEGs cut short with an end marker appended, and
the command lines' one-line reports of them."""

from __future__ import annotations

import json
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


def test_ingest_of_a_dataset_whose_table_path_leaves_it_creates_nothing_and_raises(tmp_path: Path) -> None:
    from data_engine.catalog import Catalog
    from data_engine.labels import label_frames
    from data_engine.synth import SynthConfig, synthesize
    from data_engine.versions import ingest

    labeled, pool = tmp_path / "labeled", tmp_path / "pool"
    synthesize(SynthConfig(out=labeled, scenes=1, frames=2, seed=21, width=160, height=90), progress=False)
    synthesize(SynthConfig(out=pool, scenes=1, frames=2, seed=22, width=160, height=90, unlabeled=True), progress=False)
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
    from data_engine.versions import VersionError, _write_version
    from perception.data.schema import TABLES

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
    ("ego_pose", POSE, "timestamp", "1532402927647951", "an integer", "'1532402927647951' (str)"),
    ("calibrated_sensor", token("calib", "CAM_FRONT"), "translation", [1.0, None, 2.0], "3 finite numbers",
     "[1.0, None, 2.0] (list)"),
    ("sample_data", CAM_SD, "timestamp", 1.5, "an integer", "1.5 (float)"),
    ("sample_data", CAM_SD, "is_key_frame", "yes", "true or false", "'yes' (str)"),
    ("sample_data", CAM_SD, "width", "800", "an integer", "'800' (str)"),
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


def test_a_sample_timestamp_of_the_wrong_type_and_a_token_that_is_not_a_string(fresh: Truth) -> None:
    first = fresh.sample_tokens[0][0]
    rewrite_table(fresh.root, *_set("sample", first, "timestamp", "0"))
    with pytest.raises(DatasetError, match=rf"{VERSION}/sample\.json: record '{first}' field 'timestamp' must be an "
                                           r"integer, found '0' \(str\)"):
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
