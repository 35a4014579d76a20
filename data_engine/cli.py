"""The ``data-engine`` command line. Commands are thin: each calls one function of the data engine; the
labeling commands (queue, label, ingest, diff, qa) are written in :mod:`data_engine.label_commands`.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from data_engine import label_commands
from data_engine.label_commands import fail as _fail
from perception.errors import ErrorReportingTyper

app = ErrorReportingTyper(no_args_is_help=True, help="The data engine: synthetic fleet, frame catalog, mining, labeling, the loop.")


@app.callback()
def main() -> None:
    """The data engine: synthetic fleet, frame catalog, mining, labeling, the loop."""


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
    first_scene: int = typer.Option(0, "--first-scene", help="Index of the first scene (disjoint worlds of one seed)."),
    quotas: str = typer.Option(None, "--quotas", help="A condition-balanced or rare-enriched val set: scenes per "
                               "condition or rare class, e.g. night=4,fog=4,day=4 or construction_vehicle=40,"
                               "trailer=40 (summing to --scenes; all in the val split)."),
) -> None:
    """Render a synthetic multi-camera world into a nuScenes v1.0 dataset (resumable)."""
    from data_engine.sim.synth import SynthConfig, default_workers, synthesize
    from data_engine.sim.synth_output import SynthError
    from data_engine.sim.synth_report import print_summary

    quota_map = None
    if quotas:
        try:
            quota_map = {k.strip(): int(v) for k, v in (part.split("=") for part in quotas.split(",") if part.strip())}
        except ValueError:
            raise _fail(f"--quotas: expected NAME=N[,...] (a condition or a rare class), got {quotas!r}") from None
    cfg = SynthConfig(out=out, scenes=scenes, frames=frames, seed=seed, width=width, height=height,
                      workers=workers or default_workers(), unlabeled=unlabeled, sweeps=sweeps,
                      first_scene=first_scene, quotas=quota_map)
    try:
        summary = synthesize(cfg)
    except SynthError as exc:
        raise _fail(str(exc)) from None
    print_summary(summary)


CATALOG_HELP = "The frame catalog (SQLite); created when missing."


@app.command()
def index(
    dataset: Path = typer.Argument(..., help="A nuScenes-format dataset root."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help=CATALOG_HELP),
    unlabeled: bool = typer.Option(False, "--unlabeled", help="Register the frames as an unlabeled pool."),
) -> None:
    """Register a dataset's frames in the catalog (idempotent)."""
    from data_engine.catalog import Catalog, CatalogError
    from perception.data.nuscenes import DatasetError

    try:
        with Catalog.open(catalog) as cat:
            counts = cat.index_dataset(dataset, unlabeled=unlabeled)
    except (CatalogError, DatasetError) as exc:
        raise _fail(str(exc)) from None
    kind = "unlabeled" if unlabeled else "labeled"
    typer.echo(f"{dataset}: {counts['added']} new {kind} frames ({counts['frames']} in the catalog) -> {catalog}")


@app.command()
def status(
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of tables."),
) -> None:
    """Counts of frames per label state and dataset, mining runs, label batches and dataset versions."""
    import json

    from data_engine.catalog import Catalog, CatalogError

    try:
        with Catalog.open(catalog, create=False) as cat:
            st = cat.status()
    except CatalogError as exc:
        raise _fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"{st['catalog']} (schema {st['schema_version']}): {st['frames']} frames, "
                  + ", ".join(f"{k} {v}" for k, v in st["label_states"].items()))
    t = Table("dataset", "kind", "frames", "states")
    for d in st["datasets"]:
        t.add_row(d["root"], "labeled" if d["labeled"] else "pool", str(d["frames"]),
                  ", ".join(f"{k} {v}" for k, v in d["states"].items()))
    console.print(t)
    if st["mining_runs"]:
        t = Table("mining run", "status", "strategies", "budget", "scored", "failed", "selected")
        for r in st["mining_runs"]:
            t.add_row(r["name"], r["status"], ",".join(r["strategies"]), str(r["budget"]), str(r["scored"]),
                      str(r["failed"]), str(r["selected"]))
        console.print(t)
    console.print(f"label batches: {st['label_batches']}; dataset versions: "
                  + (", ".join(f"{v['name']} ({v['frames']} frames)" for v in st["dataset_versions"]) or "none"))


@app.command()
def query(
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    state: str = typer.Option(None, "--state", help="Label state: unlabeled, queued or labeled."),
    condition: str = typer.Option(None, "--condition", help="Scene condition: day, dusk, night, rain, fog, ..."),
    class_name: str = typer.Option(None, "--class", help="A labeled class (trailer) or category prefix (vehicle.)."),
    scene: str = typer.Option(None, "--scene", help="Scene name or token."),
    run: str = typer.Option(None, "--run", help="Mining run whose scores to filter on."),
    strategy: str = typer.Option(None, "--strategy", help="Score of this strategy (with --run)."),
    min_score: float = typer.Option(None, "--min-score", help="At least this score (with --run)."),
    limit: int = typer.Option(None, "--limit", min=1, help="At most this many frames."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """List frames by metadata, condition, class, score and label state."""
    import json
    from dataclasses import asdict

    from data_engine.catalog import Catalog, CatalogError

    try:
        with Catalog.open(catalog, create=False) as cat:
            rows = cat.query(label_state=state, condition=condition, has_class=class_name, scene=scene, run=run,
                             strategy=strategy, min_score=min_score, limit=limit)
    except CatalogError as exc:
        raise _fail(str(exc)) from None
    for r in rows:
        if as_json:
            typer.echo(json.dumps(asdict(r)))
        else:
            typer.echo(f"{r.sample_token}  {r.scene_name}#{r.frame_index:<3} {r.label_state:<9} "
                       f"{','.join(r.conditions) or '-':<12} {r.dataset_root}")
    if not as_json:
        typer.echo(f"{len(rows)} frames")


def _parse_weights(text: str | None) -> dict[str, float]:
    weights: dict[str, float] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.rpartition("=")
        try:
            if not sep:
                raise ValueError
            weights[name.strip()] = float(value)
        except ValueError:
            raise _fail(f"--weights: expected STRATEGY=NUMBER[,...], got {part!r}") from None
    return weights


@app.command()
def mine(
    model: Path = typer.Option(..., "--model", help="The exported model (.onnx from `perception export`)."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    strategy: str = typer.Option(..., "--strategy", help="Strategies, comma-separated: det_entropy, det_margin, "
                                 "seg_entropy, flicker, rare:CLASS[@T|@fire=R], query:CLASS[@K], typical[:K], novelty, "
                                 "disagreement, lens[:T], random, or a plugin's."),
    budget: int = typer.Option(..., "--budget", min=1, help="Frames to select."),
    engine: str = typer.Option("local", "--engine", help="local (processes) or ray (Ray Data)."),
    workers: int = typer.Option(1, "--workers", min=0, help="Worker processes or Ray actors (0, 1: in this process)."),
    threads: int = typer.Option(None, "--threads", min=1, help="onnxruntime threads per worker (default: cores / workers)."),
    batch: int = typer.Option(1, "--batch", min=1, help="Scenes scored side by side in one batched forward."),
    run: str = typer.Option(None, "--run", help="Run name (default from the model and strategies; the same name resumes)."),
    weights: str = typer.Option(None, "--weights", help="Strategy weights, e.g. det_entropy=1,rare:trailer@0.3=2."),
    diversity: float = typer.Option(0.3, "--diversity", min=0.0, max=1.0, help="0: by score; 1: k-center greedy on embeddings."),
    dedup: float = typer.Option(0.25, "--dedup", min=0.0, help="Near-duplicates: closer than this fraction of the median "
                                "nearest-neighbour embedding distance."),
    min_gap: float = typer.Option(2.0, "--min-gap", min=0.0, help="Seconds between two picks from one scene."),
    plugin: list[Path] = typer.Option([], "--plugin", help="A Python file registering more strategies (repeatable)."),
) -> None:
    """Score the catalog's frames with an exported model and select a budget to label (resumable)."""
    from data_engine.catalog import CatalogError
    from data_engine.mining.mine import MineConfig, MineError, mine as run_mine
    from data_engine.mining.selection import SelectionConfig

    try:
        selection = SelectionConfig(_parse_weights(weights), diversity, dedup, min_gap)
    except ValueError as exc:
        raise _fail(str(exc)) from None
    cfg = MineConfig(model=model, catalog=catalog, strategies=[s.strip() for s in strategy.split(",") if s.strip()],
                     budget=budget, run=run, engine=engine, workers=workers, threads=threads, batch=batch,
                     plugins=list(plugin), selection=selection)
    try:
        summary = run_mine(cfg, log=typer.echo)
    except (MineError, CatalogError) as exc:
        raise _fail(str(exc)) from None
    short = (f" of the budget {budget}: the other candidates were near-duplicates of a pick or within "
             f"{min_gap:g} s of one in their scene" if summary.selected < budget else "")
    typer.echo(f"run {summary.run}: {summary.frames_scored} frames scored, {summary.frames_failed} failed; "
               f"selected {summary.selected}{short}")
    for token, reason in summary.failures[:5]:
        typer.echo(f"  failed {token}: {reason}")
    for p in summary.picks:
        typer.echo(f"  {p['frame']}  {p['score']:.3f}  {'; '.join(p['reasons'])}")


@app.command()
def similar(
    frame: str = typer.Argument(..., help="A frame: sample token or catalog frame id."),
    k: int = typer.Option(10, "--k", min=1, help="How many neighbours."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    run: str = typer.Option(None, "--run", help="Mining run whose embeddings to use (default: the latest)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
) -> None:
    """The frames nearest to one frame in the model's embedding space."""
    import json

    from data_engine.catalog import Catalog, CatalogError
    from data_engine.mining.selection import nearest_frames

    try:
        with Catalog.open(catalog, create=False) as cat:
            run_name = run or cat.latest_run()
            target = cat.frame(frame)
            near = [(cat.frame(fid), d) for fid, d in nearest_frames(cat, cat.run_id(run_name), target.id, k)]
    except (CatalogError, ValueError) as exc:
        raise _fail(str(exc)) from None
    if not as_json:
        typer.echo(f"nearest to {target.sample_token} ({target.scene_name}#{target.frame_index}) in run {run_name}:")
    for row, d in near:
        if as_json:
            typer.echo(json.dumps({"frame": row.sample_token, "distance": round(d, 6), "scene": row.scene_name,
                                   "frame_index": row.frame_index, "label_state": row.label_state}))
        else:
            typer.echo(f"  {d:.4f}  {row.sample_token}  {row.scene_name}#{row.frame_index:<3} {row.label_state}")


app.command("queue")(label_commands.queue)
app.command("label")(label_commands.label)
app.command("ingest")(label_commands.ingest)
app.command("diff")(label_commands.diff)
app.command("qa")(label_commands.qa)


@app.command()
def loop(
    config: Path = typer.Option(..., "--config", help="The loop's YAML (see configs/loops/tiny.yaml)."),
    out: str = typer.Option(None, "--out", help="Output directory (overrides the config's out)."),
    seeds: str = typer.Option(None, "--seeds", help="Seeds, comma-separated (overrides the config's seeds)."),
    overrides: list[str] = typer.Argument(None, help="key=value overrides of the config, e.g. budget=10 rounds=1."),
) -> None:
    """The closed loop: rounds of train, export, mine, queue, label, ingest, retrain; per strategy and random."""
    from data_engine.loop import LoopError, load_loop_config, run_loop

    overrides = list(overrides or [])
    if out:
        overrides.append(f"out={json.dumps(out)}")  # as given, not read as YAML
    if seeds:
        overrides.append(f"seeds=[{seeds}]")
    try:
        cfg = load_loop_config(config, overrides)
        report = run_loop(cfg, log=typer.echo)
    except LoopError as exc:
        raise _fail(str(exc)) from None
    from data_engine.loop_report import format_report

    typer.echo(format_report(report))
    typer.echo(f"wrote {Path(cfg.out) / 'loop_report.json'}, loop_report.md and learning_curves.png")


if __name__ == "__main__":
    app()
