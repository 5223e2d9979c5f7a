"""Semantic occupancy from the BEV map: per-voxel class logits along z under each BEV cell.

Shared by SPOT's pre-training head and the occupancy fine-tuning task. The
occupancy grid must align with the backbone's BEV map: the same x/y range,
each BEV cell covering k x k occupancy columns (k a whole number). The head is
a 3x3 convolution on the dense BEV features, then a 1x1 convolution to
k * k * Z * (classes + 1) channels, unfolded (pixel shuffle) into the class
logits of the k x k columns of Z voxels under each cell. The BEV map's layout
(its stride and grid) is read from the backbone's output (``BevLayout``); at
construction, from its output on one point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.data.dataset import FrameIndex
from occbench.data.frame import grid_shape, occupancy_grid
from occbench.data.taxonomy import NUM_CLASSES
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import voxelize

OCCUPANCY_CLASSES = NUM_CLASSES + 1  # the semantic classes, then empty (EMPTY_INDEX)


@dataclass(frozen=True)
class BevLayout:
    """Where the BEV map lies: its x/y origin, cell size and cells, from a backbone's output."""

    origin: tuple[float, float]
    cell: tuple[float, float]
    cells: tuple[int, int]  # along x, along y
    described: str

    @classmethod
    def of(cls, output: BackboneOutput) -> "BevLayout":
        grid, stride = output.grid, output.bev_stride
        cell = (grid.voxel_size[0] * stride, grid.voxel_size[1] * stride)
        cells = (output.bev.shape[3], output.bev.shape[2])  # the map is (B, C, y, x)
        described = (f"the BEV map (voxelization range {list(grid.point_cloud_range)}, voxel size "
                     f"{list(grid.voxel_size)}, BEV stride {stride}: {cells[0]} x {cells[1]} cells of "
                     f"{cell[0]} x {cell[1]} m)")
        return cls(tuple(grid.point_cloud_range[:2]), cell, cells, described)

    @classmethod
    def of_backbone(cls, backbone: SparseBackbone) -> "BevLayout":
        """The layout of ``backbone``'s BEV map, read from its output on one point (eval mode, no grad)."""
        grid, device = backbone.grid, next(backbone.parameters()).device
        point = (grid.lower + grid.size / 2)[None].to(device)
        training = backbone.training
        backbone.eval()
        with torch.no_grad():
            output = backbone(voxelize([point], [torch.zeros(1, device=device)], grid), with_bev=True)
        backbone.train(training)
        return cls.of(output)


def upsampling(bev: BevLayout, occupancy: dict, shape: tuple[int, ...], who: str) -> int:
    """How many occupancy columns per BEV cell and axis (k), if the grids align; else a ValueError naming both.

    ``occupancy``: {"range": [x0, y0, z0, x1, y1, z1], "voxel_size": [dx, dy, dz]}, ``shape`` (X, Y, Z).
    """
    point_range, voxel = occupancy["range"], occupancy["voxel_size"]
    ratios = [bev.cell[axis] / voxel[axis] for axis in (0, 1)]
    k = round(ratios[0])
    problems = []
    if not all(math.isclose(r, k, abs_tol=1e-6) for r in ratios) or k < 1:
        problems.append(f"a BEV cell is not the same whole number of occupancy voxels along x and y ({ratios})")
    for axis, name in enumerate("xy"):
        start, stop = bev.origin[axis], bev.origin[axis] + bev.cells[axis] * bev.cell[axis]
        if not (math.isclose(point_range[axis], start, abs_tol=1e-6)
                and math.isclose(point_range[axis + 3], stop, abs_tol=1e-6)):
            problems.append(f"{name} spans [{point_range[axis]}, {point_range[axis + 3]}] in the occupancy grid "
                            f"but [{start}, {stop}] in the BEV map")
        elif k >= 1 and shape[axis] != bev.cells[axis] * k:
            problems.append(f"{shape[axis]} occupancy voxels along {name} for {bev.cells[axis]} BEV cells of {k}")
    if problems:
        raise ValueError(f"{who}: the occupancy grid (range {list(point_range)}, voxel size {list(voxel)}) does not "
                         f"align with {bev.described}: " + "; ".join(problems))
    return k


def occupancy_grid_of_run(index: FrameIndex, frame_ids, who: str) -> dict:
    """The occupancy grid ({"range", "voxel_size"}) of a run's first frame; a ValueError if it has none."""
    first = frame_ids[0]
    grid = occupancy_grid(index.load(first))
    if grid is None:
        raise ValueError(f"{index.path}: frame {first!r} has no semantic occupancy, which {who} "
                         "trains on (datasets.<name>.occupancy)")
    return {"range": list(grid.point_range), "voxel_size": list(grid.voxel_size)}


class OccupancyColumns:
    """How an occupancy grid hangs below a backbone's BEV map: k x k columns of ``depth`` voxels per cell."""

    def __init__(self, backbone: SparseBackbone, occupancy: dict, who: str):
        self.who = who
        self.grid = {"range": [float(v) for v in occupancy["range"]],
                     "voxel_size": [float(v) for v in occupancy["voxel_size"]]}
        point_range, voxel = self.grid["range"], self.grid["voxel_size"]
        self.shape = grid_shape(point_range, voxel)
        self.k = upsampling(BevLayout.of_backbone(backbone), self.grid, self.shape, who)
        self.depth = self.shape[2]  # voxels along z: the logits of a column

    def head(self, bev_channels: int, hidden: int, channels: int = OCCUPANCY_CLASSES) -> nn.Sequential:
        """The light head whose output ``unfold`` turns into ``channels`` values per voxel (class logits by
        default): 3x3 conv, BN, ReLU, 1x1 conv to every column's values."""
        return nn.Sequential(
            nn.Conv2d(bev_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            self.column_values(hidden, channels),
        )

    def column_values(self, in_channels: int, channels: int) -> nn.Conv2d:
        """The 1x1 convolution to ``channels`` values of every voxel in the k x k columns under each BEV cell:
        the layout ``unfold`` and ``values_at`` read."""
        return nn.Conv2d(in_channels, self.k * self.k * self.depth * channels, 1)

    def logits(self, head_output: torch.Tensor, output: BackboneOutput, batch: Batch) -> torch.Tensor:
        """Class logits (B, OCCUPANCY_CLASSES, X, Y, Z) of the batch's occupancy voxels from the head's output."""
        if batch.occupancy_grid != self.grid:
            raise ValueError(f"{self.who} was built for the occupancy grid {self.grid}, but frames "
                             f"{batch.frame_ids} have {batch.occupancy_grid}")
        layout = BevLayout.of(output)
        if upsampling(layout, batch.occupancy_grid, tuple(batch.occupancy.shape[1:]), self.who) != self.k:
            raise ValueError(f"{self.who} was built for {self.k} x {self.k} occupancy columns per BEV cell; this "
                             f"backbone's BEV map has other cells ({layout.described})")
        return self.unfold(head_output, OCCUPANCY_CLASSES)

    def unfold(self, head_output: torch.Tensor, channels: int) -> torch.Tensor:
        """The head's output (B, k * k * Z * channels, Y / k, X / k) as a volume (B, channels, X, Y, Z)."""
        shuffled = F.pixel_shuffle(head_output, self.k)  # (B, channels * Z, Y, X)
        b, _, y, x = shuffled.shape
        return shuffled.reshape(b, channels, self.depth, y, x).permute(0, 1, 4, 3, 2)

    def values_at(self, conv: nn.Conv2d, features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        """``unfold(conv(features), channels)[b, :, x, y, z]`` for each row (b, x, y, z) of ``index``: (N, channels).

        ``conv`` is a ``column_values`` convolution. Computed at those voxels only: OccFeat needs its
        16 latent values at the 0.7 % of the volume that is occupied, and the dense map and volume cost 1.5 GFLOP
        and 87 MB a step of 2 frames (pixel shuffle and its backward alone 0.18 s on one core).
        """
        channels = conv.out_channels // (self.k * self.k * self.depth)
        sample, x, y, z = index.unbind(1)
        row, column = y % self.k, x % self.k  # pixel_shuffle: out[.., Y * k + row, X * k + column]
        cell = features[sample, :, y // self.k, x // self.k]  # (N, in_channels)
        weight = conv.weight.view(channels, self.depth, self.k, self.k, -1)[:, z, row, column]  # (channels, N, in)
        bias = conv.bias.view(channels, self.depth, self.k, self.k)[:, z, row, column]
        return torch.einsum("cni,ni->nc", weight, cell) + bias.T
