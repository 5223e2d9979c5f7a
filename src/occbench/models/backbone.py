"""The one backbone every method pre-trains: a sparse 3D encoder-decoder with a BEV neck.

Encoder: submanifold (SubM) blocks at full resolution, then two strided sparse
convolutions (x2, x4). Decoder: inverse convolutions back to full resolution
with skip connections, giving a feature per input voxel (segmentation, ALSO's
latent points). BEV neck: one more z-stride on the x4 level, densified and
flattened over height into a 2D map (detection and the BEV-based
pre-training heads). The backbone knows nothing about pre-training methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import spconv.pytorch as spconv
import torch
from torch import nn

from occbench.models.voxelize import VoxelBatch, VoxelGrid

IN_CHANNELS = 4  # mean x, y, z, intensity per voxel
BEV_STRIDE = 4  # two stride-2 encoder stages in x and y


def _subm(c_in: int, c_out: int, key: str) -> spconv.SparseSequential:
    return spconv.SparseSequential(
        spconv.SubMConv3d(c_in, c_out, 3, padding=1, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


def _down(c_in: int, c_out: int, key: str) -> spconv.SparseSequential:
    return spconv.SparseSequential(
        spconv.SparseConv3d(c_in, c_out, 3, stride=2, padding=1, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


def _up(c_in: int, c_out: int, key: str) -> spconv.SparseSequential:
    return spconv.SparseSequential(
        spconv.SparseInverseConv3d(c_in, c_out, 3, bias=False, indice_key=key),
        nn.BatchNorm1d(c_out),
        nn.ReLU(inplace=True),
    )


@dataclass
class BackboneOutput:
    """What heads read; they take the grid and strides from here, never from constants."""

    voxel_features: spconv.SparseConvTensor  # decoder output: full resolution, same voxels as the input
    levels: dict[int, spconv.SparseConvTensor]  # encoder output by stride in voxels: 1, 2, 4
    bev: torch.Tensor | None  # (B, bev_channels, Y / bev_stride, X / bev_stride), when asked for
    bev_stride: int  # one BEV cell spans bev_stride x bev_stride voxels of the grid
    grid: VoxelGrid


class SparseBackbone(nn.Module):
    def __init__(self, grid: VoxelGrid, channels: tuple[int, int, int], bev_channels: int):
        super().__init__()
        c0, c1, c2 = channels
        self.grid = grid
        self.out_channels = c0
        self.level_channels = {1: c0, 2: c1, 4: c2}  # channels of BackboneOutput.levels, by stride
        self.bev_channels = bev_channels
        self.stem = _subm(IN_CHANNELS, c0, "subm0")
        self.down1 = spconv.SparseSequential(_down(c0, c1, "down1"), _subm(c1, c1, "subm1"))
        self.down2 = spconv.SparseSequential(_down(c1, c2, "down2"), _subm(c2, c2, "subm2"))
        self.up2 = _up(c2, c1, "down2")
        self.fuse1 = _subm(2 * c1, c1, "subm1")
        self.up1 = _up(c1, c0, "down1")
        self.fuse0 = _subm(2 * c0, c0, "subm0")
        self.to_bev = spconv.SparseSequential(
            spconv.SparseConv3d(c2, c2, (3, 1, 1), stride=(2, 1, 1), padding=(1, 0, 0), bias=False),
            nn.BatchNorm1d(c2),
            nn.ReLU(inplace=True),
        )
        z4 = (grid.spatial_shape[0] + 3) // 4  # depth after two stride-2 convolutions
        self.bev_depth = (z4 + 1) // 2
        self.bev_neck = nn.Sequential(
            nn.Conv2d(c2 * self.bev_depth, bev_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(bev_channels),
            nn.ReLU(inplace=True),
        )

    @classmethod
    def from_params(cls, params: dict, backbone: str) -> "SparseBackbone":
        spec = params["backbones"][backbone]
        return cls(VoxelGrid.from_params(params["voxelization"]), tuple(spec["channels"]), spec["bev_channels"])

    def forward(self, voxels: VoxelBatch, with_bev: bool = False) -> BackboneOutput:
        x = spconv.SparseConvTensor(voxels.features, voxels.indices, self.grid.spatial_shape, voxels.batch_size)
        x0 = self.stem(x)
        x1 = self.down1(x0)
        x2 = self.down2(x1)
        u1 = self.up2(x2)
        u1 = self.fuse1(u1.replace_feature(torch.cat([u1.features, x1.features], dim=1)))
        u0 = self.up1(u1)
        u0 = self.fuse0(u0.replace_feature(torch.cat([u0.features, x0.features], dim=1)))
        bev = None
        if with_bev:
            dense = self.to_bev(x2).dense()  # (B, C, D, H, W)
            batch, channels, depth, height, width = dense.shape
            bev = self.bev_neck(dense.reshape(batch, channels * depth, height, width))
        return BackboneOutput(u0, {1: x0, 2: x1, 4: x2}, bev, BEV_STRIDE, self.grid)
