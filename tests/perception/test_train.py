"""`perception train`: DDP with two real torchrun processes, exact resume after SIGKILL, SIGTERM
checkpoints, config errors. Tiny preset on a tiny synthetic world, CPU, deterministic mode."""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from perception.cli import app
from perception.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TORCHRUN = str(Path(sys.executable).parent / "torchrun")


def _args(train_world: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"preset": "tiny", "train.data": str(train_world), "train.out_root": str(out), "train.name": name,
            "train.deterministic": "true", "train.num_workers": 0, "train.log_every": 1, "train.warmup_steps": 2,
            "augment.enabled": "false", "loss.sync_num_objects": "false", "train.val_split": "null"}
    base.update({k: v for k, v in extra.items()})
    return [f"{k}={v}" for k, v in base.items()]


def _run(args: list[str], **kw) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "perception.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_torchrun_ranks_match_one_process_with_the_same_global_batch(train_world: Path, tmp_path: Path) -> None:
    single = _run(_args(train_world, tmp_path, "single", **{"train.steps": 4, "train.batch_size": 1, "train.grad_accum": 2}))
    out, _ = single.communicate(timeout=600)
    assert single.returncode == 0, out
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
           "-m", "perception.cli", "train",
           *_args(train_world, tmp_path, "ddp", **{"train.steps": 4, "train.batch_size": 1, "train.grad_accum": 1})]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    digests = json.loads((tmp_path / "ddp" / "ranks.json").read_text())["parameter_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    a, b = _params(tmp_path / "single" / "last.pt"), _params(tmp_path / "ddp" / "last.pt")
    names = [n for n in a if "running" not in n and "num_batches" not in n]  # parameters, not BN statistics
    assert names
    for n in names:
        assert torch.allclose(a[n], b[n], atol=1e-6, rtol=1e-5), n
    assert load_checkpoint(tmp_path / "ddp" / "last.pt")["step"] == 4


def test_resume_after_sigkill_is_bitwise_equal(train_world: Path, tmp_path: Path) -> None:
    kw = {"train.steps": 8, "train.batch_size": 1, "train.ckpt_every": 2, "train.clip_length": 2,
          "augment.enabled": "true"}
    full = _run(_args(train_world, tmp_path, "full", **kw))
    out, _ = full.communicate(timeout=600)
    assert full.returncode == 0, out
    killed = _run(_args(train_world, tmp_path, "killed", **kw))
    ckpt = tmp_path / "killed" / "last.pt"
    deadline = time.time() + 300
    while not ckpt.exists():
        assert killed.poll() is None, killed.stdout.read() if killed.stdout else ""
        assert time.time() < deadline
        time.sleep(0.05)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    step_at_kill = load_checkpoint(ckpt)["step"]
    assert step_at_kill < 8
    resumed = _run(_args(train_world, tmp_path, "killed", **kw) + ["--resume"])
    out, _ = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, out
    assert f"at step {step_at_kill}" in out
    a, b = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(ckpt)
    for key in ("model", "ema"):
        for n in a[key]:
            assert torch.equal(a[key][n], b[key][n]), (key, n)
    assert a["step"] == b["step"] == 8


def test_sigterm_saves_a_loadable_checkpoint(train_world: Path, tmp_path: Path) -> None:
    proc = _run(_args(train_world, tmp_path, "term", **{"train.steps": 10_000, "train.ckpt_every": 10_000}))
    deadline = time.time() + 300
    seen = ""
    while "step 2/" not in seen:
        line = proc.stdout.readline() if proc.stdout else ""
        assert line or proc.poll() is None, seen
        seen += line
        assert time.time() < deadline
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, seen + out
    state = torch.load(tmp_path / "term" / "last.pt", weights_only=True)
    assert 2 <= state["step"] < 10_000
    assert "stop requested" in out


def test_a_bad_config_key_is_named(train_world: Path, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", *_args(train_world, tmp_path, "bad"), "train.learning_rate=0.1"])
    assert res.exit_code == 1
    assert "train.learning_rate" in res.output


def test_a_run_writes_its_directory(train_world: Path, tmp_path: Path) -> None:
    args = _args(train_world, tmp_path, "run", **{"train.steps": 4, "train.val_split": "synth_val", "train.val_every": 2,
                                           "train.vis_every": 4, "train.ckpt_every": 2})
    proc = _run(args)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.csv", "val_metrics.csv", "results.png", "last.pt", "best.pt"):
        assert (run / name).is_file(), name
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert len(list((run / "vis" / "step000004").glob("*.png"))) == 2
    assert (run / "val" / "step000004" / "metrics_summary.json").is_file()
    rows = (run / "val_metrics.csv").read_text().strip().splitlines()
    assert rows[0].startswith("step,mAP,NDS") and len(rows) == 3
    assert "data_wait_fraction" in (run / "metrics.csv").read_text().splitlines()[0]
    assert "val step 4: mAP" in out
    best = torch.load(run / "best.pt", weights_only=True)
    assert best["classes"]["det"][0] == "car" and best["ema"] is not None


def test_bf16_autocast_trains_on_the_cpu(train_world: Path, tmp_path: Path) -> None:
    from perception.device import cpu_has_native_bf16

    proc = _run(_args(train_world, tmp_path, "bf16", **{"train.steps": 3, "train.amp": "bf16"}))
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out
    header, *rows = (tmp_path / "bf16" / "metrics.csv").read_text().strip().splitlines()
    loss = header.split(",").index("total")
    assert len(rows) == 3 and all(math.isfinite(float(row.split(",")[loss])) for row in rows)
    # The warning appears exactly where bf16 would be emulated.
    assert ("without native bfloat16" in out) == (not cpu_has_native_bf16())


@pytest.mark.skipif(not Path("/proc/cpuinfo").is_file(), reason="reads the CPU flags of Linux's /proc/cpuinfo")
def test_the_bf16_probe_agrees_with_the_cpu_flags() -> None:
    from perception.device import cpu_has_native_bf16

    flags = set(Path("/proc/cpuinfo").read_text().split())
    assert cpu_has_native_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})
