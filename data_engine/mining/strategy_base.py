"""What every mining strategy is built on: the frame a strategy scores, what it may know of the run
(:class:`RunContext`), the strategy classes and their factory type, and the argument and score
helpers the built-in strategies share.

Plugins and callers use these through :mod:`data_engine.mining.strategies` (the public face of
strategies, with the registry); the built-in strategies import them from here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from perception.boxes import DecodedBoxes
from perception.errors import BevStackError
from perception.geometry import BEVGrid
from perception.heatmap import heatmap_peaks

if TYPE_CHECKING:
    from export.runtime.lens_monitor import CameraHealth
    from perception.metrics.detection_boxes import EvalBoxes

__all__ = ["FrameOutput", "RunContext", "RunStrategy", "Strategy", "StrategyError", "StrategyFactory",
           "binary_entropy", "centered", "cosine_distances", "int_arg"]

_EPS = 1e-6


class StrategyError(BevStackError):
    """An unknown strategy, a bad argument, or a plugin file that cannot be loaded."""


@dataclass
class FrameOutput:
    """What the model said about one multi-camera frame, and where the frame is.

    Boxes and grids are in the frame's reference ego frame (x forward, y left, metres).
    """

    token: str  # sample token
    timestamp: float  # s
    global_T_ego: np.ndarray  # [4, 4] reference ego frame -> global
    boxes: DecodedBoxes  # detections, sorted by score
    class_names: tuple[str, ...]  # boxes.label and the heatmap channels index this
    heatmap: np.ndarray  # float32 [K, Xd, Yd] detection probabilities on det_grid
    seg_prob: np.ndarray  # float32 [S, X, Y] BEV segmentation probabilities
    seg_classes: tuple[str, ...]
    embedding: np.ndarray  # float32 [E]
    det_grid: BEVGrid
    labels: EvalBoxes | None = None  # the frame's labels (labeled frames only)
    # camera -> its lens as the runtime's monitor read the images (EdgeResult.camera_health); empty if not run
    camera_health: dict[str, CameraHealth] = field(default_factory=dict)

    _peaks: np.ndarray | None = None

    @property
    def peaks(self) -> np.ndarray:
        """bool [K, Xd, Yd]: local maxima of each class's heatmap (computed once)."""
        if self._peaks is None:
            self._peaks = heatmap_peaks(self.heatmap)
        return self._peaks


@dataclass(frozen=True)
class RunContext:
    """What a strategy may know of the run before the frames are ranked."""

    budget: int  # frames the run selects
    reference_embeddings: np.ndarray  # [M, E] the labeled frames embedded in this run
    # [M] detection classes labeled in each of them; () when no strategy needs_reference_labels
    reference_classes: tuple[frozenset[str], ...]
    reference_scores: Mapping[str, np.ndarray]  # strategy name -> [M] its scores on them (NaN: not scored)


class Strategy:
    """Scores one frame. ``target`` says which frames it ranks: "unlabeled" (what to label next) or
    "labeled" (label QA); a ``trigger`` fires or not, and its score says how strongly.

    Before the frames are ranked (after every frame is scored), :meth:`prepare` is called with the
    :class:`RunContext`; a strategy that calibrates itself on the labeled frames does it there."""

    target: str = "unlabeled"
    trigger: bool = False
    needs_labels: bool = False  # FrameOutput.labels must be set
    needs_reference: bool = False  # the run must also embed the labeled frames
    needs_reference_labels: bool = False  # RunContext.reference_classes must be read from the labels
    calibrated: bool = True  # fired() is defined; False until prepare() calibrates it (no "fired" detail then)

    def __init__(self, name: str) -> None:
        self.name = name

    def prepare(self, context: RunContext) -> None:
        """Learn what the strategy needs of the run before ranking (default: nothing)."""

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        """(score, details) of frame ``out``; ``prev`` is the frame before it in its scene, or None."""
        raise NotImplementedError

    def fired(self, score: float, details: dict[str, Any]) -> bool:
        """Whether a trigger fired (strategies that are not triggers fire when their score is > 0)."""
        return score > 0


class RunStrategy(Strategy):
    """Scores every frame of a run at once, from the embeddings (after the model has run)."""

    def score(self, out: FrameOutput, prev: FrameOutput | None) -> tuple[float, dict[str, Any]]:
        raise TypeError(f"{self.name} scores a whole run; call score_run")

    def score_run(self, embeddings: np.ndarray, reference: np.ndarray) -> list[tuple[float, dict[str, Any]]]:
        """embeddings [N, E] of the frames to rank, reference [M, E] of the labeled frames -> N scores."""
        raise NotImplementedError


StrategyFactory = Callable[[str | None], Strategy]  # called with the spec's argument (or None)


def int_arg(name: str, arg: str | None, default: int) -> int:
    """A spec's integer argument (``default`` when absent), >= 1; :class:`StrategyError` names the strategy."""
    try:
        value = int(arg) if arg else default
    except ValueError:
        raise StrategyError(f"{name}: expected an integer argument, got {arg!r}") from None
    if value < 1:
        raise StrategyError(f"{name}: the argument must be >= 1, got {value}")
    return value


def binary_entropy(p: np.ndarray) -> np.ndarray:
    """Entropy in bits of Bernoulli(p), elementwise (0 at p = 0 or 1, 1 at p = 0.5)."""
    p = np.clip(np.asarray(p, np.float64), _EPS, 1 - _EPS)
    return -(p * np.log2(p) + (1 - p) * np.log2(1 - p))


def centered(*parts: np.ndarray) -> list[np.ndarray]:
    """The embedding sets [Ni, E] moved to the mean of all of them: post-ReLU embeddings all point
    one way, and cosine distances only separate frames once that common direction is removed."""
    rows = [np.asarray(p, np.float64) for p in parts]
    stacked = np.concatenate([r for r in rows if len(r)]) if any(len(r) for r in rows) else np.zeros((1, 1))
    mu = stacked.mean(axis=0)
    return [r - mu if len(r) else r for r in rows]


def cosine_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """[N, M] cosine distances (1 - cos) between rows of a [N, E] and b [M, E]."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    a = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), _EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), _EPS)
    return np.clip(1.0 - a @ b.T, 0.0, 2.0)
