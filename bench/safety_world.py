"""The held-out worlds and the exported model the safety benchmarks measure on.

Both worlds are rendered like the training world (`data-engine synth --seed 0`, 800 x 450 cameras) but
from scenes far past it, with condition quotas so that every condition has scenes, all of each in one
split: the test world (``first_scene`` 500000) is never seen by training, export or the novelty index;
the confidence world (``first_scene`` 600000, drawn the same way) is what export fits the score
calibration on (`perception export --confidence-data`), since the calibration must come from data like
the data the model meets. The model is the checkpoint exported to FP32 with the training world (the
novelty index of its train split) and the confidence world.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from perception.digest import file_sha256

SEED, FRAMES = 0, 4
FIRST_SCENE = {"test": 500_000, "confidence": 600_000}
QUOTAS = {"full": {"day": 40, "dusk": 12, "night": 16, "rain": 12, "fog": 16},
          "quick": {"day": 1, "night": 1, "fog": 1}}


def render_world(root: Path, kind: str = "test", size: str = "full", progress: bool = True) -> Path:
    """Render (or reuse) the held-out ``kind`` world ("test" or "confidence") of ``size`` ("full" or
    "quick") under ``root``: <root>/test_world_full, ..."""
    from data_engine.sim.synth import SynthConfig, default_workers, synthesize

    quotas = QUOTAS[size]
    cfg = SynthConfig(out=root / f"{kind}_world_{size}", scenes=sum(quotas.values()),
                      frames=FRAMES if size == "full" else 2, seed=SEED, first_scene=FIRST_SCENE[kind], quotas=quotas,
                      workers=default_workers(), **({"width": 400, "height": 225} if size == "quick" else {}))
    synthesize(cfg, progress=progress)
    return cfg.out


def exported_model(checkpoint: Path, data: Path, root: Path, size: str = "full", progress: bool = True,
                   log: Callable[[str], None] = print) -> Path:
    """<root>/export/model.fp32.onnx of ``checkpoint`` exported with ``data`` and the confidence world
    (re-exported when the checkpoint or a dataset changed)."""
    from export.exporter import export_checkpoint

    confidence = render_world(root, "confidence", size, progress)
    out = root / "export"
    model = out / "model.fp32.onnx"
    stamp = out / "source.json"
    source = {"checkpoint_sha256": file_sha256(checkpoint), "data": str(Path(data).resolve()),
              "confidence_data": str(confidence.resolve()),
              "metadata": ["calibration", "novelty: embedding + appearance"]}
    if model.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == source:
        return model
    export_checkpoint(checkpoint, out, ("fp32",), calib_data=data, evaluate=False, confidence_data=confidence, log=log)
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
