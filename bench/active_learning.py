"""Active learning on the synthetic world: do the data engine's strategies buy more than random labels?

    python -m bench.active_learning --checkpoint runs/train/edge_cpu/best.pt [--quick] [--seeds 0-7]

The protocol (label-limited, so that which frames are labeled can matter):

1. Worlds (:mod:`bench.al_worlds`, rendered once under ``--data``): a pool of 400 scenes of 2 frames,
   a rare-enriched test split (40 scenes drawn for each rare class) and a natural val split.
2. The learner (:mod:`perception.training.head_learner`): the trained model's backbone, view
   transform, video module and BEV encoder are frozen and their features cached once per frame;
   light detection heads are retrained from the same initialisation after every round, for 40 epochs
   over the labeled frames (at least 100 steps).
3. Per seed: 40 random pool frames are labeled first (5 % of the pool); each arm (:mod:`bench.al_arms`)
   then picks 3 rounds of 40 frames with its strategies, the learner retrained after each round, to
   160 labels. Random's learning curve is measured at 40 to 480 labels (nested random subsets).
4. Metrics on the rare-enriched test split, range capped to the BEV grid: the rare classes' AP with
   min precision and recall 0 (``unclipped``; the official nuScenes AP, which reads 0 for any weak
   detector, is reported beside it), the cell-level heatmap AP and the recall at score 0.3; overall
   mAP (official) on the natural val split.
5. Statistics (:mod:`bench.al_stats`): per-seed differences against random with a paired bootstrap
   interval, the yield of rare frames against the pool's base rate at pick time with Wilson
   intervals, and label efficiency (the labels random needs to reach each arm's final metric).

Resumable: each finished (seed, arm) is appended to ``--out``/records/seed{N}.jsonl and skipped on a
re-run. Seeds run side by side in ``--workers`` processes.
Writes bench/results/active_learning.json and bench/results/learning_curves.png (``--quick``: under
``--out`` only) and prints the tables of the README.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.al_worlds import SIZES

RESULTS = Path(__file__).parent / "results" / "active_learning.json"
CURVES = Path(__file__).parent / "results" / "learning_curves.png"
PRIMARY = "rare_ap_unclipped"
METRICS = ("rare_ap_unclipped", "rare_ap", "rare_heatmap_ap", "rare_recall", "mAP_val")


@dataclass(frozen=True)
class Protocol:
    initial: int = 40  # random frames labeled before the first round
    rounds: int = 3
    budget: int = 40  # frames per round (5 % of the pool)
    random_labels: tuple[int, ...] = (40, 60, 120, 160, 240, 480)
    epochs: int = 40
    min_steps: int = 100

    @property
    def final(self) -> int:
        return self.initial + self.rounds * self.budget


PROTOCOLS = {"full": Protocol(), "quick": Protocol(initial=6, rounds=2, budget=3, random_labels=(6, 9, 12, 24),
                                                   epochs=10, min_steps=20)}


def _scores(heads: Any, evaluators: dict[str, Any]) -> dict[str, Any]:
    test, val = evaluators["test"].score(heads), evaluators["val"].score(heads)
    return {"rare_ap_unclipped": test.rare("ap_unclipped"), "rare_ap": test.rare("ap"),
            "rare_heatmap_ap": test.rare("heatmap_ap"), "rare_recall": test.rare("recall"),
            "mAP_val": val.mAP, "mAP_test": test.mAP, "test": test.to_dict()}


def run_seed(seed: int, arms: list[Any], pool: Any, evaluators: dict[str, Any], proto: Protocol,
             done: set[tuple[int, str]], write: Any, log: Any) -> None:
    """Every arm of one seed that ``done`` lacks; each finished arm's records go to ``write``."""
    from bench.al_arms import pick
    from perception.training.head_learner import HeadLearnerConfig, train_heads

    learner = HeadLearnerConfig(epochs=proto.epochs, min_steps=proto.min_steps, seed=seed)
    perm = np.random.default_rng(seed).permutation(len(pool))
    initial = perm[:proto.initial]
    if (seed, "random") not in done:
        rows = []
        for n in proto.random_labels:
            t0 = time.perf_counter()
            heads = train_heads(pool.cache, perm[:n], learner)
            rows.append({"seed": seed, "arm": "random", "labels": n, **_scores(heads, evaluators),
                         "elapsed_s": round(time.perf_counter() - t0, 2),
                         "picked": int(n - proto.initial), "picked_rare": int(pool.rare[perm[proto.initial:n]].sum())
                         if n > proto.initial else 0})
            log(f"seed {seed} random {n:>4} labels: rare AP {rows[-1][PRIMARY]:.3f}, mAP {rows[-1]['mAP_val']:.3f}")
        write(rows)
    heads0 = None
    for arm in arms:
        if arm.kind == "random" or (seed, arm.name) in done:
            continue
        if heads0 is None:
            heads0 = train_heads(pool.cache, initial, learner)
        rng = np.random.default_rng([seed, 1])
        labeled = np.zeros(len(pool), dtype=bool)
        labeled[initial] = True
        heads, rows = heads0, []
        for r in range(proto.rounds):
            t0 = time.perf_counter()
            base = float(pool.rare[~labeled].mean())
            picks = pick(arm, pool, heads, labeled, proto.budget, rng)
            labeled[picks] = True
            heads = train_heads(pool.cache, np.flatnonzero(labeled), learner)
            rows.append({"seed": seed, "arm": arm.name, "labels": int(labeled.sum()), "round": r + 1,
                         **_scores(heads, evaluators), "picked": len(picks),
                         "picked_rare": int(pool.rare[picks].sum()), "base_rate": base,
                         "elapsed_s": round(time.perf_counter() - t0, 2)})
            log(f"seed {seed} {arm.name} round {r + 1} ({rows[-1]['labels']} labels): "
                f"{rows[-1]['picked_rare']}/{len(picks)} rare picks (base {base:.2f}), rare AP {rows[-1][PRIMARY]:.3f}")
        write(rows)


def read_records(path: Path, proto: Protocol) -> list[dict[str, Any]]:
    """The records of one seed file, of the arms written whole: a kill during a write leaves a line cut
    short (left out) and its arm incomplete (left out too, so it runs again)."""
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    arms = [r["arm"] for r in rows]
    whole = {a for a in arms if arms.count(a) == (len(proto.random_labels) if a == "random" else proto.rounds)}
    return [r for r in rows if r["arm"] in whole]


def _seed_job(job: tuple[int, str, str, int]) -> int:
    """One seed's arms, in this process or a worker: records appended to ``out``/records/seed{N}.jsonl
    as each arm finishes (a re-run skips the arms already there)."""
    import torch

    from bench.al_arms import ARMS, Pool
    from perception.training.feature_cache import FeatureCache
    from perception.training.head_learner import HeadEvaluator

    seed, out, size_name, threads = job
    torch.set_num_threads(threads)
    root = Path(out)
    caches = {k: FeatureCache.load(root / "features" / k) for k in ("pool", "test", "val")}
    path = root / "records" / f"seed{seed}.jsonl"
    kept = read_records(path, PROTOCOLS[size_name])
    if path.is_file():  # an arm cut short by a kill is dropped here, and runs again
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(path)
    done = {(r["seed"], r["arm"]) for r in kept}

    def write(rows: list[dict[str, Any]]) -> None:
        with path.open("a") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))

    evaluators = {k: HeadEvaluator(caches[k]) for k in ("test", "val")}
    run_seed(seed, list(ARMS), Pool(caches["pool"]), evaluators, PROTOCOLS[size_name], done, write,
             lambda line: print(line, flush=True))
    return seed


def summarize(records: list[dict[str, Any]], arms: list[Any], proto: Protocol, pool_rare: float) -> dict[str, Any]:
    """Curves, finals, paired differences, yields, label efficiency and the gates from the records."""
    from bench.al_stats import efficiency_ci, labels_to_reach, mean_ci, paired_delta, wilson

    by: dict[tuple[str, int], dict[int, dict[str, Any]]] = {}
    for r in records:
        by.setdefault((r["arm"], r["labels"]), {})[r["seed"]] = r
    initial_rows = by.get(("random", proto.initial), {})
    curves: dict[str, dict[int, dict[str, dict[str, float]]]] = {}
    for arm in arms:
        labels = proto.random_labels if arm.kind == "random" else [proto.initial + k * proto.budget
                                                                   for k in range(proto.rounds + 1)]
        for n in labels:
            rows = initial_rows if (n == proto.initial) else by.get((arm.name, n), {})
            if rows:
                curves.setdefault(arm.name, {})[n] = {m: mean_ci([r[m] for r in rows.values()]) for m in METRICS}
    random_mean = {n: v[PRIMARY]["mean"] for n, v in curves.get("random", {}).items()}
    base = by.get(("random", proto.final), {})
    out: dict[str, Any] = {}
    for arm in arms:
        rows = by.get((arm.name, proto.final), {})
        if not rows:
            continue
        finals = {m: mean_ci([r[m] for r in rows.values()]) for m in METRICS}
        picks = [r for r in records if r["arm"] == arm.name and "round" in r]
        k, n = sum(r["picked_rare"] for r in picks), sum(r["picked"] for r in picks)
        entry: dict[str, Any] = {"final": finals}
        if arm.kind == "random":
            k, n = sum(r["picked_rare"] for r in rows.values()), sum(r["picked"] for r in rows.values())
            entry["yield"] = {**wilson(k, n), "base_rate": pool_rare}
        else:
            entry["delta_vs_random"] = {m: paired_delta({s: r[m] for s, r in rows.items()},
                                                        {s: r[m] for s, r in base.items()}) for m in METRICS}
            base_rate = (sum(r["base_rate"] * r["picked"] for r in picks) / n) if n else math.nan
            entry["yield"] = {**wilson(k, n), "base_rate": base_rate}
        per_seed = ([r for r in rows.values()] if arm.kind == "random"
                    else [[r for r in picks if r["seed"] == s] for s in rows])
        shares = ([r["picked_rare"] / r["picked"] for r in per_seed if r["picked"]] if arm.kind == "random" else
                  [sum(x["picked_rare"] for x in rs) / sum(x["picked"] for x in rs) for rs in per_seed if rs])
        entry["yield"]["seed_ci"] = mean_ci(shares)  # over seeds: picks of one seed are not independent
        reach = labels_to_reach(random_mean, finals[PRIMARY]["mean"]) if random_mean else math.nan
        entry["random_labels_to_match"] = reach
        entry["label_efficiency"] = reach / proto.final
        random_by_seed = {n: {s: r[PRIMARY] for s, r in by.get(("random", n), {}).items()} for n in random_mean}
        entry["label_efficiency_ci"] = efficiency_ci(random_by_seed, {s: r[PRIMARY] for s, r in rows.items()},
                                                     proto.final)
        out[arm.name] = entry
    gate_labels = [n for n in (60, 120, 240, 480) if n in curves.get("random", {})] or list(proto.random_labels)
    rc = curves.get("random", {})
    gate1 = {}
    if len(gate_labels) >= 3 and all(n in rc for n in gate_labels):
        means = [rc[n][PRIMARY]["mean"] for n in gate_labels]
        a, b = gate_labels[0], gate_labels[-2]
        sds = [float(np.std([r[PRIMARY] for r in by[("random", n)].values()], ddof=1)) if len(by[("random", n)]) > 1
               else math.nan for n in (a, b)]
        gain = rc[b][PRIMARY]["mean"] - rc[a][PRIMARY]["mean"]
        gate1 = {"labels": gate_labels, "means": means, "rising": bool(np.all(np.diff(means) > 0)),
                 "gain": gain, "gain_from_to": [a, b], "seed_sd": max(sds),
                 "passed": bool(np.all(np.diff(means) > 0) and gain > 2 * max(sds))}
    oracle = out.get("oracle", {}).get("delta_vs_random", {}).get(PRIMARY)
    gate2 = {"delta": oracle, "passed": bool(oracle and oracle["lo"] > 0)}
    return {"curves": curves, "arms": out, "gate1": gate1, "gate2": gate2}


def tables(summary: dict[str, Any], proto: Protocol) -> str:
    arms = summary["arms"]
    lines = [f"| arm | rare AP (unclipped) at {proto.final} labels | vs random [95 % CI], seeds won | official rare AP "
             "| heatmap AP | recall@0.3 | mAP (val) | vs random | rare yield [Wilson; over seeds] | base rate "
             "| random labels to match | label efficiency [95 % CI] |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, a in arms.items():
        f = a["final"]
        d = a.get("delta_vs_random", {})
        delta = (lambda m: f"{d[m]['mean']:+.3f} [{d[m]['lo']:+.3f}, {d[m]['hi']:+.3f}]" if m in d else "")
        won = f", {d[PRIMARY]['wins']}/{d[PRIMARY]['wins'] + d[PRIMARY]['losses']}" if PRIMARY in d else ""
        y, ys, e = a["yield"], a["yield"]["seed_ci"], a["label_efficiency_ci"]
        reach = a["random_labels_to_match"]
        lines.append(f"| {name} | {f[PRIMARY]['mean']:.3f} | {delta(PRIMARY)}{won} | {f['rare_ap']['mean']:.3f} "
                     f"| {f['rare_heatmap_ap']['mean']:.3f} | {f['rare_recall']['mean']:.3f} | {f['mAP_val']['mean']:.3f} "
                     f"| {delta('mAP_val')} | {y['share']:.2f} [{y['lo']:.2f}, {y['hi']:.2f}; {ys['lo']:.2f}, {ys['hi']:.2f}] "
                     f"| {y['base_rate']:.2f} | {'> ' + str(max(proto.random_labels)) if math.isinf(reach) else f'{reach:.0f}'} "
                     f"| {e['value']:.1f}x [{e['lo']:.1f}, {e['hi']:.1f}] |")
    g1, g2 = summary["gate1"], summary["gate2"]
    if g1:
        lines += ["", f"Gate 1 (random's rare AP rises with labels {g1['labels']}: "
                      f"{', '.join(f'{m:.3f}' for m in g1['means'])}; gain {g1['gain_from_to'][0]}->{g1['gain_from_to'][1]} "
                      f"{g1['gain']:.3f} against 2 x seed SD {2 * g1['seed_sd']:.3f}): {'passed' if g1['passed'] else 'FAILED'}"]
    if g2["delta"]:
        d = g2["delta"]
        lines.append(f"Gate 2 (oracle beats random: {d['mean']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]): "
                     f"{'passed' if g2['passed'] else 'FAILED'}")
    return "\n".join(lines)


def _plain(value: Any) -> Any:
    """JSON without NaN or Infinity (strict parsers refuse them): non-finite numbers become null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _seeds(text: str) -> list[int]:
    lo, dash, hi = text.partition("-")
    try:
        seeds = list(range(int(lo), int(hi) + 1)) if dash else [int(s) for s in text.split(",")]
    except ValueError:
        raise SystemExit(f"active_learning: --seeds {text!r}: expected a range like 0-7 or a list like 0,3,5") from None
    if not seeds:
        raise SystemExit(f"active_learning: --seeds {text!r} names no seed")
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=Path("runs/train/edge_cpu/best.pt"),
                        help="the trained model whose frozen features the learner uses")
    parser.add_argument("--out", type=Path, default=None, help="records, caches (default runs/active_learning[_quick])")
    parser.add_argument("--data", type=Path, default=None, help="the worlds (default data/al[_quick])")
    parser.add_argument("--seeds", default="0-7", help="e.g. 0-7 or 0,3,5")
    parser.add_argument("--quick", action="store_true", help="a 30-scene pool and a small protocol, for tests")
    parser.add_argument("--workers", type=int, default=2, help="seeds run side by side (default 2)")
    args = parser.parse_args()
    from perception.errors import BevStackError, one_line

    try:
        run(args)
    except (BevStackError, OSError) as exc:
        raise SystemExit(f"active_learning: {one_line(exc)}") from None


def run(args: argparse.Namespace) -> None:
    from bench.al_arms import ARMS, Pool
    from bench.al_stats import plot_curves
    from bench.al_worlds import feature_caches, render_worlds
    from bench.machine import machine
    from perception.digest import file_sha256
    from perception.schema import RARE_CLASSES

    size_name = "quick" if args.quick else "full"
    proto = PROTOCOLS[size_name]
    out = args.out or Path("runs/active_learning" + ("_quick" if args.quick else ""))
    data = args.data or Path("data/al" + ("_quick" if args.quick else ""))
    seeds = _seeds(args.seeds)
    if not args.checkpoint.is_file():
        raise SystemExit(f"active_learning: {args.checkpoint}: checkpoint missing "
                         "(train one: perception train --config configs/edge_cpu.yaml)")
    records_dir = out / "records"
    records_dir.mkdir(parents=True, exist_ok=True)
    # Records are only comparable under one checkpoint, protocol and set of arms: a directory made with
    # others is refused rather than mixed in.
    fingerprint = json.loads(json.dumps({"checkpoint_sha256": file_sha256(args.checkpoint), "protocol": asdict(proto),
                                         "arms": {a.name: list(a.strategies) or [a.kind] for a in ARMS}}))
    stamp = records_dir / "fingerprint.json"
    if stamp.is_file() and json.loads(stamp.read_text()) != fingerprint:
        raise SystemExit(f"active_learning: {records_dir} holds records of another checkpoint, protocol or set of "
                         f"arms ({stamp}); choose another --out or delete it")
    stamp.write_text(json.dumps(fingerprint, indent=1))
    t0 = time.perf_counter()
    worlds = render_worlds(data, SIZES[size_name])
    caches = feature_caches(args.checkpoint, worlds, out)
    pool_rare = float(Pool(caches["pool"]).rare.mean())
    t_setup = time.perf_counter() - t0
    jobs = [(seed, str(out), size_name, max(1, (os.cpu_count() or 1) // args.workers)) for seed in seeds]
    if args.workers <= 1:
        for job in jobs:
            _seed_job(job)
    else:  # seeds side by side, one torch thread each: small convolutions scale poorly over threads
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(min(args.workers, len(jobs))) as workers:
            for seed in workers.imap_unordered(_seed_job, jobs):
                print(f"seed {seed} done")
    records = [r for f in sorted(records_dir.glob("seed*.jsonl")) for r in read_records(f, proto)]
    mine = [r for r in records if r["seed"] in seeds]
    summary = summarize(mine, list(ARMS), proto, pool_rare)
    timed = all("elapsed_s" in r for r in mine)  # records written before their time was kept have none
    compute_s = sum(r["elapsed_s"] for r in mine) if timed else None
    report = {"machine": machine(), "date": time.strftime("%Y-%m-%d"), "size": size_name, "protocol": asdict(proto),
              "worlds": {k: {"frames": len(c), "rare_frames": int(sum(bool(x & set(RARE_CLASSES)) for x in c.classes))}
                         for k, c in caches.items()},
              "checkpoint": str(args.checkpoint), "seeds": seeds, "primary_metric": PRIMARY, **summary,
              "compute_s": None if compute_s is None else round(compute_s, 1), "workers": args.workers,
              "this_invocation_s": {"worlds_and_features": round(t_setup, 1), "total": round(time.perf_counter() - t0, 1)}}
    results, curves = (RESULTS, CURVES) if not args.quick else (out / RESULTS.name, out / CURVES.name)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(_plain(report), indent=2, allow_nan=False) + "\n")
    plot_curves(summary["curves"], [(PRIMARY, "rare-class AP (unclipped), rare-enriched test"),
                                    ("rare_heatmap_ap", "rare-class heatmap AP (cells)"),
                                    ("mAP_val", "mAP (official), natural val")], curves)
    print()
    print(tables(summary, proto))
    spent = ("some records carry no time" if compute_s is None else
             f"{compute_s / 60:.1f} min of training, evaluation and picking over all records")
    print(f"\nwrote {results} and {curves}: {len(seeds)} seeds, {spent} ({args.workers} worker(s)); this invocation "
          f"{report['this_invocation_s']['total'] / 60:.1f} min, of which {t_setup / 60:.1f} worlds and features")


if __name__ == "__main__":
    main()
