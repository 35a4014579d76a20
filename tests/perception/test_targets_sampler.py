"""BEV segmentation targets and the clip sampler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perception.data.batch import FrameRef
from perception.data.sampler import ClipBatchSampler
from perception.data.sensor_files import MapMask
from perception.data.targets import boxes_to_bev, map_to_bev, segmentation_targets
from perception.geometry import BEVGrid, make_transform, rotz
from perception.presets import PRESETS, SEG_CLASSES, get_preset


def _map_with_square(size_px: int = 400, res: float = 0.1) -> MapMask:
    """A 40 m map, drivable in the global square x in [22, 26), y in [10, 12)."""
    mask = np.zeros((size_px, size_px), np.uint8)
    # column = x / res, row = H - y / res
    mask[size_px - 120:size_px - 100, 220:260] = 255
    return MapMask("m", Path("m.png"), mask, res)


def test_map_to_bev_places_the_map_in_the_ego_frame() -> None:
    grid = BEVGrid(-10, 10, -10, 10, 0.5)
    raster = _map_with_square()
    global_T_ego = make_transform(np.eye(3), np.array([20.0, 11.0, 0.0]))
    bev = map_to_bev(raster, grid, global_T_ego)
    # The square spans ego x in [2, 6) (rows 24..31) and ego y in [-1, 1) (cols 18..21).
    rows, cols = np.nonzero(bev)
    assert rows.min() == 24 and rows.max() == 31
    assert cols.min() == 18 and cols.max() == 21
    # Rotating the ego by +90 degrees: the square now lies to the ego's right (negative y).
    turned = map_to_bev(raster, grid, make_transform(rotz(np.pi / 2), np.array([24.0, 15.0, 0.0])))
    rows, cols = np.nonzero(turned)
    centre = grid.ego_T_bev[:2, :2] @ np.array([rows.mean() + 0.5, cols.mean() + 0.5]) + grid.ego_T_bev[:2, 3]
    assert np.allclose(centre, [-4.0, 0.0], atol=0.3)


def test_boxes_to_bev_fills_footprints() -> None:
    grid = BEVGrid(-10, 10, -10, 10, 0.5)
    bev = boxes_to_bev(grid, np.array([[5.0, -3.0, 0.8]]), np.array([[2.0, 4.0, 1.6]]), np.array([0.0]))
    rows, cols = np.nonzero(bev)
    assert rows.min() == 26 and rows.max() == 33  # x in [3, 7)
    assert cols.min() == 12 and cols.max() == 15  # y in [-4, -2)
    assert bev.sum() == 8 * 4  # 4 m x 2 m at 0.5 m
    turned = boxes_to_bev(grid, np.array([[5.0, -3.0, 0.8]]), np.array([[2.0, 4.0, 1.6]]), np.array([np.pi / 2]))
    rows, cols = np.nonzero(turned)
    assert rows.max() - rows.min() == 3 and cols.max() - cols.min() == 7


def test_segmentation_targets_follow_the_augmentation() -> None:
    grid = BEVGrid(-10, 10, -10, 10, 0.5)
    raster = _map_with_square()
    global_T_ego = make_transform(np.eye(3), np.array([20.0, 11.0, 0.0]))
    flip = np.diag([1.0, -1.0, 1.0, 1.0])  # a BEV y-flip: a reflection
    centre = np.array([[5.0, -3.0, 0.8], [0.0, 6.0, 0.9], [-5.0, 5.0, 0.9]])
    size = np.array([[2.0, 4.0, 1.6], [0.7, 0.7, 1.8], [2.0, 4.5, 1.7]])
    yaw = np.zeros(3)
    cats = ("vehicle.car", "human.pedestrian.adult", "vehicle.emergency.police")
    vis = ("4", "3", "1")  # the police car is barely visible: not a vehicle target
    plain = segmentation_targets(SEG_CLASSES, grid, global_T_ego=global_T_ego, aug_T_ego=np.eye(4), drivable=raster,
                                 lane_dividers=None, center=centre, size=size, yaw=yaw, categories=cats, visibility=vis)
    assert plain.valid.tolist() == [True, False, True, True]
    assert plain.masks[1].sum() == 0
    veh, ped = plain.masks[2], plain.masks[3]
    assert veh[grid.to_cells(centre[0, :2]).astype(int)[0], grid.to_cells(centre[0, :2]).astype(int)[1]] == 1
    assert veh[tuple(grid.to_cells(centre[2, :2]).astype(int))] == 0  # only 0-40 % visible
    assert ped[tuple(grid.to_cells(centre[1, :2]).astype(int))] == 1
    flipped_boxes = centre * [1, -1, 1]
    aug = segmentation_targets(SEG_CLASSES, grid, global_T_ego=global_T_ego, aug_T_ego=flip, drivable=raster,
                               lane_dividers=None, center=flipped_boxes, size=size, yaw=-yaw, categories=cats,
                               visibility=vis)
    # Flipping y mirrors every raster across the x axis (columns reversed).
    for s in (0, 2, 3):
        assert np.array_equal(aug.masks[s], plain.masks[s][:, ::-1])


def test_presets() -> None:
    assert set(PRESETS) == {"tiny", "edge", "base"}
    tiny, edge, base = (get_preset(n) for n in ("tiny", "edge", "base"))
    assert (tiny.input.height, tiny.input.width) == (96, 176) and tiny.grid.x_max >= 25
    assert (edge.input.height, edge.input.width) == (224, 400) and edge.bev.shape == (100, 100)
    assert (base.input.height, base.input.width) == (448, 800) and base.bev.shape == (200, 200)
    assert base.det_grid.shape == (100, 100)
    with pytest.raises(ValueError, match="known presets: tiny, edge, base"):
        get_preset("huge")


def _clips() -> list[list[int]]:
    # Three scenes of 7, 5 and 4 frames, numbered consecutively as MultiCamDataset.clips() does.
    return [list(range(0, 7)), list(range(7, 12)), list(range(12, 16))]


def test_clip_sampler_yields_consecutive_frames_per_slot() -> None:
    sampler = ClipBatchSampler(_clips(), batch_size=2, clip_length=3, shuffle=True, seed=1)
    batches = list(sampler)
    assert len(batches) == len(sampler) and len(batches) % 3 == 0
    for g in range(0, len(batches), 3):
        group = batches[g:g + 3]
        for slot in range(2):
            refs = [b[slot] for b in group]
            assert [r.step for r in refs] == [0, 1, 2]
            assert [r.index for r in refs] == list(range(refs[0].index, refs[0].index + 3))
            assert len({r.seed for r in refs}) == 1  # one augmentation per clip
            scene = next(c for c in _clips() if refs[0].index in c)
            assert refs[-1].index in scene  # clips never cross scenes
    used = [r.index for b in batches for r in b]
    assert len(used) == len(set(used))
    sampler.set_epoch(1)
    assert [r.index for b in sampler for r in b] != used


def test_clip_sampler_splits_clips_between_ranks() -> None:
    kw = dict(batch_size=1, clip_length=2, shuffle=True, seed=3)
    ranks = [[r for b in ClipBatchSampler(_clips(), rank=k, world_size=2, **kw) for r in b] for k in range(2)]
    assert len(ranks[0]) == len(ranks[1]) > 0
    assert not {r.index for r in ranks[0]} & {r.index for r in ranks[1]}


def test_clip_sampler_whole_scenes_for_evaluation() -> None:
    sampler = ClipBatchSampler(_clips(), batch_size=1, clip_length=None, shuffle=False, drop_last=False)
    refs = [b[0] for b in sampler]
    assert sorted(r.index for r in refs) == list(range(16))
    assert sum(r.step == 0 for r in refs) == 3
    frame_sampler = ClipBatchSampler(_clips(), batch_size=4, clip_length=1, shuffle=False, drop_last=False)
    assert all(ref.step == 0 for b in frame_sampler for ref in b)
    assert isinstance(next(iter(frame_sampler))[0], FrameRef)


def test_clip_sampler_keeps_every_scene_without_drop_last() -> None:
    one_scene = [list(range(5))]
    kw = dict(batch_size=1, clip_length=None, shuffle=False, drop_last=False, world_size=2)
    seen = [r.index for k in range(2) for b in ClipBatchSampler(one_scene, rank=k, **kw) for r in b]
    assert sorted(seen) == list(range(5))


def test_emergency_vehicles_are_vehicles() -> None:
    grid = BEVGrid(-10, 10, -10, 10, 0.5)
    seg = segmentation_targets(("vehicle",), grid, global_T_ego=np.eye(4), aug_T_ego=np.eye(4), drivable=None,
                               lane_dividers=None, center=np.array([[3.0, 1.0, 0.9]]), size=np.array([[2.0, 5.0, 1.8]]),
                               yaw=np.zeros(1), categories=("vehicle.emergency.ambulance",), visibility=("4",))
    assert seg.masks[0][26, 22] == 1 and seg.valid[0]
