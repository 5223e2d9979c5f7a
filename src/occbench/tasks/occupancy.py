"""3D semantic occupancy prediction: the class (or empty) of every voxel of the dataset's occupancy grid.

Head: SPOT's BEV-to-columns head (models/occupancy_head.py), here trained
downstream: a 3x3 convolution on the BEV map, a 1x1 convolution to the class
logits of the k x k columns of Z voxels under each BEV cell. The occupancy
grid must align with the BEV map; it is read from the run's first training
frame. Loss: class-weighted cross-entropy + ``lovasz_weight`` * Lovasz-softmax
over the labelled voxels (``lovasz_weight`` 0: cross-entropy alone), the
Lovasz term on ``lovasz_voxels`` random labelled voxels a step (null: all).
Evaluation: per-class IoU, mIoU of the semantic classes and geometric IoU over
every held-out voxel that the ``protocol`` counts (metrics/occupancy.py:
``openoccupancy`` every labelled voxel, ``occ3d`` the ones the LiDAR observed,
from the frame's points as the network sees them and its sensor origin).
"""

from __future__ import annotations

import torch

from occbench.data.batch import Batch
from occbench.metrics.occupancy import PROTOCOLS, count_voxels, occupancy_confusion, occupancy_metrics
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.losses import occupancy_class_weights, occupancy_loss_terms
from occbench.models.occupancy_head import OccupancyColumns, occupancy_grid_of_run
from occbench.models.voxelize import VoxelBatch
from occbench.tasks.base import Evaluator, Task, TaskContext

SETTINGS = "finetune.occupancy"


class OccupancyEvaluator(Evaluator):
    """One confusion matrix (classes + empty) over the counted voxels of every held-out frame."""

    def __init__(self, task: "OccupancyTask") -> None:
        self.task = task
        self.counted_voxels = PROTOCOLS[task.settings["protocol"]]
        self.confusion = occupancy_confusion()

    def update(self, output: BackboneOutput, predictions: torch.Tensor, batch: Batch, voxels: VoxelBatch) -> None:
        classes = self.task.logits(predictions, output, batch).argmax(1)
        for sample in range(len(batch)):
            counted = self.counted_voxels(batch.points[sample], batch.origins[sample], batch.occupancy_grid)
            count_voxels(self.confusion, classes[sample], batch.occupancy[sample].long(), counted)

    def result(self) -> dict:
        return occupancy_metrics(self.confusion)


class OccupancyTask(Task):
    needs = frozenset({"occupancy"})
    needs_bev = True
    main_metric = "miou"
    more_metrics = ("geometric_iou",)  # occupied or empty, whatever the class: the report's second table

    def __init__(self, backbone: SparseBackbone, settings: dict, context: TaskContext | None = None,
                 occupancy: dict | None = None):
        """``occupancy``: the targets' grid ({"range", "voxel_size"}); by default that of the run's first frame."""
        super().__init__(backbone, settings, context)
        if settings["protocol"] not in PROTOCOLS:
            raise ValueError(f"{SETTINGS}.protocol: {settings['protocol']!r} is not one of {sorted(PROTOCOLS)}")
        if occupancy is None:
            if context is None:
                raise ValueError("the occupancy task needs the targets' occupancy grid: a TaskContext or the "
                                 "occupancy argument")
            occupancy = occupancy_grid_of_run(context.index, context.frame_ids, "the occupancy task")
        self.columns = OccupancyColumns(backbone, occupancy, "the occupancy task")
        self.register_buffer("class_weights", occupancy_class_weights(settings, SETTINGS), persistent=False)
        self.head = self.columns.head(backbone.bev_channels, settings["hidden_dim"])

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.head(output.bev)

    def logits(self, predictions: torch.Tensor, output: BackboneOutput, batch: Batch) -> torch.Tensor:
        """Class logits (B, classes + empty, X, Y, Z) of the batch's occupancy voxels."""
        return self.columns.logits(predictions, output, batch)

    def loss(self, predictions: torch.Tensor, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cross_entropy, lovasz = occupancy_loss_terms(
            self.logits(predictions, output, batch), batch.occupancy.long(), self.class_weights,
            self.settings["lovasz_voxels"], generator)
        loss = cross_entropy + self.settings["lovasz_weight"] * lovasz
        return loss, {"cross_entropy": cross_entropy.item(), "lovasz": lovasz.item()}

    def evaluator(self) -> OccupancyEvaluator:
        return OccupancyEvaluator(self)
