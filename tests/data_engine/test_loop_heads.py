"""`data-engine loop` in its heads-only mode: a frozen model's cached features, light heads retrained
per round, mining on their outputs through the catalog, the oracle's labels ingested; resumed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from data_engine.catalog import Catalog
from data_engine.cli import app
from data_engine.sim.synth import SynthConfig, synthesize
from model_inputs import random_tiny_checkpoint

pytestmark = pytest.mark.slow

W, H = 352, 198


@pytest.fixture(scope="module")
def heads_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop_heads")
    synthesize(SynthConfig(out=root / "seed", scenes=3, frames=4, seed=7, width=W, height=H), progress=False)
    synthesize(SynthConfig(out=root / "pool", scenes=5, frames=2, seed=7, width=W, height=H, first_scene=3,
                           unlabeled=True), progress=False)
    ckpt, _ = random_tiny_checkpoint(root / "model.pt")
    config = root / "loop.yaml"
    config.write_text("\n".join([
        f"seed_data: {root / 'seed'}", f"pool: {root / 'pool'}", f"out: {root / 'out'}", "mode: heads",
        f"model: {ckpt}", "head_epochs: 2", "head_min_steps: 3", "rounds: 2", "budget: 2", "min_gap: 0.1",
        "arms:", "  - {name: typical, strategies: [typical]}", "  - {name: random, strategies: [random]}",
    ]) + "\n")
    res = CliRunner().invoke(app, ["loop", "--config", str(config)])
    return root, config, res


def test_heads_mode_mines_labels_and_retrains_each_round(heads_run) -> None:
    from perception.data.nuscenes import load_dataset

    root, _, res = heads_run
    assert res.exit_code == 0, res.output
    out = root / "out"
    report = json.loads((out / "loop_report.json").read_text())
    rows = {(r["arm"], r["round"]): r for r in report["rows"]}
    assert set(rows) == {(a, r) for a in ("typical", "random") for r in range(3)}
    for f in ("seed", "pool"):
        assert (out / "features" / f / "frames.json").is_file()  # cached once, shared by every arm and round
    seed_frames = 8  # two train scenes of four frames; the third is the seed set's val split, evaluated on
    for arm in ("typical", "random"):
        assert [rows[(arm, r)]["labeled_frames"] for r in range(3)] == [seed_frames, seed_frames + 2, seed_frames + 4]
        for r in range(3):
            assert rows[(arm, r)]["samples"] == 4 and 0.0 <= rows[(arm, r)]["NDS"] <= 1.0
        with Catalog.open(out / "seed0" / arm / "catalog.db") as cat:
            assert [(x["arm"], x["round"]) for x in cat.loop_rounds()] == [(arm, 0), (arm, 1), (arm, 2)]
            first = {p.frame.sample_token for p in cat.selections("round0")}
            second = {p.frame.sample_token for p in cat.selections("round1")}
            assert cat.run_info("round1")["engine"] == "heads"
            assert cat.status()["label_states"]["labeled"] == 12 + 4
            version = cat.dataset_version("round2")
        assert len(first) == 2 and len(second) == 2 and not first & second  # a labeled frame is not picked again
        assert first | second <= {s.token for s in load_dataset(version["root"]).samples}
        import torch

        heads = torch.load(out / "seed0" / arm / "round2" / "train" / "heads.pt", weights_only=True)
        assert set(heads["pool_tokens"]) == first | second  # the heads trained on exactly the labeled picks
        assert (out / "seed0" / arm / "round1" / "queue" / "manifest.jsonl").is_file()
    assert rows[("typical", 0)]["NDS"] == rows[("random", 0)]["NDS"]  # round 0 is shared
    assert rows[("typical", 2)]["NDS"] != rows[("typical", 0)]["NDS"]  # more labels, other heads
    md = (out / "loop_report.md").read_text()
    assert "light heads retrained" in md and "| typical | 2 | 12 |" in md


def test_heads_mode_resumes_round_by_round(heads_run) -> None:
    root, config, _ = heads_run
    out = root / "out"
    (out / "seed0" / "random" / "round2" / "eval.json").unlink()
    before = (out / "seed0" / "random" / "round2" / "train" / "heads.pt").stat().st_mtime
    res = CliRunner().invoke(app, ["loop", "--config", str(config)])
    assert res.exit_code == 0, res.output
    assert "train heads" not in res.output and "mine " not in res.output
    assert res.output.count("eval: ") == 1
    assert (out / "seed0" / "random" / "round2" / "train" / "heads.pt").stat().st_mtime == before


def test_heads_mode_needs_its_model(heads_run, tmp_path) -> None:
    root, _, _ = heads_run
    bad = tmp_path / "bad.yaml"
    bad.write_text(f"seed_data: {root / 'seed'}\npool: {root / 'pool'}\nmode: heads\n")
    res = CliRunner().invoke(app, ["loop", "--config", str(bad)])
    assert res.exit_code == 1 and "model: heads mode needs the trained checkpoint" in res.output
    bad.write_text(f"seed_data: {root / 'seed'}\npool: {root / 'pool'}\nmode: fast\n")
    res = CliRunner().invoke(app, ["loop", "--config", str(bad)])
    assert res.exit_code == 1 and "mode: full or heads, got 'fast'" in res.output


def test_pick_on_heads_skips_labeled_frames_and_their_neighbours(heads_run) -> None:
    from data_engine.mining.cached import CachedFrames, pick_on_heads
    from data_engine.mining.selection import SelectionConfig
    from perception.training.feature_cache import FeatureCache
    from perception.training.head_learner import HeadLearnerConfig, train_heads

    root, _, _ = heads_run
    pool = FeatureCache.load(root / "out" / "features" / "pool")
    frames = CachedFrames.of([(pool, None)])
    heads = train_heads(pool, [0, 1], HeadLearnerConfig(epochs=1, min_steps=2))
    labeled = np.zeros(len(frames), dtype=bool)
    labeled[0] = True  # scene 0, frame 0: its neighbour (frame 1, 0.5 s later) is blocked at min_gap 1 s
    found = pick_on_heads(["det_entropy"], frames, heads, labeled, 4, SelectionConfig(min_gap=1.0, diversity=0.0))
    picks = found.picks
    picked = [i for i, _, _ in picks]
    assert len(picked) == 4 and 0 not in picked and 1 not in picked
    assert len({frames.scene[i] for i in picked}) == 4  # one per scene: the pair of a scene is 0.5 s apart
    assert pick_on_heads(["det_entropy"], frames, heads, labeled, 4, SelectionConfig(min_gap=1.0, diversity=0.0)).picks == picks
    entropy = found.scores["det_entropy"]  # the picks are the most uncertain frame of each free scene
    for i in picked:
        rivals = [j for j in range(len(frames)) if frames.scene[j] == frames.scene[i] and j not in (0, 1)]
        assert entropy[i] == max(entropy[j] for j in rivals)
