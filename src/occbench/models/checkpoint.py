"""Backbone checkpoints, and loading them without the silent strict=False trap.

Peers load pre-trained weights with strict=False and only log what did not
match, so a renamed or resized backbone quietly fine-tunes from scratch.
occbench counts the share of the backbone's parameters (by number of values)
that the checkpoint really provides with the right shape, and refuses to go on
below a threshold.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from occbench.training import save_torch

CHECKPOINT_VERSION = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint provides too little of the backbone it is loaded into."""


@dataclass
class LoadReport:
    loaded_fraction: float  # share of backbone values taken from the checkpoint
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "loaded_fraction": self.loaded_fraction,
            "missing": self.missing,
            "unexpected": self.unexpected,
            "shape_mismatch": self.shape_mismatch,
        }


def save_checkpoint(path: str | os.PathLike, backbone: nn.Module, meta: dict[str, Any],
                    trained_parameters: list[str]) -> None:
    save_torch({"version": CHECKPOINT_VERSION, "backbone": backbone.state_dict(), "meta": meta,
                "trained_parameters": sorted(trained_parameters)}, path)


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise CheckpointMismatchError(f"{path}: cannot read as a checkpoint ({err})") from err
    if not isinstance(checkpoint, dict) or "backbone" not in checkpoint:
        raise CheckpointMismatchError(f"{path}: not an occbench checkpoint (no 'backbone' state dict)")
    return checkpoint


def load_backbone(backbone: nn.Module, state: dict[str, torch.Tensor], min_fraction: float,
                  source: str) -> LoadReport:
    """Copy matching tensors of ``state`` into ``backbone``; fail below ``min_fraction``."""
    own = backbone.state_dict()
    matched: dict[str, torch.Tensor] = {}
    report = LoadReport(0.0)
    for name, value in own.items():
        if name not in state:
            report.missing.append(name)
        elif state[name].shape != value.shape:
            report.shape_mismatch.append(name)
        else:
            matched[name] = state[name]
    report.unexpected = sorted(set(state) - set(own))
    parameter_names = {name for name, _ in backbone.named_parameters()}
    total = sum(own[name].numel() for name in parameter_names)
    loaded = sum(matched[name].numel() for name in parameter_names if name in matched)
    report.loaded_fraction = loaded / total if total else 0.0
    if report.loaded_fraction < min_fraction:
        raise CheckpointMismatchError(
            f"{source}: only {report.loaded_fraction:.1%} of the backbone's parameters match the "
            f"checkpoint (threshold {min_fraction:.0%}); missing {len(report.missing)}, "
            f"shape mismatch {len(report.shape_mismatch)} (e.g. "
            f"{(report.missing + report.shape_mismatch + ['-'])[0]}), unexpected {len(report.unexpected)}"
        )
    backbone.load_state_dict({**own, **matched})
    return report
