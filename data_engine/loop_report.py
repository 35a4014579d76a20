"""The closed loop's report: per arm and round the mean and spread over seeds of each headline
metric, as a markdown table and as learning curves (matplotlib)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from perception.schema import RARE_CLASSES, RARE_CONDITIONS

__all__ = ["HEADLINE", "format_report", "plot_curves", "summarize"]

# The metrics of a round (loop.headline reads them from the evaluation report).
HEADLINE: tuple[str, ...] = ("mAP", "NDS", "vehicle_iou", *(f"ap_{c}" for c in RARE_CLASSES), "rare_ap_unclipped",
                             *(f"mAP_{c}" for c in RARE_CONDITIONS), *(f"vehicle_iou_{c}" for c in RARE_CONDITIONS))


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm and round: labeled frames and each headline metric's mean and spread over seeds."""
    import numpy as np

    out: dict[str, Any] = {}
    for arm in dict.fromkeys(r["arm"] for r in rows):
        out[arm] = []
        for rnd in sorted({r["round"] for r in rows if r["arm"] == arm}):
            group = [r for r in rows if r["arm"] == arm and r["round"] == rnd]
            entry: dict[str, Any] = {"round": rnd, "seeds": len(group),
                                     "labeled_frames": float(np.mean([r["labeled_frames"] for r in group]))}
            for m in HEADLINE:
                vals = [r[m] for r in group if r.get(m) is not None]
                entry[m] = {"mean": float(np.mean(vals)), "std": float(np.std(vals))} if vals else None
            out[arm].append(entry)
    return out


def format_report(report: dict[str, Any]) -> str:
    c = report["config"]
    per_round = (f"light heads retrained on {c['model']}'s cached features for {c.get('head_epochs')} epochs"
                 if c.get("mode") == "heads" else f"{c['steps']} training steps")
    intro = f"{len(c['seeds'])} seed(s), {c['rounds']} rounds of {c['budget']} frames, {per_round} per round."
    lines = ["# Loop report", "", intro, ""]
    cols = tuple(m for m in HEADLINE if not m.startswith("vehicle_iou_"))
    lines.append("| arm | round | labeled frames | " + " | ".join(cols) + " |")
    lines.append("|---|---:|---:|" + "---:|" * len(cols))
    for arm, entries in report["summary"].items():
        for e in entries:
            cells = []
            for c in cols:
                v = e.get(c)
                cells.append("n/a" if v is None else (f"{v['mean']:.4f}" + (f" ± {v['std']:.4f}" if e["seeds"] > 1 else "")))
            lines.append(f"| {arm} | {e['round']} | {e['labeled_frames']:.0f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(rows: list[dict[str, Any]], path: Path, metrics: tuple[str, ...] = HEADLINE[:9]) -> Path:
    """Metric against labeled frames, one panel per metric the rows measure (four per row), one line per
    arm (mean over seeds, spread shaded)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    summary = summarize(rows)
    metrics = tuple(m for m in metrics if any(r.get(m) is not None for r in rows)) or metrics[:1]
    ncols = min(4, len(metrics))
    nrows = -(-len(metrics) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.4 * nrows), squeeze=False)
    for ax, m in zip(axes.flat, metrics):
        for arm, entries in summary.items():
            pts = [(e["labeled_frames"], e[m]["mean"], e[m]["std"]) for e in entries if e.get(m)]
            if not pts:
                continue
            x, y, s = (list(v) for v in zip(*pts))
            ax.plot(x, y, marker="o", label=arm, linestyle="--" if arm == "random" else "-")
            if any(s):
                ax.fill_between(x, [a - b for a, b in zip(y, s)], [a + b for a, b in zip(y, s)], alpha=0.2)
        ax.set_xlabel("labeled frames")
        ax.set_title(m)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(metrics):]:
        ax.set_visible(False)
    axes.flat[0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
