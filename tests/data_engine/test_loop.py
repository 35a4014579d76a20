"""`data-engine loop`: rounds of train -> export -> mine -> queue -> label -> ingest -> retrain on tiny
worlds, per strategy and random, recorded in the catalog and the report, and resumed."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from data_engine.catalog import Catalog
from data_engine.cli import app
from data_engine.sim.synth import SynthConfig, synthesize

pytestmark = pytest.mark.slow

W, H = 352, 198


@pytest.fixture(scope="module")
def loop_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    synthesize(SynthConfig(out=root / "seed", scenes=3, frames=4, seed=7, width=W, height=H), progress=False)
    synthesize(SynthConfig(out=root / "pool", scenes=4, frames=4, seed=7, width=W, height=H, first_scene=3,
                           unlabeled=True), progress=False)
    synthesize(SynthConfig(out=root / "val", scenes=2, frames=3, seed=7, width=W, height=H, first_scene=500,
                           quotas={"night": 1, "day": 1}), progress=False)
    config = root / "loop.yaml"
    config.write_text("\n".join([
        f"seed_data: {root / 'seed'}", f"pool: {root / 'pool'}", f"val_data: {root / 'val'}", f"out: {root / 'out'}",
        "train_config: configs/tiny_cpu.yaml", "train_overrides: ['train.num_workers=0']",
        "steps: 3", "rounds: 1", "budget: 3",
        "arms:", "  - {name: uncertainty, strategies: [det_entropy]}", "  - {name: random, strategies: [random]}",
    ]) + "\n")
    res = CliRunner().invoke(app, ["loop", "--config", str(config)])
    return root, config, res


def test_the_loop_labels_the_picks_and_reports_each_round(loop_run) -> None:
    root, _, res = loop_run
    assert res.exit_code == 0, res.output
    out = root / "out"
    report = json.loads((out / "loop_report.json").read_text())
    rows = {(r["arm"], r["round"]): r for r in report["rows"]}
    assert set(rows) == {("uncertainty", 0), ("uncertainty", 1), ("random", 0), ("random", 1)}
    seed_frames = 8  # two train scenes of four frames (the third scene is the seed set's val split)
    for arm in ("uncertainty", "random"):
        assert rows[(arm, 0)]["labeled_frames"] == seed_frames
        assert rows[(arm, 1)]["labeled_frames"] == seed_frames + 3  # the budget, labeled and trained on
        assert rows[(arm, 1)]["samples"] == 6  # every val frame evaluated
        assert 0.0 <= rows[(arm, 1)]["drivable_iou"] <= 1.0
        with Catalog.open(out / "seed0" / arm / "catalog.db") as cat:
            recorded = cat.loop_rounds()
            assert [(r["arm"], r["round"]) for r in recorded] == [(arm, 0), (arm, 1)]
            assert recorded[1]["metrics"]["NDS"] == rows[(arm, 1)]["NDS"]
            assert cat.status()["label_states"] == {"unlabeled": 13, "queued": 0, "labeled": 12 + 3}
            picks = {p.frame.sample_token for p in cat.selections("round0")}
            version = cat.dataset_version("round1")
        assert len(picks) == 3 and version is not None
        from perception.data.nuscenes import load_dataset

        assert picks <= {s.token for s in load_dataset(version["root"]).samples}
        assert (out / "seed0" / arm / "round0" / "queue" / "manifest.jsonl").is_file()
    assert rows[("uncertainty", 0)]["NDS"] == rows[("random", 0)]["NDS"]  # round 0 is shared
    assert (out / "learning_curves.png").stat().st_size > 10_000
    md = (out / "loop_report.md").read_text()
    assert "| uncertainty | 1 | 11 |" in md and "| random | 1 | 11 |" in md


def test_the_loop_resumes_round_by_round(loop_run) -> None:
    root, config, _ = loop_run
    out = root / "out"
    (out / "seed0" / "random" / "round1" / "eval.json").unlink()
    before = (out / "seed0" / "random" / "round1" / "train" / "last.pt").stat().st_mtime
    res = CliRunner().invoke(app, ["loop", "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert "train " not in res.output and "mine " not in res.output and "export " not in res.output
    assert res.output.count("eval: ") == 1  # only the round whose result was removed
    assert (out / "seed0" / "random" / "round1" / "train" / "last.pt").stat().st_mtime == before


def test_loop_config_errors(loop_run, tmp_path) -> None:
    root, _, _ = loop_run
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"seed_data: {root / 'seed'}\npool: {root / 'pool'}\nval_data: {root / 'pool'}\n")
    res = CliRunner().invoke(app, ["loop", "--config", str(bad)])
    assert res.exit_code == 1 and "val_data" in res.output and "is the pool" in res.output
    bad.write_text(f"seed_data: {root / 'seed'}\npool: {root / 'pool'}\nbudgett: 3\n")
    res = CliRunner().invoke(app, ["loop", "--config", str(bad)])
    assert res.exit_code == 1 and "unknown key 'budgett'" in res.output and "valid keys: seed_data, pool" in res.output


def test_a_loop_config_is_typed_like_an_experiment_config(tmp_path) -> None:
    from data_engine.loop import Arm, LoopError, load_loop_config

    path = tmp_path / "loop.yaml"
    path.write_text("seed_data: s\npool: p\nbudget: 5\narms:\n  - {name: mined, strategies: 'det_entropy, novelty'}\n"
                    "  - {name: random, strategies: [random]}\nplugins: mine.py\n")
    cfg = load_loop_config(path, ["rounds=4", "seeds=[1, 2]", "diversity=0.5"], check_paths=False)
    assert (cfg.budget, cfg.rounds, cfg.seeds, cfg.diversity, cfg.plugins) == (5, 4, [1, 2], 0.5, ["mine.py"])
    assert cfg.arms == [Arm("mined", ["det_entropy", "novelty"]), Arm("random", ["random"])]
    for override, message in [("budget=3x", "budget: expected int, got '3x' (from override 'budget=3x')"),
                              ("seeds=[0, x]", "seeds[1]: expected int, got 'x'"),
                              ("arms=[{name: a}]", "arms[0]: missing key 'strategies'"),
                              ("diversity=true", "diversity: expected float, got True"),
                              ("rounds", "is not key=value")]:
        with pytest.raises(LoopError) as info:
            load_loop_config(path, [override], check_paths=False)
        assert str(info.value).startswith(f"{path}: ") and message in str(info.value), (override, str(info.value))
        assert str(info.value).count(str(path)) == 1
    path.write_text("- a list\n")
    with pytest.raises(LoopError, match="a loop config is a mapping") as info:
        load_loop_config(path, check_paths=False)
    assert str(info.value).count(str(path)) == 1
    path.write_text("seed_data: s\npool: p\n")  # `data-engine loop --out` quotes its value, so it is taken as given
    assert load_loop_config(path, ['out="runs/loop #2"'], check_paths=False).out == "runs/loop #2"


def test_the_demo_runs_end_to_end(tmp_path) -> None:
    from data_engine.demo import main

    out = tmp_path / "demo"
    main(["--out", str(out), "--scenes", "3", "--pool-scenes", "2", "--frames", "3", "--steps", "3", "--budget", "2"])
    report = json.loads((out / "loop" / "loop_report.json").read_text())
    assert [r["round"] for r in report["rows"]] == [0, 1]
    assert report["rows"][1]["labeled_frames"] == report["rows"][0]["labeled_frames"] + 2
    bench = json.loads((out / "bench.json").read_text())
    assert [r["precision"] for r in bench["rows"]] == ["fp32", "int8"]
    assert (out / "loop" / "seed0" / "mined" / "round0" / "queue" / "index.html").is_file()


@pytest.mark.parametrize("name", ["tiny.yaml", "heads.yaml"])
def test_the_shipped_loop_configs_parse(name: str) -> None:
    from pathlib import Path

    from data_engine.loop import load_loop_config
    from data_engine.mining.strategies import make_strategy

    root = Path(__file__).resolve().parents[2]
    cfg = load_loop_config(root / "configs" / "loops" / name, check_paths=False)
    assert (root / cfg.train_config).is_file() and cfg.val_data and cfg.val_data != cfg.pool
    assert cfg.mode == ("heads" if name == "heads.yaml" else "full")
    assert [a.name for a in cfg.arms][-1] == "random" and len(cfg.arms) <= 4
    for arm in cfg.arms:
        for spec in arm.strategies:
            make_strategy(spec)
