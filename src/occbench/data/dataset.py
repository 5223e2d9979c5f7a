"""A converted dataset on disk: its index, its frames, and batches for the models."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from occbench.data.frame import Frame, load_frame
from occbench.io import read_json, write_json

INDEX_VERSION = 1


def write_index(path: str | os.PathLike, dataset: str, frames: list[dict]) -> None:
    """frames: [{"id", "path" (relative to the index), "split": "train" | "val"}]."""
    write_json(path, {"index_version": INDEX_VERSION, "dataset": dataset, "frames": frames})


class FrameIndex:
    """The index.json of a converted dataset."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        index = read_json(self.path)
        try:
            self.dataset = index["dataset"]
            self.frames = {entry["id"]: entry for entry in index["frames"]}
        except (KeyError, TypeError) as err:
            raise ValueError(f"{self.path}: not a frame index (missing {err})") from err

    def ids(self, split: str) -> list[str]:
        return sorted(frame_id for frame_id, entry in self.frames.items() if entry["split"] == split)

    def frame_path(self, frame_id: str) -> Path:
        return self.path.parent / self.frames[frame_id]["path"]

    def load(self, frame_id: str) -> Frame:
        return load_frame(self.frame_path(frame_id))


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
