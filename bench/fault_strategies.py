"""Hypothesis strategies of malformed input: odd values, one-point mutations of a JSON-like document,
and raw file contents that no reader of the project may choke on.

A mutation changes one place of a valid document (a table record's field, a key of a config section,
an entry of a checkpoint dict): it replaces the value with an odd one, deletes it, duplicates a list
element, adds an unknown key or wraps the value in another type. :class:`Raw` values are JSON text
spliced in verbatim when the document is serialized, for what a Python object cannot express (nesting
deeper than ``json.dumps`` recurses, an integer of more digits than ``int()`` converts).
"""

from __future__ import annotations

import json
import math
from copy import copy
from dataclasses import dataclass
from collections.abc import Sequence
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import DataObject, SearchStrategy

__all__ = ["DEEP_JSON", "ODD_STRINGS", "RAW_FILES", "YAML_TEXTS", "Raw", "dump_json", "file_contents", "mutate",
           "number_paths", "odd_values", "short"]

DEPTH = 20_000  # brackets of the deeply nested inputs
DEEP_JSON = "[" * DEPTH + "]" * DEPTH
BIG_INT = "9" * 5000  # more digits than int() converts (sys.get_int_max_str_digits() is 4300)

ODD_STRINGS: tuple[str, ...] = (
    "", " ", ".", "..", "../../../../etc/passwd", "/etc/passwd", "samples/../../../outside.jpg", "a\x00b",
    "é☃𝄞", "\ud800", "\u202etxt.exe", "b²", "b" + "9" * 5000, "NaN", "null", "1e999", "-0", "x" * 300, "%s%n", "${HOME}", "C:\\x",
)
ODD_NUMBERS: tuple[Any, ...] = (0, -1, 1, 2**31, 2**63, -(2**63) - 1, 10**30, 10**400, math.nan, math.inf, -math.inf,
                                -0.0, 1e308, 5e-324, 0.5)


@dataclass(frozen=True)
class Raw:
    """JSON text spliced into a document verbatim by :func:`dump_json`."""

    text: str


RAW_VALUES: tuple[Raw, ...] = (
    Raw(DEEP_JSON), Raw('{"a":' * DEPTH + "1" + "}" * DEPTH), Raw(BIG_INT), Raw("-" + BIG_INT), Raw("1e400"),
    Raw("-1e400"), Raw("NaN"), Raw("Infinity"), Raw('"\\udc80"'),
)

# Whole-file contents: empty, truncated, wrong top-level types, bytes that are not UTF-8, nesting.
RAW_FILES: tuple[bytes, ...] = (
    b"", b" ", b"{", b"[", b"null", b"42", b'"text"', b"{}", b"[]", b"[1, 2]", b"[null]", b'[{"token": 1}]',
    b"\xff\xfe\xfa\x00", b"\x00" * 16, b"\xef\xbb\xbf[]", b'["\xc3\x28"]', b"NaN", DEEP_JSON.encode(),
    BIG_INT.encode(), b"[" + BIG_INT.encode() + b"]", b"\x80\x02}q\x00.", b"PK\x03\x04" + b"\x00" * 26,
)


YAML_TEXTS: tuple[str, ...] = (
    "", "~", "[]", "- a", "a: b: c", "\t", "train: [1, 2", "!!python/object/apply:os.system ['true']",
    "train: {name: &a [*a]}", "? [1, 2]\n: 3", "train:\n  ? {a: 1}\n  : x", "train: {lr: !!binary aGVsbG8=}",
    "train: {steps: 2001-01-01}", "preset: !!set {a, b}", "train: {lr: .nan}", "train: {steps: 1e999}",
    "train: {steps: " + "9" * 5000 + "}", "model: {bev_channels: -1}", "<<: {train: {}}", "preset: [tiny]",
    "train: {name: ../..}", "dataset: {split: x}", "train:\n  name: a\n  name: b", "%YAML 9.9\n---\na: 1",
    "train: {lr: 0x10}", "train: {steps: 0o17}", "train: {steps: 1_000}", "&x a: *x", "*undefined",
)


def file_contents(base: bytes) -> st.SearchStrategy[bytes | None]:
    """A whole file's new content: None (deleted), a raw file, random bytes, or ``base`` truncated."""
    return st.one_of(st.none(), st.sampled_from(RAW_FILES), st.binary(max_size=64),
                     st.integers(0, max(len(base) - 1, 0)).map(lambda n: base[:n]))


def odd_values(*extra: SearchStrategy[Any]) -> SearchStrategy[Any]:
    """Values of every JSON type and then some: odd numbers and strings, tokens that resolve to
    nothing (32 hex digits), small containers, :class:`Raw` texts, and any ``extra`` strategies."""
    scalars = st.one_of(
        st.none(), st.booleans(), st.integers(), st.floats(), st.sampled_from(ODD_NUMBERS),
        st.text(max_size=12), st.sampled_from(ODD_STRINGS),
        st.text("0123456789abcdef", min_size=32, max_size=32),
    )
    containers = st.one_of(
        st.lists(scalars, max_size=4), st.dictionaries(st.text(max_size=6), scalars, max_size=3),
        st.sampled_from(RAW_VALUES),
    )
    return st.one_of(scalars, containers, *extra)


def short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters (an input summary stays one short line)."""
    if isinstance(value, Raw):
        text = f"Raw({value.text[:20]!r}... {len(value.text)} chars)" if len(value.text) > 30 else f"Raw({value.text!r})"
    elif isinstance(value, (bytes, str)) and len(value) > limit:
        text = f"{value[:limit // 2]!r}... ({len(value)} {'bytes' if isinstance(value, bytes) else 'chars'})"
    else:
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def dump_json(doc: Any) -> str:
    """``doc`` as JSON text, :class:`Raw` values spliced in as written, NaN and infinities as Python writes them."""
    raws: list[str] = []

    def placeholder(value: Any) -> str:
        if not isinstance(value, Raw):
            raise TypeError(f"cannot serialize {type(value).__name__}")
        raws.append(value.text)
        return f"\x00raw{len(raws) - 1}\x00"

    text = json.dumps(doc, default=placeholder)
    for i, raw in enumerate(raws):
        text = text.replace(json.dumps(f"\x00raw{i}\x00"), raw, 1)
    return text


def _keys(node: Any) -> list[Any]:
    return list(node) if isinstance(node, dict) else list(range(len(node)))


def _copy_along(doc: Any, path: list[Any]) -> tuple[Any, Any]:
    """A copy of ``doc`` whose containers along ``path`` (all but the last key) are copied too, and
    the copied parent of the last key; the rest is shared with ``doc``."""
    root = copy(doc)
    parent = root
    for key in path[:-1]:
        child = copy(parent[key])
        parent[key] = child
        parent = child
    return root, parent


OPS = ("replace", "replace", "replace", "delete", "duplicate", "extra_key", "retype")


def number_paths(doc: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """The paths of every number (not bool) in ``doc``, for mutations aimed at numeric fields."""
    if isinstance(doc, (dict, list)):
        return [p for k in _keys(doc) for p in number_paths(doc[k], (*path, k))]
    return [path] if isinstance(doc, (int, float)) and not isinstance(doc, bool) else []


def mutate(data: DataObject, doc: Any, values: SearchStrategy[Any], min_depth: int = 1, max_depth: int = 5,
           numbers: Sequence[tuple[Any, ...]] = ()) -> tuple[Any, str]:
    """One mutation of ``doc`` (a dict or list of JSON-like values) at a place at least ``min_depth``
    keys deep; returns the mutated copy (``doc`` is left as it is) and a one-line summary. Given
    ``numbers`` (:func:`number_paths` of ``doc``), a quarter of the mutations set one of those numbers
    to an odd one (NaN, infinities, out of the float range, huge, negative, zero)."""
    if numbers and data.draw(st.integers(0, 3), label="number") == 0:
        at = list(data.draw(st.sampled_from(numbers), label="number path"))
        number = data.draw(st.one_of(st.sampled_from(ODD_NUMBERS), st.floats(), st.integers()), label="number")
        new, parent = _copy_along(doc, at)
        parent[at[-1]] = number
        return new, f"{'/'.join(str(k) for k in at)} = {short(number)}"
    path: list[Any] = []
    node = doc
    while isinstance(node, (dict, list)) and node and len(path) < max_depth:
        if len(path) >= min_depth and data.draw(st.integers(0, 3), label="stop here") == 0:
            break
        key = data.draw(st.sampled_from(_keys(node)), label="key")
        path.append(key)
        node = node[key]
    where = "/".join(str(k) for k in path) or "<root>"
    op = data.draw(st.sampled_from(OPS), label="op")
    if not path:
        value = data.draw(values, label="value")
        return value, f"{where} = {short(value)}"
    new, parent = _copy_along(doc, path)
    key = path[-1]
    if op == "delete":
        del parent[key]
        return new, f"{where} deleted"
    if op == "duplicate" and isinstance(parent, list):
        parent.insert(key, parent[key])
        return new, f"{where} duplicated"
    if op == "extra_key" and isinstance(node, dict):
        name, value = data.draw(st.text(max_size=8), label="new key"), data.draw(values, label="value")
        parent[key] = {**node, name: value}
        return new, f"{where} gains key {name!r} = {short(value)}"
    if op == "retype":
        wrap = data.draw(st.sampled_from(("list", "dict", "str", "none")), label="retype")
        parent[key] = {"list": lambda: [node], "dict": lambda: {"value": node}, "str": lambda: str(node),
                       "none": lambda: None}[wrap]()
        return new, f"{where} retyped to {wrap}"
    value = data.draw(values, label="value")
    parent[key] = value
    return new, f"{where} = {short(value)}"
