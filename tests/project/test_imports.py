"""The edge path (perception's numpy parts, the edge runtime, `perception bench`) imports no torch,
albumentations or scipy (DESIGN section 2)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EDGE_MODULES = ("perception", "perception.cli", "perception.geometry", "perception.box_geometry", "perception.boxes",
                "perception.heatmap", "perception.preprocess", "perception.presets", "perception.vis",
                "perception.data.nuscenes", "perception.metrics", "perception.specs", "perception.config",
                "export.runtime", "export.runtime.metadata", "export.runtime.edge_model", "export.bench")


def test_edge_modules_import_with_torch_unimportable() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'albumentations', 'scipy'):\n"
        "    sys.modules[name] = None  # importing it now raises ImportError\n"
        f"for module in {EDGE_MODULES!r}:\n"
        "    __import__(module)\n"
        "from typer.testing import CliRunner\n"
        "from perception.cli import app\n"
        "result = CliRunner().invoke(app, ['--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


def test_an_experiment_config_parses_with_torch_unimportable() -> None:
    code = (
        "import sys\n"
        "for name in ('torch', 'torchvision', 'albumentations', 'scipy'):\n"
        "    sys.modules[name] = None\n"
        "from perception.config import ConfigError, load_config\n"
        "cfg = load_config('configs/edge_cpu.yaml', ['model.backbone=resnet18', 'loss.seg_weight=2'])\n"
        "assert cfg.model.backbone == 'resnet18' and cfg.loss.seg_weight == 2.0\n"
        "try:\n"
        "    load_config('configs/edge_cpu.yaml', ['model.backbone=vgg'])\n"
        "except ConfigError as exc:\n"
        "    assert 'model.backbone' in str(exc)\n"
        "else:\n"
        "    raise AssertionError('an unknown backbone was accepted')\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).resolve().parents[2])
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]


LINT_IMPORTS = str(Path(sys.executable).parent / "lint-imports")
ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold() -> None:
    res = subprocess.run([LINT_IMPORTS], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert "0 broken" in res.stdout


@pytest.mark.parametrize("module, wrong_import, broken", [
    ("export/runtime/metadata.py", "import torch", "export.runtime.metadata -> torch"),
    ("perception/evaluate.py", "import perception.training.trainer", "perception.evaluate -> perception.training.trainer"),
    ("perception/geometry.py", "import perception.boxes", "perception.geometry -> perception.boxes"),
    ("data_engine/catalog/schema.py", "import data_engine.mining.mine", "data_engine.catalog.schema -> data_engine.mining.mine"),
    ("perception/schema.py", "import export.exporter", "perception.schema -> export.exporter"),
])
def test_a_wrong_import_breaks_a_contract(tmp_path: Path, module: str, wrong_import: str, broken: str) -> None:
    import shutil

    for package in ("perception", "export", "data_engine"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / module
    path.write_text(path.read_text().replace("from __future__ import annotations\n",
                                             f"from __future__ import annotations\n\n{wrong_import}\n", 1))
    res = subprocess.run([LINT_IMPORTS], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)})
    assert res.returncode != 0
    assert broken in " ".join(res.stdout.split()), res.stdout[-3000:]


def test_no_module_imports_itself_through_others() -> None:
    import grimp

    graph = grimp.build_graph("perception", "export", "data_engine", exclude_type_checking_imports=True)
    cycles = []
    for module in sorted(graph.modules):
        for other in graph.find_modules_directly_imported_by(module):
            if other != module and graph.chain_exists(importer=other, imported=module):
                cycles.append(f"{module} <-> {other}")
    assert not cycles, cycles
