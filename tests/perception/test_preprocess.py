"""perception.preprocess: K' = A @ K projects 3D points onto the content of the preprocessed image.

Dots are drawn at the projections (with K) of 3D points on a synthetic source image; after
preprocessing they must be found at the projections with K'. A wrong half-pixel convention moves
them by 0.5 px (by 1 px for a wrong flip), so the tolerance is well below that.
"""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
from markers import draw_markers, find_markers, well_separated

from perception.geometry import project, unproject
from perception.preprocess import (
    ImageDecodeError,
    ResizeCrop,
    auto_reduce,
    decode_affine,
    decode_image,
    load_camera,
    preprocess,
    preprocess_cameras,
    preprocess_hwc,
)

TOL = 0.1  # px; measured < 0.04 px. A half-pixel convention slip costs |s - 1| / 2 px: 0.12 px at s = 1.25
RADIUS = 4  # px, marker search window in the output image


def _scene(src_hw: tuple[int, int], out_hw: tuple[int, int], seed: int = 0):
    """A source image with dots at the projections of 3D points: (image BGR, K, points_cam [M, 3])."""
    h, w = src_hw
    s = out_hw[1] / w  # output px per source px
    rng = np.random.default_rng(seed)
    K = np.array([[0.8 * w, 0.0, w / 2 + 3.3], [0.0, 0.8 * w, h / 2 - 2.1], [0.0, 0.0, 1.0]])
    step = 14.0 / s  # 14 output px between dots
    margin = 6.0 / min(s, 1.0) + 6.0
    us, vs = np.meshgrid(np.arange(margin, w - margin, step), np.arange(margin, h - margin, step))
    uv = np.stack([us.ravel(), vs.ravel()], axis=-1) + rng.uniform(-0.3, 0.3, (us.size, 2)) * step
    points_cam = unproject(K, uv, rng.uniform(2.0, 60.0, len(uv)))
    sigma = max(1.0, 1.2 / s)  # ~1.2 px in the output
    return draw_markers(h, w, project(K, points_cam)[0], sigma)[..., ::-1].copy(), K, points_cam


def _check(image_chw: np.ndarray, K_out: np.ndarray, points_cam: np.ndarray, valid_rows: tuple[int, int]) -> int:
    """Dots found at the K' projections within TOL; returns how many were checked."""
    H, W = image_chw.shape[1:]
    uv = project(K_out, points_cam)[0]
    m = RADIUS + 2
    inside = (uv[:, 0] >= m) & (uv[:, 0] <= W - 1 - m)
    inside &= (uv[:, 1] >= valid_rows[0] + m) & (uv[:, 1] <= valid_rows[1] - m)
    inside &= well_separated(uv, np.ones(len(uv), bool), 10.0)
    found = find_markers(image_chw.transpose(1, 2, 0), uv[inside], RADIUS)
    err = np.linalg.norm(found - uv[inside], axis=-1)
    assert np.all(np.isfinite(err)), f"{np.isnan(err).sum()} dots not found at their projections"
    assert err.max() < TOL, f"max reprojection error {err.max():.3f} px"
    return int(inside.sum())


@pytest.mark.parametrize(
    ("src_hw", "out_hw", "case"),
    [
        ((900, 1600), (224, 400), "downscale x1/4, crop 1 row"),
        ((900, 1600), (96, 176), "downscale x0.11, crop 3 rows"),
        ((700, 1000), (224, 400), "downscale x0.4, crop 56 rows"),
        ((180, 320), (224, 400), "upscale x1.25, crop 1 row"),
        ((160, 320), (224, 400), "upscale x1.25, pad 24 rows"),
        ((300, 1600), (224, 400), "downscale x1/4, pad 149 rows"),
        ((224, 400), (224, 400), "identity"),
    ],
)
def test_projections_hit_the_same_content(src_hw, out_hw, case):
    image, K, points_cam = _scene(src_hw, out_hw)
    plan = ResizeCrop.plan(src_hw, out_hw)
    out, K_out = preprocess(image, K, out_hw)
    assert out.shape == (3, *out_hw) and out.dtype == np.uint8
    np.testing.assert_allclose(K_out, plan.dst_T_src @ K)
    valid_rows = (max(0, -plan.top), out_hw[0] - 1)
    if plan.top < 0:  # padded rows are black
        assert not out[:, : -plan.top].any()
    assert _check(out, K_out, points_cam, valid_rows) >= 20, case


def test_plan_crops_top_keeps_bottom():
    plan = ResizeCrop.plan((900, 1600), (224, 400))
    assert plan.resized_hw == (225, 400) and plan.top == 1 and plan.interpolation == cv2.INTER_AREA
    assert ResizeCrop.plan((160, 320), (224, 400)).top == -24
    assert ResizeCrop.plan((160, 320), (224, 400)).interpolation == cv2.INTER_LINEAR
    # The bottom edge of the source lands on the bottom edge of the output (rows are cut at the top).
    A = plan.dst_T_src
    assert (A @ np.array([0.0, 899.5, 1.0]))[1] == pytest.approx(223.5)
    assert (A @ np.array([-0.5, -0.5, 1.0]))[:2] == pytest.approx([-0.5, -0.5 - 1.0])  # top-left corner, 1 row cut
    assert (A @ np.array([1599.5, 0.0, 1.0]))[0] == pytest.approx(399.5)  # right edge to right edge


def test_rgb_channels_first():
    image = np.zeros((90, 160, 3), np.uint8)
    image[..., 0] = 10  # blue
    image[..., 2] = 200  # red
    out, _ = preprocess(image, np.eye(3), (96, 176))
    assert out.shape == (3, 96, 176)
    assert out[0, -1, 0] == 200 and out[2, -1, 0] == 10  # RGB order
    hwc, _ = preprocess_hwc(image, np.eye(3), (96, 176))
    np.testing.assert_array_equal(hwc.transpose(2, 0, 1), out)


def test_preprocess_cameras_batches_mixed_sizes():
    a, Ka, _ = _scene((900, 1600), (224, 400))
    b, Kb, _ = _scene((160, 320), (224, 400))
    images, Ks = preprocess_cameras([a, b], np.stack([Ka, Kb]), (224, 400))
    assert images.shape == (2, 3, 224, 400) and Ks.shape == (2, 3, 3)
    np.testing.assert_array_equal(images[1], preprocess(b, Kb, (224, 400))[0])


@pytest.mark.parametrize("reduce", [1, 2, 4, 8])
def test_reduced_jpeg_decoding_keeps_geometry(reduce):
    src_hw, out_hw = (900, 1600), (96, 176)
    image, K, points_cam = _scene(src_hw, out_hw, seed=reduce)
    ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    decoded = decode_image(jpeg.tobytes(), reduce)
    assert decoded.shape == (-(-900 // reduce), -(-1600 // reduce), 3)  # libjpeg rounds up
    rgb, K_out = load_camera(jpeg.tobytes(), K, out_hw, reduce)
    np.testing.assert_allclose(K_out, ResizeCrop.plan(decoded.shape[:2], out_hw).dst_T_src @ decode_affine(reduce) @ K)
    assert _check(rgb.transpose(2, 0, 1), K_out, points_cam, (0, out_hw[0] - 1)) >= 20


def test_auto_reduce():
    assert auto_reduce((900, 1600), (224, 400)) == 4
    assert auto_reduce((900, 1600), (448, 800)) == 2
    assert auto_reduce((900, 1600), (96, 176)) == 8
    assert auto_reduce((900, 1600), (896, 1600)) == 1
    assert auto_reduce((90, 160), (224, 400)) == 1


def test_decode_errors_name_the_file(tmp_path):
    with pytest.raises(ImageDecodeError, match="missing.jpg: image file missing"):
        decode_image(tmp_path / "missing.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageDecodeError, match="empty.jpg: image file is empty"):
        decode_image(tmp_path / "empty.jpg")
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all")
    with pytest.raises(ImageDecodeError, match="junk.jpg: image file is corrupt"):
        decode_image(tmp_path / "junk.jpg")
    ok, jpeg = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    (tmp_path / "cut.jpg").write_bytes(jpeg.tobytes()[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="cut.jpg: image file is corrupt \\(truncated JPEG"):
        decode_image(tmp_path / "cut.jpg")
    ok, png = cv2.imencode(".png", np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="needs one"):
        decode_image(png.tobytes(), reduce=2)
    with pytest.raises(ValueError, match="reduce must be one of"):
        decode_image(png.tobytes(), reduce=3)
    assert decode_image(png.tobytes()).shape == (8, 8, 3)


def test_edge_import_has_no_torch_or_albumentations():
    code = (
        "import sys; import perception.preprocess; "
        "bad = [m for m in ('torch', 'albumentations') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
