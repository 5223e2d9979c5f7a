"""The one on-disk frame format shared by every dataset.

A frame is a single ``.npz`` file (uncompressed NumPy archive) holding one LiDAR
sweep and what is known about it. Coordinates are metres in the frame's own
LiDAR coordinate system (x forward, y left, z up); ``pose`` maps them to the
world, so sequences can be aggregated. Optional fields are simply absent, which
lets converters and the synthetic world add fields (images, calibration,
occupancy) without breaking readers of older frames.

Required arrays
    points        float32 (N, 3)
    intensity     float32 (N,)    in [0, 1]
    ring          int16   (N,)    beam index, -1 where the sensor gives none
    semantic      uint8   (N,)    unified class id (taxonomy.CLASSES), 255 = ignore
    instance      int32   (N,)    0 = no instance
    boxes         float32 (M, 7)  x, y, z (centre), dx, dy, dz, yaw
    box_labels    int16   (M,)    unified class id of each box
    pose          float64 (4, 4)  LiDAR-to-world transform
    sensor_origin float32 (3,)    ray origin in frame coordinates
    meta          str             JSON: dataset, sequence, index, sensor, format_version
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from occbench.io import atomic_path

FORMAT_VERSION = 1

_REQUIRED_DTYPES: dict[str, Any] = {
    "points": np.float32,
    "intensity": np.float32,
    "ring": np.int16,
    "semantic": np.uint8,
    "instance": np.int32,
    "boxes": np.float32,
    "box_labels": np.int16,
    "pose": np.float64,
    "sensor_origin": np.float32,
}


class FrameFormatError(ValueError):
    """A frame file is missing a field or holds arrays of the wrong shape."""


@dataclass
class Frame:
    points: np.ndarray
    intensity: np.ndarray
    ring: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    boxes: np.ndarray
    box_labels: np.ndarray
    pose: np.ndarray = field(default_factory=lambda: np.eye(4))
    sensor_origin: np.ndarray = field(default_factory=lambda: np.zeros(3, np.float32))
    meta: dict[str, Any] = field(default_factory=dict)
    # Optional fields (images, calibration, occupancy, ...) keyed by name.
    extras: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name, dtype in _REQUIRED_DTYPES.items():
            setattr(self, name, np.asarray(getattr(self, name), dtype=dtype))
        self.validate()

    @property
    def num_points(self) -> int:
        return int(self.points.shape[0])

    def validate(self) -> None:
        n = self.points.shape[0]
        problems = []
        if self.points.ndim != 2 or self.points.shape[1] != 3:
            problems.append(f"points has shape {self.points.shape}, expected (N, 3)")
        for name in ("intensity", "ring", "semantic", "instance"):
            if getattr(self, name).shape != (n,):
                problems.append(f"{name} has shape {getattr(self, name).shape}, expected ({n},)")
        m = self.boxes.shape[0] if self.boxes.ndim == 2 else -1
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 7:
            problems.append(f"boxes has shape {self.boxes.shape}, expected (M, 7)")
        if self.box_labels.shape != (max(m, 0),):
            problems.append(f"box_labels has shape {self.box_labels.shape}, expected ({m},)")
        if self.pose.shape != (4, 4):
            problems.append(f"pose has shape {self.pose.shape}, expected (4, 4)")
        if self.sensor_origin.shape != (3,):
            problems.append(f"sensor_origin has shape {self.sensor_origin.shape}, expected (3,)")
        if n and not np.isfinite(self.points).all():
            problems.append("points holds NaN or infinite values")
        if problems:
            raise FrameFormatError("; ".join(problems))


def save_frame(frame: Frame, path: str | os.PathLike) -> None:
    """Write ``frame`` atomically: a reader never sees a partial file."""
    arrays = {name: getattr(frame, name) for name in _REQUIRED_DTYPES}
    arrays["meta"] = np.array(json.dumps({"format_version": FORMAT_VERSION, **frame.meta}))
    for name, value in frame.extras.items():
        if name in arrays:
            raise ValueError(f"extra field {name!r} shadows a required frame field")
        arrays[name] = value
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)


def load_frame(path: str | os.PathLike) -> Frame:
    """Read a frame, naming the file and the problem when it is not a valid frame."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as archive:
            data = {name: archive[name] for name in archive.files}
    except FileNotFoundError:
        raise
    except Exception as err:  # zipfile, OSError, ValueError: all mean "not a frame"
        raise FrameFormatError(f"{path}: cannot read as a frame archive ({err})") from err
    missing = [name for name in (*_REQUIRED_DTYPES, "meta") if name not in data]
    if missing:
        raise FrameFormatError(f"{path}: missing field(s) {', '.join(missing)}")
    meta = json.loads(str(data.pop("meta")))
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise FrameFormatError(
            f"{path}: frame format {meta['format_version']} is newer than this occbench "
            f"reads ({FORMAT_VERSION})"
        )
    required = {name: data.pop(name) for name in _REQUIRED_DTYPES}
    try:
        return Frame(**required, meta=meta, extras=data)
    except FrameFormatError as err:
        raise FrameFormatError(f"{path}: {err}") from err
