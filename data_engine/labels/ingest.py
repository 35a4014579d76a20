"""Ingest: a labels file validated whole, written as a new dataset version, and recorded in the catalog.

The version (see :mod:`data_engine.labels.versions` for its layout, :mod:`data_engine.labels.builder` for
its content) is written into a hidden temporary directory, loaded back with the reader, and renamed
into place; the catalog then records the batch and the version in one transaction (the directory is
removed if that fails). Ingests into one catalog take turns (an exclusive lock on its ``versions``
directory, from choosing the parent and the name to recording the version), and each first removes
what a killed ingest left: temporary directories of writers that are gone, and version directories
of this catalog it never recorded, so their names are used again.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from perception.data.nuscenes import load_dataset
from perception.data.nuscenes_tables import DatasetError, Record
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES, TABLES

from ..catalog import Catalog, CatalogError, FrameRow
from .builder import VersionBuilder
from .label_studio import LabelStudioResult, labels_from_label_studio
from .records import LabelsError, SourceDataset, load_source, parse_labels, read_labels_file
from .validate import ValidLabels, validate_labels
from .versions import MANIFEST, VERSION_PREFIX, VersionError
from perception.errors import one_line
from perception.process import process_alive

__all__ = ["INGEST_ERRORS", "IngestSummary", "ingest"]

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
TMP_PATTERN = re.compile(r"\.(?P<name>.+)\.tmp-(?P<pid>[0-9]+)")  # _write_version's temporary directory


@dataclass
class IngestSummary:
    """What an ingest did."""

    source: str  # the labels file
    format: str  # "nuscenes" or "label-studio"
    batch_id: int
    version: str | None  # the version written (None when no frame was labeled)
    root: Path | None  # its directory
    parent: str | None  # the parent version's name
    frames_new: list[str] = field(default_factory=list)  # sample tokens added to the dataset
    frames_relabeled: list[str] = field(default_factory=list)  # sample tokens whose annotations were replaced
    annotations: int = 0  # annotations written by the batch
    version_frames: int = 0  # samples in the version
    version_annotations: int = 0  # annotations in the version
    classes: dict[str, int] = field(default_factory=dict)  # detection class -> annotations written
    full_labeling: list[str] = field(default_factory=list)  # frames sent to full 3D labeling (stay queued)
    incomplete: list[dict[str, Any]] = field(default_factory=list)  # frames not fully reviewed (stay queued)
    details: dict[str, Any] = field(default_factory=dict)  # what the batch recorded
    litter: list[str] = field(default_factory=list)  # leftovers of killed ingests removed first


@contextlib.contextmanager
def _ingest_lock(versions_dir: Path) -> Iterator[None]:
    """One ingest at a time per catalog: an exclusive lock on its versions directory (the kernel releases
    it when the holder dies, so a killed ingest never blocks the next)."""
    versions_dir.mkdir(parents=True, exist_ok=True)
    fd = os.open(versions_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _remove_litter(cat: Catalog, versions_dir: Path, out: Path | None) -> list[str]:
    """Remove what killed ingests of this catalog left (call with the ingest lock held): temporary
    directories of dead writers, and version directories whose manifest names this catalog but which the
    catalog never recorded. ``out``: the version directory asked for with ``--out`` (its parent directory
    is searched for its own temporary directories only). Returns the paths removed."""
    roots = {os.path.realpath(r) for (r,) in cat.conn.execute("SELECT root FROM dataset_versions")}
    names = {str(n) for (n,) in cat.conn.execute("SELECT name FROM dataset_versions")}
    catalog = str(cat.path.resolve())
    tmps = [(versions_dir, None)] + ([(out.parent, out.name)] if out is not None else [])
    found: list[Path] = []
    for folder, only in tmps:
        for entry in sorted(folder.iterdir()) if folder.is_dir() else []:
            m = TMP_PATTERN.fullmatch(entry.name)
            if (m and (only is None or m["name"] == only) and entry.is_dir() and not entry.is_symlink()
                    and (int(m["pid"]) == os.getpid() or not process_alive(int(m["pid"])))):
                found.append(entry)
    candidates = [e for e in sorted(versions_dir.iterdir()) if not e.name.startswith(".")] + ([out] if out else [])
    for entry in candidates:
        if not entry.is_dir() or entry.is_symlink() or os.path.realpath(entry) in roots:
            continue
        try:
            manifest = json.loads((entry / MANIFEST).read_text())
        except (OSError, ValueError):
            continue  # not a version written by an ingest: not ours to remove
        if isinstance(manifest, dict) and manifest.get("catalog") == catalog and manifest.get("name") not in names:
            found.append(entry)
    removed = {os.path.realpath(e): e for e in found}  # --out inside the versions directory is met twice
    for entry in removed.values():
        shutil.rmtree(entry)
    return [str(e) for e in removed.values()]


def _next_name(cat: Catalog, versions_dir: Path) -> str:
    k = int(cat.conn.execute("SELECT COUNT(*) FROM dataset_versions").fetchone()[0]) + 1
    while cat.dataset_version(f"v{k:04d}") is not None or (versions_dir / f"v{k:04d}").exists():
        k += 1
    return f"v{k:04d}"


def _class_counts(valid: ValidLabels, fr: FrameRow) -> dict[str, int]:
    """The category and detection-class counts of a frame's annotations (as Catalog.index_dataset counts)."""
    counts: Counter[str] = Counter()
    src = valid.sources[fr.dataset_root]
    for a in valid.annotations[fr.sample_token]:
        name = src.category_name(valid.instances[a["instance_token"]]["category_token"]) or ""
        for k in {name, CATEGORY_TO_DETECTION.get(name)} - {None, ""}:
            counts[str(k)] += 1
    return dict(counts)


def _write_version(root: Path, name: str, tables: dict[str, list[Record]], splits: dict[str, list[str]],
                   files: Mapping[str, str], manifest: dict[str, Any], check_samples: list[str]) -> None:
    """Write the version into a temporary sibling, load it back, rename it to ``root``."""
    missing = [rel for rel, target in files.items() if not os.path.exists(target)]
    if missing:
        raise VersionError(f"{files[missing[0]]}: the file {missing[0]!r} of the version is missing "
                           f"({len(missing)} missing in all)")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = root.with_name(f".{root.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        table_dir = tmp / (VERSION_PREFIX + name)
        table_dir.mkdir(parents=True)
        for table in TABLES:
            (table_dir / f"{table}.json").write_text(json.dumps(tables[table], indent=0))
        (table_dir / "splits.json").write_text(json.dumps(splits, indent=1))
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        inside = os.path.realpath(tmp) + os.sep
        for rel, target in files.items():
            link = tmp / rel
            # A table path may name a directory the version links (say "samples"), which would make the
            # links under it land in the original dataset: each link's directory, links resolved, must
            # stay inside the version.
            if link.name in ("", ".", "..") or not (os.path.realpath(link.parent) + os.sep).startswith(inside):
                raise VersionError(f"{root}: the version's file {rel!r} (a link to {target}) would be written "
                                   "outside the version directory; a table path names a directory or leaves the dataset")
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(target, link)
        try:
            reader = load_dataset(tmp)
            for tok in check_samples:
                for cam in reader.sample(tok).cameras.values():
                    if not cam.path.is_file():
                        raise VersionError(f"{cam.path}: image of the new frame {tok} does not resolve")
        except DatasetError as exc:
            raise VersionError(f"the version written for {root} does not load: {exc}") from None
        os.rename(tmp, root)
    except OSError as exc:  # a full disk, a read-only directory: nothing of the version is kept
        shutil.rmtree(tmp, ignore_errors=True)
        raise VersionError(f"{root}: cannot write the version: {one_line(exc)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def ingest(cat: Catalog, labels_path: str | Path, name: str | None = None, out: str | Path | None = None,
           relabel: bool = False) -> IngestSummary:
    """Validate a labels file whole, write a new dataset version, and record both in the catalog.

    ``labels_path``: nuScenes records (a JSON object) or a Label Studio export (a JSON list). Nothing is
    written when any record fails; see :mod:`data_engine.labels.builder` for the version written.
    """
    path = Path(labels_path)
    source = str(path)
    obj = read_labels_file(path)
    sources: dict[str, SourceDataset] = {}
    review: LabelStudioResult | None = None
    if isinstance(obj, list):
        review = labels_from_label_studio(cat, obj, source, relabel, sources)
        labels, fmt = review.labels, "label-studio"
    else:
        labels, fmt = parse_labels(obj, source), "nuscenes"
    valid = validate_labels(cat, labels, source, relabel, sources) if labels.frames or review is None else None
    if review is not None and valid is None and not review.full_labeling:
        raise LabelsError(f"{source}: no frame of the export can be applied: "
                          + "; ".join(f"{x['frame']} lacks reviewed {', '.join(x['missing'])}" for x in review.incomplete[:5]))
    versions_dir = cat.path.parent / "versions"
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise VersionError(f"--name {name!r}: a version name is letters, digits, '.', '_' and '-'")
    # From the parent and the name to the catalog's record of the version, one ingest at a time.
    with _ingest_lock(versions_dir) if valid is not None else contextlib.nullcontext():
        out_root = Path(out).resolve() if out is not None else None
        litter = _remove_litter(cat, versions_dir, out_root) if valid is not None else []
        parent = cat.dataset_version()
        name = name or _next_name(cat, versions_dir)
        if cat.dataset_version(name) is not None:
            raise VersionError(f"{cat.path}: version {name!r} exists; choose another --name")
        root = out_root if out_root is not None else (versions_dir / name).resolve()
        if valid is not None and root.exists():
            raise VersionError(f"{root}: already exists; the version is written to a new directory (give --out or --name)")
        details = dict(review.details) if review is not None else {"format": fmt}
        summary = IngestSummary(source, fmt, 0, None, None, parent["name"] if parent else None,
                                full_labeling=[f.sample_token for f in review.full_labeling] if review else [],
                                incomplete=review.incomplete if review else [], litter=litter)
        version_row = None
        if valid is not None:
            b = VersionBuilder()
            if parent is not None:
                b.add_parent(Path(parent["root"]))
            for droot in cat.labeled_dataset_roots():
                if droot not in b.sources:
                    b.add_dataset(load_source(droot, sources))
            b.drop_frames(fr.sample_token for fr in valid.frames)
            for fr in valid.frames:
                if b.add_frame(valid.sources[fr.dataset_root], fr.sample_token, valid.annotations[fr.sample_token],
                               valid.instances, source):
                    summary.frames_new.append(fr.sample_token)
                else:
                    summary.frames_relabeled.append(fr.sample_token)
            tables = b.finish()
            manifest = {"name": name, "parent": parent["name"] if parent else None, "catalog": str(cat.path.resolve()),
                        "labels": source, "sources": b.sources, "scenes": b.origins}
            _write_version(root, name, tables, b.splits, b.files, manifest, summary.frames_new)
            summary.version, summary.root = name, root
            summary.version_frames, summary.version_annotations = len(tables["sample"]), len(tables["sample_annotation"])
            summary.annotations = valid.annotation_count
            version_row = {"name": name, "root": str(root), "frames": summary.version_frames,
                           "annotations": summary.version_annotations}
            details.update(relabeled=summary.frames_relabeled, new_frames=len(summary.frames_new))
        counts = {fr.id: _class_counts(valid, fr) for fr in valid.frames} if valid else {}
        total: Counter[str] = Counter()
        for cc in counts.values():
            total.update({c: n for c, n in cc.items() if c in DETECTION_CLASSES})
        summary.classes = dict(sorted(total.items()))
        details["classes"] = summary.classes
        summary.details = details
        try:
            summary.batch_id = cat.apply_label_batch(
                source=source, fmt=fmt, labeled=counts,
                annotations={fr.id: len(valid.annotations[fr.sample_token]) for fr in valid.frames} if valid else {},
                full_labeling=[f.id for f in review.full_labeling] if review else [], details=details,
                expect=("queued", "labeled") if relabel else ("queued",), version=version_row,
                parent_id=parent["id"] if parent else None)
        except BaseException:
            if summary.root is not None:
                shutil.rmtree(summary.root, ignore_errors=True)
            raise
    return summary


# Every error of the ingest and diff paths, for the command line.
INGEST_ERRORS: tuple[type[Exception], ...] = (LabelsError, VersionError, CatalogError, DatasetError)
