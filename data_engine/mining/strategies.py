"""Mining strategies and triggers: how interesting one multi-camera frame is to label.

A strategy scores one frame from the model's outputs on it (and, for temporal triggers, on the
frame before it in its scene); a run strategy (novelty) scores the whole run at once from the frame
embeddings. Before ranking, every strategy's ``prepare`` sees the :class:`RunContext` (the budget,
the labeled frames' embeddings, classes and scores): a strategy fitted to the labeled frames learns
there. Strategies are named by a spec ``name`` or ``name:arg`` and built by :func:`make_strategy`
from the :data:`STRATEGIES` registry. Users add their own from a Python file passed with
``data-engine mine --plugin FILE``:

    from data_engine.mining.strategies import FrameOutput, Strategy, register

    @register("far_objects")
    def far_objects(arg: str | None) -> Strategy:
        '''Frames with confident detections beyond ARG metres (default 20).'''
        limit = float(arg or 20)

        class Far(Strategy):
            def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict]:
                far = np.linalg.norm(out.boxes.center[:, :2], axis=1) > limit
                return float(out.boxes.score[far].sum()), {"far": int(far.sum())}

        return Far(f"far_objects:{limit:g}")

The registry starts with the built-in strategies of :mod:`data_engine.mining.builtin_strategies`
(listed there); the classes a strategy is made of live in :mod:`data_engine.mining.strategy_base`
and are re-exported here, the one import plugins need.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from .builtin_strategies import BUILTIN_STRATEGIES
from .strategy_base import (
    FrameOutput,
    RunContext,
    RunStrategy,
    Strategy,
    StrategyError,
    StrategyFactory,
    binary_entropy,
    centered,
    cosine_distances,
)

__all__ = ["STRATEGIES", "FrameOutput", "RunContext", "RunStrategy", "Strategy", "StrategyError", "binary_entropy",
           "centered", "cosine_distances", "load_plugins", "make_strategy", "plugin_file", "register",
           "strategy_failure"]

STRATEGIES: dict[str, StrategyFactory] = dict(BUILTIN_STRATEGIES)


def register(name: str) -> Callable[[StrategyFactory], StrategyFactory]:
    """Register a strategy factory under ``name``; it is called with the spec's argument (or None)."""
    if not name.replace("_", "").isalnum():
        raise StrategyError(f"strategy name {name!r}: use letters, digits and underscores")

    def deco(factory: StrategyFactory) -> StrategyFactory:
        STRATEGIES[name] = factory
        return factory

    return deco


def make_strategy(spec: str) -> Strategy:
    """The strategy of a spec ``name`` or ``name:arg``; its ``name`` is the spec (the catalog key)."""
    name, _, arg = spec.strip().partition(":")
    if name not in STRATEGIES:
        raise StrategyError(f"unknown strategy {name!r} (known: {', '.join(sorted(STRATEGIES))}; "
                            "add your own with --plugin FILE)")
    factory = STRATEGIES[name]
    try:
        strategy = factory(arg or None)
    except StrategyError:
        raise
    except Exception as exc:  # noqa: BLE001 - a plugin's factory may raise anything
        where = _code_file(getattr(factory, "__module__", None))
        if where is None:
            raise  # a built-in factory's bug keeps its traceback
        raise StrategyError(f"strategy {spec.strip()} (plugin {where}) cannot be made: "
                            f"{type(exc).__name__}: {exc}") from None
    strategy.name = spec.strip()
    return strategy


def _code_file(module: str | None) -> str | None:
    """The file of a module that is not part of bevstack (a plugin or what it imports), else None."""
    if not module or module == __name__ or module.split(".")[0] in ("data_engine", "perception", "export"):
        return None
    return str(getattr(sys.modules.get(module), "__file__", None) or module)


def plugin_file(strategy: Strategy) -> str | None:
    """The file holding the code of a user's strategy (a ``--plugin`` file), None for a built-in one."""
    return _code_file(type(strategy).__module__)


def strategy_failure(strategy: Strategy, where: str, exc: BaseException) -> StrategyError:
    """The error to raise when a plugin strategy's code raised ``exc`` (``where``: "on frame TOKEN", ...)."""
    return StrategyError(f"strategy {strategy.name} (plugin {plugin_file(strategy)}) failed {where}: "
                         f"{type(exc).__name__}: {exc}")


def load_plugins(paths: Sequence[str | Path]) -> None:
    """Import user strategy files (each registers its strategies with :func:`register`)."""
    for path in paths:
        path = Path(path).resolve()
        if not path.is_file():
            raise StrategyError(f"{path}: strategy plugin file missing")
        module_name = "bevstack_plugin_" + hashlib.sha1(str(path).encode()).hexdigest()[:12]
        if module_name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise StrategyError(f"{path}: not a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise StrategyError(f"{path}: the plugin failed to load ({type(exc).__name__}: {exc})") from exc
