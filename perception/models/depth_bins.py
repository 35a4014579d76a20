"""Categorical depth bins: the one definition shared by the lift-splat view transform and the depth loss.

The model lifts each image feature to the ``count`` bin centres (m, along the camera's optical axis,
camera z), weighted by a softmax over its ``depth_logits``; the loss supervises those logits with the
bin of the lidar depth. Both read the bins from here, so they cannot disagree.

Importing this module does not import torch (presets and checkpoints may carry a ``DepthBins``);
:meth:`DepthBins.index` and :meth:`DepthBins.centers_tensor` work on torch tensors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["DepthBins"]


@dataclass(frozen=True)
class DepthBins:
    """``count`` linearly spaced depth bins whose centres run from ``d_min`` to ``d_max`` (inclusive).

    Bin k has centre ``d_min + k * step`` (``step = (d_max - d_min) / (count - 1)``) and covers depths
    ``[centre - step / 2, centre + step / 2)``; together the bins cover ``[d_min - step/2, d_max + step/2)``.
    ``d_min``, ``d_max`` and ``count`` mean what ``ModelConfig.depth_min``, ``depth_max`` and
    ``depth_bins`` mean: ``DepthBins(cfg.depth_min, cfg.depth_max, cfg.depth_bins)``.
    """

    d_min: float  # m, centre of the nearest bin (> 0)
    d_max: float  # m, centre of the farthest bin (> d_min)
    count: int  # number of bins D (>= 2)

    def __post_init__(self) -> None:
        if self.count < 2:
            raise ValueError(f"DepthBins needs count >= 2, got {self.count}")
        if not 0.0 < self.d_min < self.d_max:
            raise ValueError(f"DepthBins needs 0 < d_min < d_max, got d_min={self.d_min}, d_max={self.d_max}")

    @property
    def step(self) -> float:
        """m between neighbouring bin centres (the width of every bin)."""
        return (self.d_max - self.d_min) / (self.count - 1)

    @property
    def lower(self) -> float:
        """m, the nearest depth any bin covers (inclusive)."""
        return self.d_min - 0.5 * self.step

    @property
    def upper(self) -> float:
        """m, the farthest depth any bin covers (exclusive)."""
        return self.d_max + 0.5 * self.step

    @property
    def centers(self) -> tuple[float, ...]:
        """The D bin centres in metres, nearest first."""
        return tuple(self.d_min + k * self.step for k in range(self.count))

    def centers_tensor(
        self, device: torch.device | str | None = None, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """The bin centres as a tensor [D] (float32 unless ``dtype``), e.g. for the lift's frustum."""
        import torch

        return torch.tensor(self.centers, dtype=dtype or torch.float32, device=device)

    def index(self, depth: torch.Tensor) -> torch.Tensor:
        """Bin index (int64, same shape) of each metric depth in ``depth`` (m, any shape).

        -1 where the depth falls outside ``[lower, upper)``, is not finite, or is 0 (no measurement),
        so the result can be used directly as a cross-entropy target with ``ignore_index=-1``.
        """
        import torch

        d = depth.float()
        valid = torch.isfinite(d) & (d > 0) & (d >= self.lower) & (d < self.upper)
        # floor((d - lower) / step); clamp guards float rounding at the upper edge
        k = torch.floor((torch.where(valid, d, torch.zeros_like(d)) - self.lower) / self.step).long()
        return torch.where(valid, k.clamp(0, self.count - 1), torch.full_like(k, -1))
