"""Semantic occupancy metrics over voxels: per-class IoU, mIoU and geometric IoU, in two protocols.

One confusion matrix (NUM_CLASSES classes + empty) summed over every held-out
voxel that counts; IGNORE_INDEX voxels (below the ground, unknown) never count.
Which labelled voxels count is the protocol (``PROTOCOLS``):

- ``openoccupancy``: every labelled voxel (OpenOccupancy, Wang et al. ICCV 2023);
- ``occ3d``: only the voxels the frame's LiDAR observed (Occ3D, Tian et al.
  NeurIPS 2023): those its rays cross from the sensor origin to each return
  (seen free) and those holding a return (seen occupied). Occ3D also has a
  camera-visibility mask; with no camera ray casting here, the LiDAR mask alone.

mIoU is the mean IoU of the semantic classes (empty is not a class of it),
over the classes whose IoU is defined (present in target or prediction), as
the segmentation metric; geometric IoU is the IoU of "occupied" (any class)
against empty.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from occbench.data.frame import grid_shape
from occbench.data.raycast import voxels_crossed
from occbench.data.taxonomy import CLASSES, EMPTY_INDEX, IGNORE_INDEX, NUM_CLASSES
from occbench.metrics.segmentation import ConfusionMatrix
from occbench.metrics.stats import nan_to_none


def observed_mask(points: torch.Tensor, origin: torch.Tensor, grid: dict) -> torch.Tensor:
    """(X, Y, Z) bool: the voxels of ``grid`` ({"range", "voxel_size"}) that the rays from ``origin`` (3,)
    to ``points`` (N, 3) cross or end in (exact traversal, ``raycast.voxels_crossed``), on the points' device."""
    crossed = voxels_crossed(origin.detach().cpu().numpy(), points.detach().cpu().numpy(),
                             grid["range"], grid["voxel_size"])
    return torch.from_numpy(crossed).to(points.device)


def every_voxel(points: torch.Tensor, origin: torch.Tensor, grid: dict) -> torch.Tensor:
    """OpenOccupancy: every voxel counts (the labels' IGNORE_INDEX still excludes the unknown ones)."""
    return torch.ones(grid_shape(grid["range"], grid["voxel_size"]), dtype=torch.bool, device=points.device)


# Which voxels of a frame count, from its points, sensor origin and occupancy grid.
PROTOCOLS: dict[str, Callable[[torch.Tensor, torch.Tensor, dict], torch.Tensor]] = {
    "openoccupancy": every_voxel,
    "occ3d": observed_mask,
}


def occupancy_confusion() -> ConfusionMatrix:
    """An empty confusion matrix of the semantic classes + empty, IGNORE_INDEX targets left out."""
    return ConfusionMatrix(NUM_CLASSES + 1, IGNORE_INDEX)


def count_voxels(confusion: ConfusionMatrix, prediction: torch.Tensor, target: torch.Tensor,
                 counted: torch.Tensor) -> None:
    """Add one frame's (X, Y, Z) predicted and target classes, over the ``counted`` voxels only."""
    if not prediction.shape == target.shape == counted.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)}, target {tuple(target.shape)} and mask "
                         f"{tuple(counted.shape)} must be the same voxel grid")
    confusion.update(prediction[counted], target[counted])


def semantic_miou(confusion: ConfusionMatrix) -> float:
    """Mean IoU of the semantic classes (empty excluded) whose IoU is defined; NaN if none is."""
    semantic = confusion.iou()[:NUM_CLASSES]
    defined = semantic[~np.isnan(semantic)]
    return float(defined.mean()) if defined.size else math.nan


def geometric_iou(confusion: ConfusionMatrix) -> float:
    """IoU of occupied (any semantic class) against empty; NaN without an occupied voxel in either."""
    matrix = confusion.matrix
    both_occupied = matrix[:EMPTY_INDEX, :EMPTY_INDEX].sum()
    either_occupied = matrix.sum() - matrix[EMPTY_INDEX, EMPTY_INDEX]
    return float(both_occupied / either_occupied) if either_occupied else math.nan


def occupancy_metrics(confusion: ConfusionMatrix) -> dict:
    """The metrics.json payload: numbers only, an undefined value written as null; ``counted_voxels`` says
    how many voxels the protocol counted (Occ3D's share of OpenOccupancy's is what the LiDAR saw)."""
    return {
        "miou": nan_to_none(semantic_miou(confusion)),
        "geometric_iou": nan_to_none(geometric_iou(confusion)),
        "iou": {name: nan_to_none(value) for name, value in zip(CLASSES, confusion.iou()[:NUM_CLASSES])},
        "counted_voxels": int(confusion.matrix.sum()),
    }
