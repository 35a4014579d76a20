"""The plugin API's earlier address: ``from data_engine.strategies import FrameOutput, Strategy, register``
keeps working for strategy plugin files written against it. The strategies live in
:mod:`data_engine.mining.strategies`; new plugins import from there."""

from data_engine.mining.strategies import FrameOutput, RunContext, RunStrategy, Strategy, StrategyError, register

__all__ = ["FrameOutput", "RunContext", "RunStrategy", "Strategy", "StrategyError", "register"]
