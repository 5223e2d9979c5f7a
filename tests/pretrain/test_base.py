"""The method interface: a hook before the backbone lets a method mask voxels."""

from __future__ import annotations

import torch

from occbench.pretrain.base import PretrainMethod, PretrainModel


class KeepEvenRows(PretrainMethod):
    """Masks every odd voxel row; its loss is the sum of the backbone's features on what it saw."""

    def backbone_input(self, voxels, batch, generator):
        keep = torch.zeros(voxels.features.shape[0], dtype=torch.bool)
        keep[::2] = True
        return voxels.subset(keep)

    def loss(self, output, batch, voxels, generator):
        self.seen = (output, voxels)
        return output.voxel_features.features.sum(), {}


def test_masked_voxels_never_reach_the_backbone(tiny_backbone_batch):
    backbone, batch, full = tiny_backbone_batch
    model = PretrainModel(backbone, KeepEvenRows(backbone, {}, None))
    loss, _ = model(batch, torch.Generator().manual_seed(0))
    output, seen = model.method.seen
    visible = full.features.shape[0] - full.features.shape[0] // 2
    assert output.voxel_features.features.shape[0] == seen.features.shape[0] == visible
    assert torch.equal(seen.indices, full.indices[::2])
    assert torch.equal(seen.parent_rows, torch.arange(0, len(full.indices), 2))
    assert seen.parent.features.shape == full.features.shape
    # A point of a masked voxel maps to -1, a point of a kept voxel to its new row.
    for before, after in zip(full.point_voxel, seen.point_voxel):
        kept = (before >= 0) & (before % 2 == 0)
        assert torch.equal(after[kept], before[kept] // 2) and (after[~kept] == -1).all()
    loss.backward()
    assert backbone.stem[0].weight.grad is not None


def test_backbone_output_names_its_levels_grid_and_bev_stride(tiny_backbone_batch):
    backbone, batch, voxels = tiny_backbone_batch
    output = backbone(voxels, with_bev=True)
    assert sorted(output.levels) == [1, 2, 4] and output.grid is backbone.grid
    z, y, x = backbone.grid.spatial_shape
    assert output.bev.shape[-2:] == (y // output.bev_stride, x // output.bev_stride)
    assert output.levels[4].spatial_shape == [(z + 3) // 4, y // 4, x // 4]
    assert torch.equal(output.levels[1].indices, voxels.indices)
