"""Calibration of the exported model's confidence on a held-out world: ECE before and after the scaling
export fitted, per class and pooled, with a reliability diagram.

    PYTHONPATH=. python -m bench.calibration --checkpoint runs/train/edge_cpu/best.pt --data data/synth

Writes bench/results/calibration.json and bench/results/reliability.png. The held-out worlds and the
export: :mod:`bench.safety_world` (the scaling is fitted on the confidence world, drawn like the test
world). For comparison, the detection ECE under the scaling fitted on the training world's val split
(`perception export`'s default) is reported beside it. Detection: every detection the runtime keeps
(score >= 0.1), a true positive when it matches a box of its class within 2 m; segmentation: every
valid BEV cell.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

def measure(checkpoint: Path, data: Path, root: Path, size: str = "full", progress: bool = True) -> dict[str, Any]:
    """The report (see the module docstring) of ``checkpoint`` exported with ``data``."""
    from bench.safety_world import exported_model, render_world
    from export.dataset_runs import run_edge
    from export.runtime import EdgeModel
    from export.safety import fit_calibration_on
    from perception.confidence import collect_confidence
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.data.nuscenes import load_dataset
    from perception.boxes import sigmoid
    from perception.metrics.calibration import ReliabilityHistogram, ece_noise_floor

    started = time.perf_counter()
    world = render_world(root, "test", size, progress)
    model_path = exported_model(checkpoint, data, root, size, progress)
    edge = EdgeModel(model_path, threads=2)
    calibration = edge.metadata.score_calibration()
    if calibration is None:
        raise SystemExit(f"{model_path}: the export carries no score calibration (was it exported with a dataset?)")
    preset = edge.preset
    reader = load_dataset(world)
    test = MultiCamDataset(reader, preset, DatasetConfig(split=reader.val_split))
    samples = collect_confidence(preset, test, run_edge(edge, test), calibration)
    report = samples.report()
    report.update(checkpoint=str(checkpoint), model=str(model_path), fitted_on=calibration.fitted_on,
                  method="per-class Platt scaling of the logits (a z + b), fitted by export")
    # The default export's fit (the training world's val split), on the same test detections.
    train_reader = load_dataset(data)
    val_fit, _ = fit_calibration_on(edge, preset, MultiCamDataset(train_reader, preset,
                                                                 DatasetConfig(split=train_reader.val_split)))
    names = edge.metadata.class_names
    pooled = ReliabilityHistogram()
    for c, (z, tp) in samples.det.items():
        labels = np.full(len(z), names.index(c))
        calibrated = calibration.detection_scores(sigmoid(z), labels, names)
        report["detection"][c]["ece_noise_floor"] = ece_noise_floor(calibrated)
        prob = val_fit.detection_scores(sigmoid(z), labels, names)
        hist = ReliabilityHistogram()
        hist.update(prob, tp)
        pooled.update(prob, tp)
        report["detection"][c]["ece_val_fitted"] = None if not hist.total else float(hist.ece)
    report["detection_pooled"]["ece_val_fitted"] = None if not pooled.total else float(pooled.ece)
    report["val_fitted_on"] = val_fit.fitted_on
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


def table(report: dict[str, Any]) -> str:
    """Markdown: ECE raw and calibrated per class and pooled, for both tasks."""
    def f(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"Held-out world: {report['frames']} frames ({report['dataset']}); calibration fitted on "
             f"{report['fitted_on']}; the last column: fitted on {report['val_fitted_on']} instead", "",
             "| task | class | samples | positives | ECE raw | ECE calibrated | noise floor [5-95 %] | "
             "ECE, val-split fit |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for c, r in report["detection"].items():
        if r["detections"]:
            fl = r.get("ece_noise_floor") or {}
            floor = f"{f(fl.get('mean'))} [{f(fl.get('p5'))}, {f(fl.get('p95'))}]" if fl else ""
            lines.append(f"| detection | {c} | {r['detections']} | {r['true_positives']} | {f(r['ece_raw'])} | "
                         f"{f(r.get('ece_calibrated'))} | {floor} | {f(r.get('ece_val_fitted'))} |")
    d = report["detection_pooled"]
    lines.append(f"| detection | **all** | {sum(r['detections'] for r in report['detection'].values())} | "
                 f"{sum(r['true_positives'] for r in report['detection'].values())} | **{f(d['ece_raw'])}** | "
                 f"**{f(d.get('ece_calibrated'))}** | | {f(d.get('ece_val_fitted'))} |")
    for c, r in report["segmentation"].items():
        lines.append(f"| segmentation | {c} | {r['cells']} | | {f(r['ece_raw'])} | {f(r.get('ece_calibrated'))} | | |")
    s = report["segmentation_pooled"]
    lines.append(f"| segmentation | **all** | | | **{f(s['ece_raw'])}** | **{f(s.get('ece_calibrated'))}** | | |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    """Reliability diagrams (detection, segmentation), raw and calibrated, with the sample counts."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4.6))
    for ax, key, title in zip(axes, ("detection_pooled", "segmentation_pooled"),
                              ("detections (TP: matched within 2 m)", "BEV segmentation cells")):
        part = report[key]
        ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--", label="perfect")
        for which, colour in (("raw", "tab:red"), ("calibrated", "tab:blue")):
            curve = part.get(f"reliability_{which}")
            if curve is None:
                continue
            conf = np.array([np.nan if v is None else v for v in curve["confidence"]])
            freq = np.array([np.nan if v is None else v for v in curve["frequency"]])
            ok = np.isfinite(conf)
            ax.plot(conf[ok], freq[ok], "o-", color=colour, label=f"{which} (ECE {part[f'ece_{which}']:.3f})")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_xlabel("predicted probability")
        ax.set_ylabel("observed frequency")
        ax.set_title(title)
        ax.legend(loc="upper left", fontsize=8)
    fig.suptitle(f"Reliability on a held-out world ({report['frames']} frames)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from bench.safety_world import safety_parser, save_results

    parser = safety_parser(__doc__)
    args = parser.parse_args()
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: checkpoint file missing (train one: perception train --config "
                         "configs/edge_cpu.yaml)")
    report = measure(args.checkpoint, args.data, args.root, "quick" if args.quick else "full")
    save_results(report, args.results, "calibration", "reliability.png", plot, table)


if __name__ == "__main__":
    main()
