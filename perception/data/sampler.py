"""Sampling whole clips of consecutive frames for temporal training (and whole scenes for evaluation).

:class:`ClipBatchSampler` cuts each scene into clips of ``clip_length`` consecutive frames, shuffles
the clips, and yields batches step by step: batch t of a group holds frame t of B clips, so a
training loop carries the video state from one batch to the next and resets it where
``is_first`` is set. Under DDP each rank takes its own share of the clips.
"""

from __future__ import annotations

import zlib
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

from .batch import FrameRef


class ClipBatchSampler(Sampler[list[FrameRef]]):
    """Batches of :class:`FrameRef`, one clip per batch slot, clip steps in order.

    clips: per scene, the dataset positions of its frames in time order (``MultiCamDataset.clips()``).
    clip_length: frames per clip (1 for frame-level training); None takes each scene whole, and
    then only clips of equal length share a batch.
    """

    def __init__(self, clips: list[list[int]], batch_size: int, clip_length: int | None = 1, *, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if clip_length is not None and clip_length < 1:
            raise ValueError(f"clip_length must be >= 1 or None, got {clip_length}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.clips = [list(c) for c in clips if c]
        self.batch_size = batch_size
        self.clip_length = clip_length
        self.shuffle = shuffle
        self.seed = seed
        self.drop_last = drop_last
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Reshuffle for a new epoch (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def _windows(self, rng: np.random.Generator) -> list[list[int]]:
        if self.clip_length is None:
            return [c for c in self.clips]
        out = []
        T = self.clip_length
        for c in self.clips:
            if len(c) < T:
                continue
            start = int(rng.integers(0, len(c) - T + 1)) % T if self.shuffle else 0
            out += [c[s:s + T] for s in range(start, len(c) - T + 1, T)]
        return out

    def _groups(self) -> list[list[tuple[int, list[int]]]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        windows = list(enumerate(self._windows(rng)))
        if self.shuffle:
            order = rng.permutation(len(windows))
            windows = [windows[i] for i in order]
        # With drop_last every rank gets the same number of windows (DDP training steps in lockstep);
        # without it nothing is dropped and ranks may differ by one window (evaluation, which runs no
        # collective per step).
        if self.drop_last and self.world_size > 1:
            per_rank = len(windows) // self.world_size
            windows = windows[: per_rank * self.world_size]
        mine = windows[self.rank::self.world_size]
        if self.clip_length is None:
            mine = sorted(mine, key=lambda w: len(w[1]))
        groups: list[list[tuple[int, list[int]]]] = []
        current: list[tuple[int, list[int]]] = []
        for w in mine:
            if current and (len(current) == self.batch_size or len(current[0][1]) != len(w[1])):
                groups.append(current)
                current = []
            current.append(w)
        if current:
            groups.append(current)
        if self.drop_last:
            groups = [g for g in groups if len(g) == self.batch_size]
        return groups

    def __iter__(self) -> Iterator[list[FrameRef]]:
        for group in self._groups():
            seeds = [zlib.crc32(f"{self.seed}/{self.epoch}/{wid}".encode()) for wid, _ in group]
            length = len(group[0][1])
            for t in range(length):
                yield [FrameRef(w[t], t, s) for (_, w), s in zip(group, seeds)]

    def __len__(self) -> int:
        return sum(len(g[0][1]) for g in self._groups())
