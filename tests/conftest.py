"""Fixtures shared across the suite: small synthetic worlds rendered once per test session.

``synth_world`` (labeled) and ``synth_pool`` (unlabeled, other scenes) sit side by side in one directory,
as ``labeled`` and ``pool``. Both are read-only for the tests: a test that changes files of a world copies
it first (``shutil.copytree(synth_world, tmp_path / ...)``). The session checks at its end that no file of
a shared world was added, removed or rewritten.

Helper modules live in tests/support/ (on the path through pyproject's ``pythonpath``); the data engine
is imported inside the fixtures, so a run that needs no world does not import it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

# The tiny preset's input is 176x96: the cameras are twice that (cropped), as in training and export tests.
WORLD_SIZE = dict(width=352, height=198)
# Two scenes of three frames: the second scene is the val split (synth_val), the first the train split.
WORLD = dict(scenes=2, frames=3, seed=21, **WORLD_SIZE)
POOL = dict(scenes=2, frames=3, seed=22, unlabeled=True, **WORLD_SIZE)
# Two scenes of four frames: the train split is scene-0000 (4 frames, 4 clips of one frame).
TRAIN_WORLD = dict(scenes=2, frames=4, seed=5, **WORLD_SIZE)


def _files(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root``: relative path -> (size, mtime in ns)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


def _assert_unchanged(root: Path, before: dict[str, tuple[int, int]]) -> None:
    after = _files(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, (f"a test changed the shared world {root} (copy it before changing it): "
                         f"{changed[:10]}{' ...' if len(changed) > 10 else ''}")


def _render(out: Path, **params) -> Path:
    from data_engine.sim.synth import SynthConfig, synthesize

    synthesize(SynthConfig(out=out, **params), progress=False)
    return out.resolve()


def _shared(root: Path):
    """Yield ``root`` and check after the session that its files are as rendered."""
    before = _files(root)
    yield root
    _assert_unchanged(root, before)


@pytest.fixture(scope="session")
def shared_worlds_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory holding ``synth_world`` (labeled/) and ``synth_pool`` (pool/)."""
    return tmp_path_factory.mktemp("worlds")


@pytest.fixture(scope="session")
def synth_world(shared_worlds_dir: Path):
    """A labeled synthetic dataset (see WORLD): 2 scenes x 3 keyframes, 352x198 cameras. Read-only."""
    yield from _shared(_render(shared_worlds_dir / "labeled", **WORLD))


@pytest.fixture(scope="session")
def synth_pool(shared_worlds_dir: Path):
    """An unlabeled pool beside ``synth_world`` (see POOL): 2 other scenes x 3 keyframes. Read-only."""
    yield from _shared(_render(shared_worlds_dir / "pool", **POOL))


@pytest.fixture(scope="session")
def train_world(tmp_path_factory: pytest.TempPathFactory):
    """The world the training tests run on (see TRAIN_WORLD). Read-only."""
    yield from _shared(_render(tmp_path_factory.mktemp("train_world") / "ds", **TRAIN_WORLD))


@pytest.fixture(scope="session")
def devkit_world(tmp_path_factory: pytest.TempPathFactory):
    """The dataset of the nuScenes devkit tests, written by `data-engine synth` (tests/support/devkit_world.py).
    Read-only."""
    from devkit_world import render_devkit_world

    yield from _shared(render_devkit_world(tmp_path_factory.mktemp("synth")))
