"""Nested, seeded subsets of a dataset's training frames, as index files.

A fraction keeps the first ceil(f * N) frames of one seeded permutation of the
training frames, so every smaller fraction lies inside every larger one
(1 % inside 10 % inside 100 %) and the subset does not depend on any training
seed. Index files hold one frame id a line; their hash goes into run_meta.json.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from occbench.io import write_text
from occbench.workflow.grid import subset_size


def nested_subset(frame_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The frames a fraction keeps, in a seeded order shared by every fraction."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    order = np.random.default_rng(seed).permutation(len(frame_ids))
    ordered = sorted(frame_ids)
    return [ordered[i] for i in order[: subset_size(fraction, len(frame_ids))]]


def write_split(path: str | os.PathLike, frame_ids: list[str]) -> None:
    write_text(path, "".join(f"{frame_id}\n" for frame_id in frame_ids))


def read_split(path: str | os.PathLike, known_ids: set[str] | None = None) -> list[str]:
    """Read an index file, naming it when it is empty or lists unknown frames."""
    path = Path(path)
    frame_ids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not frame_ids:
        raise ValueError(f"{path}: split file lists no frames")
    if known_ids is not None:
        unknown = [frame_id for frame_id in frame_ids if frame_id not in known_ids]
        if unknown:
            raise ValueError(f"{path}: {len(unknown)} frame id(s) not in the dataset index, e.g. {unknown[0]!r}")
    return frame_ids
