"""MultiCamDataset on a small synthetic world: shapes, targets, ego motion, clips, workers, damage."""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from data_engine.sim.synth import SynthConfig, synthesize
from perception.data.augment import AugmentConfig
from perception.boxes import BoxCodec
from perception.data.batch import MultiCamBatch, collate_frames
from perception.data.dataset import BadImageError, DatasetConfig, FrameRef, MultiCamDataset
from perception.data.nuscenes import load_dataset
from perception.data.sampler import ClipBatchSampler
from perception.schema import DETECTION_CLASSES
from perception.geometry import invert_rigid, transform_points
from perception.presets import SEG_CLASSES, get_preset

TINY = get_preset("tiny")


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dataset") / "ds"
    synthesize(SynthConfig(out=root, scenes=2, frames=4, seed=11, width=400, height=225), progress=False)
    return root


def test_item_shapes_and_types(world: Path) -> None:
    ds = MultiCamDataset(world, TINY)
    assert len(ds) == 8
    item = ds[0]
    H, W = TINY.input.height, TINY.input.width
    X, Y = TINY.bev.shape
    assert item.images.shape == (6, 3, H, W) and item.images.dtype == np.uint8
    assert item.K.shape == (6, 3, 3) and item.ego_T_cam.shape == (6, 4, 4)
    assert item.cam_valid.all()
    assert item.seg.shape == (len(SEG_CLASSES), X, Y) and item.seg_valid.all()  # synth writes lane rasters
    assert item.heatmap.shape == (len(DETECTION_CLASSES),) + TINY.det_grid.shape
    assert item.det_regression.shape == (TINY.tasks.max_objects, 10)
    assert item.is_first and item.dt == 0 and np.allclose(item.prev_T_curr, np.eye(4))
    batch = collate_frames([ds[0], ds[1], ds[2]])
    assert isinstance(batch, MultiCamBatch) and len(batch) == 3
    assert batch.images.shape == (3, 6, 3, H, W) and batch.images.dtype == torch.uint8
    assert batch.cam_valid.dtype == torch.bool and batch.depth is None
    assert batch.to("cpu").K.dtype == torch.float32


def test_targets_match_the_labels(world: Path) -> None:
    ds = MultiCamDataset(world, TINY)
    reader = load_dataset(world)
    sample = reader.samples[2]
    item = ds[2]
    boxes = reader.box_set(sample)
    grid = TINY.bev
    inside = grid.contains(boxes.center[:, :2]) & (boxes.label >= 0)
    # Every detection box on the grid has a heatmap peak of 1 at its centre cell, in its class.
    cells = np.floor(TINY.det_grid.to_cells(boxes.center[inside, :2])).astype(int)
    for (i, j), lab in zip(cells, boxes.label[inside]):
        assert item.heatmap[lab, i, j] == pytest.approx(1.0)
    assert item.det_mask.sum() == len(cells)
    # Decoding the targets gives the boxes back.
    codec = BoxCodec.from_preset(TINY)
    dense = np.zeros((10,) + TINY.det_grid.shape, np.float32)
    m = item.det_mask
    dense.reshape(10, -1)[:, item.det_indices[m]] = item.det_regression[m].T
    dec = codec.decode(item.heatmap, dense, score_threshold=0.99)
    assert len(dec) >= len(cells) - 1  # two centres may share a cell
    # Visible vehicles are in the vehicle raster, at their centre cells.
    veh = item.seg[SEG_CLASSES.index("vehicle")]
    names = [DETECTION_CLASSES[k] if k >= 0 else "" for k in boxes.label]
    for c, name, vis in zip(boxes.center, names, boxes.visibility):
        if name in ("car", "bus", "truck") and vis >= "2" and grid.contains(c[:2]):
            assert veh[tuple(np.floor(grid.to_cells(c[:2])).astype(int))] == 1
    # The ego stands on the road.
    drivable = item.seg[SEG_CLASSES.index("drivable_area")]
    ego_cell = tuple(np.floor(grid.to_cells(np.zeros(2))).astype(int))
    assert drivable[ego_cell] == 1


def test_ego_motion_and_time_step(world: Path) -> None:
    ds = MultiCamDataset(world, TINY)
    reader = load_dataset(world)
    item = ds[FrameRef(1, step=1, seed=5)]
    prev, curr = reader.samples[0], reader.samples[1]
    assert not item.is_first and item.dt == pytest.approx(0.5)
    expected = invert_rigid(prev.global_T_ego) @ curr.global_T_ego
    assert np.allclose(item.prev_T_curr, expected, atol=1e-4)


def test_augmented_frames_keep_targets_on_the_geometry(world: Path) -> None:
    cfg = DatasetConfig(augment=AugmentConfig(enabled=True, bev_flip_p=1.0, flip_p=1.0))
    ds = MultiCamDataset(world, TINY, cfg)
    reader = load_dataset(world)
    item = ds[FrameRef(3, step=0, seed=42)]
    A = item.aug_T_ego.astype(np.float64)
    assert np.linalg.det(A[:3, :3]) < 0  # the BEV flip is a reflection
    assert (np.linalg.det(item.K[:, :2, :2]) < 0).all()  # and every image was flipped
    boxes = reader.box_set(reader.samples[3])
    moved = transform_points(A, boxes.center)
    keep = TINY.det_grid.contains(moved[:, :2]) & (boxes.label >= 0)
    cells = np.floor(TINY.det_grid.to_cells(moved[keep, :2])).astype(int)
    for (i, j), lab in zip(cells, boxes.label[keep]):
        assert item.heatmap[lab, i, j] == pytest.approx(1.0)
    # One BEV augmentation per clip: the next frame of the same clip shares it.
    nxt = ds[FrameRef(2, step=1, seed=42)]
    assert np.allclose(nxt.aug_T_ego, item.aug_T_ego)


def test_depth_targets_lie_on_lidar_points(world: Path) -> None:
    ds = MultiCamDataset(world, TINY, DatasetConfig(with_depth=True))
    item = ds[0]
    assert item.depth is not None and item.depth.shape == (6, TINY.input.height, TINY.input.width)
    n, v, u = np.nonzero(item.depth)
    assert len(n) > 500
    z = item.depth[n, v, u]
    rays = np.stack([u, v, np.ones_like(u)], -1).astype(np.float64)
    Kinv = np.linalg.inv(item.K[n].astype(np.float64))
    pts_cam = np.einsum("bij,bj->bi", Kinv, rays) * z[:, None]
    ego = np.einsum("bij,bj->bi", item.ego_T_cam[n, :3, :3].astype(np.float64), pts_cam) + item.ego_T_cam[n, :3, 3]
    # Unprojected depth pixels are real returns: on the ground or on objects, never below it.
    assert ego[:, 2].min() > -0.3


def test_loader_with_workers_equals_in_process(world: Path) -> None:
    ds = MultiCamDataset(world, TINY, DatasetConfig(augment=AugmentConfig(enabled=True)))
    sampler = ClipBatchSampler(ds.clips(), batch_size=2, clip_length=2, shuffle=True, seed=3)
    plain = list(DataLoader(ds, batch_sampler=sampler, num_workers=0, collate_fn=collate_frames))
    multi = list(DataLoader(ds, batch_sampler=sampler, num_workers=2, collate_fn=collate_frames))
    assert len(plain) == len(multi) == len(sampler) > 0
    for a, b in zip(plain, multi):
        assert torch.equal(a.images, b.images) and torch.equal(a.heatmap, b.heatmap)
        assert torch.equal(a.is_first, b.is_first)
    assert plain[0].is_first.all() and not plain[1].is_first.any()


def test_damaged_image_is_named_or_skipped(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "damaged"
    shutil.copytree(world, root)
    reader = load_dataset(root)
    bad = reader.samples[0].cameras["CAM_BACK"].path
    bad.write_bytes(bad.read_bytes()[:200])
    with pytest.raises(BadImageError, match=bad.name):
        MultiCamDataset(root, TINY)[0]
    ds = MultiCamDataset(root, TINY, DatasetConfig(on_bad_image="skip"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        item = ds[0]
    assert any(bad.name in str(w.message) for w in caught)
    k = TINY.input.cameras.index("CAM_BACK")
    assert not item.cam_valid[k] and item.cam_valid.sum() == 5
    assert item.images[k].max() == 0


def test_plain_indices_draw_new_augmentations_each_epoch(world: Path) -> None:
    ds = MultiCamDataset(world, TINY, DatasetConfig(augment=AugmentConfig(enabled=True)))
    first = ds[0].aug_T_ego
    assert np.allclose(ds[0].aug_T_ego, first)  # reproducible within an epoch
    ds.set_epoch(1)
    assert not np.allclose(ds[0].aug_T_ego, first)


def test_an_image_of_another_size_than_its_calibration_is_refused(world: Path, tmp_path: Path) -> None:
    import cv2

    root = tmp_path / "resized"
    shutil.copytree(world, root)
    path = load_dataset(root).samples[0].cameras["CAM_FRONT"].path
    image = cv2.imread(str(path))
    cv2.imwrite(str(path), cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2)))
    with pytest.raises(BadImageError, match=f"{path.name}: image size does not match its calibration: it is 100x56 px decoded at 1/2, a 400x225"):
        MultiCamDataset(root, TINY)[0]


def test_no_depth_supervision_from_invalid_cameras(world: Path, tmp_path: Path) -> None:
    root = tmp_path / "dead"
    shutil.copytree(world, root)
    load_dataset(root).samples[0].cameras["CAM_FRONT"].path.write_bytes(b"not a jpeg")
    ds = MultiCamDataset(root, TINY, DatasetConfig(with_depth=True, on_bad_image="skip"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        item = ds[0]
    k = TINY.input.cameras.index("CAM_FRONT")
    assert not item.cam_valid[k] and item.depth[k].max() == 0 and item.depth.max() > 0


def test_every_dataset_key_of_an_experiment_reaches_the_training_and_validation_data(world: Path) -> None:
    from perception.config import load_config, resolve
    from perception.training.trainer import train_dataset, val_dataset

    cfg = load_config(None, ["preset=tiny", f"train.data={world}", "train.train_split=synth_train",
                             "train.val_split=synth_val", "dataset.max_gt_boxes=3", "dataset.with_depth=true",
                             "dataset.on_bad_image=skip"])
    preset = resolve(cfg)
    train, val = train_dataset(cfg, preset), val_dataset(cfg, preset, load_dataset(world))
    for ds in (train, val):
        assert (ds.config.max_gt_boxes, ds.config.with_depth, ds.config.on_bad_image) == (3, True, "skip")
        item = ds[0]
        assert item.gt_boxes.shape[0] == 3 and item.depth is not None
    assert train.config.augment == cfg.augment and not val.config.augment.enabled
    assert (train.config.split, val.config.split) == ("synth_train", "synth_val")
