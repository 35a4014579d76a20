"""Printing what `synth` wrote: the histogram of classes and conditions."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from .synth import SynthSummary


def print_summary(summary: SynthSummary, console: Console | None = None) -> None:
    """Print the class and condition histograms of a synthesized dataset."""
    console = console or Console()
    what = f"{summary.scenes} scenes, {summary.samples} samples"
    if summary.rendered_scenes < summary.scenes:
        what += f" ({summary.scenes - summary.rendered_scenes} scenes already on disk, kept)"
    console.print(f"wrote {summary.root}: {what} in {summary.seconds:.1f} s")
    classes = Table(title="classes")
    classes.add_column("class")
    classes.add_column("boxes", justify="right")
    classes.add_column("scenes", justify="right")
    for name, n in summary.class_boxes.items():
        classes.add_row(name, str(n), f"{summary.class_scenes[name]}/{summary.scenes}")
    console.print(classes)
    conds = Table(title="conditions")
    conds.add_column("condition")
    conds.add_column("scenes", justify="right")
    for name, n in sorted(summary.conditions.items(), key=lambda kv: -kv[1]):
        conds.add_row(name, f"{n}/{summary.scenes}")
    console.print(conds)
    console.print("splits: " + ", ".join(f"{k} ({len(v)} scenes)" for k, v in summary.splits.items()))
