"""The blocked and dirty lens monitor of the edge runtime (export/runtime/lens_monitor.py), fitted on one
lens-enriched synthetic world and measured on another.

    PYTHONPATH=. python -m bench.lens_monitor [--quick] [--data data/lens] [--results PATH]

1. Worlds (rendered once under ``--data``, reused after): seed 7, 400x225 cameras, 2 frames per scene,
   scenes drawn until each condition fills its quota (blocked_lens 50, dirty_lens 40, night, fog,
   dusk, rain and day 40 each); the calibration world from scene 300000, the test world from scene
   400000 (far from the worlds of the other benchmarks).
2. Every frame goes through the runtime's own preprocessing (``prepare_cameras`` from the JPEG files
   and the calibration the dataset reader gives) to the edge preset's input size, then the monitor;
   no model. A camera-frame is blocked or dirty when its scene's description says so for that camera
   (``blocked_lens CAM_X``, ``dirty_lens CAM_X``), clear otherwise.
3. Calibration world: a logistic regression of the monitor's six statistics (blocked against clear
   camera-frames, and dirty against clear), then each single-frame threshold at the lowest score that
   flags at most 1 % of the clear camera-frames; then the memory across frames: for each time
   constant of ``MEMORY_GRID``, the settled thresholds at which the flags of the running scores
   (each scene a clip, :class:`~export.runtime.lens_monitor.LensMemory`) stay at <= 1 % of the clear
   camera-frames, and the time constant that recalls the most blocked camera-frames. These are
   ``LensMonitorConfig``'s defaults.
4. Test world, per camera-frame, with memory (the runtime's behaviour on a stream) and each frame
   alone: blocked recall (95 % Wilson interval), false alarms on clear camera-frames, overall, by
   condition (a camera-frame counts under each condition its scene has) and by seconds into the clip,
   dirty recall; per frame: a blocked camera flagged, any camera flagged on frames without lens
   trouble; the monitor's time per frame.

Writes bench/results/lens_monitor.json (``--quick``: <data>/lens_monitor.json) and prints the table
of the README.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from data_engine.sim.synth import SynthConfig, default_workers, synthesize
from export.runtime.edge_model import Camera, prepare_cameras
from export.runtime.lens_monitor import FEATURE_NAMES, LensMemory, LensMonitorConfig, judge, lens_features, lens_scores
from perception.boxes import sigmoid
from perception.metrics.calibration import logit

RESULTS = Path(__file__).parent / "results" / "lens_monitor.json"
W, H = 400, 225  # px: the edge preset's 400 x 224 input, at the world's 16:9
SEED = 7
FRAMES = 6  # per scene, 0.5 s apart: 2.5 s clips, for the monitor's memory across frames
FIRST_SCENE = {"calibration": 300_000, "test": 400_000}
QUOTAS = {
    "full": {"blocked_lens": 50, "dirty_lens": 40, "night": 40, "fog": 40, "dusk": 40, "rain": 40, "day": 40},
    "quick": {"blocked_lens": 3, "dirty_lens": 1, "night": 1, "fog": 1, "day": 2},
}
REPORTED_CONDITIONS = ("night", "fog", "dusk", "rain", "day")
MAX_FALSE_ALARMS = 0.01  # on the calibration world's clear camera-frames
MEMORY_GRID = (0.5, 1.0, 1.5, 2.0, 3.0)  # s, the time constants tried


@dataclass
class WorldReading:
    """The monitor's statistics of every frame of a world, and the truth."""

    cameras: tuple[str, ...]
    features: np.ndarray  # float32 [F, N, D]
    labels: np.ndarray  # str [F, N]: "blocked", "dirty" or "clear"
    conditions: list[tuple[str, ...]]  # [F] the scene's condition words
    ms: np.ndarray  # [F] the monitor's time per frame (statistics and scores)
    scenes: np.ndarray  # str [F] the frame's scene (frames of a scene in time order, scenes contiguous)
    times: np.ndarray  # float [F] s

    def scores(self, cfg: LensMonitorConfig) -> tuple[np.ndarray, np.ndarray]:
        """(blocked, dirty) scores [F, N] of each frame alone at ``cfg``'s weights."""
        return lens_scores(self.features, cfg)

    def flags(self, cfg: LensMonitorConfig, memory: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(blocked, dirty) flags [F, N] at ``cfg`` and the seconds of evidence behind them [F, N]: with
        ``memory``, each scene run as one stream through a LensMemory, as the runtime does."""
        logits = [logit(p) for p in self.scores(cfg)]  # (blocked, dirty) [F, N]
        blocked_flag, dirty_flag, span = (np.zeros(logits[0].shape, t) for t in (bool, bool, float))
        mem, scene = None, None
        for f in range(len(span)):
            if memory and self.scenes[f] != scene:
                mem, scene = LensMemory(), self.scenes[f]
            b, d, span[f], tb, td = judge(logits[0][f], logits[1][f], cfg, mem, float(self.times[f]))
            blocked_flag[f], dirty_flag[f] = b >= tb, d >= td
        return blocked_flag, dirty_flag, span


def render(root: Path, quotas: dict[str, int], progress: bool) -> dict[str, Path]:
    """Render (or reuse) the calibration and test worlds under ``root``."""
    out = {}
    for name, first in FIRST_SCENE.items():
        cfg = SynthConfig(out=root / name, scenes=sum(quotas.values()), frames=FRAMES, seed=SEED, width=W, height=H,
                              workers=default_workers(), first_scene=first, quotas=dict(quotas))
        synthesize(cfg, progress=progress)
        out[name] = cfg.out
    return out


def read_world(root: Path, input_hw: tuple[int, int]) -> WorldReading:
    """Run the runtime's preprocessing and the monitor over every frame of the dataset at ``root``."""
    from perception.data.nuscenes import load_dataset

    ds = load_dataset(root)
    names = ds.camera_channels
    feats, labels, conds, ms, scenes, times = [], [], [], [], [], []
    for sample in ds.samples:
        scenes.append(sample.scene_token)
        times.append(sample.timestamp / 1e6)
        rig = {n: Camera(c.K, sample.ref_T_cam(n), (c.height, c.width)) for n, c in sample.cameras.items()}
        frames = {n: c.path.read_bytes() for n, c in sample.cameras.items()}
        prepared = prepare_cameras(frames, rig, names, input_hw)
        t0 = time.perf_counter()
        feats.append(lens_features(prepared.images, prepared.cam_valid))
        lens_scores(feats[-1])
        ms.append(1e3 * (time.perf_counter() - t0))
        parts = [p.strip().split(" ") for p in ds.scene_of(sample).description.split(",")]
        lens = {p[1]: p[0] for p in parts if len(p) == 2}
        labels.append([{"blocked_lens": "blocked", "dirty_lens": "dirty"}.get(lens.get(n, ""), "clear") for n in names])
        conds.append(tuple(p[0] for p in parts))
    return WorldReading(names, np.array(feats, np.float32), np.array(labels), conds, np.array(ms), np.array(scenes),
                        np.array(times))


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-2, steps: int = 3000) -> tuple[float, ...]:
    """Class-balanced, L2-regularised logistic regression on standardised X [n, D], y bool [n] (gradient
    descent, deterministic): the weights in X's own units, then the bias, to 4 significant digits."""
    mu, sd = X.mean(0), X.std(0) + 1e-9
    Z = (X - mu) / sd
    w, b = np.zeros(X.shape[1]), 0.0
    sample_w = np.where(y, (~y).sum() / max(int(y.sum()), 1), 1.0)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-(Z @ w + b)))
        g = sample_w * (p - y)
        w -= 0.5 * (Z.T @ g / len(y) + l2 * w)
        b -= 0.5 * float(g.mean())
    raw = w / sd
    return tuple(float(f"{v:.4g}") for v in (*raw, b - float(raw @ mu)))


def threshold_at(clear_scores: np.ndarray, max_rate: float) -> float:
    """The lowest threshold (on a 1e-6 grid) at which ``score >= threshold`` flags at most ``max_rate`` of them."""
    s = np.sort(clear_scores[np.isfinite(clear_scores)])[::-1]
    allowed = math.floor(max_rate * len(s))
    if allowed >= len(s):
        return 0.0
    return round(math.floor(float(s[allowed]) * 1e6) / 1e6 + 1e-6, 6)


def calibrate(world: WorldReading) -> LensMonitorConfig:
    """Weights, single-frame and settled thresholds and the memory's time constant from the calibration
    world (blocked and dirty each against clear; see the module docstring)."""
    X, lab = world.features.reshape(-1, world.features.shape[-1]).astype(np.float64), world.labels.ravel()
    clear = lab == "clear"
    cfg = LensMonitorConfig()
    for i, kind in enumerate(("blocked", "dirty")):
        use = clear | (lab == kind)
        cfg = replace(cfg, **{f"{kind}_weights": fit_logistic(X[use], lab[use] == kind)})
        clear_scores = lens_scores(X[clear], cfg)[i]
        first = threshold_at(clear_scores, MAX_FALSE_ALARMS)
        cfg = replace(cfg, **{f"{kind}_threshold": first, f"{kind}_settled_threshold": first})
    best: tuple[float, LensMonitorConfig] | None = None
    for memory_s in MEMORY_GRID:
        trial = replace(cfg, memory_s=memory_s)
        for i, kind in enumerate(("blocked", "dirty")):
            trial = replace(trial, **{f"{kind}_settled_threshold": _settled(world, trial, i)})
        recall = float(world.flags(trial, memory=True)[0][world.labels == "blocked"].mean())
        if best is None or recall > best[0]:
            best = (recall, trial)
    assert best is not None
    return best[1]


def _settled(world: WorldReading, cfg: LensMonitorConfig, which: int) -> float:
    """The lowest settled threshold (1e-6 grid) at which the memory's flags of kind ``which`` (0 blocked,
    1 dirty) stay at <= MAX_FALSE_ALARMS of the clear camera-frames."""
    kind = ("blocked", "dirty")[which]
    clear = world.labels == "clear"

    def ok(th: float) -> bool:
        flags = world.flags(replace(cfg, **{f"{kind}_settled_threshold": th}), memory=True)[which]
        return float(flags[clear].mean()) <= MAX_FALSE_ALARMS

    lo, hi = 1e-6, 1.0 - 1e-6
    for _ in range(40):  # bisection in logit space: ok() holds at hi, not at lo
        mid = float(sigmoid(0.5 * (logit(lo) + logit(hi))))
        lo, hi = (lo, mid) if ok(mid) else (mid, hi)
    return round(min(math.ceil(hi * 1e6) / 1e6, 1.0 - 1e-6), 6)


def share(k: int, n: int) -> dict[str, float]:
    """k / n with its 95 % Wilson interval (bench.al_stats.wilson)."""
    from bench.al_stats import wilson

    return wilson(int(k), int(n))


def evaluate(world: WorldReading, cfg: LensMonitorConfig) -> dict[str, Any]:
    """Recall, false alarms and timing of the monitor at ``cfg`` on a scored world: with memory (each
    scene one stream) and, under "frame_alone", each frame judged alone."""
    report = _rates(world, *world.flags(cfg, memory=True))
    report["frame_alone"] = _rates(world, *world.flags(cfg, memory=False))
    report["ms_per_frame"] = {"p50": float(np.median(world.ms)), "p90": float(np.percentile(world.ms, 90)),
                              "cameras": len(world.cameras)}
    return report


def _rates(world: WorldReading, flag: np.ndarray, dirty_flag: np.ndarray, span: np.ndarray) -> dict[str, Any]:
    lab = world.labels
    clear, blocked, dirty = lab == "clear", lab == "blocked", lab == "dirty"
    by_cond = {}
    for c in REPORTED_CONDITIONS:
        rows = np.array([c in conds for conds in world.conditions])
        m = clear & rows[:, None]
        by_cond[c] = share(int((flag & m).sum()), int(m.sum()))
    into = np.round(np.nan_to_num(span), 1)  # s into the clip
    by_time = {f"{t:g}": {"blocked_recall": share(int((flag & blocked & (into == t)).sum()), int((blocked & (into == t)).sum())),
                          "false_alarms": share(int((flag & clear & (into == t)).sum()), int((clear & (into == t)).sum()))}
               for t in np.unique(into[blocked | clear])}
    blocked_frames = blocked.any(1)
    clear_frames = clear.all(1)
    return {
        "camera_frames": {"blocked": int(blocked.sum()), "dirty": int(dirty.sum()), "clear": int(clear.sum())},
        "blocked_recall": share(int((flag & blocked).sum()), int(blocked.sum())),
        "false_alarms": share(int((flag & clear).sum()), int(clear.sum())),
        "false_alarms_by_condition": by_cond,
        "by_seconds_into_clip": by_time,
        "dirty_recall": share(int((dirty_flag & dirty).sum()), int(dirty.sum())),
        "dirty_false_alarms": share(int((dirty_flag & clear).sum()), int(clear.sum())),
        "dirty_flagged_blocked": share(int((flag & dirty).sum()), int(dirty.sum())),
        "frames": {
            "blocked_camera_flagged": share(int((flag & blocked).any(1).sum()), int(blocked_frames.sum())),
            "blocked_frame_any_flagged": share(int(flag[blocked_frames].any(1).sum()), int(blocked_frames.sum())),
            "clear_frame_any_flagged": share(int(flag[clear_frames].any(1).sum()), int(clear_frames.sum())),
        },
    }


def _pct(s: dict[str, float], ci: bool = True) -> str:
    if not s["n"]:
        return "n/a"
    text = f"{100 * s['share']:.1f} % ({s['k']}/{s['n']}"
    return text + (f"; 95 % CI {100 * s['lo']:.1f}-{100 * s['hi']:.1f} %)" if ci else ")")


def table(report: dict[str, Any]) -> str:
    t, c = report["test"], report["config"]
    a = t["frame_alone"]
    conds = ", ".join(f"{k} {_pct(v, False)}" for k, v in t["false_alarms_by_condition"].items())
    times = ", ".join(f"{k} s {100 * v['blocked_recall']['share']:.0f} % / {100 * v['false_alarms']['share']:.1f} %"
                      for k, v in t["by_seconds_into_clip"].items())
    rows = [
        ("blocked-lens recall, per camera-frame", _pct(t["blocked_recall"]), _pct(a["blocked_recall"]), ">= 95 %"),
        ("false alarms on clear camera-frames", _pct(t["false_alarms"]), _pct(a["false_alarms"]), "<= 1 %"),
        ("false alarms by condition", conds, "", ""),
        ("recall / false alarms by seconds into the clip", times, "", ""),
        ("dirty-lens recall (dirty score)", f"{_pct(t['dirty_recall'])}, at {_pct(t['dirty_false_alarms'], False)} "
                                            "false alarms", f"{_pct(a['dirty_recall'], False)}", ""),
        ("frames with a blocked camera: that camera flagged", _pct(t["frames"]["blocked_camera_flagged"]),
         _pct(a["frames"]["blocked_camera_flagged"], False), ""),
        ("frames without lens trouble: any camera flagged", _pct(t["frames"]["clear_frame_any_flagged"]),
         _pct(a["frames"]["clear_frame_any_flagged"], False), ""),
        ("monitor time per 6-camera frame (224x400)", f"{t['ms_per_frame']['p50']:.1f} ms p50, "
                                                        f"{t['ms_per_frame']['p90']:.1f} ms p90", "", "a few ms"),
    ]
    lines = [f"Held-out world (scenes from {FIRST_SCENE['test']}, clips of {FRAMES} frames 0.5 s apart); memory "
             f"time constant {c['memory_s']:g} s, blocked threshold {c['blocked_threshold']:g} on a frame alone "
             f"settling to {c['blocked_settled_threshold']:g}, all chosen on the calibration world.", "",
             "| lens monitor | with memory (the runtime) | each frame alone | target |", "|---|---|---|---|"]
    return "\n".join(lines + [f"| {a_} | {b} | {c_} | {t_} |" for a_, b, c_, t_ in rows])


def main() -> None:
    from bench.machine import machine
    from perception.presets import get_preset

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny worlds (8 scenes each), for tests")
    parser.add_argument("--data", type=Path, default=None, help="the worlds (default data/lens[_quick])")
    parser.add_argument("--results", type=Path, default=None,
                        help=f"the JSON to write (default {RESULTS}; --quick: <data>/lens_monitor.json)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args()
    size = "quick" if args.quick else "full"
    data = args.data or Path("data/lens_quick" if args.quick else "data/lens")
    results = args.results or (data / "lens_monitor.json" if args.quick else RESULTS)
    start = time.perf_counter()
    worlds = render(data, QUOTAS[size], progress=not args.no_progress)
    preset = get_preset("edge")
    input_hw = (preset.input.height, preset.input.width)
    calib = read_world(worlds["calibration"], input_hw)
    cfg = calibrate(calib)
    test = read_world(worlds["test"], input_hw)
    report = {
        "machine": machine(), "date": time.strftime("%Y-%m-%d"), "size": size,
        "command": "PYTHONPATH=. python -m bench.lens_monitor" + (" --quick" if args.quick else ""),
        "worlds": {k: {"root": str(p), "seed": SEED, "first_scene": FIRST_SCENE[k], "quotas": QUOTAS[size],
                       "frames_per_scene": FRAMES, "camera_wh": [W, H]} for k, p in worlds.items()},
        "input_hw": list(input_hw), "features": list(FEATURE_NAMES), "max_false_alarms": MAX_FALSE_ALARMS,
        "config": asdict(cfg), "defaults_match": asdict(cfg) == asdict(LensMonitorConfig()),
        "test": evaluate(test, cfg), "calibration": evaluate(calib, cfg),
    }
    report["seconds"] = round(time.perf_counter() - start, 1)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    print(f"\nchosen: {asdict(cfg)}"
          + ("" if report["defaults_match"] else " (LensMonitorConfig's defaults differ)"))
    print(f"wrote {results} in {report['seconds']} s on {report['machine']}")


if __name__ == "__main__":
    main()
