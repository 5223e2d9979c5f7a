"""Backbone checkpoints, and loading them without the silent strict=False trap.

Peers load pre-trained weights with strict=False and only log what did not
match, so a renamed or resized backbone quietly fine-tunes from scratch.
occbench counts the share of the backbone's state (by number of values) that
the checkpoint really provides with the right shape, and refuses to go on
below a threshold.

Loaded is not pre-trained: a method whose loss never reaches a module (ALSO
and the BEV neck) saves that module at its random init. A checkpoint therefore
records which parameters received gradients during pre-training, and loading
reports the share of the backbone that was really pre-trained and the
top-level modules that were loaded but never trained.

What counts as state: parameters and floating-point buffers (BatchNorm
running mean and variance). Integer buffers (BatchNorm ``num_batches_tracked``)
are loaded when present and listed when missing, but do not count: one scalar
per BatchNorm layer, a batch counter rather than something the network
computes with (with a momentum set, it never enters the forward pass).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Collection

import torch
from torch import nn

from occbench.training import load_torch, save_torch

CHECKPOINT_VERSION = 2  # 2: records the parameters pre-training trained


class CheckpointMismatchError(ValueError):
    """A checkpoint provides too little of the backbone it is loaded into."""


@dataclass
class LoadReport:
    loaded_fraction: float  # share of the counted state values taken from the checkpoint
    pretrained_fraction: float  # share of parameter values loaded and trained in pre-training
    untrained_modules: list[str] = field(default_factory=list)  # top-level, loaded, no parameter trained
    untrained_parameters: list[str] = field(default_factory=list)  # loaded but never trained
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "loaded_fraction": self.loaded_fraction,
            "pretrained_fraction": self.pretrained_fraction,
            "untrained_modules": self.untrained_modules,
            "untrained_parameters": self.untrained_parameters,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatch": self.shape_mismatch,
        }


def save_checkpoint(path: str | os.PathLike, backbone: nn.Module, meta: dict[str, Any],
                    trained_parameters: Collection[str]) -> None:
    """Save the backbone with the names of its parameters that received gradients in pre-training.

    The names must come from ``backbone.named_parameters()``; an empty set means
    they were collected where no gradient exists (after ``zero_grad``), so it is refused.
    """
    names = {name for name, _ in backbone.named_parameters()}
    unknown = sorted(set(trained_parameters) - names)
    if unknown:
        raise ValueError(f"{path}: trained_parameters are not parameters of the backbone, e.g. {unknown[0]!r}")
    if not trained_parameters:
        raise ValueError(f"{path}: no backbone parameter is recorded as trained; collect the names of "
                         "parameters whose .grad is not None after backward(), before zero_grad()")
    save_torch({"version": CHECKPOINT_VERSION, "backbone": backbone.state_dict(),
                "trained_parameters": sorted(trained_parameters), "meta": meta}, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's dict; one without the record of trained parameters is refused."""
    checkpoint = load_torch(path, "a checkpoint")
    if not isinstance(checkpoint, dict) or "backbone" not in checkpoint:
        raise CheckpointMismatchError(f"{path}: not an occbench checkpoint (no 'backbone' state dict)")
    trained = checkpoint.get("trained_parameters")
    if checkpoint.get("version") != CHECKPOINT_VERSION or not isinstance(trained, list):
        raise CheckpointMismatchError(
            f"{path}: checkpoint version {checkpoint.get('version')} does not record which parameters "
            f"pre-training trained (version {CHECKPOINT_VERSION} does); re-run pre-training"
        )
    return checkpoint


def load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], trained: Collection[str],
                  min_fraction: float, source: str) -> LoadReport:
    """Copy matching tensors of ``state`` into ``backbone``; fail below ``min_fraction`` loaded.

    ``trained`` names the parameters the checkpoint's pre-training trained
    (``read_checkpoint(...)["trained_parameters"]``).
    """
    own = backbone.state_dict()
    matched: dict[str, torch.Tensor] = {}
    missing, shape_mismatch = [], []
    for name, value in own.items():
        if name not in state:
            missing.append(name)
        elif state[name].shape != value.shape:
            shape_mismatch.append(name)
        else:
            matched[name] = state[name]
    was_trained = set(trained)
    counted = [name for name, value in own.items() if value.is_floating_point()]
    parameters = [name for name, _ in backbone.named_parameters()]
    untrained = [name for name in parameters if name in matched and name not in was_trained]
    loaded_by_module: dict[str, list[str]] = {}
    for name in parameters:
        if name in matched:
            loaded_by_module.setdefault(name.split(".")[0], []).append(name)

    def fraction(part: list[str], whole: list[str]) -> float:
        total = sum(own[name].numel() for name in whole)
        return sum(own[name].numel() for name in part) / total if total else 0.0

    report = LoadReport(
        loaded_fraction=fraction([name for name in counted if name in matched], counted),
        pretrained_fraction=fraction([name for name in parameters if name in matched and name in was_trained],
                                     parameters),
        untrained_modules=[module for module, names in loaded_by_module.items()
                           if not was_trained.intersection(names)],
        untrained_parameters=untrained,
        missing=missing,
        unexpected=sorted(set(state) - set(own)),
        shape_mismatch=shape_mismatch,
    )
    if report.loaded_fraction < min_fraction:
        raise CheckpointMismatchError(
            f"{source}: only {report.loaded_fraction:.1%} of the backbone's parameters and BatchNorm "
            f"statistics match the checkpoint (threshold {min_fraction:.0%}); missing {len(missing)}, "
            f"shape mismatch {len(shape_mismatch)} (e.g. {(missing + shape_mismatch + ['-'])[0]}), "
            f"unexpected {len(report.unexpected)}"
        )
    backbone.load_state_dict({**own, **matched})
    return report


def check_same_model(checkpoint: dict[str, Any], path: str | os.PathLike, user: str, grid,
                     backbone_spec: dict[str, Any] | None = None) -> None:
    """Refuse a checkpoint recorded on another voxel grid (or backbone) than ``user``'s, naming both.

    Shapes alone do not tell: a voxel grid moved or rescaled in x and y keeps every weight's shape,
    and the weights then load in full and mean something else.
    """
    from occbench.models.voxelize import VoxelGrid

    meta = checkpoint.get("meta") or {}
    theirs = meta.get("voxelization") and VoxelGrid.from_params(meta["voxelization"])
    if theirs != grid:
        raise CheckpointMismatchError(f"{path}: checkpoint's voxel grid {theirs} is not {user}'s {grid}")
    if backbone_spec is not None and meta.get("backbone_spec") != backbone_spec:
        raise CheckpointMismatchError(f"{path}: checkpoint's backbone {meta.get('backbone_spec')} is not "
                                      f"{user}'s {backbone_spec}")


def load_frozen_backbone(path: str | os.PathLike, grid) -> nn.Module:
    """A teacher: the backbone a checkpoint holds, built from its own spec, frozen and in eval mode.

    Its voxel grid must be ``grid`` (the student's): teacher and student then see the
    same voxels, row for row, so the teacher's voxel features are per-voxel targets.
    """
    from occbench.models.backbone import SparseBackbone

    checkpoint = read_checkpoint(path)
    check_same_model(checkpoint, path, "the student", grid)
    spec = checkpoint["meta"]["backbone_spec"]
    teacher = SparseBackbone(grid, tuple(spec["channels"]), spec["bev_channels"])
    teacher.load_state_dict(checkpoint["backbone"])
    return teacher.requires_grad_(False).eval()
