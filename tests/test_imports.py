"""The edge path (perception's numpy parts, the edge runtime, `perception bench`) imports no torch,
albumentations or scipy (DESIGN section 2)."""

from __future__ import annotations

import subprocess
import sys

EDGE_MODULES = ("perception", "perception.cli", "perception.geometry", "perception.boxes", "perception.preprocess",
                "perception.presets", "perception.vis", "perception.data.nuscenes", "perception.metrics",
                "perception.models.config", "export.runtime", "export.runtime.metadata", "export.runtime.edge_model",
                "export.bench")


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
