"""Nested, seeded subsets of a dataset's training frames, as index files.

Three ways to take a fraction f of the training frames, each nested (the
frames of 1 % lie inside those of 10 %, inside 100 %) for one seed and
independent of any training seed:

    frames    the first ceil(f * N) frames of one seeded permutation of the frames;
    interval  every k-th frame in temporal order, k = 1 / f (OpenPCDet's
              sampled interval, used for Waymo's 20 % pre-training);
    scenes    every frame of every k-th scene, k = 1 / f (ALSO's label
              fractions: whole scenes, so no labelled scene is half-used).

``interval`` and ``scenes`` count every k-th from the seed-th frame (scene) on,
cyclically: seed 0 starts at the first, as before label-split seeds existed,
and seeds below min(k, N frames or scenes) give pairwise different subsets.
They take fractions 1 / k and nest when each stride divides the strides of
the smaller fractions (0.01, 0.1, 1 do; 0.5, 0.2 do not), which
``check_nesting`` tells before anything runs. Index files hold one frame id a
line; their hash goes into run_meta.json.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from occbench.io import write_text

SAMPLINGS = ("frames", "interval", "scenes")


def subset_size(fraction: float, total: int) -> int:
    """Frames kept by a fraction: at least one, so tiny fractions still run. Rounded to 4 decimals
    before the ceiling: a fraction read back from a path (ten significant digits, 1/6 ->
    0.1666666667) keeps 3 of 18 frames, not 4."""
    return max(1, math.ceil(round(fraction * total, 4)))


def sampling_stride(fraction: float) -> int:
    """k of a fraction 1 / k; anything else cannot be sampled every k-th."""
    stride = round(1 / fraction)
    if abs(stride * fraction - 1) > 1e-6:
        raise ValueError(f"fraction {fraction} is not 1/k for a whole k, as interval and scene sampling need")
    return stride


def check_nesting(fractions: list[float], sampling: str) -> None:
    """Raise unless every smaller fraction's subset lies inside every larger one's."""
    if sampling == "frames":
        return
    strides = sorted(sampling_stride(f) for f in fractions)
    for small, large in zip(strides, strides[1:]):
        if large % small:
            raise ValueError(
                f"{sampling} sampling with strides {small} and {large} (fractions 1/{small} and "
                f"1/{large}) does not nest: each stride must divide the next larger one "
                f"(e.g. fractions 0.01, 0.1, 1)"
            )


def _every_kth(items: list[str], stride: int, seed: int) -> list[str]:
    """Every stride-th item from item seed (mod len) on, wrapping around: nested over strides that divide."""
    start = seed % len(items)
    return (items[start:] + items[:start])[::stride]


def nested_subset(frame_scenes: dict[str, str], fraction: float, seed: int, sampling: str = "frames") -> list[str]:
    """The training frames a fraction keeps. ``frame_scenes`` maps frame id -> scene;
    frame ids sort in temporal order within a scene, as every converter writes them."""
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    ordered = sorted(frame_scenes)
    if sampling == "frames":
        order = np.random.default_rng(seed).permutation(len(ordered))
        return [ordered[i] for i in order[: subset_size(fraction, len(ordered))]]
    stride = sampling_stride(fraction)
    if sampling == "interval":
        return sorted(_every_kth(ordered, stride, seed))
    if sampling == "scenes":
        kept = set(_every_kth(sorted(set(frame_scenes.values())), stride, seed))
        return [frame_id for frame_id in ordered if frame_scenes[frame_id] in kept]
    raise ValueError(f"unknown sampling {sampling!r}; known: {', '.join(SAMPLINGS)}")


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
