"""Frames as tensors for the models: one typed batch, its optional fields filled on request.

Every batch carries the point clouds (points, intensity, semantic labels,
sensor origin) and the frame ids. A method or task declares which optional
fields it needs (``OPTIONAL_FIELDS``); only those are read and stacked, so a
segmentation run never copies camera images and an ALSO run never pads boxes.
A frame that lacks a requested field is an error naming the frame's file.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from occbench.data.frame import (BoxAnnotations, Frame, bicycle_racks, box_annotations, cameras, ego_origin,
                                 occupancy_grid)

# What a method or task may ask for beyond the point clouds.
OPTIONAL_FIELDS = frozenset({"ring", "instance", "pose", "boxes", "occupancy", "cameras"})
BOX_PAD = -1  # box_labels of padding rows


@dataclass
class CameraBatch:
    """One camera of every frame: images (B, H, W, 3) uint8, K (B, 3, 3), LiDAR-to-camera (B, 4, 4)."""

    images: torch.Tensor
    intrinsics: torch.Tensor
    lidar_to_camera: torch.Tensor


@dataclass
class Batch:
    """Frames as tensors; per-point fields are per-sample lists (clouds differ in size)."""

    frame_ids: list[str]
    points: list[torch.Tensor]  # (N_i, 3) float32
    intensity: list[torch.Tensor]  # (N_i,) float32
    semantic: list[torch.Tensor]  # (N_i,) int64, taxonomy.IGNORE_INDEX where unlabelled
    origins: list[torch.Tensor]  # (3,) sensor origin of each frame
    ring: list[torch.Tensor] | None = None  # (N_i,) int64, -1 where unknown
    instance: list[torch.Tensor] | None = None  # (N_i,) int64, 0 = none
    pose: torch.Tensor | None = None  # (B, 4, 4) float64 LiDAR-to-world
    boxes: torch.Tensor | None = None  # (B, M, 7) float32, zero rows as padding
    box_labels: torch.Tensor | None = None  # (B, M) int64, BOX_PAD on padding rows
    box_velocity: torch.Tensor | None = None  # (B, M, 2) float32, NaN where the dataset has none
    # Per sample, what a detection evaluation reads of each box (frame.box_annotations: the source's
    # class names, attributes, point counts), the ego origin (B, 3) and the bicycle racks (K_i, 7).
    box_annotations: list[BoxAnnotations] | None = None
    ego_origins: torch.Tensor | None = None
    bicycle_racks: list[torch.Tensor] | None = None
    occupancy: torch.Tensor | None = None  # (B, X, Y, Z) uint8 semantic occupancy
    occupancy_grid: dict | None = None  # {"range", "voxel_size"} shared by the batch
    cameras: dict[str, CameraBatch] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.points)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Batch":
        return _map_tensors(self, lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "Batch":
        """Called by the DataLoader's pin-memory thread on CUDA, for fast host-to-device copies."""
        return _map_tensors(self, torch.Tensor.pin_memory)


def _map_tensors(obj, fn):
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, list):
        return [_map_tensors(item, fn) for item in obj]
    if isinstance(obj, dict):
        return {key: _map_tensors(value, fn) for key, value in obj.items()}
    if dataclasses.is_dataclass(obj):
        return dataclasses.replace(obj, **{f.name: _map_tensors(getattr(obj, f.name), fn)
                                           for f in dataclasses.fields(obj)})
    return obj


def check_needs(needs: frozenset[str] | set[str], who: str) -> frozenset[str]:
    unknown = sorted(set(needs) - OPTIONAL_FIELDS)
    if unknown:
        raise ValueError(f"{who} asks for unknown batch fields {unknown}; known: {sorted(OPTIONAL_FIELDS)}")
    return frozenset(needs)


def subsample(frame: Frame, max_points: int, rng: np.random.Generator) -> Frame:
    """At most ``max_points`` points of the frame, drawn without replacement (order kept)."""
    if frame.num_points <= max_points:
        return frame
    keep = np.sort(rng.choice(frame.num_points, max_points, replace=False))
    per_point = {name: getattr(frame, name)[keep] for name in ("points", "intensity", "ring", "semantic", "instance")}
    return dataclasses.replace(frame, **per_point)


def collate(frames: list[tuple[str, Frame]], needs: frozenset[str] = frozenset(),
            source: Path | str | None = None) -> Batch:
    """Stack (frame id, frame) pairs into a Batch with the requested optional fields."""
    ids = [frame_id for frame_id, _ in frames]
    frames_only = [frame for _, frame in frames]

    def per_point(name: str, dtype=None) -> list[torch.Tensor]:
        return [torch.from_numpy(np.ascontiguousarray(getattr(f, name), dtype=dtype)) for f in frames_only]

    batch = Batch(
        frame_ids=ids,
        points=per_point("points", np.float32),
        intensity=per_point("intensity", np.float32),
        semantic=per_point("semantic", np.int64),
        origins=[torch.from_numpy(np.asarray(f.sensor_origin, dtype=np.float32)) for f in frames_only],
    )
    if "ring" in needs:
        batch.ring = per_point("ring", np.int64)
    if "instance" in needs:
        batch.instance = per_point("instance", np.int64)
    if "pose" in needs:
        batch.pose = torch.from_numpy(np.stack([f.pose for f in frames_only]).astype(np.float64))
    if "boxes" in needs:
        _stack_boxes(batch, frames_only)
    if "occupancy" in needs:
        _stack_occupancy(batch, frames, source)
    if "cameras" in needs:
        _stack_cameras(batch, frames, source)
    return batch


def _stack_boxes(batch: Batch, frames: list[Frame]) -> None:
    most = max((f.boxes.shape[0] for f in frames), default=0)
    boxes = np.zeros((len(frames), most, 7), np.float32)
    labels = np.full((len(frames), most), BOX_PAD, np.int64)
    velocity = np.full((len(frames), most, 2), np.nan, np.float32)
    for row, frame in enumerate(frames):
        count = frame.boxes.shape[0]
        boxes[row, :count] = frame.boxes
        labels[row, :count] = frame.box_labels
        if "box_velocity" in frame.extras:
            velocity[row, :count] = frame.extras["box_velocity"]
    batch.boxes, batch.box_labels = torch.from_numpy(boxes), torch.from_numpy(labels)
    batch.box_velocity = torch.from_numpy(velocity)
    batch.box_annotations = [box_annotations(frame) for frame in frames]
    batch.ego_origins = torch.from_numpy(np.stack([ego_origin(frame) for frame in frames]).astype(np.float32))
    batch.bicycle_racks = [torch.from_numpy(bicycle_racks(frame)) for frame in frames]


def _stack_occupancy(batch: Batch, frames: list[tuple[str, Frame]], source) -> None:
    grids = []
    for frame_id, frame in frames:
        grid = occupancy_grid(frame)
        if grid is None:
            raise ValueError(f"{source or 'dataset'}: frame {frame_id!r} has no semantic occupancy, "
                             "which this run needs (datasets.<name>.occupancy)")
        grids.append(grid)
    spec = {"range": list(grids[0].point_range), "voxel_size": list(grids[0].voxel_size)}
    for (frame_id, _), grid in zip(frames, grids):
        if [list(grid.point_range), list(grid.voxel_size)] != [spec["range"], spec["voxel_size"]]:
            raise ValueError(f"{source or 'dataset'}: frame {frame_id!r} has occupancy range {list(grid.point_range)}"
                             f" / voxel {list(grid.voxel_size)}, frame {frames[0][0]!r} {spec['range']} / "
                             f"{spec['voxel_size']}: one batch needs one grid")
    batch.occupancy = torch.from_numpy(np.stack([grid.labels for grid in grids]))
    batch.occupancy_grid = spec


def _stack_cameras(batch: Batch, frames: list[tuple[str, Frame]], source) -> None:
    per_frame = [cameras(frame) for _, frame in frames]
    names = list(per_frame[0])
    for (frame_id, _), found in zip(frames, per_frame):
        if not found or list(found) != names:
            raise ValueError(f"{source or 'dataset'}: frame {frame_id!r} has cameras {list(found)}, expected "
                             f"{names or 'at least one'} (this run needs camera images)")
    for name in names:
        batch.cameras[name] = CameraBatch(
            images=torch.from_numpy(np.stack([found[name].image for found in per_frame])),
            intrinsics=torch.from_numpy(np.stack([found[name].intrinsics for found in per_frame])),
            lidar_to_camera=torch.from_numpy(np.stack([found[name].lidar_to_camera for found in per_frame])),
        )
