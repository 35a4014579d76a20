"""Label QA measured: how well model-vs-label disagreement finds label errors planted on purpose.

`data-engine label --oracle sim --state labeled --inject missing=F,class=F,shift=F` writes labels with
known errors and an errors file; once they are ingested, a mining run with the ``disagreement``
strategy ranks the labeled frames. Precision at k is the fraction of the k highest-ranked frames that
hold at least one planted error; the base rate (the fraction of all ranked frames holding one) is what
a random ranking scores on average.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..catalog import Catalog, CatalogError

__all__ = ["qa_precision", "read_errors"]


def read_errors(path: str | Path) -> list[dict[str, Any]]:
    """The planted errors of an errors file: a list of {kind, sample_token, ...} (or {"errors": [...]})."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CatalogError(f"{path}: cannot read the errors file ({exc})") from None
    errors = data.get("errors") if isinstance(data, dict) else data
    if not isinstance(errors, list) or not all(isinstance(e, dict) and "sample_token" in e and "kind" in e
                                               for e in errors):
        raise CatalogError(f"{path}: expected a list of errors, each with 'kind' and 'sample_token'")
    return errors


def qa_precision(cat: Catalog, run: str, errors: Sequence[dict[str, Any]], ks: Sequence[int] = (10, 20, 50),
                 strategy: str | None = None) -> dict[str, Any]:
    """Precision at each k of the run's ranking of labeled frames (by ``strategy``'s score, default the
    run's first strategy) at finding frames with planted errors, the base rate, and recall per kind."""
    info = cat.run_info(run)
    strategy = strategy or info["strategies"][0]
    rows = cat.conn.execute(
        "SELECT f.sample_token, s.score FROM scores s JOIN frames f ON f.id = s.frame_id"
        " WHERE s.run_id = ? AND s.strategy = ? AND f.label_state = 'labeled' ORDER BY s.score DESC, f.id",
        (info["id"], strategy)).fetchall()
    if not rows:
        raise CatalogError(f"run {run!r} has no {strategy!r} scores of labeled frames")
    ranked = [t for t, _ in rows]
    bad = {e["sample_token"] for e in errors}
    base = sum(t in bad for t in ranked) / len(ranked)
    out: dict[str, Any] = {"run": run, "strategy": strategy, "frames_ranked": len(ranked),
                           "frames_with_errors": sum(t in bad for t in ranked), "base_rate": round(base, 4),
                           "precision_at": {}, "recall_by_kind_at": {}}
    kinds = sorted({e["kind"] for e in errors})
    for k in ks:
        top = set(ranked[:k])
        out["precision_at"][str(k)] = round(sum(t in bad for t in ranked[:k]) / min(k, len(ranked)), 4)
        out["recall_by_kind_at"][str(k)] = {
            kind: round(sum(e["sample_token"] in top for e in errors if e["kind"] == kind)
                        / max(1, sum(e["kind"] == kind for e in errors)), 4) for kind in kinds}
    return out
