"""ALSO (Boulch et al., CVPR 2023): occupancy of points along the LiDAR rays.

Queries are sampled on the sensor-to-point ray of input points, in three equal
thirds: "in" up to ``hit_offset`` behind the hit (occupied), "out" up to
``hit_offset`` in front of it (empty), "far" uniformly between the sensor and
the hit (empty). Each query is decoded from the backbone's latent points within
``radius``: an MLP on [latent feature, relative position] predicts an occupancy
logit and the intensity; the loss is BCE + L1 over every (query, neighbour)
pair, the L1 term only where an intensity target exists (not for far queries).

As in ALSO, the latent points are the input points, each carrying the feature
of its voxel from the backbone's full-resolution output.

occbench re-implementation choices (hyperparameters in params.yaml under
pretrain.methods.also):

- each query keeps at most ``max_neighbours`` nearest latent points inside the
  radius, which bounds the CPU cost;
- the radius search is scipy's cKDTree on CPU copies (``neighbour_pairs``),
  not torch_cluster's ``radius``: the same pairs as the brute-force
  definition (``neighbour_pairs_brute_force``), no extra compiled dependency,
  the same code for CPU and CUDA tensors, 24x faster than the old dense search
  on CPU (benchmarks/also_neighbours.py);
- an out query never passes behind the sensor: its offset in front of the hit
  is capped at the hit's range;
- the relative position fed to the decoder is divided by ``relative_scale``
  (ALSO: metres, unscaled, as occbench's division by the 1 m radius was). In
  and out queries lie at most ``hit_offset`` (0.1 m) from their hit, mostly
  inside its 0.25 m voxel, so their neighbours carry the same features and
  only the relative position tells them apart: in metres, that
  difference was a tenth of the decoder's input scale and the decoder never
  learnt it (every held-out query called empty). Dividing by about
  ``hit_offset`` puts it at unit scale;
- ``relative_frame`` chooses the axes of that position: ``sensor`` (ALSO: the
  sensor's axes, the default) or ``ray`` (the latent point's own ray frame:
  along the sensor-to-point ray, horizontal and upward perpendiculars). In the
  ray frame "behind the hit" is the sign of one input, which the decoder
  learns on its own: it scores higher on the pretext but leaves less for the
  backbone to learn (a decoder trained on a frozen random backbone comes
  within about 3 points of the trained pair, against 6-13 points in the
  sensor frame). In the sensor frame the backbone's
  features have to say which way the sensor lies. Measurements in
  params.yaml, benchmarks/also_pretext.py measures them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import nn

from occbench.data.batch import Batch
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch
from occbench.pretrain.base import PretrainMethod, RunContext

IN, OUT, FAR = 0, 1, 2  # the three thirds of the query set, in this order
KIND_NAMES = {IN: "in", OUT: "out", FAR: "far"}
RELATIVE_FRAMES = ("sensor", "ray")


@dataclass
class Queries:
    xyz: torch.Tensor  # (Q, 3)
    occupied: torch.Tensor  # (Q,) float 1 = occupied, 0 = empty
    intensity: torch.Tensor  # (Q,) target intensity (NaN where none)
    kind: torch.Tensor  # (Q,) IN / OUT / FAR


def sample_queries(points: torch.Tensor, intensity: torch.Tensor, origin: torch.Tensor,
                   num_queries: int, hit_offset: float, generator: torch.Generator) -> Queries:
    """Three equal thirds of ray queries (num_queries // 3 each) from random hits of one cloud.

    Random numbers are drawn on the CPU ``generator`` and moved to the points'
    device, so a seed gives the same queries on CPU and CUDA.
    """
    device = points.device
    origin = origin.to(device=device, dtype=points.dtype)
    per_kind = num_queries // 3
    hits = torch.randint(points.shape[0], (3, per_kind), generator=generator).to(device)
    u = torch.rand(3, per_kind, 1, generator=generator).to(device=device, dtype=points.dtype)
    xyz, kinds = [], []
    for kind in (IN, OUT, FAR):
        hit = points[hits[kind]]
        ray = hit - origin
        length = ray.norm(dim=1, keepdim=True)
        unit = ray / length.clamp_min(1e-6)
        if kind == IN:
            xyz.append(hit + u[kind] * hit_offset * unit)
        elif kind == OUT:
            # in front of the hit, but never behind the sensor (hits nearer than hit_offset)
            xyz.append(hit - torch.minimum(u[kind] * hit_offset, length) * unit)
        else:
            xyz.append(origin + u[kind] * ray)
        kinds.append(torch.full((per_kind,), kind, device=device))
    kind = torch.cat(kinds)
    target_intensity = intensity[hits.reshape(-1)].clone()
    target_intensity[kind == FAR] = float("nan")
    return Queries(torch.cat(xyz), (kind == IN).float(), target_intensity, kind)


def neighbour_pairs_brute_force(queries: torch.Tensor, latent: torch.Tensor, radius: float, max_neighbours: int,
                                chunk: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """The definition of the pairs: all Q x N distances, the ``max_neighbours`` nearest kept if within radius.

    O(Q N) time and memory (about 290 ms a default frame on one core): the
    reference ``neighbour_pairs`` is tested and benchmarked against. Distances
    are computed directly, not through cdist's matrix-product shortcut, whose
    rounding (up to 0.5 mm for points 50 m out) would move pairs across the radius.
    """
    k = min(max_neighbours, latent.shape[0])
    query_rows, latent_rows = [], []
    for start in range(0, queries.shape[0], chunk):
        distance = torch.cdist(queries[start:start + chunk], latent, compute_mode="donot_use_mm_for_euclid_dist")
        distance, nearest = distance.topk(k, dim=1, largest=False)
        row, column = torch.nonzero(distance <= radius, as_tuple=True)
        query_rows.append(row + start)
        latent_rows.append(nearest[row, column])
    return torch.cat(query_rows), torch.cat(latent_rows)


def neighbour_pairs(queries: torch.Tensor, latent: torch.Tensor, radius: float,
                    max_neighbours: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(query row, latent row) of up to ``max_neighbours`` nearest latent points within ``radius``.

    Pairs come grouped by query row, nearest first. Same pairs as
    ``neighbour_pairs_brute_force`` (ties at equal distance aside).
    """
    device = queries.device
    if queries.shape[0] == 0 or latent.shape[0] == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty
    # scipy's cKDTree on CPU copies, also for CUDA tensors: on a default frame
    # (1,536 queries, 30k latent points, one core) it takes 11 ms, against 96 ms
    # for a torch hash grid of radius-sized cells (27-cell candidates, exact
    # distance, top-k: 0.8M candidates a frame, gathers dominate)
    # and 260-310 ms for brute force; the copies are 0.5 MB a frame.
    k = min(max_neighbours, latent.shape[0])
    tree = cKDTree(latent.detach().cpu().numpy())
    # A hair beyond the radius, then the radius test on torch's float32
    # distances: the same comparison as the brute-force definition (cKDTree
    # measures in float64). A point the margin lets in only takes a slot when
    # fewer than k points lie inside the radius, so the cut below cannot drop
    # an inside point.
    _, nearest = tree.query(queries.detach().cpu().numpy(), k=k, distance_upper_bound=radius * (1 + 1e-4))
    nearest = nearest.reshape(queries.shape[0], k)
    row, column = np.nonzero(nearest < latent.shape[0])  # missing neighbours come back as index N
    query_rows = torch.from_numpy(row).to(device)
    latent_rows = torch.from_numpy(nearest[row, column]).to(device)
    with torch.no_grad():
        inside = (queries[query_rows] - latent[latent_rows]).norm(dim=1) <= radius
    return query_rows[inside], latent_rows[inside]


def relative_position(queries: torch.Tensor, latent: torch.Tensor, origin: torch.Tensor,
                      frame: str) -> torch.Tensor:
    """Query minus latent point, on the sensor's axes or on the latent point's ray frame.

    The ray frame: (along the sensor-to-latent ray, horizontal perpendicular,
    the third axis completing a right-handed frame, upward for level rays).
    """
    relative = queries - latent
    if frame == "sensor":
        return relative
    ray = F.normalize(latent - origin, dim=1, eps=1e-6)
    up = torch.tensor([0.0, 0.0, 1.0], device=ray.device, dtype=ray.dtype).expand_as(ray)
    side = torch.linalg.cross(up, ray)
    # vertical rays have no horizontal perpendicular: take the x axis there
    side = torch.where(side.norm(dim=1, keepdim=True) < 1e-6, torch.tensor([1.0, 0.0, 0.0]).to(ray), side)
    side = F.normalize(side, dim=1)
    third = torch.linalg.cross(ray, side)
    return torch.stack([(relative * axis).sum(dim=1) for axis in (ray, side, third)], dim=1)


@dataclass
class Pairs:
    """Decoder outputs over the (query, neighbour) pairs of a batch, with their targets."""

    logit: torch.Tensor  # (P,)
    occupied: torch.Tensor  # (P,)
    pred_intensity: torch.Tensor  # (P,)
    target_intensity: torch.Tensor  # (P,) NaN where none
    query: torch.Tensor  # (P,) query row in the batch's query set
    query_occupied: torch.Tensor  # (Q,) every query of the batch, with or without pairs
    query_kind: torch.Tensor  # (Q,)


class ALSO(PretrainMethod):
    paper = "Boulch et al., ALSO: Automotive Lidar Self-supervision by Occupancy estimation, CVPR 2023"
    differs = ("at most max_neighbours latent points per query; decoder input scaled by relative_scale "
               "(0.1 m, not metres); out queries never behind the sensor")
    headline_metrics = ("query_accuracy", "pair_bce")

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext | None = None):
        super().__init__(backbone, settings, context)
        if settings["relative_frame"] not in RELATIVE_FRAMES:
            raise ValueError(f"relative_frame must be one of {RELATIVE_FRAMES}, not {settings['relative_frame']!r}")
        hidden = settings["hidden_dim"]
        self.decoder = nn.Sequential(
            nn.Linear(backbone.out_channels + 3, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, 2),  # occupancy logit, intensity
        )

    def decode(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
               generator: torch.Generator) -> Pairs:
        """Sample each frame's queries, find their neighbours, run the decoder on every pair."""
        s = self.settings
        features = output.voxel_features.features
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in Pairs.__dataclass_fields__}
        offset = 0
        for sample in range(len(batch)):
            # Latent points: the input points, each carrying its voxel's feature.
            points = batch.points[sample]
            origin = batch.origins[sample].to(device=points.device, dtype=points.dtype)
            point_voxel = voxels.point_voxel[sample]
            inside = point_voxel >= 0
            latent_xyz, latent_features = points[inside], features[point_voxel[inside]]
            queries = sample_queries(points, batch.intensity[sample], origin,
                                     s["queries_per_frame"], s["hit_offset"], generator)
            q_rows, l_rows = neighbour_pairs(queries.xyz, latent_xyz, s["radius"], s["max_neighbours"])
            relative = relative_position(queries.xyz[q_rows], latent_xyz[l_rows], origin, s["relative_frame"])
            prediction = self.decoder(torch.cat([latent_features[l_rows], relative / s["relative_scale"]], dim=1))
            parts["logit"].append(prediction[:, 0])
            parts["pred_intensity"].append(prediction[:, 1])
            parts["occupied"].append(queries.occupied[q_rows])
            parts["target_intensity"].append(queries.intensity[q_rows])
            parts["query"].append(q_rows + offset)
            parts["query_occupied"].append(queries.occupied)
            parts["query_kind"].append(queries.kind)
            offset += queries.xyz.shape[0]
        return Pairs(**{name: torch.cat(values) for name, values in parts.items()})

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        s = self.settings
        pairs = self.decode(output, batch, voxels, generator)
        occupancy_loss = F.binary_cross_entropy_with_logits(pairs.logit, pairs.occupied)
        has_target = ~torch.isnan(pairs.target_intensity)
        intensity_loss = F.l1_loss(pairs.pred_intensity[has_target], pairs.target_intensity[has_target])
        loss = occupancy_loss + s["intensity_weight"] * intensity_loss
        accuracy = ((pairs.logit > 0).float() == pairs.occupied).float().mean()
        return loss, {
            "occupancy_bce": occupancy_loss.item(),
            "intensity_l1": intensity_loss.item(),
            "occupancy_accuracy": accuracy.item(),
            "pairs": float(pairs.logit.numel()),
        }

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        """How well the pretext task is solved on (held-out) frames: chance is ~0.5 accuracy, ~0.69 BCE.

        Pair metrics are over (query, neighbour) pairs, as the loss. A query's
        prediction is the mean of its pair logits; queries without a latent
        point within the radius have none and are left out of the query
        accuracies (``query_coverage`` says which share had one). Per kind:
        in / out / far. Accumulate over batches with the counts
        (``pairs``, ``queries``, ``pairs_<kind>``, ``queries_<kind>``).
        """
        pairs = self.decode(output, batch, voxels, generator)
        num_queries = pairs.query_kind.shape[0]
        logit_sum = torch.zeros(num_queries, device=pairs.logit.device).index_add_(0, pairs.query, pairs.logit)
        pair_count = torch.bincount(pairs.query, minlength=num_queries)
        covered = pair_count > 0
        query_logit = logit_sum[covered] / pair_count[covered]
        query_correct = (query_logit > 0).float() == pairs.query_occupied[covered]
        query_kind = pairs.query_kind[covered]
        pair_correct = (pairs.logit > 0).float() == pairs.occupied
        pair_kind = pairs.query_kind[pairs.query]

        def mean(values: torch.Tensor) -> float:
            return values.float().mean().item() if values.numel() else float("nan")

        metrics = {
            "pair_accuracy": mean(pair_correct),
            "pair_bce": F.binary_cross_entropy_with_logits(pairs.logit, pairs.occupied).item()
            if pairs.logit.numel() else float("nan"),
            "query_accuracy": mean(query_correct),
            "query_coverage": mean(covered),
            "pairs": float(pairs.logit.numel()),
            "queries": float(query_correct.numel()),
        }
        for kind, name in KIND_NAMES.items():
            metrics[f"pair_accuracy_{name}"] = mean(pair_correct[pair_kind == kind])
            metrics[f"query_accuracy_{name}"] = mean(query_correct[query_kind == kind])
            metrics[f"pairs_{name}"] = float((pair_kind == kind).sum())
            metrics[f"queries_{name}"] = float((query_kind == kind).sum())
        return metrics
