"""What a careless user does to `perception train`, `eval` and `bench`: reuse a finished run's name,
resume with another model, fill the disk under a checkpoint, leave a killed writer's temporary file,
ask for a device that does not exist, hand over random bytes as a model. Each ends in one line
naming the file or option and a non-zero exit, and nothing already written is lost."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from perception.cli import app
from perception.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _args(train_world: Path, out: Path, name: str, **extra: object) -> list[str]:
    base = {"preset": "tiny", "train.data": str(train_world), "train.out_root": str(out), "train.name": name,
            "train.num_workers": 0, "train.log_every": 1, "train.warmup_steps": 1, "train.steps": 2,
            "train.ckpt_every": 1, "augment.enabled": "false", "train.val_split": "null", "train.vis_every": 0}
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def _train(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "perception.cli", "train", *args], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)


def _one_error_line(stderr: str) -> str:
    """The single `error:` line of a failed command; fails on a traceback or several lines."""
    assert "Traceback" not in stderr, stderr[-3000:]
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, stderr[-3000:]
    return errors[0]


def _digests(run: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(run.iterdir()) if p.is_file()}


@pytest.fixture(scope="module")
def finished(train_world: Path, tmp_path_factory) -> Path:
    """A finished two-step run (copied by each test that changes it)."""
    out = tmp_path_factory.mktemp("runs")
    res = _train(_args(train_world, out, "done"))
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return out / "done"


def _copy(run: Path, tmp_path: Path) -> Path:
    dst = tmp_path / run.name
    shutil.copytree(run, dst)
    return dst


def test_a_finished_run_is_not_replaced(train_world: Path, finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    before = _digests(run)
    res = _train(_args(train_world, tmp_path, run.name))
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert str(run) in line and "--resume" in line and "train.name" in line
    assert _digests(run) == before


def test_resume_with_another_model_is_refused_and_keeps_the_run(train_world: Path, finished: Path, tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    before = _digests(run)
    res = _train(_args(train_world, tmp_path, run.name, **{"model.bev_channels": 32, "train.steps": 3}) + ["--resume"])
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert "model.bev_channels: 64 in the checkpoint, 32 now" in line and "last.pt" in line
    assert _digests(run) == before  # config.yaml and metrics.csv untouched


def test_resume_removes_a_killed_writers_temporary_and_keeps_a_live_ones(train_world: Path, finished: Path,
                                                                         tmp_path: Path) -> None:
    run = _copy(finished, tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".last.pt.{dead.pid}.0badc0de.tmp"
    live = run / f".last.pt.{os.getpid()}.00c0ffee.tmp"  # this process is alive: its write may be under way
    stale.write_bytes(b"")
    live.write_bytes(b"")
    res = _train(_args(train_world, tmp_path, run.name, **{"train.steps": 3}) + ["--resume"])
    assert res.returncode == 0, res.stderr[-2000:]
    assert not stale.exists() and live.exists()
    assert load_checkpoint(run / "last.pt")["step"] == 3


def test_the_loop_recipe_with_checkpoints_only_at_the_end_trains(train_world: Path, tmp_path: Path) -> None:
    args = ["--config", str(ROOT / "configs" / "tiny_loop.yaml"), f"train.data={train_world}", f"train.out_root={tmp_path}",
            "train.steps=3", "train.num_workers=0", "train.val_split=null", "train.warmup_steps=1", "train.log_every=1"]
    res = _train(args)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "tiny_loop" / "last.pt")
    assert ckpt["step"] == 3 and ckpt["config"]["train"]["ckpt_every"] == 0


@pytest.fixture
def small_disk(tmp_path: Path, finished: Path):
    """A tmpfs that holds one checkpoint of the finished run's size and a half: the second save fills it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    size = (finished / "last.pt").stat().st_size * 3 // 2 + (2 << 20)
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)


def test_a_full_disk_during_a_checkpoint_is_one_line_and_keeps_the_previous(train_world: Path, small_disk: Path) -> None:
    res = _train(_args(train_world, small_disk, "full", **{"train.steps": 4}))
    assert res.returncode == 1
    line = _one_error_line(res.stderr)
    assert "last.pt: cannot write the checkpoint: no space left on device" in line
    assert "the previous checkpoint is unchanged" in line
    assert load_checkpoint(small_disk / "full" / "last.pt")["step"] == 1
    assert not list((small_disk / "full").glob(".*.tmp"))


def _invoke(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(app, args)
    return res.exit_code, res.output


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "auto:1"])
def test_an_unknown_device_is_one_line(train_world: Path, finished: Path, tmp_path: Path, device: str) -> None:
    code, out = _invoke(["eval", "--checkpoint", str(finished / "last.pt"), "--data", str(train_world),
                         "--out", str(tmp_path / "eval"), "--device", device])
    assert code == 1
    assert f"device {device!r}: expected auto, cpu, cuda or cuda:N" in _one_error_line(out)
    code, out = _invoke(["train", *_args(train_world, tmp_path, "dev", **{"train.device": device})])
    assert code == 1
    assert "train.device" in _one_error_line(out)


def test_cuda_on_a_machine_without_it_is_one_line(train_world: Path, finished: Path, tmp_path: Path) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    code, out = _invoke(["eval", "--checkpoint", str(finished / "last.pt"), "--data", str(train_world),
                         "--out", str(tmp_path / "eval"), "--device", "cuda"])
    assert code == 1
    assert "CUDA is not available" in _one_error_line(out)


def test_random_bytes_as_a_model_or_a_checkpoint_are_one_line(train_world: Path, tmp_path: Path) -> None:
    junk = tmp_path / "model.onnx"
    junk.write_bytes(os.urandom(4096))
    code, out = _invoke(["bench", "--model", str(junk), "--runs", "1", "--warmup", "0"])
    assert code == 1
    assert f"{junk}: onnxruntime cannot load this model" in _one_error_line(out)
    code, out = _invoke(["eval", "--checkpoint", str(junk), "--data", str(train_world), "--out", str(tmp_path / "e")])
    assert code == 1
    assert f"{junk}: not a readable checkpoint" in _one_error_line(out)
    code, out = _invoke(["eval", "--checkpoint", str(tmp_path / "absent.pt"), "--data", str(train_world)])
    assert code == 1
    assert "absent.pt: checkpoint file missing" in _one_error_line(out)


def test_a_missing_dataset_is_one_line_and_leaves_no_run_directory(tmp_path: Path) -> None:
    code, out = _invoke(["train", "preset=tiny", f"train.data={tmp_path / 'absent'}", f"train.out_root={tmp_path}",
                         "train.name=r"])
    assert code == 1
    assert str(tmp_path / "absent") in _one_error_line(out)
    assert not (tmp_path / "r").exists()


def test_a_checkpoint_whose_preset_holds_a_field_of_another_type_names_the_field(train_world: Path, finished: Path,
                                                                                  tmp_path: Path) -> None:
    import torch

    state = torch.load(finished / "last.pt", weights_only=True)
    state["preset"]["input"]["cameras"] = 5
    torch.save(state, tmp_path / "bad.pt")
    code, out = _invoke(["eval", "--checkpoint", str(tmp_path / "bad.pt"), "--data", str(train_world)])
    assert code == 1
    line = _one_error_line(out)
    assert f"{tmp_path / 'bad.pt'}: the checkpoint's preset.input.cameras is 5, expected tuple[str, ...]" in line
