"""A label-limited learner: light detection heads retrained on cached BEV features.

The trained model's backbone, view transform, video module and BEV encoder stay frozen (their output
is cached once per frame by :mod:`perception.training.feature_cache`); only light detection heads are
trained, from the same initialisation every time, for a number of epochs over the labeled frames (at
least ``min_steps`` steps), never a fixed step count: more labels give more to learn from, not fewer
passes over each frame. It is the active-learning benchmark's learner; the full model stays the product.

    cache = FeatureCache.load("runs/al/features/pool")
    heads = train_heads(cache, labeled_positions, HeadLearnerConfig())
    scores = HeadEvaluator(test_cache).score(heads)        # rare-class AP, heatmap AP, recall, mAP

Losses and decoding are the product's: :func:`~perception.training.losses.focal_heatmap_loss`,
:func:`~perception.training.losses.regression_l1_loss` and :meth:`~perception.boxes.BoxCodec.decode_logits`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..boxes import NUM_REGRESSION, BoxCodec, sigmoid
from ..data.nuscenes import load_dataset
from ..metrics import DetectionConfig, DetectionEvaluator, EvalBoxes, HeatmapAP, range_capped_to_grid
from ..metrics.detection_curves import average_precision
from ..metrics.nuscenes_io import ground_truth
from ..schema import RARE_CLASSES
from ..specs import LossConfig
from .feature_cache import FeatureCache
from .losses import focal_heatmap_loss, regression_l1_loss

__all__ = ["HeadEvaluator", "HeadLearnerConfig", "HeadScores", "LightHeads", "init_heads", "predict_heads", "train_heads",
           "train_heads_on"]

RECALL_SCORE = 0.3  # the fixed score at which rare-class recall is read


@dataclass(frozen=True)
class HeadLearnerConfig:
    hidden: int = 64  # channels of the heads' hidden layer
    epochs: int = 40  # passes over the labeled frames
    min_steps: int = 100  # at least this many optimizer steps (small labeled sets)
    batch_size: int = 16  # frames per step
    lr: float = 3e-3  # AdamW peak learning rate (cosine decay to 5 %)
    weight_decay: float = 1e-4
    init_seed: int = 0  # the heads' initialisation: the same for every arm and round
    seed: int = 0  # the order of the frames
    threads: int | None = None  # torch intra-op threads (None: torch's default)

    def steps(self, frames: int) -> int:
        """Optimizer steps for a labeled set of ``frames``: ``epochs`` passes, at least ``min_steps``."""
        return max(self.min_steps, math.ceil(self.epochs * frames / self.batch_size))


class LightHeads(nn.Module):
    """features [B, C, Xt, Yt] (trunk grid) -> {"heatmap": logits [B, K, Xd, Yd], "regression": [B, 10, Xd, Yd]}.

    Input normalisation (BatchNorm), a depthwise 3x3 for each cell's neighbourhood, a 1x1 to ``hidden``
    channels and ReLU, then a 1x1 per output; the trunk is upsampled (bilinear) first when the detection
    grid is finer. The heatmap bias starts at the prior probability 0.1, as the product's heads do."""

    def __init__(self, channels: int, num_classes: int, hidden: int = 64, upsample: int = 1) -> None:
        super().__init__()
        self.trunk = nn.Sequential(
            nn.Upsample(scale_factor=upsample, mode="bilinear") if upsample > 1 else nn.Identity(),
            nn.BatchNorm2d(channels),
            nn.Conv2d(channels, channels, 3, padding=1, groups=channels),
            nn.Conv2d(channels, hidden, 1),
            nn.ReLU(inplace=True))
        self.heatmap = nn.Conv2d(hidden, num_classes, 1)
        self.regression = nn.Conv2d(hidden, NUM_REGRESSION, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, features: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.trunk(features)
        return {"heatmap": self.heatmap(h), "regression": self.regression(h)}


def init_heads(cache: FeatureCache, cfg: HeadLearnerConfig = HeadLearnerConfig()) -> LightHeads:
    """The heads every training starts from: ``cfg.init_seed``'s initialisation, sized for ``cache``."""
    C, Xt, _ = cache.features.shape[1:]
    Xd = cache.heatmap.shape[2]
    if Xd % Xt:
        raise ValueError(f"{cache.root}: the detection grid ({Xd}) is not a multiple of the trunk grid ({Xt})")
    torch.manual_seed(cfg.init_seed)
    return LightHeads(C, cache.heatmap.shape[1], cfg.hidden, Xd // Xt)


def train_heads(cache: FeatureCache, positions: Sequence[int], cfg: HeadLearnerConfig = HeadLearnerConfig()) -> LightHeads:
    """Heads trained on the cached frames at ``positions`` (the labeled set), from ``cfg.init_seed``'s init."""
    return train_heads_on([(cache, positions)], cfg)


def train_heads_on(parts: Sequence[tuple[FeatureCache, Sequence[int]]],
                   cfg: HeadLearnerConfig = HeadLearnerConfig()) -> LightHeads:
    """Heads trained on the frames at ``positions`` of each ``(cache, positions)`` pair (caches of one
    model, e.g. a seed set and a pool), from ``cfg.init_seed``'s init."""
    parts = [(c, np.sort(np.asarray(p, dtype=np.int64))) for c, p in parts]
    if not parts or sum(len(p) for _, p in parts) == 0:
        raise ValueError("train_heads needs at least one labeled frame")
    shapes = {(c.features.shape[1:], c.heatmap.shape[1:]) for c, _ in parts}
    if len(shapes) != 1:
        raise ValueError(f"train_heads: the caches {[str(c.root) for c, _ in parts]} hold features of different shapes")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    parts = [(c, p) for c, p in parts if len(p)]
    # channels-last: CPU convolutions (the depthwise one and the 1x1 weight gradients above all) run
    # about twice as fast on it as on NCHW
    feats = torch.from_numpy(np.concatenate([np.asarray(c.features[p], dtype=np.float32) for c, p in parts])).contiguous(
        memory_format=torch.channels_last)
    heat = torch.from_numpy(np.concatenate([np.asarray(c.heatmap[p], dtype=np.float32) for c, p in parts]))
    boxes = {k: torch.from_numpy(np.concatenate([c.boxes[k][p] for c, p in parts])) for k in parts[0][0].boxes}
    n = len(feats)
    heads = init_heads(parts[0][0], cfg).to(memory_format=torch.channels_last).train()
    loss_cfg = LossConfig()
    channel_weights = torch.tensor(loss_cfg.regression_channel_weights)
    steps = cfg.steps(n)
    opt = torch.optim.AdamW(heads.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    rng = np.random.default_rng(cfg.seed)
    order = np.zeros(0, dtype=np.int64)
    for _ in range(steps):
        if len(order) < min(cfg.batch_size, n):
            order = np.concatenate([order, rng.permutation(n)])
        b, order = order[:cfg.batch_size], order[cfg.batch_size:]
        bt = torch.from_numpy(b)
        out = heads(feats[bt])
        num = boxes["det_mask"][bt].sum().float()
        loss = focal_heatmap_loss(out["heatmap"], heat[bt], num, loss_cfg.focal_alpha, loss_cfg.focal_beta)
        reg, _ = regression_l1_loss(out["regression"], boxes["det_regression"][bt], boxes["det_indices"][bt],
                                    boxes["det_mask"][bt], boxes["det_velocity_valid"][bt], channel_weights, num)
        loss = loss + loss_cfg.regression_weight * reg
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return heads.eval()


@torch.no_grad()
def predict_heads(heads: LightHeads, cache: FeatureCache, positions: Sequence[int] | None = None,
                  chunk: int = 64) -> dict[str, np.ndarray]:
    """The heads' outputs on cached frames (all when ``positions`` is None): {"heatmap": logits
    [n, K, Xd, Yd], "regression": [n, 10, Xd, Yd]} float32, in the order of ``positions``."""
    heads.eval()
    idx = np.arange(len(cache)) if positions is None else np.asarray(positions, dtype=np.int64)
    parts: dict[str, list[np.ndarray]] = {"heatmap": [], "regression": []}
    for i in range(0, len(idx), chunk):
        f = torch.from_numpy(np.asarray(cache.features[idx[i:i + chunk]], dtype=np.float32))
        out = heads(f.contiguous(memory_format=torch.channels_last))
        for k in parts:
            parts[k].append(out[k].contiguous().numpy())
    return {k: np.concatenate(v) if v else np.zeros((0,)) for k, v in parts.items()}


@dataclass
class HeadScores:
    """Detection scores of a learner on a test set, range capped to the BEV grid."""

    ap: dict[str, float]  # class -> the official nuScenes AP (precision below 0.1 and recall below 0.1 clipped)
    ap_unclipped: dict[str, float]  # class -> AP with min precision and min recall 0 (moves for weak detectors)
    heatmap_ap: dict[str, float]  # class -> cell-level average precision of the heatmap (NaN: no object)
    recall: dict[str, float]  # class -> recall at 2 m of the boxes scoring >= RECALL_SCORE (NaN: no object)
    mAP: float  # the official mAP over all classes
    NDS: float  # the official nuScenes detection score
    num_gt: dict[str, int] = field(default_factory=dict)

    def rare(self, metric: str) -> float:
        """The mean of ``metric`` ("ap", "ap_unclipped", "heatmap_ap", "recall") over the rare classes
        that have objects in the test set."""
        values = [getattr(self, metric)[c] for c in RARE_CLASSES if self.num_gt.get(c, 0) > 0]
        values = [v for v in values if math.isfinite(v)]
        return float(np.mean(values)) if values else math.nan

    def to_dict(self) -> dict[str, object]:
        return {"mAP": self.mAP, "NDS": self.NDS, "ap": self.ap, "ap_unclipped": self.ap_unclipped, "heatmap_ap": self.heatmap_ap,
                "recall": self.recall, "num_gt": self.num_gt}


class HeadEvaluator:
    """Scores heads on a cached test set; the ground truth and targets are read once."""

    def __init__(self, cache: FeatureCache, positions: Sequence[int] | None = None, score_threshold: float = 0.05) -> None:
        self.cache = cache
        self.positions = np.arange(len(cache)) if positions is None else np.asarray(positions, dtype=np.int64)
        reader = load_dataset(cache.data)
        self.gt = [ground_truth(reader, reader.sample(cache.tokens[int(i)])) for i in self.positions]
        self.codec = BoxCodec.from_preset(cache.preset)
        self.config = range_capped_to_grid(DetectionConfig.cvpr_2019(), cache.preset.bev)
        self.score_threshold = score_threshold

    def score(self, heads: LightHeads) -> HeadScores:
        out = predict_heads(heads, self.cache, self.positions)
        decoded = self.codec.decode_logits(out, self.score_threshold, self.config.max_boxes_per_sample)
        classes = self.codec.classes
        ev = DetectionEvaluator(self.config)
        for i, gt, boxes in zip(self.positions, self.gt, decoded):
            ev.add_sample(self.cache.tokens[int(i)], gt, EvalBoxes.from_decoded(boxes, classes))
        official = ev.compute()
        # The unclipped AP (perception.metrics.unclipped) from the same matches: the curves do not depend
        # on the precision and recall floors, only the AP read off them does.
        loose = {c: float(np.mean([average_precision(official.curves[(c, t)], 0.0, 0.0) for t in aps]))
                 for c, aps in official.label_aps.items()}
        hap = HeatmapAP(classes)
        hap.update(sigmoid(out["heatmap"]), np.asarray(self.cache.heatmap[self.positions], dtype=np.float32))
        names = official.config.class_names
        return HeadScores(ap=official.mean_dist_aps, ap_unclipped=loose,
                          heatmap_ap={c: float(v) for c, v in hap.compute().items()},
                          recall={c: official.recall_at(c, RECALL_SCORE) for c in names},
                          mAP=official.mean_ap, NDS=official.nd_score, num_gt=dict(official.num_gt))

