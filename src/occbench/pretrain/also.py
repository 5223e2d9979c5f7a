"""ALSO (Boulch et al., CVPR 2023): occupancy of points along the LiDAR rays.

Queries are sampled on the sensor-to-point ray of input points, in three equal
thirds: "in" up to ``hit_offset`` behind the hit (occupied), "out" up to
``hit_offset`` in front of it (empty), "far" uniformly between the sensor and
the hit (empty). Each query is decoded from the backbone's latent points within
``radius``: an MLP on [latent feature, relative position] predicts an occupancy
logit and the intensity; the loss is BCE + L1 over every (query, neighbour)
pair, the L1 term only where an intensity target exists (not for far queries).

As in ALSO, the latent points are the input points, each carrying the feature
of its voxel from the backbone's full-resolution output. occbench
re-implementation choice: each query keeps at most ``max_neighbours`` nearest
latent points inside the radius, which bounds the CPU cost; hyperparameters are
in params.yaml under pretrain.methods.also.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch
from occbench.pretrain.base import PretrainMethod, RunContext

IN, OUT, FAR = 0, 1, 2  # the three thirds of the query set, in this order


@dataclass
class Queries:
    xyz: torch.Tensor  # (Q, 3)
    occupied: torch.Tensor  # (Q,) float 1 = occupied, 0 = empty
    intensity: torch.Tensor  # (Q,) target intensity (NaN where none)
    kind: torch.Tensor  # (Q,) IN / OUT / FAR


def sample_queries(points: torch.Tensor, intensity: torch.Tensor, origin: torch.Tensor,
                   num_queries: int, hit_offset: float, generator: torch.Generator) -> Queries:
    """Three equal thirds of ray queries (num_queries // 3 each) from random hits of one cloud."""
    per_kind = num_queries // 3
    hits = torch.randint(points.shape[0], (3, per_kind), generator=generator)
    xyz, kinds = [], []
    for kind in (IN, OUT, FAR):
        hit = points[hits[kind]]
        ray = hit - origin
        unit = ray / ray.norm(dim=1, keepdim=True).clamp_min(1e-6)
        u = torch.rand(per_kind, 1, generator=generator)
        if kind == IN:
            xyz.append(hit + u * hit_offset * unit)
        elif kind == OUT:
            xyz.append(hit - u * hit_offset * unit)
        else:
            xyz.append(origin + u * ray)
        kinds.append(torch.full((per_kind,), kind))
    kind = torch.cat(kinds)
    target_intensity = intensity[hits.reshape(-1)].clone()
    target_intensity[kind == FAR] = float("nan")
    return Queries(torch.cat(xyz), (kind == IN).float(), target_intensity, kind)


def neighbour_pairs(queries: torch.Tensor, latent: torch.Tensor, radius: float, max_neighbours: int,
                    chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """(query row, latent row) of up to ``max_neighbours`` nearest latent points within ``radius``."""
    k = min(max_neighbours, latent.shape[0])
    query_rows, latent_rows = [], []
    for start in range(0, queries.shape[0], chunk):
        distance, nearest = torch.cdist(queries[start:start + chunk], latent).topk(k, dim=1, largest=False)
        row, column = torch.nonzero(distance <= radius, as_tuple=True)
        query_rows.append(row + start)
        latent_rows.append(nearest[row, column])
    return torch.cat(query_rows), torch.cat(latent_rows)


class ALSO(PretrainMethod):
    needs_bev = False

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext | None = None):
        super().__init__(backbone, settings, context)
        hidden = settings["hidden_dim"]
        self.decoder = nn.Sequential(
            nn.Linear(backbone.out_channels + 3, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2),  # occupancy logit, intensity
        )

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.settings
        features = output.voxel_features.features
        logits, occupied, pred_intensity, target_intensity = [], [], [], []
        for sample in range(len(batch)):
            # Latent points: the input points, each carrying its voxel's feature.
            point_voxel = voxels.point_voxel[sample]
            inside = point_voxel >= 0
            latent_xyz, latent_features = batch.points[sample][inside], features[point_voxel[inside]]
            queries = sample_queries(batch.points[sample], batch.intensity[sample], batch.origins[sample],
                                     s["queries_per_frame"], s["hit_offset"], generator)
            q_rows, l_rows = neighbour_pairs(queries.xyz, latent_xyz, s["radius"], s["max_neighbours"])
            relative = (queries.xyz[q_rows] - latent_xyz[l_rows]) / s["radius"]
            prediction = self.decoder(torch.cat([latent_features[l_rows], relative], dim=1))
            logits.append(prediction[:, 0])
            occupied.append(queries.occupied[q_rows])
            pred_intensity.append(prediction[:, 1])
            target_intensity.append(queries.intensity[q_rows])
        logits, occupied = torch.cat(logits), torch.cat(occupied)
        pred_intensity, target_intensity = torch.cat(pred_intensity), torch.cat(target_intensity)
        occupancy_loss = F.binary_cross_entropy_with_logits(logits, occupied)
        has_target = ~torch.isnan(target_intensity)
        intensity_loss = F.l1_loss(pred_intensity[has_target], target_intensity[has_target])
        loss = occupancy_loss + s["intensity_weight"] * intensity_loss
        accuracy = ((logits > 0).float() == occupied).float().mean()
        return loss, {
            "occupancy_bce": occupancy_loss.item(),
            "intensity_l1": intensity_loss.item(),
            "occupancy_accuracy": accuracy.item(),
            "pairs": float(logits.numel()),
        }

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        _, logs = self.loss(output, batch, voxels, generator)
        return {key: logs[key] for key in ("occupancy_bce", "occupancy_accuracy")}
