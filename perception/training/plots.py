"""results.png: the loss and metric curves of a run, drawn from its metrics.csv with matplotlib."""

from __future__ import annotations

import csv
import math
from pathlib import Path


def plot_results(metrics_csv: Path, out_png: Path, columns: tuple[str, ...] = ()) -> Path | None:
    """One panel per numeric column (all but ``step`` unless ``columns`` names some); None when the
    CSV holds no row yet."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return None
    names = [c for c in (columns or tuple(rows[0])) if c != "step"]
    steps = [float(r["step"]) for r in rows]
    cols = min(4, len(names))
    lines = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(lines, cols, figsize=(4 * cols, 2.8 * lines), squeeze=False)
    for ax, name in zip(axes.flat, names):
        values = [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]
        ax.plot(steps, values, linewidth=1.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=90)
    plt.close(fig)
    return out_png
