"""Occupancy-MAE (Min et al., IEEE T-IV 2023): reconstruct the occupancy of a masked cloud.

Range-aware masking hides a share of each frame's voxels that depends on the
voxel's range; the backbone sees only the visible voxels. A head of dense
transposed 3D convolutions on the encoder's coarse level predicts the dense
occupancy grid of ALL voxels (occupied: the cell holds at least one input
point, masked voxels included), trained with binary cross-entropy.

occbench re-implementation choices (hyperparameters in params.yaml under
pretrain.methods.occupancy_mae):

- range: the horizontal (x-y) metric distance of the voxel centre from the
  frame's sensor origin (``Batch.origins``). The published code measured it
  as the norm of the (y, x) voxel indices, from the grid corner and in voxel
  units (Occupancy-MAE issues #21, #28): at KITTI's 0.05 m voxels its "30 m"
  was 1.5 m from the corner, and nearly every voxel fell into the far band.
  A later commit measures metres from the LiDAR frame's zero, which is the
  sensor only in a sensor-centred frame; occbench's origins say where the
  sensor is.
- ratios: the paper's 90 / 70 / 50 % masked for 0-30 / 30-50 / > 50 m
  (``range_bands`` [30, 50], ``mask_ratios`` [0.9, 0.7, 0.5]). The published
  configs mask 50 / 30 / 30 % (MASKED_RATIO 0.5, +0.2 kept beyond 30 m;
  issue #4), which contradicts the paper; occbench follows the paper, whose
  point is that dense near voxels can afford heavier masking than sparse far
  ones. On the default world (nuscenes32) 89 % of the voxels lie within 30 m,
  10 % in 30-50 m and 0.1 % beyond (the grid's corners).
- masks are drawn per sample and per band, exactly round(ratio * n) of the
  band's n voxels, uniformly without replacement, from the step's CPU
  generator (moved to the batch's device). The published code shuffles each
  band over the whole batch (and its first version drew with replacement).
- head: the published head densifies a stride-8 tensor of 128 channels and
  runs three dense ConvTranspose3d (128 -> 32 -> 8 -> 1) up to full
  resolution. Here the coarse level's sparse features are first mapped to
  ``head_channels`` by a linear layer (on the active voxels only, before
  densifying: with a dense 64-channel first layer the head took 1.6 s a
  step, forward and backward, batch 2, one CPU core; 0.3 s this way), then
  three transposed convolutions (head_channels, head_channels, 1 logit),
  the last ones of stride 2 up to ``target_stride``.
- resolution: the occupancy grid is predicted at ``target_stride`` voxels
  per cell (default 2: 0.5 m cells, 24 x 200 x 200 a frame), not at full
  resolution (48 x 400 x 400): a cell is occupied when any of its voxels is.
  Full resolution (target_stride 1, the published one) made a CPU step
  (forward and backward, batch 2, one core) 5x slower, 6.3 s against
  1.3 s on a loaded machine, and the peak memory 1.9x (1.08 against
  0.57 GiB); it remains a setting for where that fits.
- loss: BCE with ``pos_weight`` on occupied cells (the paper: plain BCE,
  pos_weight 1). Occupied cells are 0.5 % of the 0.5 m grid; the weight is
  chosen by the held-out masked-voxel IoU (measurements in params.yaml).
- only the encoder (stem, down1, down2) is trained: the backbone's decoder
  and BEV neck run but no loss reaches them, as the published method
  pre-trains the encoder alone.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch, VoxelGrid
from occbench.pretrain.base import PretrainMethod, RunContext

HEAD_DEPTH = 3  # transposed convolutions of the head, as published
SETTINGS_KEY = "pretrain.methods.occupancy_mae"
OCCUPIED_PRIOR = 0.01  # share of occupied cells the head's initial logits stand for (default grid: 0.5 %)


def range_band(distance: torch.Tensor, band_edges: list[float]) -> torch.Tensor:
    """Band of each distance: 0 up to band_edges[0] (inclusive), ..., len(band_edges) beyond the last."""
    edges = torch.tensor(band_edges, dtype=distance.dtype, device=distance.device)
    return torch.bucketize(distance, edges)


def range_aware_mask(voxels: VoxelBatch, grid: VoxelGrid, origins: list[torch.Tensor], band_edges: list[float],
                     mask_ratios: list[float], generator: torch.Generator) -> torch.Tensor:
    """(V,) bool, True where the voxel is masked: round(ratio * n) of each (sample, range band)'s n voxels.

    The range is the horizontal distance of the voxel centre from its sample's
    sensor origin. Random keys come from the CPU ``generator``, moved to the
    voxels' device, so a seed gives the same masks on CPU and CUDA.
    """
    device = voxels.indices.device
    sample = voxels.indices[:, 0].long()
    origin_xy = torch.stack([origin[:2] for origin in origins]).to(device=device, dtype=torch.float32)
    distance = (grid.centres(voxels.indices)[:, :2] - origin_xy[sample]).norm(dim=1)
    bands = len(mask_ratios)
    group = sample * bands + range_band(distance, band_edges)
    groups = voxels.batch_size * bands
    # A uniform random order within each group: sort by group, then by a random key.
    key = torch.rand(group.shape[0], generator=generator, dtype=torch.float64).to(device)
    order = torch.argsort(group.double() + key)
    count = torch.bincount(group, minlength=groups)
    start = torch.cumsum(count, 0) - count
    rank = torch.empty_like(group)
    rank[order] = torch.arange(group.shape[0], device=device) - start[group[order]]
    ratio = torch.tensor(mask_ratios, dtype=torch.float64, device=device).repeat(voxels.batch_size)
    masked_count = torch.round(ratio * count).long()
    return rank < masked_count[group]


def occupancy_target(indices: torch.Tensor, batch_size: int, grid: VoxelGrid, stride: int) -> torch.Tensor:
    """(B, Z, Y, X) float, 1 where a cell of ``stride``^3 voxels holds one of the voxels (spconv indices)."""
    shape = [math.ceil(size / stride) for size in grid.spatial_shape]
    target = torch.zeros(batch_size, *shape, device=indices.device)
    cells = indices.long()
    target[cells[:, 0], cells[:, 1] // stride, cells[:, 2] // stride, cells[:, 3] // stride] = 1.0
    return target


def weighted_bce(logits: torch.Tensor, target: torch.Tensor, pos_weight: float) -> torch.Tensor:
    """Mean over cells of -(pos_weight * y * log sigma(x) + (1 - y) * log(1 - sigma(x)))."""
    weight = torch.tensor(pos_weight, device=logits.device, dtype=torch.float32)
    return F.binary_cross_entropy_with_logits(logits.float(), target, pos_weight=weight)


def iou(predicted: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two bool grids; NaN when both are empty."""
    union = (predicted | target).sum()
    return ((predicted & target).sum() / union).item() if union > 0 else math.nan


class OccupancyMAE(PretrainMethod):
    paper = "Min et al., Occupancy-MAE: self-supervised pre-training of large-scale LiDAR point clouds, T-IV 2023"
    differs = ("range in metres from the sensor (not voxel indices from the grid corner); the paper's "
               "90/70/50 % ratios (not the configs' 50/30/30 %); occupancy predicted on target_stride cells")
    headline_metrics = ("iou_masked", "iou")

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext | None = None):
        super().__init__(backbone, settings, context)
        self.grid = backbone.grid  # masks are drawn before the backbone runs; targets read output.grid
        edges, ratios = settings["range_bands"], settings["mask_ratios"]
        if len(ratios) != len(edges) + 1:
            raise ValueError(f"{SETTINGS_KEY}: mask_ratios has {len(ratios)} entries for {len(edges)} "
                             f"range_bands edges; give one ratio per band, {len(edges) + 1}")
        if any(b <= a for a, b in zip(edges, edges[1:])):
            raise ValueError(f"{SETTINGS_KEY}: range_bands must increase, not {edges}")
        self.coarse_stride = max(backbone.level_channels)
        upsampling = self.coarse_stride // settings["target_stride"]
        doublings = upsampling.bit_length() - 1
        if self.coarse_stride % settings["target_stride"] or upsampling != 2**doublings or doublings > HEAD_DEPTH:
            raise ValueError(f"{SETTINGS_KEY}: target_stride {settings['target_stride']} must be the backbone's "
                             f"coarse stride {self.coarse_stride} divided by a power of two up to {2**HEAD_DEPTH}")
        hidden = settings["head_channels"]
        self.reduce = nn.Linear(backbone.level_channels[self.coarse_stride], hidden, bias=False)
        strides = [1] * (HEAD_DEPTH - doublings) + [2] * doublings
        widths = [hidden] * HEAD_DEPTH + [1]
        layers: list[nn.Module] = []
        for depth, stride in enumerate(strides):
            layers.append(nn.ConvTranspose3d(widths[depth], widths[depth + 1], 3, stride=stride, padding=1,
                                             output_padding=stride - 1, bias=depth == HEAD_DEPTH - 1))
            if depth < HEAD_DEPTH - 1:
                layers += [nn.BatchNorm3d(widths[depth + 1]), nn.ReLU(inplace=True)]
        self.head = nn.Sequential(*layers)
        # RetinaNet's initialisation: logits start at the log-odds of a small occupied share, not at 0
        # (0.5), from where BCE spends hundreds of steps pulling every cell's logit down.
        nn.init.constant_(layers[-1].bias, math.log(OCCUPIED_PRIOR / (1 - OCCUPIED_PRIOR)))

    def backbone_input(self, voxels: VoxelBatch, batch: Batch, generator: torch.Generator) -> VoxelBatch:
        """The visible voxels: the range-aware mask drawn for each sample."""
        masked = range_aware_mask(voxels, self.grid, batch.origins, self.settings["range_bands"],
                                  self.settings["mask_ratios"], generator)
        return voxels.subset(~masked)

    def predict(self, output: BackboneOutput) -> torch.Tensor:
        """(B, Z, Y, X) occupancy logits, one per cell of target_stride^3 voxels of ``output.grid``."""
        coarse = output.levels[self.coarse_stride]
        reduced = coarse.replace_feature(self.reduce(coarse.features))
        # (B, Z, Y, X, C) permuted: a channels-last 3D tensor, on which the head runs 1.2-2x faster on CPU
        logits = self.head(reduced.dense(channels_first=False).permute(0, 4, 1, 2, 3))[:, 0]
        shape = [math.ceil(size / self.settings["target_stride"]) for size in output.grid.spatial_shape]
        if any(have < need for have, need in zip(logits.shape[1:], shape)):
            raise ValueError(f"{SETTINGS_KEY}: the head predicts {list(logits.shape[1:])} cells from the coarse "
                             f"level {coarse.spatial_shape}, fewer than the target grid {shape}")
        return logits[:, :shape[0], :shape[1], :shape[2]]

    def targets(self, output: BackboneOutput, voxels: VoxelBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """The occupancy of all voxels (masked included) and of the visible ones, on the predicted cells."""
        stride = self.settings["target_stride"]
        occupied = occupancy_target(voxels.parent.indices, voxels.batch_size, output.grid, stride)
        return occupied, occupancy_target(voxels.indices, voxels.batch_size, output.grid, stride)

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        logits = self.predict(output)
        occupied, visible = self.targets(output, voxels)
        loss = weighted_bce(logits, occupied, self.settings["pos_weight"])
        return loss, {"occupancy_bce": loss.item(), **self.scores(logits, occupied, visible)}

    @staticmethod
    @torch.no_grad()
    def scores(logits: torch.Tensor, occupied: torch.Tensor, visible: torch.Tensor) -> dict[str, float]:
        """IoU of the predicted occupancy (logit > 0) over all cells, and over the masked ones: the cells
        without a visible voxel, whose occupancy the backbone never saw."""
        predicted, occupied, unseen = logits > 0, occupied > 0, visible == 0
        return {"iou": iou(predicted, occupied), "iou_masked": iou(predicted & unseen, occupied & unseen)}

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        """How well the masked cloud's occupancy is reconstructed on (held-out) frames.

        ``iou_masked`` is the pretext's measure: predicting every cell empty
        scores 0, every cell occupied the masked cells' occupied share
        (``masked_occupied_share``, 0.45 % on the default grid's held-out frames).
        """
        logits = self.predict(output)
        occupied, visible = self.targets(output, voxels)
        unseen = visible == 0
        return {"bce": weighted_bce(logits, occupied, self.settings["pos_weight"]).item(),
                **self.scores(logits, occupied, visible),
                "masked_occupied_share": occupied[unseen].mean().item(),
                "visible_voxel_share": voxels.indices.shape[0] / voxels.parent.indices.shape[0]}
