"""The training criterion: all head losses of a batch, weighted into one scalar (DETR's SetCriterion role).

The model returns a flat dict of tensors; the criterion reads the ones it needs against the
:class:`~perception.data.batch.MultiCamBatch` and knows nothing else of the model:

    heatmap       [B, C, X, Y]     detection heatmap logits (det grid)
    regression    [B, 10, X, Y]    box regression, channels boxes.REGRESSION_CHANNELS
    seg           [B, S, X, Y]     BEV segmentation logits
    depth_logits  [B, N, D, h, w]  optional: categorical depth at the feature stride (lift-splat)

Tasks and their losses (:mod:`.losses`):

    heatmap     focal loss, normalised by the number of objects
    regression  per-channel weighted L1 at object centres, velocity masked where unknown
    seg         seg_bce_weight * BCE + seg_dice_weight * soft dice, valid classes only
    depth       cross-entropy over DepthBins at pixels with lidar depth, valid cameras only

Weighting (``LossConfig.weighting``): "fixed" gives ``sum_i w_i L_i``; "uncertainty" (Kendall, Gal &
Cipolla 2018) gives ``sum_i exp(-s_i) w_i L_i + s_i`` with learnable log-variances s_i (the fixed
weights act as a prior: with s_i = 0 it starts as fixed weighting). A task with nothing to supervise
in the batch (no objects, no valid seg class, no lidar pixel) adds neither its loss nor its s_i.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from collections.abc import Mapping, Sequence

import torch
import torch.distributed as dist
from torch import nn

from perception.boxes import REGRESSION_SLICES
from perception.specs import NUM_REGRESSION, TASKS, DepthBins, LossConfig
from perception.data.batch import MultiCamBatch

from .losses import (
    depth_cross_entropy,
    float32_region,
    focal_heatmap_loss,
    regression_l1_loss,
    seg_bce_loss,
    seg_dice_loss,
)

__all__ = ["TASKS", "Criterion", "LossConfig", "UncertaintyWeighting"]

if TYPE_CHECKING:
    from ..presets import Preset


class UncertaintyWeighting(nn.Module):
    """Homoscedastic uncertainty weighting of task losses (Kendall, Gal & Cipolla, CVPR 2018).

    One learnable log-variance s_i per task, ``log_vars`` [T]; the total is
    ``sum_i present_i * (exp(-s_i) * L_i + s_i)``. Train s_i with the model (no weight decay on them).
    """

    def __init__(self, tasks: Sequence[str], init: float = 0.0) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init)))

    def forward(
        self, losses: Mapping[str, torch.Tensor], present: Mapping[str, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """losses: task -> scalar L_i (tasks not in ``self.tasks`` are an error, absent tasks are skipped);
        present: task -> bool scalar, False drops the task's whole term (its s_i gets no gradient)."""
        unknown = set(losses) - set(self.tasks)
        if unknown:
            raise KeyError(f"losses for unknown tasks {sorted(unknown)}; known: {self.tasks}")
        total = self.log_vars.new_zeros(())
        for i, name in enumerate(self.tasks):
            if name not in losses:
                continue
            s = self.log_vars[i]
            term = torch.exp(-s) * losses[name].float() + s
            if present is not None and name in present:
                term = torch.where(present[name], term, 0.0)
            total = total + term
        return total

    def log_variances(self) -> dict[str, torch.Tensor]:
        """Task -> its current s_i (detached), for logging."""
        return {name: self.log_vars[i].detach() for i, name in enumerate(self.tasks)}


class Criterion(nn.Module):
    """Losses of the model's outputs against a batch: ``(total, logs) = criterion(outputs, batch)``.

    ``depth_bins`` must be the model's (the lift-splat's) bins; it is needed only when the outputs hold
    ``depth_logits``. With ``weighting="uncertainty"`` the criterion has parameters: give them to the
    optimizer (and the checkpoint), and under DDP call :meth:`all_reduce_gradients` after backward.
    """

    def __init__(self, config: LossConfig | None = None, depth_bins: DepthBins | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else LossConfig()
        self.depth_bins = depth_bins
        self.weights = self.config.task_weights()
        channel_weights = torch.tensor(self.config.regression_channel_weights)  # (R,)
        self.register_buffer("channel_weights", channel_weights, persistent=False)
        self.uncertainty = (UncertaintyWeighting(TASKS, self.config.uncertainty_init)
                            if self.config.weighting == "uncertainty" else None)

    @classmethod
    def for_preset(cls, preset: "Preset", config: LossConfig | None = None) -> "Criterion":
        """The criterion of a preset's model (its depth bins when it lifts with lift_splat)."""
        bins = preset.model.depth if preset.model.view_transform == "lift_splat" else None
        return cls(config, bins)

    def forward(
        self, outputs: Mapping[str, torch.Tensor], batch: MultiCamBatch
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """outputs: the model's dict (see the module docstring); batch: its targets, on the same device.

        Returns (total: float32 scalar with grad, logs: detached float32 scalars). logs holds ``total``,
        each computed task's unweighted loss (``heatmap``, ``regression``, ``seg``, ``depth``), its parts
        (``regression_<group>`` per boxes.REGRESSION_SLICES, weighted by channel, ``seg_bce``,
        ``seg_dice``), ``num_objects``, ``depth_pixels``, and ``log_var_<task>`` with uncertainty weighting.
        Losses are computed in float32 with autocast disabled.
        """
        cfg = self.config
        logs: dict[str, torch.Tensor] = {}
        losses: dict[str, torch.Tensor] = {}
        present: dict[str, torch.Tensor] = {}
        if not outputs:
            raise ValueError("empty model outputs")
        ref = next(iter(outputs.values()))  # any output: its device
        with float32_region(ref):
            num_objects = batch.det_mask.bool().sum()
            present_objects = num_objects > 0
            logs["num_objects"] = num_objects.float()
            norm = num_objects.float()
            if cfg.sync_num_objects:
                norm = _mean_over_ranks(norm)

            if self.weights["heatmap"] > 0:
                heatmap = _require(outputs, "heatmap")
                losses["heatmap"] = focal_heatmap_loss(heatmap, batch.heatmap, norm, cfg.focal_alpha, cfg.focal_beta)
                present["heatmap"] = torch.ones((), dtype=torch.bool, device=ref.device)

            if self.weights["regression"] > 0:
                reg = _require(outputs, "regression")
                if reg.shape[2:] != batch.heatmap.shape[2:] or reg.shape[1] != NUM_REGRESSION:
                    raise ValueError(f"regression {tuple(reg.shape)} must be [B, {NUM_REGRESSION}, X, Y] on the "
                                     f"heatmap's grid {tuple(batch.heatmap.shape[2:])}")
                losses["regression"], per_channel = regression_l1_loss(
                    reg, batch.det_regression, batch.det_indices, batch.det_mask, batch.det_velocity_valid,
                    self.channel_weights, norm)
                present["regression"] = present_objects
                for group, sl in REGRESSION_SLICES.items():
                    logs[f"regression_{group}"] = per_channel[sl].sum().detach()

            if self.weights["seg"] > 0:
                seg = _require(outputs, "seg")
                bce = seg_bce_loss(seg, batch.seg, batch.seg_valid, cfg.seg_pos_weight)
                dice = seg_dice_loss(seg, batch.seg, batch.seg_valid, cfg.dice_smooth)
                losses["seg"] = cfg.seg_bce_weight * bce + cfg.seg_dice_weight * dice
                present["seg"] = batch.seg_valid.bool().any()
                logs["seg_bce"], logs["seg_dice"] = bce.detach(), dice.detach()

            if self.weights["depth"] > 0 and "depth_logits" in outputs:
                if batch.depth is None:
                    raise ValueError("the model returns depth_logits but the batch has no depth: load the data with "
                                     "DatasetConfig(with_depth=True), or set LossConfig.depth_weight=0")
                if self.depth_bins is None:
                    raise ValueError("the model returns depth_logits but the Criterion has no depth_bins: "
                                     "pass the model's DepthBins")
                losses["depth"], n_pix = depth_cross_entropy(outputs["depth_logits"], batch.depth, self.depth_bins,
                                                             batch.cam_valid, cfg.depth_stride)
                present["depth"] = n_pix > 0
                logs["depth_pixels"] = n_pix.float()

            if self.uncertainty is not None:
                scaled = {name: self.weights[name] * loss for name, loss in losses.items()}
                total = self.uncertainty(scaled, present)
                logs.update({f"log_var_{k}": v for k, v in self.uncertainty.log_variances().items() if k in losses})
            else:
                total = torch.zeros((), dtype=torch.float32, device=ref.device)
                for name, loss in losses.items():
                    total = total + self.weights[name] * loss
        logs.update({name: loss.detach() for name, loss in losses.items()})
        logs["total"] = total.detach()
        return total, logs

    @torch.no_grad()
    def all_reduce_gradients(self) -> None:
        """Average the gradients of the criterion's own parameters (the learned log-variances) over
        torch.distributed ranks, which DDP does not do for modules outside the model. Call on every rank
        after backward and before the optimizer step; a no-op without parameters or without a process group."""
        params = list(self.parameters())
        if not params or not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        for p in params:
            if p.grad is None:  # every rank must join every all_reduce
                p.grad = torch.zeros_like(p)
            dist.all_reduce(p.grad)
            p.grad /= dist.get_world_size()


def _require(outputs: Mapping[str, torch.Tensor], key: str) -> torch.Tensor:
    if key not in outputs:
        raise KeyError(f"model outputs lack {key!r} (have {sorted(outputs)}); set its task weight to 0 to skip it")
    return outputs[key]


def _mean_over_ranks(x: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar over torch.distributed ranks (``x`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x)
    return x / dist.get_world_size()
