"""Typed configuration values from YAML: each value checked against its dataclass field's type.

The one loader behind ``perception train``'s experiment configs (:mod:`perception.config`) and the
data engine's loop configs: YAML parsed with ``yaml.safe_load``, ``key=value`` overrides, a value
coerced to its field type (int, float, bool, str, Literal, optional/union, tuples and lists of those,
nested dataclasses from mappings) or refused with a :class:`ConfigError` naming the dotted key, what
was expected and where the value came from.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import yaml

from .errors import BevStackError

__all__ = ["ConfigError", "build_dataclass", "coerce", "parse_override", "parse_yaml", "read_yaml_mapping"]


class ConfigError(BevStackError):
    """An unknown key or a bad value in a configuration (the message names it)."""


def read_yaml_mapping(path: str | Path, expected: str = "a config is a mapping of keys") -> dict[str, Any]:
    """The mapping a YAML file holds ({} for an empty file); a :class:`ConfigError` naming the file
    when it cannot be read, is not UTF-8 or YAML, or holds something else than a mapping."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {path}: {e}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text ({e})") from None
    data = parse_yaml(text, f"{path}: not valid YAML")
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: {expected}, got {type(data).__name__}")
    return dict(data)


def parse_override(item: str) -> tuple[str, Any, str]:
    """``key=value`` as (key, the value parsed as YAML, the value's text as written)."""
    key, sep, text = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {item!r} is not key=value (e.g. train.lr=3e-4)")
    return key, parse_yaml(text, f"{key}: cannot parse value {text!r}"), text.strip()


def build_dataclass(base: Any, values: Mapping[str, Any], prefix: str, texts: Mapping[str, str] | None = None,
                    sources: Mapping[str, str] | None = None, excluded: Mapping[str, str] | None = None) -> Any:
    """``base`` (a dataclass instance, or a dataclass type whose defaults are used) with ``values``
    replaced, each checked against its field type; the class's own validation runs last and its
    error is named by ``prefix``. ``excluded``: field -> what sets it instead (not a key here)."""
    cls = base if isinstance(base, type) else type(base)
    hints = get_type_hints(cls)
    excluded = excluded or {}
    valid = [f.name for f in dataclasses.fields(cls) if f.name not in excluded]
    kwargs = {}
    for key, value in values.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        source = (sources or {}).get(dotted)
        where = f" (from {source})" if source else ""
        if key in excluded:
            raise ConfigError(f"key {dotted!r}{where} is set by {excluded[key]}")
        if key not in valid:
            raise ConfigError(f"unknown key {dotted!r}{where}; valid keys{f' of {prefix!r}' if prefix else ''}: "
                              f"{', '.join(valid)}")
        kwargs[key] = coerce(value, hints[key], dotted, (texts or {}).get(dotted), sources)
    if isinstance(base, type):
        required = [f.name for f in dataclasses.fields(cls) if f.init and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING]
        missing = [k for k in required if k not in kwargs]
        if missing:
            raise ConfigError(f"{prefix + ': ' if prefix else ''}missing key{'s' if len(missing) > 1 else ''} "
                              f"{', '.join(repr(k) for k in missing)}")
    try:
        return dataclasses.replace(base, **kwargs) if not isinstance(base, type) else base(**kwargs)
    except (ValueError, TypeError) as e:  # the class's own validation: its message, named by the prefix
        message = " ".join(str(e).split())
        if not prefix or message.startswith(f"{prefix}."):
            raise ConfigError(message) from None
        raise ConfigError(f"{prefix}: {message}") from None


def parse_yaml(text: str, what: str) -> Any:
    """``yaml.safe_load(text)``; a :class:`ConfigError` starting with ``what`` when it cannot be read
    (bad syntax, nesting deeper than the parser recurses, an integer of more digits than Python converts)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{what}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{what}: nested too deeply") from None
    except ValueError as e:
        raise ConfigError(f"{what}: {' '.join(str(e).split())}") from None


def coerce(value: Any, tp: Any, key: str, text: str | None = None,
           sources: Mapping[str, str] | None = None) -> Any:
    """``value`` as field type ``tp`` (int, float, bool, str, Literal, optional/union, tuples and lists
    of those, a dataclass from a mapping); ints are accepted (and converted) for floats, lists for tuples. ``text`` is the override as written."""
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key, text, sources)
            except ConfigError:
                pass
    elif origin is Literal:
        if isinstance(value, str) and value in get_args(tp):
            return value
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (arg,) = get_args(tp)
            return [coerce(v, arg, f"{key}[{i}]", None, sources) for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if isinstance(value, Mapping):
            return build_dataclass(tp, {str(k): v for k, v in value.items()}, key, None, sources)
    elif origin is tuple:
        args = get_args(tp)
        if isinstance(value, (list, tuple)):
            if len(args) == 2 and args[1] is Ellipsis:
                return tuple(coerce(v, args[0], f"{key}[{i}]", None, sources) for i, v in enumerate(value))
            if len(value) == len(args):
                return tuple(coerce(v, a, f"{key}[{i}]", None, sources) for i, (v, a) in enumerate(zip(value, args)))
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                return float(value)
            except OverflowError:  # an int beyond the float range
                pass
        elif isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if text is not None and value is not None:  # train.name=2024: the text as written
            return text
    else:
        raise TypeError(f"{key}: unsupported config field type {tp!r}")
    source = (sources or {}).get(key.split("[")[0])
    raise ConfigError(f"{key}: expected {type_name(tp)}, got {value!r}" + (f" (from {source})" if source else ""))


def type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        return " | ".join("None" if a is type(None) else type_name(a) for a in get_args(tp))
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin is list:
        return f"a list of {type_name(get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {', '.join(f.name for f in dataclasses.fields(tp))}"
    if origin is tuple:
        args = get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {type_name(args[0])}"
        return f"a list of {len(args)} ({', '.join(type_name(a) for a in args)})"
    return getattr(tp, "__name__", str(tp))
