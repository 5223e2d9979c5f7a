"""Occupancy metrics on hand cases: IoUs, both protocols, and the LiDAR-observed mask of Occ3D."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX
from occbench.metrics.occupancy import (
    PROTOCOLS,
    count_voxels,
    observed_mask,
    occupancy_confusion,
    occupancy_metrics,
)

CAR, ROAD, EMPTY = CLASS_ID["car"], CLASS_ID["road"], EMPTY_INDEX
# Six voxels in a row along x, 1 m each; the sensor in the first.
ROW = {"range": [0.0, 0.0, 0.0, 6.0, 1.0, 1.0], "voxel_size": [1.0, 1.0, 1.0]}
ORIGIN = torch.tensor([0.5, 0.5, 0.5])


def _row(*labels: int) -> torch.Tensor:
    return torch.tensor(labels).reshape(6, 1, 1)


def _score(prediction, target, protocol, points=torch.tensor([[5.5, 0.5, 0.5]])) -> dict:
    confusion = occupancy_confusion()
    count_voxels(confusion, prediction, target, PROTOCOLS[protocol](points, ORIGIN, ROW))
    return occupancy_metrics(confusion)


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_a_perfect_prediction_scores_one_and_an_empty_one_zero(protocol):
    target = _row(CAR, CAR, ROAD, EMPTY, EMPTY, IGNORE_INDEX)
    perfect = _score(target.clone(), target, protocol)
    assert perfect["miou"] == perfect["geometric_iou"] == perfect["iou"]["car"] == perfect["iou"]["road"] == 1.0
    assert perfect["iou"]["pole"] is None  # absent from target and prediction: undefined, not 0
    empty = _score(torch.full_like(target, EMPTY), target, protocol)
    assert empty["miou"] == empty["geometric_iou"] == empty["iou"]["car"] == 0.0


@pytest.mark.parametrize("protocol", sorted(PROTOCOLS))
def test_ious_by_hand(protocol):
    """Voxel 1, a car, called road; voxel 3, empty, called car; voxel 5 is unknown, whatever is predicted.
    car: 1 hit / (2 true + 1 false) = 1/3; road 1 / 2; mIoU 5/12; occupied 3 both / 4 either."""
    target = _row(CAR, CAR, ROAD, EMPTY, EMPTY, IGNORE_INDEX)
    prediction = _row(CAR, ROAD, ROAD, CAR, EMPTY, CAR)
    metrics = _score(prediction, target, protocol)
    assert metrics["iou"]["car"] == pytest.approx(1 / 3) and metrics["iou"]["road"] == pytest.approx(1 / 2)
    assert metrics["miou"] == pytest.approx(5 / 12) and metrics["geometric_iou"] == pytest.approx(3 / 4)
    assert metrics["counted_voxels"] == 5


def test_occ3d_leaves_out_the_voxels_the_lidar_never_saw():
    """The only return is in voxel 2: voxels 0-2 are observed; the car behind it (voxel 4), missed by the
    prediction, counts under OpenOccupancy only."""
    target = _row(EMPTY, EMPTY, ROAD, EMPTY, CAR, EMPTY)
    prediction = _row(EMPTY, EMPTY, ROAD, EMPTY, EMPTY, EMPTY)
    points = torch.tensor([[2.5, 0.5, 0.5]])
    occ3d, openoccupancy = (_score(prediction, target, protocol, points) for protocol in ("occ3d", "openoccupancy"))
    assert occ3d["counted_voxels"] == 3 and occ3d["miou"] == 1.0 and occ3d["iou"]["car"] is None
    assert openoccupancy["counted_voxels"] == 6 and openoccupancy["iou"]["car"] == 0.0
    assert openoccupancy["miou"] == pytest.approx(0.5) and openoccupancy["geometric_iou"] == pytest.approx(0.5)


def _voxels(mask: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(v) for v in torch.nonzero(mask).tolist()}


def test_the_observed_mask_is_the_voxels_crossed_from_the_origin_to_each_return():
    """On a 3 x 3 x 1 grid: a ray from (0.5, 0.5) to (2.5, 1.5) crosses x = 1 at y = 0.75, y = 1 at x = 1.5
    and x = 2 at y = 1.25; a return outside the grid marks every voxel its ray crosses inside."""
    grid = {"range": [0.0, 0.0, 0.0, 3.0, 3.0, 1.0], "voxel_size": [1.0, 1.0, 1.0]}
    origin = torch.tensor([0.5, 0.5, 0.5])
    diagonal = observed_mask(torch.tensor([[2.5, 1.5, 0.5]]), origin, grid)
    assert diagonal.shape == (3, 3, 1)
    assert _voxels(diagonal) == {(0, 0, 0), (1, 0, 0), (1, 1, 0), (2, 1, 0)}
    beyond = observed_mask(torch.tensor([[0.5, 10.0, 0.5]]), origin, grid)
    assert _voxels(beyond) == {(0, 0, 0), (0, 1, 0), (0, 2, 0)}
    # Sensor below the grid, looking up through it (the grid starts at z = 0, the origin at z = -1).
    from_below = observed_mask(torch.tensor([[1.5, 0.5, 0.5]]), torch.tensor([1.5, 0.5, -1.0]), grid)
    assert _voxels(from_below) == {(1, 0, 0)}


def test_the_observed_mask_equals_dense_sampling_along_random_rays():
    """Exact traversal against 100k points along each ray (about 1e-4 voxel apart), on a 0.5 m grid off the origin."""
    grid = {"range": [-2.0, -1.0, -1.0, 2.0, 2.0, 1.0], "voxel_size": [0.5, 0.5, 0.5]}
    rng = np.random.default_rng(0)
    origin = np.array([0.1, 0.2, 0.3])
    points = rng.uniform([-3.0, -2.0, -1.5], [3.0, 3.0, 1.5], (20, 3))
    mask = observed_mask(torch.tensor(points), torch.tensor(origin), grid)
    t = np.linspace(0.0, 1.0, 100_001)
    samples = (origin + t[:, None, None] * (points - origin)).reshape(-1, 3)
    coords = np.floor((samples - [-2.0, -1.0, -1.0]) / 0.5).astype(int)
    inside = ((coords >= 0) & (coords < [8, 6, 4])).all(1)
    expected = np.zeros((8, 6, 4), bool)
    expected[tuple(coords[inside].T)] = True
    assert 10 < mask.sum() < mask.numel() and np.array_equal(mask.numpy(), expected)


def test_prediction_and_target_of_other_grids_are_an_error():
    with pytest.raises(ValueError, match=r"prediction \(6, 1, 1\), target \(3, 1, 1\)"):
        count_voxels(occupancy_confusion(), _row(*[EMPTY] * 6), torch.zeros(3, 1, 1, dtype=torch.long),
                     torch.ones(6, 1, 1, dtype=torch.bool))
