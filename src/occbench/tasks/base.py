"""What every downstream task is: a head on the shared backbone, its loss, its evaluation, its main metric.

One generic fine-tuning job (tasks/job.py) drives every task: it builds the
backbone, loads the pre-trained weights with the loaded-parameter check, trains
``FinetuneModel`` through the engine and evaluates on the held-out frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from occbench.data.batch import Batch
from occbench.data.dataset import FrameIndex
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch, voxelize


class Evaluator:
    """Accumulates a task's metric over held-out batches."""

    def update(self, output: BackboneOutput, predictions: torch.Tensor, batch: Batch, voxels: VoxelBatch) -> None:
        raise NotImplementedError

    def result(self) -> dict:
        raise NotImplementedError


@dataclass(frozen=True)
class TaskContext:
    """What a task may know about its run beyond its settings: the fine-tuning frames (a head sized by the
    dataset's occupancy grid reads it from them)."""

    index: FrameIndex
    frame_ids: tuple[str, ...]  # the labelled training frames


class Task(nn.Module):
    """A task's head(s) on the backbone; the backbone itself stays task-agnostic."""

    needs: frozenset[str] = frozenset()  # optional batch fields (occbench.data.batch.OPTIONAL_FIELDS)
    needs_bev: bool = False
    main_metric: str
    more_metrics: tuple[str, ...] = ()  # further headline metrics the report tabulates beside main_metric

    def __init__(self, backbone: SparseBackbone, settings: dict, context: TaskContext | None = None):
        super().__init__()
        self.settings = settings

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        """The head's predictions."""
        raise NotImplementedError

    def loss(self, predictions: torch.Tensor, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        """The training loss and the values to log; ``generator``: the step's seeded draws."""
        raise NotImplementedError

    def evaluator(self) -> Evaluator:
        raise NotImplementedError


class FinetuneModel(nn.Module):
    """Backbone + task head as one module, the unit the engine trains.

    ``backbone_lr_scale``: the backbone trains at this share of the lr, the head at
    the full lr. 0 freezes the backbone, BatchNorm statistics included: a linear
    probe of what its (pre-trained or random) features carry.
    """

    def __init__(self, backbone: SparseBackbone, task: Task, backbone_lr_scale: float = 1.0):
        super().__init__()
        self.backbone, self.task, self.backbone_lr_scale = backbone, task, backbone_lr_scale
        if self.frozen:
            self.backbone.requires_grad_(False)

    @property
    def frozen(self) -> bool:
        return self.backbone_lr_scale == 0

    def train(self, mode: bool = True) -> "FinetuneModel":
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def parameter_groups(self) -> list[dict]:
        head = {"params": list(self.task.parameters())}
        if self.frozen:
            return [head]
        return [{"params": list(self.backbone.parameters()), "lr_scale": self.backbone_lr_scale}, head]

    def run(self, batch: Batch) -> tuple[BackboneOutput, torch.Tensor, VoxelBatch]:
        voxels = voxelize(batch.points, batch.intensity, self.backbone.grid, batch.frame_ids)
        output = self.backbone(voxels, with_bev=self.task.needs_bev)
        return output, self.task(output), voxels

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        output, predictions, voxels = self.run(batch)
        return self.task.loss(predictions, output, batch, voxels, generator)
