"""PICTURE (GPICTURE, Xu et al.): masked voxel modelling beyond reconstruction.

Voxels are masked by I2Mask, guided by a frozen 3D teacher's voxel features;
the backbone sees the visible voxels only. For every masked voxel a decoder
predicts (a) ``points_per_voxel`` points inside it, scored by the Chamfer
distance to up to ``max_target_points`` of its true points (the low-level
target), and (b) the teacher's feature of that voxel, scored by SmoothL1 (the
high-level target). Loss = a * Chamfer + (1 - a) * b * feature loss, with ``a``
decaying linearly from ``chamfer_weight_start`` at the first epoch to
``chamfer_weight_end`` at the last.

I2Mask, per sample: KMeans (``clusters``) on the teacher's voxel features;
clusters are split into groups of ``group_sizes`` clusters, each group taken
greedily as the remaining clusters whose centres are farthest apart (mean
pairwise cosine distance); group g masks ``group_mask_ratios[g]`` of each of
its clusters, scaled by (1 - spread / largest spread), where a cluster's
spread is the share of its members farther than ``spread_threshold`` from
its centre.

The teacher is a backbone checkpoint named in ``teacher`` (another method's run
of the grid, e.g. ALSO's, or a pinned file), loaded frozen (grid.PretrainRun.teacher).

occbench re-implementation choices (the published code does not run):

- the teacher is the shared backbone pre-trained by another method, not Seal's
  64-d image-distilled features; its full-resolution voxel features are
  L2-normalised before clustering and as regression targets, as Seal's
  contrastive features are unit vectors (the spread threshold 0.6 is then a
  distance on the unit sphere), and the feature cosine is the pretext metric;
- the backbone's submanifold convolutions keep only visible voxels, so a masked
  voxel is decoded from the encoder's stride-2 and stride-4 levels at the cells
  covering it (zeros and an "absent" flag where neither is active: the share
  with context is logged) and a learnt embedding of its place in its stride-4
  cell;
- points are predicted and compared in voxel units relative to the voxel's
  centre (squared distances); at most ``loss_voxels_per_frame`` masked voxels
  per frame, drawn at random, enter the loss, which bounds its cost;
- a cluster's spread is the share of its members beyond the threshold, not
  (as GPICTURE's code) the mean distance of those members: that mean sits
  just above the threshold in every cluster, so 1 - spread / largest spread
  was near 0 for all of them, and I2Mask masked 1-3 % of the voxels (ALSO
  teacher, default data: spreads 0.65-0.73 for a threshold of 0.6); the
  share varies from 0 to 11 % between clusters;
- KMeans runs once per sample (n_init 1) with a seed from the step's stream.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations

import numpy as np
import spconv.pytorch as spconv
import torch
import torch.nn.functional as F
from sklearn.cluster import KMeans
from torch import nn

from occbench.config import from_settings
from occbench.data.batch import Batch
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.checkpoint import load_frozen_backbone
from occbench.models.voxelize import VoxelBatch, VoxelGrid
from occbench.pretrain.base import PretrainMethod, RunContext

CONTEXT_STRIDES = (2, 4)  # encoder levels (BackboneOutput.levels) a masked voxel is decoded from
CELL = max(CONTEXT_STRIDES)  # a masked voxel's place is embedded within its cell of the coarsest one


@dataclass(frozen=True)
class PictureSettings:
    teacher: dict
    points_per_voxel: int
    max_target_points: int
    clusters: int
    group_sizes: list[int]
    group_mask_ratios: list[float]
    spread_threshold: float
    chamfer_weight_start: float
    chamfer_weight_end: float
    feature_weight: float
    loss_voxels_per_frame: int
    hidden_dim: int

    def __post_init__(self):
        if len(self.group_sizes) != len(self.group_mask_ratios) or sum(self.group_sizes) != self.clusters:
            raise ValueError(f"picture: group_sizes {self.group_sizes} must sum to clusters ({self.clusters}) and "
                             f"have one entry per group_mask_ratios {self.group_mask_ratios}")


def cluster_groups(centres: np.ndarray, group_sizes: list[int]) -> np.ndarray:
    """Group of each cluster: group g takes the group_sizes[g] remaining clusters whose
    centres have the largest mean pairwise cosine distance (the last takes the rest)."""
    unit = centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)
    distance = 1.0 - unit @ unit.T
    group = np.full(len(centres), -1)
    remaining = list(range(len(centres)))
    for g, size in enumerate(group_sizes):
        if size == 1 or size == len(remaining):
            chosen = remaining[:size]
        else:
            chosen = max(combinations(remaining, size),
                         key=lambda c: np.mean([distance[i, j] for i, j in combinations(c, 2)]))
        group[list(chosen)] = g
        remaining = [c for c in remaining if c not in chosen]
    return group


def cluster_mask_ratios(features: np.ndarray, labels: np.ndarray, groups: np.ndarray,
                        group_mask_ratios: list[float], spread_threshold: float) -> np.ndarray:
    """Mask ratio of each cluster: its group's base ratio times (1 - spread / largest spread), the
    spread being the share of its members farther than ``spread_threshold`` from its centre."""
    clusters = len(groups)
    spread = np.zeros(clusters)
    for c in range(clusters):
        members = features[labels == c]
        if len(members):
            spread[c] = np.mean(np.linalg.norm(members - members.mean(axis=0), axis=1) > spread_threshold)
    consistency = 1.0 - spread / spread.max() if spread.max() > 0 else np.ones(clusters)
    return np.asarray(group_mask_ratios)[groups] * consistency


def i2mask(features: torch.Tensor, settings: PictureSettings, generator: torch.Generator) -> torch.Tensor:
    """Boolean mask (True = masked) of one sample's voxels from its teacher features (unit vectors)."""
    n = features.shape[0]
    if n < settings.clusters:
        return torch.zeros(n, dtype=torch.bool, device=features.device)
    seed = int(torch.randint(2**31 - 1, (1,), generator=generator))
    array = features.detach().float().cpu().numpy()
    labels = KMeans(settings.clusters, n_init=1, random_state=seed).fit_predict(array)
    centres = np.stack([array[labels == c].mean(axis=0) for c in range(settings.clusters)])
    ratios = cluster_mask_ratios(array, labels, cluster_groups(centres, settings.group_sizes),
                                 settings.group_mask_ratios, settings.spread_threshold)
    order = torch.rand(n, generator=generator).numpy()
    masked = np.zeros(n, dtype=bool)
    for c, ratio in enumerate(ratios):
        members = np.flatnonzero(labels == c)
        count = int(len(members) * ratio)
        masked[members[np.argsort(order[members])[:count]]] = True
    return torch.from_numpy(masked).to(features.device)


def sparse_lookup(tensor: spconv.SparseConvTensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of ``tensor`` at ``indices`` (batch, z, y, x) and whether each site is active (zeros if not)."""
    shape = torch.tensor([tensor.batch_size, *tensor.spatial_shape], device=indices.device)

    def key(rows: torch.Tensor) -> torch.Tensor:
        rows = rows.long()
        return ((rows[:, 0] * shape[1] + rows[:, 1]) * shape[2] + rows[:, 2]) * shape[3] + rows[:, 3]

    active_keys, order = torch.sort(key(tensor.indices))
    wanted = key(indices)
    position = torch.searchsorted(active_keys, wanted).clamp_max(max(len(active_keys) - 1, 0))
    found = active_keys[position] == wanted if len(active_keys) else torch.zeros_like(wanted, dtype=torch.bool)
    features = tensor.features[order[position]] * found[:, None]
    return features, found


def chamfer(predicted: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-voxel symmetric Chamfer distance (squared): predicted (M, P, 3), target (M, T, 3), valid (M, T)."""
    distance = ((predicted[:, :, None, :] - target[:, None, :, :]) ** 2).sum(dim=-1)  # (M, P, T)
    to_target = distance.masked_fill(~valid[:, None, :], float("inf")).amin(dim=2).mean(dim=1)
    to_predicted = (distance.amin(dim=1) * valid).sum(dim=1) / valid.sum(dim=1)
    return to_target + to_predicted


def voxel_point_targets(points: list[torch.Tensor], voxels: VoxelBatch, rows: torch.Tensor, limit: int,
                        grid: VoxelGrid, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Up to ``limit`` random points of each voxel row of ``voxels``, in voxel units from the voxel's
    centre: (len(rows), limit, 3), zeros where the valid mask (len(rows), limit) is False."""
    device = rows.device
    xyz = torch.cat([p[pv >= 0] for p, pv in zip(points, voxels.point_voxel)])
    voxel = torch.cat([pv[pv >= 0] for pv in voxels.point_voxel])
    slot = torch.full((voxels.indices.shape[0],), -1, dtype=torch.long, device=device)
    slot[rows] = torch.arange(len(rows), device=device)
    keep = slot[voxel] >= 0
    xyz, target_row = xyz[keep], slot[voxel[keep]]
    # a random order inside each voxel: shuffle, then a stable sort by row; rank within the row
    order = torch.argsort(torch.rand(len(target_row), generator=generator).to(device))
    order = order[torch.argsort(target_row[order], stable=True)]
    xyz, target_row = xyz[order], target_row[order]
    first = torch.searchsorted(target_row, torch.arange(len(rows), device=device))
    rank = torch.arange(len(target_row), device=device) - first[target_row]
    take = rank < limit
    offsets = (xyz[take] - grid.centres(voxels.indices[rows][target_row[take]])) / grid.size.to(device)
    targets = torch.zeros(len(rows), limit, 3, device=device)
    valid = torch.zeros(len(rows), limit, dtype=torch.bool, device=device)
    targets[target_row[take], rank[take]] = offsets
    valid[target_row[take], rank[take]] = True
    return targets, valid


class PICTURE(PretrainMethod):
    paper = "Xu et al., PICTURE / GPICTURE: beyond reconstruction in masked voxel modelling (RookieXwc/GPICTURE)"
    differs = ("teacher: another method's backbone (e.g. ALSO), not Seal features; cluster spread = share of "
               "members beyond the threshold; masked voxels decoded from the encoder's stride-2/4 levels; "
               "at most loss_voxels_per_frame masked voxels in the loss")
    headline_metrics = ("chamfer", "feature_cosine")

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext):
        super().__init__(backbone, settings, context)
        self.options = from_settings(PictureSettings, settings, "pretrain.methods.picture")
        if context is None or context.teacher is None:
            raise ValueError("picture needs a teacher checkpoint (pretrain.methods.picture.teacher)")
        self.grid = backbone.grid
        self.teacher = load_frozen_backbone(context.teacher, backbone.grid)
        hidden, points = self.options.hidden_dim, self.options.points_per_voxel
        self.place = nn.Embedding(CELL ** 3, hidden)
        self.decoder = nn.Sequential(
            nn.Linear(sum(backbone.level_channels[s] for s in CONTEXT_STRIDES) + len(CONTEXT_STRIDES) + hidden,
                      hidden), nn.ReLU(inplace=True),
            nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
        )
        self.to_points = nn.Linear(hidden, 3 * points)
        self.to_feature = nn.Linear(hidden, self.teacher.out_channels)
        self.chamfer_weight = self.options.chamfer_weight_start
        self._teacher_features: torch.Tensor | None = None

    def train(self, mode: bool = True) -> "PICTURE":
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm keeps the teacher's statistics
        return self

    def set_progress(self, epoch: int, epochs: int) -> None:
        """a decays linearly over the epochs, from its start to its end value."""
        share = epoch / max(epochs - 1, 1)
        start, end = self.options.chamfer_weight_start, self.options.chamfer_weight_end
        self.chamfer_weight = start + (end - start) * share

    def backbone_input(self, voxels: VoxelBatch, batch: Batch, generator: torch.Generator) -> VoxelBatch:
        with torch.no_grad():
            features = F.normalize(self.teacher(voxels).voxel_features.features.float(), dim=1)
        self._teacher_features = features  # read by the loss of this same step
        masked = torch.zeros(voxels.features.shape[0], dtype=torch.bool, device=voxels.features.device)
        for sample in range(voxels.batch_size):
            rows = torch.nonzero(voxels.indices[:, 0] == sample).squeeze(1)
            masked[rows] = i2mask(features[rows], self.options, generator)
        return voxels.subset(~masked)

    def _predict(self, output: BackboneOutput, voxels: VoxelBatch, generator: torch.Generator):
        """Rows (in the whole voxelization) of a random subset of the masked voxels, their predicted
        points and teacher features, and whether any context level is active at each."""
        parent = voxels.parent
        masked = torch.ones(parent.indices.shape[0], dtype=torch.bool, device=parent.indices.device)
        masked[voxels.parent_rows] = False
        rows = torch.nonzero(masked).squeeze(1)
        keep = []
        for sample in range(parent.batch_size):
            in_sample = rows[parent.indices[rows, 0] == sample]
            draw = torch.randperm(len(in_sample), generator=generator)[:self.options.loss_voxels_per_frame]
            keep.append(in_sample[draw.to(in_sample.device)])
        rows = torch.cat(keep)
        indices = parent.indices[rows].long()
        context, found = [], []
        for stride in CONTEXT_STRIDES:
            coarse = torch.cat([indices[:, :1], indices[:, 1:] // stride], dim=1)
            features, active = sparse_lookup(output.levels[stride], coarse)
            context.append(features)
            found.append(active)
        place = ((indices[:, 1] % CELL) * CELL + indices[:, 2] % CELL) * CELL + indices[:, 3] % CELL
        found = torch.stack(found, dim=1)
        hidden = self.decoder(torch.cat([*context, found.to(context[0].dtype), self.place(place)], dim=1))
        predicted = self.to_points(hidden).view(len(rows), self.options.points_per_voxel, 3)
        return rows, predicted, self.to_feature(hidden), found.any(dim=1)

    def _targets(self, batch: Batch, voxels: VoxelBatch, rows: torch.Tensor, generator: torch.Generator):
        points, valid = voxel_point_targets(batch.points, voxels.parent, rows, self.options.max_target_points,
                                            self.grid, generator)
        return points, valid, self._teacher_features[rows]

    def _terms(self, output, batch, voxels, generator):
        rows, predicted, feature, has_context = self._predict(output, voxels, generator)
        point_targets, valid, teacher = self._targets(batch, voxels, rows, generator)
        return chamfer(predicted.float(), point_targets, valid), feature.float(), teacher, has_context

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        chamfer_per_voxel, feature, teacher, has_context = self._terms(output, batch, voxels, generator)
        if chamfer_per_voxel.numel() == 0:  # nothing masked (clouds with fewer voxels than clusters)
            zero = sum(p.sum() for p in self.decoder.parameters()) * 0.0
            return zero, {"chamfer": 0.0, "feature": 0.0, "mask_ratio": 0.0, "context_share": 0.0,
                          "chamfer_weight": self.chamfer_weight}
        chamfer_loss = chamfer_per_voxel.mean()
        feature_loss = F.smooth_l1_loss(feature, teacher)
        a = self.chamfer_weight
        loss = a * chamfer_loss + (1 - a) * self.options.feature_weight * feature_loss
        masked_share = 1 - voxels.features.shape[0] / voxels.parent.features.shape[0]
        return loss, {"chamfer": chamfer_loss.item(), "feature": feature_loss.item(), "mask_ratio": masked_share,
                      "context_share": float(has_context.float().mean()), "chamfer_weight": a}

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        chamfer_per_voxel, feature, teacher, _ = self._terms(output, batch, voxels, generator)
        return {"chamfer": float(chamfer_per_voxel.mean()),
                "feature_cosine": float(F.cosine_similarity(feature, teacher, dim=1).mean())}
