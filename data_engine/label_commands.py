"""The labeling commands of ``data-engine``: queue, label, ingest, diff and qa.

Plain typer-annotated functions, each a thin call into :mod:`data_engine.labels`; :mod:`data_engine.cli`
registers them on its one ``app``.
"""

from __future__ import annotations

from pathlib import Path

import typer

__all__ = ["diff", "fail", "ingest", "label", "qa", "queue"]


def fail(message: str) -> typer.Exit:
    """Print a one-line error to stderr and return the exit to raise (code 1)."""
    typer.echo("error: " + " ".join(message.splitlines()), err=True)
    return typer.Exit(code=1)


def queue(
    run: str = typer.Option(..., "--run", help="The mining run whose picks to queue."),
    out: Path = typer.Option(..., "--out", help="Queue directory to write (refused when it exists and is not empty)."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    image_url_prefix: str = typer.Option(
        None, "--image-url-prefix",
        help="Label Studio image URL = this + the image's absolute path. Default: '/data/local-files/?d=' + the "
             "path without its leading '/' (Label Studio local files with LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=/)."),
    thumb_width: int = typer.Option(320, "--thumb-width", min=16, help="Width of the review page's thumbnails, px."),
    force: bool = typer.Option(False, "--force", help="Replace an existing non-empty --out."),
) -> None:
    """Export a run's picks as a relabel queue: manifest, nuScenes predictions, review page, Label Studio tasks."""
    from data_engine.catalog import CatalogError
    from data_engine.labels.queue import QueueError, write_queue

    try:
        s = write_queue(catalog, run, out, image_url_prefix=image_url_prefix, thumb_width=thumb_width, force=force)
    except (CatalogError, QueueError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"queue of run {s.run!r}: {s.picks} frames from {s.datasets} dataset(s), {s.boxes} predicted boxes, "
               f"{s.tasks} Label Studio tasks with {s.regions} regions -> {s.out}")
    for label, path in (("manifest", s.manifest), ("predictions", s.predictions), ("review page", s.html),
                        ("tasks", s.tasks_path), ("labeling config", s.config_path)):
        typer.echo(f"  {label + ':':<17}{path}")


def label(
    out: Path = typer.Option(..., "--out", help="Labels file to write (nuScenes records, JSON)."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    oracle: str = typer.Option("sim", "--oracle", help="Who labels: 'sim', the synthetic world's truth."),
    state: str = typer.Option("queued", "--state", help="Label the frames in this state: queued or labeled."),
    run: str = typer.Option(None, "--run", help="Only this mining run's picks."),
    inject: str = typer.Option(None, "--inject", help="Corrupt fractions of the annotations for label-QA "
                               "experiments, e.g. missing=0.05,class=0.02,shift=0.03 (listed in LABELS.errors.json)."),
    seed: int = typer.Option(0, "--seed", help="Seed of --inject."),
) -> None:
    """Label the catalog's queued frames with the world's oracle into a labels file (for `ingest`)."""
    from data_engine.catalog import Catalog, CatalogError
    from data_engine.labels.autolabel import label_frames
    from data_engine.labels.inject import parse_inject
    from data_engine.labels.records import LabelsError
    from perception.data.nuscenes import DatasetError

    if state not in ("queued", "labeled"):
        raise fail(f"--state {state!r}: expected queued or labeled")
    try:
        rates = parse_inject(inject) if inject else None
        with Catalog.open(catalog, create=False) as cat:
            res = label_frames(cat, out, oracle=oracle, state=state, run=run, inject=rates, seed=seed)
    except (LabelsError, CatalogError, DatasetError, OSError) as exc:
        raise fail(str(exc)) from None
    typer.echo(f"labeled {res.frames} {state} frames from {res.datasets} dataset(s): {res.annotations} annotations "
               f"-> {res.out}")
    if res.errors_file is not None:
        typer.echo("injected errors: " + ", ".join(f"{k} {n}" for k, n in res.errors.items()) + f" -> {res.errors_file}")


def ingest(
    labels: Path = typer.Argument(..., help="Labels: nuScenes records (JSON object) or a Label Studio export (JSON list)."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    name: str = typer.Option(None, "--name", help="Version name (default v0001, v0002, ...)."),
    out: Path = typer.Option(None, "--out", help="Version directory (default <catalog dir>/versions/<name>)."),
    relabel: bool = typer.Option(False, "--relabel", help="Also accept labeled frames: their annotations are replaced."),
) -> None:
    """Validate labels whole, write a new dataset version, and record the batch in the catalog (all or nothing)."""
    from data_engine.catalog import Catalog
    from data_engine.labels.ingest import INGEST_ERRORS
    from data_engine.labels.ingest import ingest as run_ingest

    try:
        with Catalog.open(catalog, create=False) as cat:
            s = run_ingest(cat, labels, name=name, out=out, relabel=relabel)
    except (*INGEST_ERRORS, OSError) as exc:
        raise fail(str(exc)) from None
    for path in s.litter:
        typer.echo(f"removed {path}, left by an ingest that was killed")
    typer.echo(f"label batch {s.batch_id} ({s.format}) from {s.source}")
    if s.version is not None:
        typer.echo(f"version {s.version} (parent {s.parent or 'the labeled datasets'}) -> {s.root}")
        typer.echo(f"  {len(s.frames_new)} new frames, {len(s.frames_relabeled)} relabeled, {s.annotations} annotations; "
                   f"the version holds {s.version_frames} frames, {s.version_annotations} annotations")
        if s.classes:
            typer.echo("  " + ", ".join(f"{c} {n}" for c, n in s.classes.items()))
    boxes = s.details.get("boxes")
    if boxes:
        typer.echo("  boxes: " + ", ".join(f"{k} {n}" for k, n in boxes.items()))
    if s.full_labeling:
        typer.echo(f"  {len(s.full_labeling)} frames flagged for full 3D labeling (still queued): "
                   + ", ".join(s.full_labeling))
    for x in s.incomplete:
        typer.echo(f"  incomplete, left queued: {x['frame']} (cameras not reviewed: {', '.join(x['missing'])})")


def diff(
    v1: str = typer.Argument(..., help="The older version: a name in the catalog or a directory."),
    v2: str = typer.Argument(..., help="The newer version: a name in the catalog or a directory."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (to look names up)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """What changed between two dataset versions: frames, annotations, classes, scenes."""
    import json

    from data_engine.catalog import Catalog
    from data_engine.labels.ingest import INGEST_ERRORS
    from data_engine.labels.versions import diff_versions, resolve_version

    try:
        if Path(v1).is_dir() and Path(v2).is_dir():
            a, b = Path(v1), Path(v2)
        else:
            with Catalog.open(catalog, create=False) as cat:
                a, b = resolve_version(v1, cat), resolve_version(v2, cat)
        d = diff_versions(a, b)
    except INGEST_ERRORS as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(d, indent=1))
        return
    fr, an = d["frames"], d["annotations"]
    typer.echo(f"{v1} -> {v2}")
    typer.echo(f"frames: {fr['a']} -> {fr['b']} (+{len(fr['added'])} -{len(fr['removed'])})")
    typer.echo(f"annotations: {an['a']} -> {an['b']} (+{len(an['added'])} -{len(an['removed'])}, "
               f"{len(an['changed'])} changed: " + ", ".join(f"{k} {n}" for k, n in an["changes"].items()) + ")")
    typer.echo(f"{'class':<22}{'before':>8}{'after':>8}{'delta':>8}")
    for cls, c in d["classes"].items():
        typer.echo(f"{cls:<22}{c['before']:>8}{c['after']:>8}{c['delta']:>+8}")
    changed = {k: v for k, v in d["scenes"].items()
               if v["frames_a"] != v["frames_b"] or v["annotations_a"] != v["annotations_b"]}
    for scene, v in changed.items():
        typer.echo(f"  {scene}: frames {v['frames_a']} -> {v['frames_b']}, "
                   f"annotations {v['annotations_a']} -> {v['annotations_b']}")


def qa(
    run: str = typer.Option(..., "--run", help="A mining run that ranked labeled frames (strategy disagreement)."),
    errors: Path = typer.Option(..., "--errors", help="The errors file `data-engine label --inject` wrote."),
    catalog: Path = typer.Option(Path("catalog.db"), "--catalog", help="The frame catalog (SQLite)."),
    k: str = typer.Option("10,20,50", "--k", help="Ranks at which to measure precision, comma-separated."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Label QA: precision at k of a disagreement ranking at finding frames with planted label errors."""
    import json

    from data_engine.catalog import Catalog, CatalogError
    from data_engine.labels.qa import qa_precision, read_errors

    try:
        ks = [int(x) for x in k.split(",") if x.strip()]
        if not ks or min(ks) < 1:
            raise ValueError
    except ValueError:
        raise fail(f"--k: expected positive integers separated by commas, got {k!r}") from None
    try:
        with Catalog.open(catalog, create=False) as cat:
            report = qa_precision(cat, run, read_errors(errors), ks)
    except CatalogError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(json.dumps(report, indent=2))
        return
    typer.echo(f"run {run} ({report['strategy']}): {report['frames_ranked']} labeled frames ranked, "
               f"{report['frames_with_errors']} hold planted errors (base rate {report['base_rate']:.3f})")
    for kk, prec in report["precision_at"].items():
        recall = ", ".join(f"{kind} {r:.2f}" for kind, r in report["recall_by_kind_at"][kk].items())
        typer.echo(f"  precision@{kk}: {prec:.3f}   recall of errors by kind: {recall}")
