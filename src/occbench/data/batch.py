"""Frames as tensors for the models."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from occbench.data.augment import GlobalAugmentation
from occbench.data.dataset import FrameIndex
from occbench.data.frame import Frame


@dataclass
class PointBatch:
    """Frames as tensors, one entry per sample (clouds have different sizes)."""

    points: list[torch.Tensor]
    intensity: list[torch.Tensor]
    semantic: list[torch.Tensor]
    origins: list[torch.Tensor]

    def __len__(self) -> int:
        return len(self.points)


def to_batch(frames: list[Frame], max_points: int | None = None, rng: np.random.Generator | None = None) -> PointBatch:
    """Stack frames into a batch; clouds above ``max_points`` are randomly subsampled (training only)."""
    points, intensity, semantic, origins = [], [], [], []
    for frame in frames:
        keep = np.arange(frame.num_points)
        if max_points is not None and frame.num_points > max_points:
            if rng is None:
                raise ValueError("subsampling a cloud needs a seeded generator")
            keep = np.sort(rng.choice(frame.num_points, max_points, replace=False))
        points.append(torch.from_numpy(frame.points[keep]))
        intensity.append(torch.from_numpy(frame.intensity[keep]))
        semantic.append(torch.from_numpy(frame.semantic[keep].astype(np.int64)))
        origins.append(torch.from_numpy(frame.sensor_origin))
    return PointBatch(points, intensity, semantic, origins)


def training_batch(index: FrameIndex, frame_ids: list[str], augmentation: GlobalAugmentation,
                   max_points: int, rng: np.random.Generator) -> PointBatch:
    """Training frames, each under its own sampled augmentation, subsampled to ``max_points``."""
    return to_batch([augmentation(index.load(i), rng) for i in frame_ids], max_points, rng)
