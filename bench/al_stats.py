"""Statistics of the active-learning benchmark (scipy.stats), and its learning-curve picture.

- paired differences against random over seeds: the mean, a 95 % bootstrap confidence interval
  (``scipy.stats.bootstrap`` on the per-seed differences, which is the paired bootstrap) and a
  Wilcoxon signed-rank p;
- yield: the share of picks holding a rare class, with a Wilson interval (``scipy.stats.binomtest``),
  against the pool's base rate at pick time;
- label efficiency: the labels random needs to reach a metric, read off random's mean learning curve,
  with an interval from resampling the seeds.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np


def mean_ci(values: Sequence[float], seed: int = 0) -> dict[str, float]:
    """mean and 95 % bootstrap (BCa) interval of the mean; min and max for fewer than 2 distinct values."""
    from scipy import stats

    v = np.asarray([x for x in values if math.isfinite(x)], dtype=np.float64)
    if len(v) == 0:
        return {"mean": math.nan, "lo": math.nan, "hi": math.nan, "n": 0}
    if len(v) < 2 or np.ptp(v) == 0:
        return {"mean": float(v.mean()), "lo": float(v.min()), "hi": float(v.max()), "n": int(len(v))}
    # BCa: the percentile interval is too narrow with a handful of seeds
    res = stats.bootstrap((v,), np.mean, confidence_level=0.95, n_resamples=10_000, method="BCa", random_state=seed)
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        res = stats.bootstrap((v,), np.mean, confidence_level=0.95, n_resamples=10_000, method="percentile",
                              random_state=seed)
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    return {"mean": float(v.mean()), "lo": lo, "hi": hi, "n": int(len(v))}


def paired_delta(arm: Mapping[int, float], base: Mapping[int, float]) -> dict[str, Any]:
    """arm - base over the seeds both hold: mean, bootstrap interval, Wilcoxon p, seeds won and lost."""
    from scipy import stats

    seeds = sorted(set(arm) & set(base))
    d = np.array([arm[s] - base[s] for s in seeds], dtype=np.float64)
    out: dict[str, Any] = mean_ci(d.tolist())
    out["wins"], out["losses"] = int((d > 0).sum()), int((d < 0).sum())
    out["p_wilcoxon"] = float(stats.wilcoxon(d).pvalue) if len(d) >= 5 and np.any(d != 0) else math.nan
    out["per_seed"] = {int(s): float(x) for s, x in zip(seeds, d)}
    return out


def wilson(k: int, n: int) -> dict[str, float]:
    """The share k / n with its 95 % Wilson interval."""
    from scipy import stats

    if n == 0:
        return {"share": math.nan, "lo": math.nan, "hi": math.nan, "k": 0, "n": 0}
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return {"share": k / n, "lo": float(ci.low), "hi": float(ci.high), "k": int(k), "n": int(n)}


def labels_to_reach(curve: Mapping[int, float], target: float) -> float:
    """The labels at which ``curve`` (labels -> metric, random's mean) first reaches ``target``,
    interpolated linearly in log(labels) on its running maximum; inf beyond its last point."""
    xs = sorted(curve)
    ys = np.maximum.accumulate([curve[x] for x in xs])
    if target <= ys[0]:
        return float(xs[0])
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if y1 >= target:
            f = (target - y0) / (y1 - y0) if y1 > y0 else 1.0
            return float(math.exp(math.log(x0) + f * (math.log(x1) - math.log(x0))))
    return math.inf


def efficiency_ci(random: Mapping[int, Mapping[int, float]], arm: Mapping[int, float], labels: int,
                  resamples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Label efficiency (:func:`labels_to_reach` on random's mean curve / ``labels``) with a 95 %
    percentile interval from resampling the seeds (random: labels -> seed -> metric; arm: seed -> metric)."""
    seeds = sorted(set(arm).intersection(*(set(v) for v in random.values())))
    if not seeds:
        return {"value": math.nan, "lo": math.nan, "hi": math.nan}

    def value(chosen: Sequence[int]) -> float:
        curve = {n: float(np.mean([random[n][s] for s in chosen])) for n in random}
        return labels_to_reach(curve, float(np.mean([arm[s] for s in chosen]))) / labels

    rng = np.random.default_rng(seed)
    draws = np.array([value(rng.choice(seeds, size=len(seeds))) for _ in range(resamples)])
    ordered = np.sort(draws)  # order statistics: a draw random never reaches stays inf (np.quantile gives nan)
    lo, hi = ordered[int(0.025 * (resamples - 1))], ordered[int(np.ceil(0.975 * (resamples - 1)))]
    return {"value": value(seeds), "lo": float(lo), "hi": float(hi)}


def plot_curves(curves: Mapping[str, Mapping[int, Mapping[str, dict[str, float]]]], metrics: Sequence[tuple[str, str]],
                out: Path) -> None:
    """One panel per (metric key, title): mean and 95 % interval over seeds against labels, per arm."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.0), squeeze=False)
    for ax, (key, title) in zip(axes[0], metrics):
        for arm, per_label in curves.items():
            xs = sorted(per_label)
            m = np.array([per_label[x][key]["mean"] for x in xs])
            lo = np.array([per_label[x][key]["lo"] for x in xs])
            hi = np.array([per_label[x][key]["hi"] for x in xs])
            style = {"random": dict(color="k", lw=2), "oracle": dict(color="0.5", ls="--")}.get(arm, {})
            (line,) = ax.plot(xs, m, marker="o", ms=3, label=arm, **style)
            ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        ax.set_xscale("log")
        ticks = sorted({x for per_label in curves.values() for x in per_label})
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
        ax.set_xlabel("labeled frames")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
