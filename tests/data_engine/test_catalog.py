"""The frame catalog (data_engine/catalog/) and `data-engine index | status | query` on a real
SQLite file and small synthetic datasets."""

from __future__ import annotations

import json
import sqlite3

import pytest
from typer.testing import CliRunner

from data_engine.catalog import SCHEMA_VERSION, Catalog, CatalogError
from data_engine.cli import app
from perception.data.nuscenes import load_dataset
from perception.schema import parse_conditions


@pytest.fixture(scope="module")
def worlds(synth_world, synth_pool):
    """The shared labeled world and pool (tests/conftest.py): 2 scenes of 3 frames each."""
    return {"labeled": synth_world, "pool": synth_pool}


def test_index_status_and_query(worlds, tmp_path) -> None:
    db = tmp_path / "cat.db"
    runner = CliRunner()
    res = runner.invoke(app, ["index", str(worlds["labeled"]), "--catalog", str(db)])
    assert res.exit_code == 0 and "6 new labeled frames" in res.output, res.output
    res = runner.invoke(app, ["index", str(worlds["pool"]), "--catalog", str(db), "--unlabeled"])
    assert res.exit_code == 0 and "6 new unlabeled frames" in res.output, res.output
    res = runner.invoke(app, ["index", str(worlds["pool"]), "--catalog", str(db), "--unlabeled"])
    assert res.exit_code == 0 and "0 new unlabeled frames (6 in the catalog)" in res.output, "idempotent"
    res = runner.invoke(app, ["index", str(worlds["pool"]), "--catalog", str(db)])
    assert res.exit_code == 1 and "already registered as unlabeled" in res.output

    res = runner.invoke(app, ["status", "--catalog", str(db), "--json"])
    st = json.loads(res.output)
    assert st["frames"] == 12 and st["label_states"] == {"unlabeled": 6, "queued": 0, "labeled": 6}
    assert st["schema_version"] == SCHEMA_VERSION and len(st["datasets"]) == 2
    res = runner.invoke(app, ["status", "--catalog", str(db)])
    assert res.exit_code == 0 and "12 frames, unlabeled 6, queued 0, labeled 6" in " ".join(res.output.split())

    with Catalog.open(db) as cat:
        assert cat.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        pool = cat.query(label_state="unlabeled")
        assert len(pool) == 6 and all(r.dataset_root == str(worlds["pool"].resolve()) for r in pool)
        # Time order within each scene, camera paths that exist.
        for a, b in zip(pool, pool[1:]):
            if a.scene_name == b.scene_name:
                assert b.frame_index == a.frame_index + 1 and b.timestamp > a.timestamp
        assert all((worlds["pool"] / p).is_file() for r in pool for p in r.cameras.values())
        # Conditions come from the scene descriptions; classes from the labels.
        reader = load_dataset(worlds["labeled"])
        for scene in reader.scenes:
            for cond in parse_conditions(scene.description):
                rows = cat.query(condition=cond, label_state="labeled")
                assert scene.name in {r.scene_name for r in rows}
        cars = {reader.sample(r.sample_token).token for r in cat.query(has_class="car")}
        truth = {s.token for s in reader.samples if any(b.detection_class == "car" for b in reader.boxes(s))}
        assert cars == truth and cars
        vehicles = cat.query(has_class="vehicle.")
        assert {r.sample_token for r in vehicles} >= cars
        assert cat.query(has_class="car", label_state="unlabeled") == [], "pool frames have no labels"
    res = runner.invoke(app, ["query", "--catalog", str(db), "--state", "unlabeled", "--limit", "3", "--json"])
    lines = [json.loads(x) for x in res.output.splitlines()]
    assert len(lines) == 3 and all(x["label_state"] == "unlabeled" for x in lines)
    res = runner.invoke(app, ["query", "--catalog", str(db), "--state", "bogus"])
    assert res.exit_code == 1 and "unknown label state 'bogus'" in res.output
    res = runner.invoke(app, ["query", "--catalog", str(db), "--run", "nope"])
    assert res.exit_code == 1 and "no mining run 'nope'" in res.output


def test_label_state_changes_are_all_or_nothing(worlds, tmp_path) -> None:
    with Catalog.open(tmp_path / "cat.db") as cat:
        cat.index_dataset(worlds["pool"], unlabeled=True)
        ids = [r.id for r in cat.query(label_state="unlabeled")]
        cat.set_label_state(ids[:3], "queued", expect=["unlabeled"])
        with pytest.raises(CatalogError, match="is queued, expected unlabeled"):
            cat.set_label_state(ids[2:5], "queued", expect=["unlabeled"])  # ids[2] is already queued
        assert [r.id for r in cat.query(label_state="queued")] == ids[:3], "nothing of the failed change landed"
        with pytest.raises(CatalogError, match="no frame with id 99999"):
            cat.set_label_state([ids[4], 99999], "labeled", expect=["unlabeled"])
        assert len(cat.query(label_state="labeled")) == 0


def test_schema_versions_and_bad_files(tmp_path) -> None:
    db = tmp_path / "old.db"
    sqlite3.connect(db).close()  # an empty file at schema version 0
    with Catalog.open(db) as cat:
        assert cat.schema_version == SCHEMA_VERSION
        tables = {n for (n,) in cat.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert {"frames", "mining_runs", "scores", "selections", "label_batches", "dataset_versions"} <= tables
    conn = sqlite3.connect(db)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CatalogError, match="newer than this program"):
        Catalog.open(db)
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CatalogError, match="junk.db: not a catalog"):
        Catalog.open(junk)
    with pytest.raises(CatalogError, match="no catalog here"):
        Catalog.open(tmp_path / "missing.db", create=False)


def test_a_version_1_catalog_migrates_with_its_rows(tmp_path) -> None:
    from data_engine.catalog import MIGRATIONS, _statements

    db = tmp_path / "v1.db"
    conn = sqlite3.connect(db)
    for statement in _statements(MIGRATIONS[0]):
        conn.execute(statement)
    conn.execute("PRAGMA user_version = 1")
    conn.execute("INSERT INTO datasets (root, version, labeled, registered_at) VALUES ('/d', 'v1.0-x', 0, 0)")
    conn.execute("INSERT INTO frames (dataset_id, sample_token, scene_token, scene_name, frame_index, timestamp,"
                 " conditions, cameras, label_state) VALUES (1, 's', 'sc', 'scene-0', 0, 0, 'night', '{}', 'unlabeled')")
    conn.execute("INSERT INTO mining_runs (name, model, model_sha256, strategies, budget, engine, status, config,"
                 " created_at) VALUES ('old', 'm', 'x', '[]', 1, 'local', 'scored', '{}', 0)")
    conn.execute("INSERT INTO frame_results (run_id, frame_id, status) VALUES (1, 1, 'scored')")
    conn.commit()
    conn.close()
    with Catalog.open(db) as cat:
        assert cat.schema_version == SCHEMA_VERSION >= 2
        assert [r.sample_token for r in cat.query(condition="night")] == ["s"]
        assert cat.frame_predictions(cat.run_id("old"), 1) == []  # the new column, empty for old rows
        assert cat.done_scenes(cat.run_id("old")) == set()
