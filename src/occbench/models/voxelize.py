"""Points to sparse voxels, and voxel predictions back to every point.

A plain torch implementation (no per-voxel point cap) so that every in-range
point belongs to exactly one voxel and predictions can be carried back to the
full cloud, as the segmentation protocol requires.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class VoxelGrid:
    point_cloud_range: tuple[float, ...]  # x_min, y_min, z_min, x_max, y_max, z_max
    voxel_size: tuple[float, float, float]

    @classmethod
    def from_params(cls, voxelization: dict) -> "VoxelGrid":
        return cls(tuple(voxelization["point_cloud_range"]), tuple(voxelization["voxel_size"]))

    @property
    def lower(self) -> torch.Tensor:
        return torch.tensor(self.point_cloud_range[:3], dtype=torch.float32)

    @property
    def size(self) -> torch.Tensor:
        return torch.tensor(self.voxel_size, dtype=torch.float32)

    @property
    def shape_xyz(self) -> tuple[int, int, int]:
        extent = [hi - lo for lo, hi in zip(self.point_cloud_range[:3], self.point_cloud_range[3:])]
        return tuple(int(round(e / s)) for e, s in zip(extent, self.voxel_size))

    @property
    def spatial_shape(self) -> list[int]:
        """spconv order: z, y, x."""
        x, y, z = self.shape_xyz
        return [z, y, x]

    def coords(self, xyz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Voxel coordinates (N, 3) x, y, z of points (N, 3), and whether each lies inside the grid."""
        lower, size = self.lower.to(xyz.device), self.size.to(xyz.device)
        coords = torch.floor((xyz - lower) / size).long()
        inside = ((coords >= 0) & (coords < torch.tensor(self.shape_xyz, device=xyz.device))).all(dim=1)
        return coords, inside

    def centres(self, indices: torch.Tensor) -> torch.Tensor:
        """Metric centres of voxels given spconv indices (batch, z, y, x)."""
        xyz = indices[:, [3, 2, 1]].float()
        return self.lower.to(indices.device) + (xyz + 0.5) * self.size.to(indices.device)


@dataclass
class VoxelBatch:
    features: torch.Tensor  # (V, 4): mean x, y, z, intensity of the voxel's points
    indices: torch.Tensor  # (V, 4) int32: batch, z, y, x
    point_voxel: list[torch.Tensor]  # per sample, (N_i,) voxel row of each point, -1 if out of range
    batch_size: int
    parent: "VoxelBatch | None" = None  # the whole voxelization this one was taken from (masking)
    parent_rows: torch.Tensor | None = None  # (V,) row of each voxel in ``parent``

    def subset(self, keep: torch.Tensor) -> "VoxelBatch":
        """The voxels where ``keep`` (bool, (V,)) holds, e.g. the visible ones of a masking method;
        points of dropped voxels map to -1, and ``parent`` keeps the whole batch for the targets."""
        rows = torch.nonzero(keep).squeeze(1)
        renumber = torch.full((keep.shape[0],), -1, dtype=torch.long, device=keep.device)
        renumber[rows] = torch.arange(rows.shape[0], device=keep.device)
        point_voxel = [torch.where(pv >= 0, renumber[pv.clamp_min(0)], pv) for pv in self.point_voxel]
        return VoxelBatch(self.features[rows], self.indices[rows], point_voxel, self.batch_size, self, rows)


def voxelize(points: list[torch.Tensor], intensity: list[torch.Tensor], grid: VoxelGrid,
             frame_ids: list[str] | None = None) -> VoxelBatch:
    """Mean-pool points into voxels; keep the point-to-voxel map for the way back.

    With ``frame_ids``, a frame with no point inside the grid is refused by name: the sparse
    convolutions would fail on it with an assertion naming nothing.
    """
    device = points[0].device
    dims = torch.tensor(grid.shape_xyz, device=device)
    all_keys, all_feats, in_range = [], [], []
    for batch_index, (xyz, inten) in enumerate(zip(points, intensity)):
        coords, inside = grid.coords(xyz)
        x, y, z = coords[inside].unbind(1)
        all_keys.append(((batch_index * dims[2] + z) * dims[1] + y) * dims[0] + x)
        all_feats.append(torch.cat([xyz[inside], inten[inside, None]], dim=1))
        in_range.append(inside)
    empty = [frame_id for frame_id, inside in zip(frame_ids or [], in_range) if not inside.any()]
    if empty:
        raise ValueError(f"frame(s) {', '.join(empty)}: no point falls inside the voxel grid {grid} "
                         "(an empty scan, or coordinates in another frame or unit)")
    unique_keys, inverse = torch.unique(torch.cat(all_keys), sorted=True, return_inverse=True)
    feats = torch.cat(all_feats)
    sums = torch.zeros(unique_keys.shape[0], feats.shape[1], device=device).index_add_(0, inverse, feats)
    counts = torch.zeros(unique_keys.shape[0], device=device).index_add_(0, inverse, torch.ones_like(feats[:, 0]))
    x = unique_keys % dims[0]
    y = (unique_keys // dims[0]) % dims[1]
    z = (unique_keys // (dims[0] * dims[1])) % dims[2]
    b = unique_keys // (dims[0] * dims[1] * dims[2])
    indices = torch.stack([b, z, y, x], dim=1).int()
    point_voxel = []
    for inside, rows in zip(in_range, inverse.split([int(m.sum()) for m in in_range])):
        voxel_of_point = torch.full(inside.shape, -1, dtype=torch.long, device=device)
        voxel_of_point[inside] = rows
        point_voxel.append(voxel_of_point)
    return VoxelBatch(sums / counts[:, None], indices, point_voxel, len(points))


def nearest_voxel(points: torch.Tensor, voxel_centres: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Row of the nearest voxel centre for each point (for points outside the grid)."""
    rows = [torch.cdist(points[i:i + chunk], voxel_centres).argmin(dim=1) for i in range(0, len(points), chunk)]
    return torch.cat(rows) if rows else torch.zeros(0, dtype=torch.long, device=points.device)


def points_to_voxel_rows(batch: VoxelBatch, points: list[torch.Tensor], grid: VoxelGrid) -> list[torch.Tensor]:
    """Voxel row for every point of every sample; out-of-range points take the nearest voxel."""
    centres = grid.centres(batch.indices)
    rows = []
    for batch_index, (xyz, point_voxel) in enumerate(zip(points, batch.point_voxel)):
        point_voxel = point_voxel.clone()
        outside = point_voxel < 0
        if outside.any():
            sample_rows = torch.nonzero(batch.indices[:, 0] == batch_index).squeeze(1)
            point_voxel[outside] = sample_rows[nearest_voxel(xyz[outside], centres[sample_rows])]
        rows.append(point_voxel)
    return rows
