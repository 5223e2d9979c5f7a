"""OccFeat (Sirko-Galouchenko et al., valeoai): occupancy and image-feature prediction from the BEV map.

A head "unsplats" the BEV map into a 3D volume: the BEV-to-columns head of
SPOT (models/occupancy_head.py) gives each voxel of ``volume`` (the BEV map's
x/y extent, k x k columns per BEV cell, ``volume.z_range`` in height) one
occupancy logit and ``voxel_channels`` latent values (a second 1x1 conv on the
head's hidden map, evaluated at occupied voxels only: the only ones distilled);
a linear layer maps the latent of a voxel to the teacher's feature space. Targets:

- occupancy: a voxel is occupied if at least one LiDAR point lies inside
  (OccFeat's definition); binary cross-entropy over every voxel of the volume,
  occupied voxels weighted ``pos_weight``;
- features: each occupied voxel's centre is projected into every camera
  (``project``); where it lands in the image, the frozen image teacher's
  feature map is sampled bilinearly (``sample_features``) and L2-normalised;
  the loss is 1 - cosine (``distillation: cosine``) or the squared distance to
  the unit target (``l2``), averaged over (voxel, camera) pairs.

Loss = BCE + ``feature_weight`` * distillation. The teacher is named in
``teacher``: on the synthetic world, an image encoder (models/image_encoder.py)
the DAG trains self-supervised on the pre-training frames' rendered images
(``self_supervised``, grid.ImageTeacherRun); on real data, a pinned file whose
``kind`` says how to read it: ``dinov2``, a DINOv2 backbone as Meta publishes it
(models/dinov2.py: patch tokens after the final norm, one per 14 x 14 pixels),
or ``occbench_image_encoder`` (the default), such an encoder's checkpoint. Every
teacher maps uint8 images to a feature map covering the whole image
(``image_features``), which is what ``sample_features`` assumes. The head and
the teacher are dropped after pre-training.

Deviations (OccFeat's code is not public):

- the backbone is the shared LiDAR backbone and its BEV map, not a camera-only
  BEV network, so the occupancy and feature targets are predicted from LiDAR;
- the teacher on synthetic data is a small CNN trained by masked image
  modelling on the rendered images, not DINOv2 (the rendered world is not
  DINOv2's domain, and its weights are not part of occbench); its features are
  one per 8 x 8 pixels;
- the head is SPOT's 3x3 conv + 1x1 conv + pixel shuffle, then a linear layer
  to the teacher's dimension, not OccFeat's 3D convolutions on the unsplatted
  volume;
- a voxel's centre is projected with no occlusion test: an occupied voxel
  hidden behind another surface in the camera's view is taught the feature of
  that surface (the camera sits beside the LiDAR, so few are);
- a voxel seen by several cameras counts once per camera;
- occupied voxels weigh ``pos_weight`` in the BCE (10 in params.yaml; OccFeat's
  plain BCE is 1): 0.7 % of the default volume is occupied, and at 1 every
  voxel is still called empty after 6 epochs (held-out IoU 0.00, 0.21 at 10
  after 4).

Pretext metrics on held-out frames: the IoU of the voxels called occupied
(logit > 0) with the LiDAR's, and the mean cosine of predicted and teacher
features over the occupied voxels the cameras see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occbench.config import from_settings
from occbench.data.batch import Batch, CameraBatch
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.dinov2 import DINOV2_KIND, load_frozen_dinov2
from occbench.models.image_encoder import IMAGE_ENCODER_KIND, load_frozen_image_encoder
from occbench.models.occupancy_head import OccupancyColumns
from occbench.models.voxelize import VoxelBatch, VoxelGrid
from occbench.pretrain.base import PretrainMethod, RunContext

MIN_DEPTH = 0.1  # metres in front of the camera below which a voxel centre is not projected
DISTILLATIONS = ("cosine", "l2")
# How each kind of teacher file (pretrain.methods.occfeat.teacher.kind) is read, frozen.
IMAGE_TEACHER_LOADERS = {IMAGE_ENCODER_KIND: load_frozen_image_encoder, DINOV2_KIND: load_frozen_dinov2}


@dataclass(frozen=True)
class OccFeatSettings:
    teacher: dict
    volume: dict  # {z_range: [z0, z1], voxel_size: [dx, dy, dz]}
    hidden_dim: int
    voxel_channels: int
    distillation: str
    feature_weight: float
    pos_weight: float

    def __post_init__(self):
        if self.distillation not in DISTILLATIONS:
            raise ValueError(f"pretrain.methods.occfeat.distillation: {self.distillation!r} is not one of "
                             f"{DISTILLATIONS}")
        if self.teacher_kind not in IMAGE_TEACHER_LOADERS:
            raise ValueError(f"pretrain.methods.occfeat.teacher.kind: {self.teacher_kind!r} is not one of "
                             f"{tuple(IMAGE_TEACHER_LOADERS)}")

    @property
    def teacher_kind(self) -> str:
        """A pinned file's ``kind``; a teacher the DAG trains is an occbench image encoder."""
        return self.teacher.get("kind", IMAGE_ENCODER_KIND)

    @property
    def teacher_image_height(self) -> int | None:
        """The rows a pinned teacher sees each image at (``image_height``), None for the camera's own."""
        return self.teacher.get("image_height")


def occupied_voxels(points: list[torch.Tensor], grid: VoxelGrid) -> torch.Tensor:
    """Occupancy (B, X, Y, Z) bool of the volume ``grid``: >= 1 point inside."""
    occupied = torch.zeros(len(points), *grid.shape_xyz, dtype=torch.bool, device=points[0].device)
    for sample, cloud in enumerate(points):
        index, inside = grid.coords(cloud)
        index = index[inside]
        occupied[sample, index[:, 0], index[:, 1], index[:, 2]] = True
    return occupied


def project(centres: torch.Tensor, intrinsics: torch.Tensor, lidar_to_camera: torch.Tensor,
            width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel coordinates (N, 2) of LiDAR-frame points (N, 3) under per-point K (N, 3, 3) and
    LiDAR-to-camera (N, 4, 4), and whether each lands in the image ([0, W) x [0, H), in front)."""
    camera = (lidar_to_camera[:, :3, :3] @ centres[:, :, None])[:, :, 0] + lidar_to_camera[:, :3, 3]
    depth = camera[:, 2]
    image = (intrinsics @ camera[:, :, None])[:, :, 0]
    uv = image[:, :2] / depth.clamp_min(MIN_DEPTH)[:, None]
    inside = (depth > MIN_DEPTH) & (uv[:, 0] >= 0) & (uv[:, 0] < width) & (uv[:, 1] >= 0) & (uv[:, 1] < height)
    return uv, inside


def sample_features(features: torch.Tensor, sample: torch.Tensor, uv: torch.Tensor,
                    width: int, height: int) -> torch.Tensor:
    """Bilinear samples (N, D) of feature maps (B, D, h, w) covering W x H images, at pixel
    coordinates uv (N, 2) of images ``sample`` (N,)."""
    normalised = torch.stack([2 * uv[:, 0] / width - 1, 2 * uv[:, 1] / height - 1], dim=1)
    out = features.new_empty(len(uv), features.shape[1])
    for b in range(features.shape[0]):
        rows = sample == b
        grid = normalised[rows][None, None]  # (1, 1, n, 2)
        out[rows] = F.grid_sample(features[b:b + 1], grid, align_corners=False)[0, :, 0].T
    return out


def distillation_loss(predicted: torch.Tensor, taught: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean over rows of 1 - cosine (``cosine``) or of the squared distance (``l2``); 0 without rows."""
    if len(taught) == 0:  # no occupied voxel seen by any camera: nothing to distil, still a graph
        return predicted.sum() * 0.0
    if kind == "cosine":
        return (1 - F.cosine_similarity(predicted, taught, dim=1)).mean()
    return ((predicted - taught) ** 2).sum(dim=1).mean()


class OccFeat(PretrainMethod):
    paper = ("Sirko-Galouchenko et al., OccFeat: self-supervised occupancy feature prediction for pretraining "
             "BEV segmentation networks (valeoai, no public code)")
    differs = ("LiDAR backbone, not camera-only BEV; teacher on the synthetic world: a CNN trained by masked "
               "image modelling on the rendered images (on real data DINOv2, as in the paper, from a pinned file); "
               "SPOT's head + linear layer; no occlusion test in the projection; occupied voxels weighted "
               "pos_weight in the BCE")
    headline_metrics = ("occupancy_iou", "feature_cosine")
    needs = frozenset({"cameras"})
    needs_bev = True

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext):
        super().__init__(backbone, settings, context)
        self.options = from_settings(OccFeatSettings, settings, "pretrain.methods.occfeat")
        if context is None or context.teacher is None:
            raise ValueError("occfeat needs an image teacher checkpoint (pretrain.methods.occfeat.teacher)")
        self.teacher = IMAGE_TEACHER_LOADERS[self.options.teacher_kind](context.teacher)
        volume, grid = self.options.volume, backbone.grid.point_cloud_range
        z0, z1 = volume["z_range"]
        self.columns = OccupancyColumns(backbone, {"range": [grid[0], grid[1], z0, grid[3], grid[4], z1],
                                                   "voxel_size": volume["voxel_size"]}, "OccFeat")
        self.volume_grid = VoxelGrid(tuple(self.columns.grid["range"]), tuple(self.columns.grid["voxel_size"]))
        # head: the occupancy logit of every voxel; latent: 1x1 conv to the voxel_channels of every voxel, on
        # the head's hidden map (head[:-1]), evaluated at occupied voxels only (OccupancyColumns.values_at)
        self.head = self.columns.head(backbone.bev_channels, self.options.hidden_dim, 1)
        self.latent = self.columns.column_values(self.options.hidden_dim, self.options.voxel_channels)
        self.to_feature = nn.Linear(self.options.voxel_channels, self.teacher.out_channels)

    def train(self, mode: bool = True) -> "OccFeat":
        super().train(mode)
        self.teacher.eval()  # frozen: BatchNorm keeps the teacher's statistics
        return self

    def _targets(self, hidden: torch.Tensor, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Occupancy (B, X, Y, Z), and for every (occupied voxel, camera) where it is seen, the predicted
        feature and the teacher's (unit) one, (M, D) each."""
        occupied = occupied_voxels(batch.points, self.volume_grid)
        index = torch.nonzero(occupied)  # (N, 4): sample, x, y, z
        centres = self.volume_grid.centres(index[:, [0, 3, 2, 1]])  # it takes spconv's (batch, z, y, x)
        latent = self.columns.values_at(self.latent, hidden, index).float()  # (N, voxel_channels)
        predicted, taught = [], []
        for camera in batch.cameras.values():
            seen, target = self._teacher_features(camera, index[:, 0], centres)
            predicted.append(self.to_feature(latent[seen]))
            taught.append(target)
        if not predicted:
            raise ValueError(f"occfeat: frames {batch.frame_ids} have no cameras to distil from")
        return occupied, torch.cat(predicted), torch.cat(taught)

    def _teacher_features(self, camera: CameraBatch, sample: torch.Tensor,
                          centres: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Which voxels the camera sees, and the teacher's unit feature at each."""
        height, width = camera.images.shape[1:3]
        uv, seen = project(centres, camera.intrinsics[sample].float(), camera.lidar_to_camera[sample].float(),
                           width, height)
        with torch.no_grad():
            # the teacher's feature map covers the whole image at any rows: voxels project with the camera's
            # own intrinsics
            features = self.teacher.image_features(camera.images, self.options.teacher_image_height)
            target = sample_features(features, sample[seen], uv[seen], width, height)
        return seen, F.normalize(target, dim=1)

    def _terms(self, output: BackboneOutput, batch: Batch):
        hidden = self.head[:-1](output.bev)
        logits = self.columns.unfold(self.head[-1](hidden), 1)[:, 0].float()  # (B, X, Y, Z)
        occupied, predicted, taught = self._targets(hidden, batch)
        bce = F.binary_cross_entropy_with_logits(
            logits, occupied.float(), pos_weight=torch.tensor(self.options.pos_weight, device=logits.device))
        return logits, occupied, bce, distillation_loss(predicted, taught, self.options.distillation), predicted, taught

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        _, _, bce, distillation, _, taught = self._terms(output, batch)
        loss = bce + self.options.feature_weight * distillation
        return loss, {"bce": bce.item(), "distillation": distillation.item(), "distilled_voxels": float(len(taught))}

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        """IoU of the occupied voxels (logit > 0) with the LiDAR's, the mean cosine of predicted and
        teacher features over the seen occupied voxels, and the loss terms."""
        logits, occupied, bce, distillation, predicted, taught = self._terms(output, batch)
        called = logits > 0
        union = (called | occupied).sum()
        cosine = F.cosine_similarity(predicted, taught, dim=1).mean() if len(taught) else torch.tensor(float("nan"))
        return {"occupancy_iou": float((called & occupied).sum() / union) if union else float("nan"),
                "feature_cosine": float(cosine), "bce": bce.item(), "distillation": distillation.item()}
