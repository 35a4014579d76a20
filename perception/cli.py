"""The ``perception`` command line: training, evaluation, prediction, export and benchmarks.

Commands are thin entries; torch-dependent modules are imported inside the command that needs them.
"""

from __future__ import annotations

from pathlib import Path

import typer

from perception.errors import BevStackError, ErrorReportingTyper

import perception

app = ErrorReportingTyper(no_args_is_help=True, help="Multi-camera BEV perception: train, evaluate, predict, export, bench.")


@app.callback()
def main() -> None:
    """Multi-camera BEV perception: train, evaluate, predict, export, bench."""


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def train(
    ctx: typer.Context,
    config: Path = typer.Option(None, "--config", help="YAML experiment config (see configs/)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run from its last.pt."),
) -> None:
    """Train a model: `perception train --config configs/tiny_cpu.yaml train.steps=100 model.view_transform=sampling`.

    Run it under torchrun for several processes or GPUs; SIGTERM or SIGUSR1 saves last.pt and exits.
    """
    from perception.config import load_config
    from perception.training.trainer import train as run_training

    cfg = load_config(config, list(ctx.args))
    run_dir = run_training(cfg, resume=resume)
    typer.echo(f"run directory: {run_dir}")


@app.command()
def version() -> None:
    """Print the package version."""
    typer.echo(perception.__version__)


@app.command("eval")
def eval_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `perception train`."),
    data: Path = typer.Option(..., "--data", help="A nuScenes-format dataset directory."),
    split: str = typer.Option(None, "--split", help="A split of splits.json (default: the val split, else all scenes)."),
    out: Path = typer.Option(None, "--out", help="Output directory (default runs/eval/<name>)."),
    batch_size: int = typer.Option(1, "--batch-size", min=1, help="Scenes run side by side."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    drop_cameras: bool = typer.Option(False, "--drop-cameras", help="Also mask each camera in turn, then pairs, "
                                      "and report IoU and mAP inside and outside their view: degradation.json."),
    drop_pairs: str = typer.Option(None, "--drop-pairs", help="With --drop-cameras: all (default), adjacent "
                                   "(neighbours by azimuth) or none."),
    drop_only: str = typer.Option(None, "--drop-only", help="With --drop-cameras: mask only this set, "
                                  "e.g. CAM_FRONT,CAM_FRONT_LEFT."),
) -> None:
    """Evaluate a checkpoint: nuScenes results JSON, metrics_summary.json, per-class, per-condition and
    rare-class tables, BEV IoU, and the range-capped variant; with --drop-cameras, the dead-camera report."""
    if not drop_cameras:
        if drop_pairs is not None or drop_only is not None:
            raise BevStackError("--drop-pairs and --drop-only go with --drop-cameras")
        from perception.evaluate import evaluate

        report = evaluate(checkpoint, data, split, out, batch_size, device=device)
        typer.echo(f"wrote {report.files['results']} and {report.files['metrics_summary']}")
        return
    from perception.degradation import evaluate_degradation

    result = evaluate_degradation(checkpoint, data, split, out, batch_size, pairs=drop_pairs or "all",
                                  only=drop_only, device=device, print_fn=typer.echo)
    typer.echo(f"wrote {result.files['degradation']}")


@app.command()
def predict(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `perception train`."),
    data: Path = typer.Option(..., "--data", help="A nuScenes-format dataset directory."),
    out: Path = typer.Option(..., "--out", help="Output directory for the PNGs (and the MP4)."),
    scene: str = typer.Option(None, "--scene", help="Scene name or token (default: the first val scene)."),
    video: bool = typer.Option(False, "--video", help="Also write an MP4 of the frames."),
    max_frames: int = typer.Option(None, "--max-frames", min=1, help="Only the first N frames of the scene."),
    score_threshold: float = typer.Option(0.3, "--score-threshold", help="Boxes drawn above this score."),
    device: str = typer.Option(None, "--device", help="cpu, cuda, ... (default: cuda if available)."),
) -> None:
    """Draw predictions: all cameras with boxes beside BEV prediction and ground truth, per frame."""
    from perception.predict import predict as run_predict

    result = run_predict(checkpoint, data, out, scene, video=video, max_frames=max_frames,
                         score_threshold=score_threshold, device=device)
    typer.echo(f"{result.scene}: wrote {len(result.frames)} pictures to {out}"
               + (f" and {result.video}" if result.video else ""))


@app.command("export")
def export_cmd(
    checkpoint: Path = typer.Option(..., "--checkpoint", help="A checkpoint written by `perception train`."),
    out: Path = typer.Option(None, "--out", help="Output directory (default runs/export/<run name>)."),
    precision: str = typer.Option("fp32", "--precision", help="Comma-separated: fp32, fp16, int8."),
    calib_data: Path = typer.Option(None, "--calib-data", help="A nuScenes-format dataset: INT8 calibration "
                                    "frames (train split), parity frames and accuracy (val split), the fixed rig."),
    calib_frames: int = typer.Option(32, "--calib-frames", min=1, help="Train-split frames to calibrate INT8 on."),
    static: bool = typer.Option(False, "--static", help="Static shapes (batch 1) for runtimes that need them."),
    fixed_rig: bool = typer.Option(False, "--fixed-rig", help="Fold the dataset's rig into constants (faster; "
                                   "the model then runs only on that rig)."),
    train_split: str = typer.Option(None, "--train-split", help="Calibration split (default: the checkpoint's)."),
    val_split: str = typer.Option(None, "--val-split", help="Accuracy split (default: the checkpoint's val split)."),
    no_eval: bool = typer.Option(False, "--no-eval", help="Skip the accuracy of each precision on the val split."),
    threads: int = typer.Option(None, "--threads", min=1, help="onnxruntime threads for parity and accuracy."),
    confidence_data: Path = typer.Option(None, "--confidence-data", help="A nuScenes-format dataset like the one "
                                         "the model will meet: the score calibration is fitted on it (default: "
                                         "--calib-data's val split)."),
    confidence_split: str = typer.Option(None, "--confidence-split", help="Its split (default: its val split, "
                                         "else every scene)."),
) -> None:
    """Export a checkpoint to ONNX (one file per precision) with metadata, a parity report against
    PyTorch, an INT8 sensitivity report and each precision's accuracy: export_report.json."""

    from export.exporter import export_checkpoint

    precisions = [p.strip() for p in precision.split(",") if p.strip()]
    export_checkpoint(checkpoint, out, precisions, calib_data, calib_frames, static=static, fixed_rig=fixed_rig,
                      train_split=train_split, val_split=val_split, evaluate=not no_eval, threads=threads,
                      confidence_data=confidence_data, confidence_split=confidence_split, log=typer.echo)


@app.command("bench")
def bench_cmd(
    model: list[Path] = typer.Option(..., "--model", help="An exported .onnx; repeat for several (fp32, fp16, int8)."),
    checkpoint: Path = typer.Option(None, "--checkpoint", help="Also time the PyTorch model of this checkpoint "
                                    "(needs torch; the ONNX rows never import it)."),
    data: Path = typer.Option(None, "--data", help="Take the frames (JPEG bytes and rig) from a scene of this "
                              "dataset; default: noise JPEGs on a stand-in rig."),
    threads: int = typer.Option(2, "--threads", min=1, help="Threads per row (onnxruntime intra-op, torch)."),
    runs: int = typer.Option(50, "--runs", min=1, help="Frames timed per row, after the warm-up."),
    warmup: int = typer.Option(5, "--warmup", min=0, help="Frames run before timing."),
    json_out: Path = typer.Option(None, "--json", help="Write the report as JSON here."),
) -> None:
    """Per-stage latency (JPEG decode, preprocess, inference, decode) as p50/p90/p99, end-to-end frames
    per second for one stream, and peak resident memory, one row per model, side by side."""
    import json


    from export.bench import bench

    report = bench(model, checkpoint, data, threads=threads, runs=runs, warmup=warmup, log=typer.echo)
    if json_out is not None:
        json_out.parent.mkdir(parents=True, exist_ok=True)
        json_out.write_text(json.dumps(report, indent=2))
        typer.echo(f"wrote {json_out}")


if __name__ == "__main__":
    app()
