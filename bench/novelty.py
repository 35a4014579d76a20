"""Out-of-distribution frames: the runtime's novelty score on conditions left out of the reference set.

    PYTHONPATH=. python -m bench.novelty --checkpoint runs/train/edge_cpu/best.pt --data data/synth

For each held-out condition (fog, night), the novelty indices are fitted (as `perception export` fits
them: the frame embedding and the appearance statistics) on the train split without that condition's
scenes, and every frame of the held-out
world (:mod:`bench.safety_world`) is scored: frames of the condition are the positives, frames of none
of the held-out conditions the negatives. Reports the ROC AUC (Mann-Whitney, with a scene-bootstrap
95 % interval) and the true-positive rate at 5 % false positives of the novelty (the larger part) and of
each part alone, and the export's own index (every condition in the reference) on the same frames. Writes bench/results/novelty.json and novelty_roc.png.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

HELD_OUT = ("fog", "night")
CLEAR_SPLIT = "synth_train_clear"  # the train split without the held-out conditions' scenes


def write_clear_split(data: Path, base: str = "synth_train", name: str = CLEAR_SPLIT) -> list[str]:
    """Add split ``name`` to ``data``'s splits.json: the scenes of ``base`` with none of HELD_OUT, so a model
    trained on it (`perception train ... train.train_split=synth_train_clear`) never saw them. Returns them."""
    from perception.data.nuscenes import load_dataset
    from perception.schema import parse_conditions

    reader = load_dataset(data)
    if base not in reader.splits:
        raise SystemExit(f"{data}: no split {base!r} in splits.json; it has {sorted(reader.splits)}")
    description = {sc.name: sc.description for sc in reader.scenes}
    keep = [n for n in reader.splits[base] if not set(parse_conditions(description.get(n, ""))) & set(HELD_OUT)]
    path = next(Path(data).glob("v1.0-*/splits.json"))
    splits = json.loads(path.read_text())
    splits[name] = keep
    tmp = path.with_name(".splits.json.tmp")
    tmp.write_text(json.dumps(splits, indent=1))
    tmp.replace(path)
    return keep


def roc(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rates, true positive rates) of the threshold sweep over scores (higher = novel)."""
    thresholds = np.unique(np.concatenate([pos, neg]))[::-1]
    tpr = np.array([0.0, *[(pos >= t).mean() for t in thresholds]])
    fpr = np.array([0.0, *[(neg >= t).mean() for t in thresholds]])
    return fpr, tpr


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """ROC AUC: P(novelty of a positive > that of a negative), ties counted half (Mann-Whitney U)."""
    from scipy.stats import mannwhitneyu

    return float(mannwhitneyu(pos, neg, alternative="two-sided").statistic / (len(pos) * len(neg)))


def scene_bootstrap_auc(scores: np.ndarray, label: np.ndarray, scene: np.ndarray, n: int = 2000,
                        seed: int = 0) -> tuple[float, float]:
    """95 % percentile interval of the AUC, resampling whole scenes (frames of a scene are correlated)."""
    rng = np.random.default_rng(seed)
    scenes = np.unique(scene)
    rows = {s: np.flatnonzero(scene == s) for s in scenes}
    out = []
    for _ in range(n):
        pick = np.concatenate([rows[s] for s in rng.choice(scenes, len(scenes))])
        p, q = scores[pick][label[pick]], scores[pick][~label[pick]]
        if len(p) and len(q):
            out.append(auc(p, q))
    lo, hi = np.percentile(out, [2.5, 97.5])
    return float(lo), float(hi)


def measure(checkpoint: Path, data: Path, root: Path, size: str = "full", progress: bool = True) -> dict[str, Any]:
    from bench.safety_world import exported_model, render_world
    from export.runtime import EdgeModel
    from export.safety import fit_novelty_on, frame_embeddings, scene_clips
    from perception.data.dataset import DatasetConfig, MultiCamDataset
    from perception.data.nuscenes import load_dataset
    from perception.schema import parse_conditions

    started = time.perf_counter()
    world = render_world(root, "test", size, progress)
    edge = EdgeModel(exported_model(checkpoint, data, root, size, progress), threads=2)
    train_reader, test_reader = load_dataset(data), load_dataset(world)
    train_split = next((s for s in sorted(train_reader.splits) if s.endswith("train")), None)
    train = MultiCamDataset(train_reader, edge.preset, DatasetConfig(split=train_split))
    test = MultiCamDataset(test_reader, edge.preset, DatasetConfig(split=test_reader.val_split))
    clips = scene_clips(test)
    emb, look = frame_embeddings(edge, test, clips)
    scene_of = np.array([test_reader.samples[test.indices[i]].scene_token for clip in clips for i in clip])
    conds = {sc.token: set(parse_conditions(sc.description)) for sc in test.scenes}
    report: dict[str, Any] = {"frames": len(emb), "dataset": str(world), "checkpoint": str(checkpoint), "held_out": {}}
    indices = {c: fit_novelty_on(edge, train, exclude_conditions=(c,)) for c in HELD_OUT}
    if any(v is None for v in indices.values()):
        raise SystemExit(f"{data}: too few train frames to fit a novelty index without {'/'.join(HELD_OUT)}")
    export_index = edge.metadata.novelty_index()
    for c in HELD_OUT:
        label = np.array([c in conds[s] for s in scene_of])
        negative = np.array([not (conds[s] & set(HELD_OUT)) for s in scene_of])
        keep = label | negative
        row: dict[str, Any] = {"positives": int(label.sum()), "negatives": int(negative.sum()),
                               "reference": indices[c].fitted_on}
        variants = [("left_out", indices[c], None), ("left_out_embedding", indices[c], "embedding"),
                    ("left_out_appearance", indices[c], "appearance"), ("export_index", export_index, None)]
        for name, index, part in variants:
            if index is None:
                continue
            both = [index.score(e, a) for e, a in zip(emb, look)]
            scores = np.array([total if part is None else parts[part] for total, parts in both])
            pos, neg = scores[label], scores[negative & ~label]
            fpr, tpr = roc(pos, neg)
            lo, hi = scene_bootstrap_auc(scores[keep], label[keep], scene_of[keep])
            row[name] = {"auc": auc(pos, neg), "auc_ci95": [lo, hi], "tpr_at_fpr05": float(np.interp(0.05, fpr, tpr)),
                         "median_positive": float(np.median(pos)), "median_negative": float(np.median(neg)),
                         "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}
        report["held_out"][c] = row
    report["elapsed_s"] = round(time.perf_counter() - started, 1)
    return report


def table(report: dict[str, Any]) -> str:
    lines = [f"Held-out world: {report['frames']} frames ({report['dataset']})", "",
             "| held-out condition | positives / negatives | reference set | AUC [95 % CI] | TPR @ 5 % FPR | "
             "median novelty pos / neg |", "|---|---:|---|---:|---:|---:|"]
    for c, row in report["held_out"].items():
        for name, label in (("left_out", f"train split without {c}"),
                            ("left_out_embedding", f"without {c}: the embedding's part alone"),
                            ("left_out_appearance", f"without {c}: the appearance part alone"),
                            ("export_index", "train split, all (the export's index)")):
            r = row.get(name)
            if r is None:
                continue
            lines.append(f"| {c} | {row['positives']} / {row['negatives']} | {label} | {r['auc']:.3f} "
                         f"[{r['auc_ci95'][0]:.3f}, {r['auc_ci95'][1]:.3f}] | {r['tpr_at_fpr05']:.2f} | "
                         f"{r['median_positive']:.2f} / {r['median_negative']:.2f} |")
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 4.8))
    ax.plot([0, 1], [0, 1], color="0.6", lw=1, ls="--")
    for c, row in report["held_out"].items():
        for name, style, what in (("left_out", "-", "left out"), ("left_out_embedding", "--", "left out, embedding only"),
                                  ("export_index", ":", "in reference")):
            r = row.get(name)
            if r is not None:
                ax.plot(r["roc"]["fpr"], r["roc"]["tpr"], style, label=f"{c}, {what} (AUC {r['auc']:.2f})")
    ax.set_xlabel("false positive rate (frames of the reference conditions)")
    ax.set_ylabel("true positive rate (frames of the held-out condition)")
    ax.set_title("Novelty score ROC")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    from bench.safety_world import safety_parser, save_results

    parser = safety_parser(__doc__)
    parser.add_argument("--write-clear-split", action="store_true",
                        help=f"only add the split {CLEAR_SPLIT} (train scenes without {'/'.join(HELD_OUT)}) to --data")
    args = parser.parse_args()
    if args.write_clear_split:
        keep = write_clear_split(args.data)
        print(f"{args.data}: split {CLEAR_SPLIT} = {len(keep)} scenes without {'/'.join(HELD_OUT)}")
        return
    if not args.checkpoint.is_file():
        raise SystemExit(f"{args.checkpoint}: checkpoint file missing")
    report = measure(args.checkpoint, args.data, args.root, "quick" if args.quick else "full")
    save_results(report, args.results, "novelty", "novelty_roc.png", plot, table)


if __name__ == "__main__":
    main()
