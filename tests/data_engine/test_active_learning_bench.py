"""The active-learning benchmark: its statistics, and a quick end-to-end run that resumes."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bench.al_stats import labels_to_reach, mean_ci, paired_delta, wilson

ROOT = Path(__file__).resolve().parents[2]


def test_labels_to_reach_interpolates_random_curve_in_log_labels():
    curve = {40: 0.1, 80: 0.2, 160: 0.2, 480: 0.4}
    assert labels_to_reach(curve, 0.05) == 40
    assert labels_to_reach(curve, 0.2) == pytest.approx(80)
    assert labels_to_reach(curve, 0.15) == pytest.approx(math.sqrt(40 * 80))
    assert labels_to_reach(curve, 0.3) == pytest.approx(math.exp((math.log(160) + math.log(480)) / 2))
    assert labels_to_reach(curve, 0.5) == math.inf
    assert labels_to_reach({40: 0.3, 80: 0.1, 160: 0.4}, 0.35) > 80  # a dip is read on the running maximum


def test_paired_delta_and_intervals():
    base = {s: 0.1 * s for s in range(8)}
    better = {s: v + 0.05 + 0.01 * (s % 2) for s, v in base.items()}
    d = paired_delta(better, base)
    assert d["mean"] == pytest.approx(0.055) and 0.05 <= d["lo"] <= d["mean"] <= d["hi"] <= 0.06
    assert d["wins"] == 8 and d["losses"] == 0 and d["p_wilcoxon"] < 0.01
    noise = paired_delta({s: float(v) for s, v in enumerate(np.random.default_rng(0).normal(size=8))},
                         {s: 0.0 for s in range(8)})
    assert noise["lo"] < noise["mean"] < noise["hi"]
    w = wilson(30, 60)
    assert w["share"] == 0.5 and 0.37 < w["lo"] < 0.5 < w["hi"] < 0.63
    assert math.isnan(wilson(0, 0)["share"]) and mean_ci([])["n"] == 0


@pytest.mark.slow
def test_quick_benchmark_runs_end_to_end_and_resumes(tmp_path, monkeypatch):
    from model_inputs import random_tiny_checkpoint

    ckpt, _ = random_tiny_checkpoint(tmp_path / "tiny.pt")
    cmd = [sys.executable, "-m", "bench.active_learning", "--quick", "--seeds", "0", "--checkpoint", str(ckpt),
           "--out", str(tmp_path / "run"), "--data", str(tmp_path / "worlds")]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)
    assert first.returncode == 0, first.stderr[-3000:]
    report = json.loads((tmp_path / "run" / "active_learning.json").read_text())
    assert (tmp_path / "run" / "learning_curves.png").stat().st_size > 10_000
    arms = report["arms"]
    assert set(arms) == {"random", "oracle", "query", "rare", "typical", "uncertainty"}
    assert arms["oracle"]["yield"]["share"] == 1.0  # the quick pool holds more rare frames than two rounds pick
    assert arms["oracle"]["yield"]["n"] == 6 and arms["random"]["yield"]["n"] == 6
    assert sorted(int(n) for n in report["curves"]["random"]) == [6, 9, 12, 24]
    assert report["worlds"]["test"]["rare_frames"] > 0
    for name, arm in arms.items():
        assert 0.0 <= arm["final"]["rare_ap_unclipped"]["mean"] <= 1.0
        assert name == "random" or "rare_ap_unclipped" in arm["delta_vs_random"]
    assert "Gate 2" in first.stdout and "| oracle |" in first.stdout
    records = (tmp_path / "run" / "records" / "seed0.jsonl").read_text().splitlines()
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (tmp_path / "run" / "records" / "seed0.jsonl").read_text().splitlines() == records  # nothing was run twice
    assert "round 1" not in again.stdout
    assert report["compute_s"] > 0 and "Infinity" not in (tmp_path / "run" / "active_learning.json").read_text()
    other, _ = random_tiny_checkpoint(tmp_path / "other.pt", seed=1)  # records of another model are not mixed in
    refused = subprocess.run([*cmd[:-6], "--checkpoint", str(other), *cmd[-4:]], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert refused.returncode != 0 and "holds records of another checkpoint" in refused.stderr, refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr

    # the demo quotes the benchmark's result for the strategy it mines with
    from data_engine import demo

    monkeypatch.setattr(demo, "ACTIVE_LEARNING", tmp_path / "run" / "active_learning.json")
    line = demo.benchmark_line()
    rare = arms[demo.DEMO_ARM]
    assert " + ".join(demo.DEMO_STRATEGIES) in line and "1 seed," in line
    assert f"{rare['final']['rare_ap_unclipped']['mean']:.3f}" in line and "with 12 labels" in line
    monkeypatch.setattr(demo, "ACTIVE_LEARNING", tmp_path / "missing.json")
    assert "python -m bench.active_learning" in demo.benchmark_line()


def test_label_efficiency_interval_resamples_seeds():
    from bench.al_stats import efficiency_ci

    random = {40: {s: 0.1 for s in range(6)}, 160: {s: 0.2 + 0.01 * s for s in range(6)},
              480: {s: 0.3 for s in range(6)}}
    e = efficiency_ci(random, {s: 0.3 for s in range(6)}, 160)
    assert e["value"] == pytest.approx(3.0) and e["lo"] == pytest.approx(3.0)
    e = efficiency_ci(random, {s: 0.25 + 0.01 * s for s in range(6)}, 160)
    assert 1.0 < e["lo"] < e["value"] < e["hi"] <= 3.0
    e = efficiency_ci(random, {s: 0.5 for s in range(6)}, 160)  # beyond random's last point
    assert e["value"] == e["lo"] == e["hi"] == float("inf")


def test_records_of_an_arm_cut_short_are_left_out(tmp_path):
    from bench.active_learning import PROTOCOLS, read_records

    proto = PROTOCOLS["quick"]
    path = tmp_path / "seed0.jsonl"
    rows = [{"seed": 0, "arm": "random", "labels": n} for n in proto.random_labels]
    rows += [{"seed": 0, "arm": "rare", "labels": 9, "round": 1}]  # round 2 never written
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"seed": 0, "arm": "rar')
    kept = read_records(path, proto)
    assert [r["arm"] for r in kept] == ["random"] * len(proto.random_labels)
