"""The ``data-engine`` command line. Commands are thin: each calls one function of the data engine."""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(no_args_is_help=True, help="The data engine: synthetic fleet, frame catalog, mining, labeling, the loop.")


@app.callback()
def main() -> None:
    """The data engine: synthetic fleet, frame catalog, mining, labeling, the loop."""


def _fail(message: str) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise (code 1)."""
    typer.echo("error: " + " ".join(message.splitlines()), err=True)
    return typer.Exit(code=1)


@app.command()
def show(
    dataset: Path = typer.Argument(..., help="Dataset root (holds v1.0-*/, samples/, maps/)."),
    sample: str = typer.Option("0", "--sample", "-s", help="Sample token, or its index in the dataset (negative from the end)."),
    out: Path = typer.Option(..., "--out", "-o", help="Image to write (.png or .jpg)."),
    version: str | None = typer.Option(None, "--version", help="Version directory, e.g. v1.0-mini (auto-detected when unique)."),
    tile_width: int = typer.Option(480, "--tile-width", min=64, help="Width of each camera tile in pixels."),
) -> None:
    """Draw one sample: six cameras with projected 3D boxes beside a BEV of map, lidar and boxes."""
    from data_engine.show import show_sample  # imported here so `data-engine --help` stays fast
    from perception.data.nuscenes import DatasetError

    try:
        written = show_sample(dataset, sample, out, version=version, tile_width=tile_width)
    except (DatasetError, OSError) as exc:
        raise _fail(str(exc)) from None
    typer.echo(f"wrote {written}")


@app.command()
def synth(
    out: Path = typer.Option(..., "--out", help="Output directory of the nuScenes-format dataset."),
    scenes: int = typer.Option(..., "--scenes", help="Number of scenes."),
    frames: int = typer.Option(..., "--frames", help="Keyframes per scene (2 Hz)."),
    seed: int = typer.Option(0, "--seed", help="World seed: the same seed writes the same bytes."),
    width: int = typer.Option(800, "--width", help="Image width in pixels."),
    height: int = typer.Option(450, "--height", help="Image height in pixels."),
    workers: int = typer.Option(0, "--workers", help="Worker processes (0: one per CPU core)."),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Write frames without annotations, as a fleet delivers them."),
    sweeps: bool = typer.Option(False, "--sweeps", help="Also write the non-key camera frames at 12 Hz."),
) -> None:
    """Render a synthetic multi-camera world into a nuScenes v1.0 dataset (resumable)."""
    from data_engine.synth import SynthConfig, SynthError, default_workers, synthesize
    from data_engine.synth_report import print_summary

    cfg = SynthConfig(out=out, scenes=scenes, frames=frames, seed=seed, width=width, height=height,
                      workers=workers or default_workers(), unlabeled=unlabeled, sweeps=sweeps)
    try:
        summary = synthesize(cfg)
    except SynthError as exc:
        raise _fail(str(exc)) from None
    print_summary(summary)


if __name__ == "__main__":
    app()
