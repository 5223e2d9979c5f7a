"""What every pre-training method is: targets, heads and a loss over the shared backbone's output.

A method never touches the backbone's code. It sees the batch (with the optional
fields it declares in ``needs``), may change what the backbone sees before it
runs (``backbone_input``: a masking method keeps a ``VoxelBatch.subset`` of the
voxels), and turns the backbone's output into a loss and into pretext metrics
that tell on held-out frames whether it learns. Only the backbone's weights are
kept after pre-training; the heads are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from occbench.data.batch import Batch
from occbench.data.dataset import FrameIndex
from occbench.data.loader import LoaderOptions
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch, voxelize


@dataclass(frozen=True)
class RunContext:
    """What a method may know about its run beyond its own settings."""

    index: FrameIndex  # the pre-training dataset
    frame_ids: tuple[str, ...]  # the frames of its pre-training fraction
    run_dir: Path
    teacher: Path | None = None  # the checkpoint it learns from, verified (pretrain.methods.<m>.teacher)


class PretrainMethod(nn.Module):
    # The report's methods table (report/methods.py): every occbench method is a re-implementation;
    # the paper it follows, and in one line what differs (the docstring says it in full).
    paper: str
    differs: str
    # The pretext metrics the report's pre-training table shows (reports/pretraining.csv keeps them all).
    headline_metrics: tuple[str, ...]
    needs: frozenset[str] = frozenset()  # optional batch fields (occbench.data.batch.OPTIONAL_FIELDS)
    needs_bev: bool = False  # whether the loss reads the BEV map (the backbone then computes it)

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext):
        super().__init__()
        self.settings, self.context = settings, context

    def loader_options(self) -> LoaderOptions:
        """What the training loader adds for this method (frame transforms, class-balanced epochs):
        nothing, unless the method asks."""
        return LoaderOptions()

    def backbone_input(self, voxels: VoxelBatch, batch: Batch, generator: torch.Generator) -> VoxelBatch:
        """What the backbone sees: all voxels, unless the method masks some."""
        return voxels

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called by the engine at the start of each epoch (PICTURE's loss weights decay over epochs)."""

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        raise NotImplementedError

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        raise NotImplementedError


class PretrainModel(nn.Module):
    """Backbone + method as one module, the unit the engine trains (and wraps in DDP)."""

    def __init__(self, backbone: SparseBackbone, method: PretrainMethod):
        super().__init__()
        self.backbone, self.method = backbone, method

    def parameter_groups(self) -> list[dict]:
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]  # a frozen teacher is not trained

    def set_progress(self, epoch: int, epochs: int) -> None:
        self.method.set_progress(epoch, epochs)

    def run(self, batch: Batch, generator: torch.Generator) -> tuple[BackboneOutput, VoxelBatch]:
        voxels = voxelize(batch.points, batch.intensity, self.backbone.grid, batch.frame_ids)
        seen = self.method.backbone_input(voxels, batch, generator)
        return self.backbone(seen, with_bev=self.method.needs_bev), seen

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        output, seen = self.run(batch, generator)
        return self.method.loss(output, batch, seen, generator)

    @torch.no_grad()
    def pretext_metrics(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        output, seen = self.run(batch, generator)
        return self.method.pretext_metrics(output, batch, seen, generator)
