"""Score detection results with the official nuScenes devkit (nuscenes-devkit 1.2.0).

Run with the devkit venv's python (see tests/support/devkit_env.py), never the project's: the devkit pins
numpy<2, so this script imports only the devkit and its dependencies, none of our packages.

    python tests/support/devkit/score_predictions.py --dataroot DIR --version v1.0-synth --split synth_val \
        --results A.json [B.json ...] [--config detection_cvpr_2019 --config capped.json] --out-dir OUT

For every results file and every configuration (a name known to ``config_factory`` or a JSON file
in the layout of the devkit's ``DetectionConfig.serialize``), it runs the official ``DetectionEval``
on the split (a custom split of ``<dataroot>/<version>/splits.json``) and writes the devkit's own
``metrics_summary.json`` and ``metrics_details.json`` under ``OUT/<results stem>/<config stem>/``,
then ``OUT/report.json`` listing the runs with how many boxes of each class the evaluator kept after
its distance, point-count and bike-rack filters. The dataset is loaded once.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from collections import Counter

from nuscenes import NuScenes
from nuscenes.eval.common.config import config_factory
from nuscenes.eval.detection.data_classes import DetectionConfig
from nuscenes.eval.detection.evaluate import DetectionEval
from nuscenes.utils.splits import is_predefined_split


def load_config(spec: str) -> tuple[str, DetectionConfig]:
    """(name, config) of a config name or a JSON path."""
    if os.path.isfile(spec):
        with open(spec) as f:
            return os.path.splitext(os.path.basename(spec))[0], DetectionConfig.deserialize(json.load(f))
    return spec, config_factory(spec)


def score(nusc: NuScenes, split: str, results_path: str, config_name: str, config: DetectionConfig,
          out_dir: str) -> dict:
    """One official evaluation; the devkit writes metrics_summary.json into ``out_dir``."""
    start = time.perf_counter()
    evaluator = DetectionEval(nusc, config=config, result_path=results_path, eval_set=split,
                              output_dir=out_dir, verbose=False)
    kept_gt = Counter(b.detection_name for b in evaluator.gt_boxes.all)
    kept_pred = Counter(b.detection_name for b in evaluator.pred_boxes.all)
    evaluator.main(render_curves=False)
    return {
        "results": results_path,
        "config": config_name,
        "summary": os.path.join(out_dir, "metrics_summary.json"),
        "details": os.path.join(out_dir, "metrics_details.json"),
        "gt_after_filter": dict(kept_gt),
        "pred_after_filter": dict(kept_pred),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataroot", required=True)
    parser.add_argument("--version", default="v1.0-synth")
    parser.add_argument("--split", required=True, help="a custom split named in splits.json")
    parser.add_argument("--results", nargs="+", required=True, help="results JSON files (submission format)")
    parser.add_argument("--config", action="append", default=None,
                        help="config name or JSON path (repeatable; default detection_cvpr_2019)")
    parser.add_argument("--out-dir", required=True)
    args = parser.parse_args(argv)
    if is_predefined_split(args.split):
        raise SystemExit(f"{args.split!r} is a predefined nuScenes split; name a custom split from splits.json")

    os.makedirs(args.out_dir, exist_ok=True)
    report: dict = {"dataroot": args.dataroot, "version": args.version, "split": args.split, "runs": []}
    try:
        t0 = time.perf_counter()
        nusc = NuScenes(version=args.version, dataroot=args.dataroot, verbose=False)
        report["load_seconds"] = time.perf_counter() - t0
        configs = [load_config(c) for c in (args.config or ["detection_cvpr_2019"])]
        for results_path in args.results:
            stem = os.path.splitext(os.path.basename(results_path))[0]
            for name, config in configs:
                out_dir = os.path.join(args.out_dir, stem, name)
                report["runs"].append(score(nusc, args.split, results_path, name, config, out_dir))
    except Exception:  # noqa: BLE001 - the report says what the devkit complained about
        report["error"] = traceback.format_exc()
    with open(os.path.join(args.out_dir, "report.json"), "w") as f:
        json.dump(report, f, indent=1)
    if "error" in report:
        print(report["error"], file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
