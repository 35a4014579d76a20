"""What the catalog hands out and takes in: a frame's row, a frame's outcome in a mining run, a pick
with why; and the reading of a frames row into a :class:`FrameRow`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# One predicted box as the catalog stores it (frame_results.predictions): ego frame of the frame's sample,
# metres, radians, m/s; "class" a detection class name, "score" in [0, 1].
PREDICTION_KEYS: tuple[str, ...] = ("class", "score", "center", "size", "yaw", "velocity")


@dataclass(frozen=True)
class FrameRow:
    """One catalogued multi-camera frame."""

    id: int
    dataset_root: str
    sample_token: str
    scene_name: str
    frame_index: int
    timestamp: int  # microseconds
    conditions: tuple[str, ...]
    cameras: dict[str, str]  # camera -> image path relative to dataset_root
    label_state: str


@dataclass
class FrameResult:
    """One frame's outcome in a mining run: its scores per strategy, or why it failed."""

    frame_id: int
    status: str = "scored"  # "scored" or "failed"
    reason: str | None = None  # why it failed
    embedding: np.ndarray | None = None  # float32 [E]
    predictions: list[dict[str, Any]] = field(default_factory=list)  # boxes, PREDICTION_KEYS
    scores: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)  # strategy -> (score, details)


@dataclass(frozen=True)
class Selection:
    """A frame picked by a mining run, with why."""

    frame: FrameRow
    rank: int  # 0 first
    score: float  # the combined score it was picked with
    reasons: list[str]
    scores: dict[str, float]  # strategy -> raw score
    predictions: list[dict[str, Any]]  # the model's boxes (PREDICTION_KEYS), ego frame


_FRAME_COLUMNS = ("f.id, d.root, f.sample_token, f.scene_name, f.frame_index, f.timestamp, f.conditions, f.cameras,"
                  " f.label_state")


def _frame_row(row: Sequence[Any]) -> FrameRow:
    i, r, t, s, k, ts, cond, cams, st = row
    return FrameRow(i, r, t, s, k, ts, tuple(x for x in cond.split(",") if x), json.loads(cams), st)
