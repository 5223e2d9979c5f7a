"""LiDAR semantic segmentation: a linear head on the backbone's per-voxel features.

Training uses the labelled frames of one nested label fraction; evaluation
scores every point of every held-out frame, carrying voxel predictions back to
the points (points outside the voxel grid take their nearest voxel), so the
figure is the full-cloud mIoU, not a training-loop proxy (ALSO#5). Beside it,
``val_bootstrap`` gives the 95 % interval of that mIoU over resamples of the
held-out frames: the part of a run's uncertainty that is the validation sample.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.data.taxonomy import CLASSES, IGNORE_INDEX, NUM_CLASSES
from occbench.metrics.segmentation import ConfusionMatrix, bootstrap_miou_interval, segmentation_metrics
from occbench.metrics.stats import nan_to_none
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch, points_to_voxel_rows
from occbench.tasks.base import Evaluator, Task, TaskContext


class SegmentationEvaluator(Evaluator):
    """One confusion matrix over every held-out point, kept per frame for the validation bootstrap."""

    def __init__(self) -> None:
        self.frames: list[np.ndarray] = []

    def update(self, output: BackboneOutput, predictions: torch.Tensor, batch: Batch, voxels: VoxelBatch) -> None:
        voxel_class = predictions.argmax(dim=1)
        for rows, labels in zip(points_to_voxel_rows(voxels, batch.points, output.grid), batch.semantic):
            confusion = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
            confusion.update(voxel_class[rows], labels)
            self.frames.append(confusion.matrix)

    def result(self) -> dict:
        confusion = ConfusionMatrix(NUM_CLASSES, IGNORE_INDEX)
        confusion.matrix = np.sum(self.frames, axis=0)
        low, high = bootstrap_miou_interval(np.stack(self.frames))
        return {**segmentation_metrics(confusion, CLASSES),
                "val_bootstrap": {"miou_low": nan_to_none(low), "miou_high": nan_to_none(high)}}


class SegmentationTask(Task):
    main_metric = "miou"

    def __init__(self, backbone: SparseBackbone, settings: dict, context: TaskContext | None = None):
        super().__init__(backbone, settings, context)
        self.head = nn.Linear(backbone.out_channels, NUM_CLASSES)

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        return self.head(output.voxel_features.features)

    def loss(self, predictions: torch.Tensor, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """Cross-entropy over the training points inside the grid, each scored by its voxel's logits."""
        inside = [rows >= 0 for rows in voxels.point_voxel]
        logits = predictions[torch.cat([rows[m] for rows, m in zip(voxels.point_voxel, inside)])]
        labels = torch.cat([labels[m] for labels, m in zip(batch.semantic, inside)])
        return F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX), {}

    def evaluator(self) -> SegmentationEvaluator:
        return SegmentationEvaluator()
