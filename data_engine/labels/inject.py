"""Error injection for label-QA experiments: known fractions of the annotations made wrong on purpose.

`data-engine label --inject missing=F,class=F,shift=F` drops annotations, gives objects another class
or moves boxes, and lists every planted error (:func:`data_engine.labels.records.errors_path`) so that
:mod:`data_engine.labels.qa` can measure how many a mining run finds.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

import numpy as np

from perception.data.nuscenes_tables import Record
from perception.schema import CATEGORY_TO_DETECTION, DETECTION_CLASSES

from .records import CLASS_CATEGORY, Labels, LabelsError, SourceDataset, chain_instances, hash_token

__all__ = ["INJECT_KINDS", "inject_errors", "parse_inject"]

INJECT_KINDS: tuple[str, ...] = ("missing", "class", "shift")
SHIFT_RANGE_M = (1.5, 3.0)  # an injected shift moves the centre this far, horizontally


def parse_inject(spec: str) -> dict[str, float]:
    """``missing=0.05,class=0.02,shift=0.03`` -> fractions of the annotations per error kind."""
    rates: dict[str, float] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        kind, sep, value = part.partition("=")
        kind = kind.strip()
        if kind not in INJECT_KINDS or not sep:
            raise LabelsError(f"--inject: expected KIND=FRACTION[,...] with KIND one of {', '.join(INJECT_KINDS)}, "
                              f"got {part!r}")
        try:
            rate = float(value)
        except ValueError:
            raise LabelsError(f"--inject: {kind} fraction {value!r} is not a number") from None
        if not 0.0 <= rate <= 1.0:
            raise LabelsError(f"--inject: {kind} fraction {rate} must be within 0..1")
        rates[kind] = rate
    if sum(rates.values()) > 1.0:
        raise LabelsError(f"--inject: the fractions add up to {sum(rates.values()):g}, more than every annotation")
    return rates


def inject_errors(labels: Labels, rates: Mapping[str, float], seed: int,
                  source_of: Mapping[str, SourceDataset]) -> tuple[Labels, list[dict[str, Any]]]:
    """A copy of ``labels`` with known errors, and the list of them (label-QA experiments).

    round(rate * annotations) distinct annotations get each kind of error: ``missing`` drops it;
    ``class`` gives its object another detection class's category, under a new instance of its own (the
    object's other frames are unaffected); ``shift`` moves its centre 1.5-3 m in a random horizontal
    direction. ``source_of``: sample token -> its dataset (for category tokens and times). Deterministic
    in ``seed``. Each error: {kind, sample_token, annotation_token, instance_token (both original), detail}.
    """
    out = copy.deepcopy(labels)
    anns = out.annotations
    instances = {r["token"]: r for r in out.instances}
    n = len(anns)
    want = {k: round(rates.get(k, 0.0) * n) for k in INJECT_KINDS}
    rng = np.random.default_rng(seed)
    order = [int(i) for i in rng.permutation(n)]

    def category(a: Record) -> str:
        return source_of[a["sample_token"]].category_name(instances[a["instance_token"]]["category_token"]) or ""

    picked: dict[str, list[int]] = {}
    free = order
    for kind in ("class", "missing", "shift"):  # class first: only detection-class boxes can be reclassed
        ok = [i for i in free if kind != "class" or category(anns[i]) in CATEGORY_TO_DETECTION]
        if len(ok) < want[kind]:
            raise LabelsError(f"--inject: {want[kind]} {kind} errors asked for, but only {len(ok)} annotations can "
                              f"take one ({n} annotations in all)")
        picked[kind] = ok[: want[kind]]
        taken = set(picked[kind])
        free = [i for i in free if i not in taken]
    errors: list[dict[str, Any]] = []
    touched: set[str] = set()
    dropped: set[int] = set()
    for kind in INJECT_KINDS:
        for i in sorted(picked[kind]):
            a = anns[i]
            err = {"kind": kind, "sample_token": a["sample_token"], "annotation_token": a["token"],
                   "instance_token": a["instance_token"], "detail": {}}
            src = source_of[a["sample_token"]]
            if kind == "missing":
                dropped.add(i)
                touched.add(a["instance_token"])
                err["detail"] = {"category": category(a)}
            elif kind == "shift":
                dist, angle = rng.uniform(*SHIFT_RANGE_M), rng.uniform(0.0, 2.0 * np.pi)
                offset = [float(dist * np.cos(angle)), float(dist * np.sin(angle)), 0.0]
                a["translation"] = [float(v + d) for v, d in zip(a["translation"], offset)]
                err["detail"] = {"offset": offset, "distance": float(dist)}
            else:
                old = category(a)
                choices = [c for c in DETECTION_CLASSES if c != CATEGORY_TO_DETECTION[old]
                           and src.category_token(CLASS_CATEGORY[c]) is not None]
                new = CLASS_CATEGORY[choices[int(rng.integers(len(choices)))]]
                inst = hash_token("injected-class", a["token"])
                instances[inst] = {"token": inst, "category_token": src.category_token(new), "nbr_annotations": 1,
                                   "first_annotation_token": a["token"], "last_annotation_token": a["token"]}
                touched.update({a["instance_token"], inst})
                a["instance_token"] = inst
                err["detail"] = {"from": old, "to": new, "new_instance_token": inst}
            errors.append(err)
    out.annotations = [a for i, a in enumerate(anns) if i not in dropped]
    times = {tok: src.reader.sample(tok).timestamp for tok, src in source_of.items()}
    chain_instances(out.annotations, instances, touched, times)
    out.instances = list(instances.values())
    return out, errors
