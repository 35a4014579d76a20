"""The held-out world and the exported model the safety benchmarks measure on.

The world is rendered like the training world (`data-engine synth --seed 0`, 800 x 450 cameras) but
from scenes far past it (``first_scene`` 500000), with condition quotas so that every condition has
scenes; all of it is one split, never seen by training, export's calibration or the novelty index.
The model is the checkpoint exported to FP32 with its dataset (so its metadata carries the score
calibration fitted on the val split and the novelty index of the train split).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perception.digest import file_sha256

SEED, FIRST_SCENE, FRAMES = 0, 500_000, 4
QUOTAS = {"full": {"day": 20, "dusk": 6, "night": 8, "rain": 6, "fog": 8},
          "quick": {"day": 1, "night": 1, "fog": 1}}


def render_test_world(root: Path, size: str = "full", progress: bool = True) -> Path:
    """Render (or reuse) the held-out world under ``root``/test_world (size "full" or "quick")."""
    from data_engine.sim.synth import SynthConfig, default_workers, synthesize

    quotas = QUOTAS[size]
    cfg = SynthConfig(out=root / f"test_world_{size}", scenes=sum(quotas.values()), frames=FRAMES if size == "full" else 2,
                      seed=SEED, first_scene=FIRST_SCENE, quotas=quotas, workers=default_workers(),
                      **({"width": 400, "height": 225} if size == "quick" else {}))
    synthesize(cfg, progress=progress)
    return cfg.out


def exported_model(checkpoint: Path, data: Path, root: Path, log=print) -> Path:
    """runs/.../export/model.fp32.onnx of ``checkpoint`` exported with ``data`` (re-exported when the
    checkpoint or the dataset changed)."""
    from export.exporter import export_checkpoint

    out = root / "export"
    model = out / "model.fp32.onnx"
    stamp = out / "source.json"
    source = {"checkpoint_sha256": file_sha256(checkpoint), "data": str(Path(data).resolve()),
              "metadata": ["calibration", "novelty: embedding + appearance"]}
    if model.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return model
    export_checkpoint(checkpoint, out, ("fp32",), calib_data=data, evaluate=False, log=log)
    stamp.write_text(json.dumps(source))
    return model


def save_results(report: dict[str, Any], results: Path, name: str, picture: str,
                 plot: Callable[[dict[str, Any], Path], None], table: Callable[[dict[str, Any]], str]) -> None:
    """Write ``results``/<name>.json and the plot ``results``/<picture>, then print the table."""
    results.mkdir(parents=True, exist_ok=True)
    (results / f"{name}.json").write_text(json.dumps(report, indent=2))
    plot(report, results / picture)
    print(table(report))
    print(f"wrote {results / f'{name}.json'} and {results / picture} ({report['elapsed_s']} s)")


def safety_parser(doc: str) -> argparse.ArgumentParser:
    """The arguments every safety benchmark takes: --checkpoint, --data, --root, --quick, --results."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/train/edge_cpu/best.pt"))
    parser.add_argument("--data", type=Path, default=Path("data/synth"), help="the training world (val split: the fit)")
    parser.add_argument("--root", type=Path, default=Path("runs/safety"), help="where the world and export go")
    parser.add_argument("--quick", action="store_true", help="a tiny world, for tests")
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    return parser
