"""SPOT (Yan et al., arXiv 2309.10527): semantic occupancy prediction from the BEV map.

Targets: the semantic occupancy of each frame (``NUM_CLASSES`` classes + empty,
``Batch.occupancy``) on a grid aligned with the backbone's BEV map: the same
x/y range, each BEV cell covering k x k occupancy columns (k a whole number).
Head: a 3x3 convolution on the dense BEV features, then a 1x1 convolution to
k * k * Z * (classes + 1) channels, unfolded (pixel shuffle) into the class
logits of the k x k columns of Z voxels under each cell: per-voxel logits
along z. Loss: class-weighted cross-entropy + ``lovasz_weight`` *
Lovasz-softmax (Berman et al., CVPR 2018) over every labelled voxel; class
weights ``foreground`` for the road users (``foreground_classes``),
``empty`` for free space, ``other`` for the rest (SPOT: 2.0 / 0.01 / 1.0).
Voxels below the ground (IGNORE_INDEX) count nowhere. The training loader
applies beam re-sampling (``data.beams.BeamResampler``) and class-balanced
frame sampling (``data.sampling``) when the settings switch them on.

Deviations (SPOT's code is not public):

- SPOT's foreground list names car, pedestrian, cyclist, bicycle and
  motorcycle; the unified taxonomy has no bicycle or motorcycle class (both
  are ``cyclist``), and trucks and buses (``truck``) are not on SPOT's list,
  so they weigh 1.0;
- the head's layout (3x3 conv, BN, ReLU, 1x1 conv, pixel shuffle) is ours: the
  paper says only "a light head on the BEV features predicting along z";
- the targets are the dataset's occupancy grid: on real data built at
  conversion from labelled points aggregated over the sequence, as SPOT's
  (``data/occupancy_aggregation.py``); on the synthetic world the exact
  geometry, occluded voxels included;
- the Lovasz-softmax term of a training step is computed on ``lovasz_voxels``
  labelled voxels drawn at random (null: all of them, as SPOT): sorting the
  800k labelled voxels of a default batch for 13 classes takes 1.2 s on one
  core, five times the backbone's forward pass; on 100k voxels the held-out
  mIoU after 40 steps on two frames is the same (0.146 against 0.150);
- the pretext metric is per-frame semantic occupancy mIoU over the classes
  present (in target or prediction) of each held-out frame, with geometric
  IoU (occupied vs empty), averaged over frames; see ``pretext_metrics`` for
  why it also reports them for the decision without the class weights.

The head, its alignment with the BEV map and the loss are shared with the
occupancy fine-tuning task (models/occupancy_head.py, models/losses.py).
"""

from __future__ import annotations

import math

import torch

from occbench.data.batch import Batch
from occbench.data.beams import BeamResampler
from occbench.data.loader import LoaderOptions
from occbench.data.taxonomy import CLASSES, EMPTY_INDEX
from occbench.metrics.occupancy import geometric_iou, occupancy_confusion, semantic_miou
from occbench.metrics.segmentation import ConfusionMatrix
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.losses import occupancy_class_weights, occupancy_loss_terms
from occbench.models.occupancy_head import OccupancyColumns, occupancy_grid_of_run
from occbench.models.voxelize import VoxelBatch
from occbench.pretrain.base import PretrainMethod, RunContext

SETTINGS = "pretrain.methods.spot"


def class_weights(settings: dict) -> torch.Tensor:
    """Cross-entropy weight of each occupancy class (OCCUPANCY_CLASSES,): foreground / other / empty."""
    return occupancy_class_weights(settings, SETTINGS)


class SPOT(PretrainMethod):
    paper = "Yan et al., SPOT: scalable 3D pre-training via occupancy prediction, arXiv 2309.10527 (no public code)"
    differs = ("head layout ours (3x3 conv, 1x1 conv, pixel shuffle); bicycle and motorcycle are the taxonomy's "
               "cyclist; Lovasz-softmax on lovasz_voxels random labelled voxels a step; targets: the dataset's "
               "occupancy grid")
    headline_metrics = ("miou", "geometric_iou", "geometric_iou_unweighted")
    needs = frozenset({"occupancy"})
    needs_bev = True

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext | None = None,
                 occupancy: dict | None = None):
        """``occupancy``: the targets' grid ({"range", "voxel_size"}); by default that of the run's first frame."""
        super().__init__(backbone, settings, context)
        if occupancy is None:
            if context is None:
                raise ValueError("SPOT needs the targets' occupancy grid: a RunContext or the occupancy argument")
            occupancy = occupancy_grid_of_run(context.index, context.frame_ids, "SPOT")
        self.columns = OccupancyColumns(backbone, occupancy, "SPOT")
        self.register_buffer("class_weights", class_weights(settings), persistent=False)
        self.head = self.columns.head(backbone.bev_channels, settings["hidden_dim"])

    def loader_options(self) -> LoaderOptions:
        beams = self.settings["beam_resampling"]
        transforms = (BeamResampler(p=beams["p"], down_factor=beams["down_factor"], up_factor=beams["up_factor"]),) \
            if beams["enabled"] else ()
        return LoaderOptions(transforms=transforms, class_balanced=self.settings["class_balanced_sampling"])

    def logits(self, output: BackboneOutput, batch: Batch) -> torch.Tensor:
        """Class logits (B, OCCUPANCY_CLASSES, X, Y, Z) of the batch's occupancy voxels."""
        return self.columns.logits(self.head(output.bev), output, batch)

    def terms(self, logits: torch.Tensor, target: torch.Tensor,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-weighted cross-entropy, Lovasz-softmax) over the labelled voxels; the Lovasz term over
        ``lovasz_voxels`` of them drawn with ``generator`` when there are more (all without a generator)."""
        return occupancy_loss_terms(logits, target, self.class_weights, self.settings["lovasz_voxels"], generator)

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cross_entropy, lovasz = self.terms(self.logits(output, batch), batch.occupancy.long(), generator)
        loss = cross_entropy + self.settings["lovasz_weight"] * lovasz
        return loss, {"cross_entropy": cross_entropy.item(), "lovasz": lovasz.item()}

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        """Semantic occupancy mIoU (the classes but empty, each where present in target or prediction),
        geometric IoU (occupied vs empty) and per-class IoU over the batch's labelled voxels, with the
        loss terms (the Lovasz term over every labelled voxel).

        Two decisions: the argmax of the logits (``miou``, ``geometric_iou``), and the argmax once the
        log class weights are taken off (``*_unweighted``). Weighted cross-entropy trains the logits
        towards w_c p_c, so at an empty weight of 0.01 the plain argmax calls a voxel empty only when
        p_empty exceeds about 100 times every other class: it over-predicts occupancy and its
        geometric IoU starts at the share of occupied voxels (``occupied_share``, what calling every
        voxel occupied scores) and rises slowly; the unweighted decision shows the geometry learnt.
        """
        logits, target = self.logits(output, batch), batch.occupancy.long()
        cross_entropy, lovasz = self.terms(logits, target, None)
        raw = self._confusion(logits.argmax(1), target)
        unweighted = self._confusion((logits - self.class_weights.log()[:, None, None, None]).argmax(1), target)
        occupied = raw.matrix[:EMPTY_INDEX].sum() / raw.matrix.sum() if raw.matrix.sum() else math.nan
        return {
            **self._ious(raw, ""),
            **self._ious(unweighted, "_unweighted"),
            "occupied_share": float(occupied),
            "cross_entropy": cross_entropy.item(),
            "lovasz": lovasz.item(),
            **{f"iou_{name}": float(value) for name, value in zip((*CLASSES, "empty"), raw.iou())},
        }

    @staticmethod
    def _confusion(prediction: torch.Tensor, target: torch.Tensor) -> ConfusionMatrix:
        confusion = occupancy_confusion()
        confusion.update(prediction, target)
        return confusion

    @staticmethod
    def _ious(confusion: ConfusionMatrix, suffix: str) -> dict[str, float]:
        return {f"miou{suffix}": semantic_miou(confusion), f"geometric_iou{suffix}": geometric_iou(confusion)}
