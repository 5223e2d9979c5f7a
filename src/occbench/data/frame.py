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
    meta          str             JSON: dataset, sequence, index, sensor, num_beams (the
                                  sensor's beam count), format_version, timestamp (s), and
                                  the specs of the optional fields below

Optional arrays (``Frame.extras``)
    box_velocity            float32 (M, 2)  x, y velocity of each box in frame coordinates, m/s;
                                            NaN where unknown (nuScenes: a single annotation)
    box_track_id            int32 (M,)      each box's object, the same id in every frame of the sequence
                                            (>= 1; synthetic: its object, nuScenes: its instance, Waymo:
                                            its label id); occupancy aggregation follows objects by it
    box_names               str (M,)        the source's detection class of each box (nuScenes:
                                            the devkit's 10 classes, '' for a category outside
                                            them), finer than box_labels' unified classes
    box_attributes          str (M,)        the source's attribute of each box, '' for none
    box_lidar_points        int32 (M,)      LiDAR points inside each box, as the source counts them
    box_radar_points        int32 (M,)      radar points inside each box
    ego_origin              float64 (3,)    the ego vehicle's origin (nuScenes: its ego pose) in
                                            frame coordinates; detection ranges are measured from it
    bicycle_racks           float32 (K, 7)  bicycle racks as boxes (x, y, z, dx, dy, dz, yaw):
                                            nuScenes evaluation ignores cycles inside them
    occupancy               uint8 (X, Y, Z) semantic occupancy: unified class id, EMPTY_INDEX for
                                            free space, 255 for unknown; its grid is
                                            meta["occupancy"] = {"range": [x0, y0, z0, x1, y1, z1],
                                            "voxel_size": [dx, dy, dz]} in frame coordinates
    image_<cam>             uint8 (H, W, 3) RGB image of camera <cam>, for each <cam> listed
                                            in meta["cameras"]
    intrinsics_<cam>        float64 (3, 3)  pinhole matrix K of <cam>
    lidar_to_camera_<cam>   float64 (4, 4)  frame (LiDAR) coordinates -> <cam>'s coordinates
                                            (OpenCV: x right, y down, z forward)

The helpers ``occupancy_grid``, ``set_occupancy``, ``cameras``, ``add_camera``,
``box_annotations``, ``set_box_annotations``, ``ego_origin`` and ``bicycle_racks``
read and write these, so no caller spells the field names. Frames without the box
annotations (synthetic, KITTI, Waymo, older frames) read as their unified class
name, no attribute, the frame's points counted in each box and no radar point.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from occbench.data.taxonomy import CLASSES, IGNORE_INDEX, NUM_CLASSES
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


# Optional fields checked whenever present: shape (-1: any length, "M": one per box) and dtype kind.
_OPTIONAL_SHAPES: dict[str, tuple[tuple[int | str, ...], str]] = {
    "box_track_id": (("M",), "i"),
    "box_names": (("M",), "U"),
    "box_attributes": (("M",), "U"),
    "box_lidar_points": (("M",), "i"),
    "box_radar_points": (("M",), "i"),
    "ego_origin": ((3,), "f"),
    "bicycle_racks": ((-1, 7), "f"),
}


# Datasets whose converter keeps the box annotations: their frames without them predate that,
# and read with the defaults they would be scored on the unified classes, not the source's.
_ANNOTATED_DATASETS = frozenset({"nuscenes"})


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
        for name, (shape, kind) in _OPTIONAL_SHAPES.items():
            if name not in self.extras:
                continue
            value = np.asarray(self.extras[name])
            want = tuple(max(m, 0) if size == "M" else size for size in shape)
            if value.ndim != len(want) or any(w not in (-1, got) for w, got in zip(want, value.shape)):
                expected = ", ".join("K" if w == -1 else str(w) for w in want) + ("," if len(want) == 1 else "")
                problems.append(f"{name} has shape {value.shape}, expected ({expected})")
            elif value.dtype.kind != kind and value.size:
                problems.append(f"{name} has dtype {value.dtype}, expected {np.dtype(kind).name}")
        if problems:
            raise FrameFormatError("; ".join(problems))


RIGID_TOLERANCE = 1e-5  # |R^T R - I| a rigid pose may have: KITTI's poses.txt keeps 6 significant digits


def grid_shape(point_range, voxel_size) -> tuple[int, int, int]:
    """Voxels along x, y and z of the grid ``point_range`` [x0, y0, z0, x1, y1, z1] / ``voxel_size``
    (3 sizes or one), rounded to whole numbers."""
    cells = np.subtract(point_range[3:], point_range[:3]) / np.asarray(voxel_size, dtype=np.float64)
    return tuple(int(n) for n in np.round(cells))


def pose_problem(pose: np.ndarray) -> str | None:
    """What keeps the 4 x 4 ``pose`` from being a finite rigid transform (a rotation, no reflection or
    scale, and a translation), or None."""
    if pose.shape != (4, 4) or not np.isfinite(pose).all():
        return f"it is not a finite 4 x 4 matrix (shape {pose.shape})"
    rotation = pose[:3, :3]
    if not np.allclose(rotation.T @ rotation, np.eye(3), atol=RIGID_TOLERANCE) or np.linalg.det(rotation) < 0:
        return f"its rotation part is not a rotation ({rotation.tolist()})"
    if not np.allclose(pose[3], [0, 0, 0, 1]):
        return f"its last row is {pose[3].tolist()}, not [0, 0, 0, 1]"
    return None


@dataclass(frozen=True)
class OccupancyGrid:
    """A semantic voxel grid in frame coordinates; ``labels[i, j, k]`` covers
    [x0 + i dx, x0 + (i + 1) dx) x [y0 + j dy, ...) x [z0 + k dz, ...)."""

    labels: np.ndarray
    point_range: tuple[float, ...]
    voxel_size: tuple[float, ...]

    def __post_init__(self) -> None:
        expected = grid_shape(self.point_range, self.voxel_size)
        if self.labels.ndim != 3 or expected != self.labels.shape:
            raise FrameFormatError(
                f"occupancy has shape {self.labels.shape}, but range {list(self.point_range)} "
                f"and voxel size {list(self.voxel_size)} give {expected}"
            )

    def voxel_of(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Integer voxel coordinates (N, 3) of ``points`` and whether each lies inside the grid."""
        coords = np.floor(
            (points - np.asarray(self.point_range[:3])) / np.asarray(self.voxel_size)
        ).astype(np.int64)
        inside = ((coords >= 0) & (coords < np.array(self.labels.shape))).all(axis=1)
        return coords, inside

    def centres(self) -> np.ndarray:
        """Centre (X, Y, Z, 3) of every voxel."""
        axes = [
            lo + (np.arange(n) + 0.5) * size
            for lo, n, size in zip(self.point_range[:3], self.labels.shape, self.voxel_size)
        ]
        return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)


@dataclass(frozen=True)
class OccupancySpec:
    """The grid of a dataset's occupancy (params.yaml ``occupancy``: range and voxel size), in frame coordinates."""

    point_range: tuple[float, ...]
    voxel_size: tuple[float, ...]

    @classmethod
    def from_dict(cls, d: dict) -> OccupancySpec:
        return cls(tuple(d["range"]), tuple(d["voxel_size"]))

    def unknown_grid(self) -> OccupancyGrid:
        """The grid with every voxel unknown (IGNORE_INDEX)."""
        labels = np.full(grid_shape(self.point_range, self.voxel_size), IGNORE_INDEX, np.uint8)
        return OccupancyGrid(labels, self.point_range, self.voxel_size)


@dataclass(frozen=True)
class Camera:
    image: np.ndarray
    intrinsics: np.ndarray
    lidar_to_camera: np.ndarray

    def project(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Pixel coordinates (N, 2) of frame-coordinate ``points`` and whether each lands in the image."""
        camera = points @ self.lidar_to_camera[:3, :3].T + self.lidar_to_camera[:3, 3]
        depth = camera[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            pixels = (camera @ self.intrinsics.T)[:, :2] / depth[:, None]
        height, width = self.image.shape[:2]
        visible = (depth > 1e-3) & (pixels[:, 0] >= 0) & (pixels[:, 0] < width)
        visible &= (pixels[:, 1] >= 0) & (pixels[:, 1] < height)
        return pixels, visible


def occupancy_grid(frame: Frame) -> OccupancyGrid | None:
    if "occupancy" not in frame.extras:
        return None
    spec = frame.meta.get("occupancy") or {}
    try:
        return OccupancyGrid(frame.extras["occupancy"], tuple(spec["range"]), tuple(spec["voxel_size"]))
    except KeyError as err:
        raise FrameFormatError(f"occupancy has no {err} in meta['occupancy']") from None


def set_occupancy(frame: Frame, grid: OccupancyGrid) -> None:
    frame.extras["occupancy"] = np.asarray(grid.labels, dtype=np.uint8)
    frame.meta["occupancy"] = {
        "range": [float(v) for v in grid.point_range],
        "voxel_size": [float(v) for v in grid.voxel_size],
    }


def cameras(frame: Frame) -> dict[str, Camera]:
    """The frame's cameras by name, in the order of meta["cameras"]."""
    found = {}
    for name in frame.meta.get("cameras", []):
        try:
            found[name] = Camera(
                image=frame.extras[f"image_{name}"],
                intrinsics=frame.extras[f"intrinsics_{name}"],
                lidar_to_camera=frame.extras[f"lidar_to_camera_{name}"],
            )
        except KeyError as err:
            raise FrameFormatError(f"camera {name!r} is listed in meta but has no {err}") from None
    return found


def add_camera(frame: Frame, name: str, camera: Camera) -> None:
    frame.extras[f"image_{name}"] = np.asarray(camera.image, dtype=np.uint8)
    frame.extras[f"intrinsics_{name}"] = np.asarray(camera.intrinsics, dtype=np.float64)
    frame.extras[f"lidar_to_camera_{name}"] = np.asarray(camera.lidar_to_camera, dtype=np.float64)
    frame.meta["cameras"] = [*frame.meta.get("cameras", []), name]


def inside_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(N, M): whether each point (N, 3) lies in each upright box (M, 7), bounds included, in float32."""
    points = np.asarray(points, dtype=np.float32)
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 7)
    offset = [points[:, i : i + 1] - boxes[:, i] for i in range(3)]  # each (N, M)
    cos, sin = np.cos(boxes[:, 6]), np.sin(boxes[:, 6])
    inside = np.abs(offset[0] * cos + offset[1] * sin) <= boxes[:, 3] / 2
    inside &= np.abs(offset[1] * cos - offset[0] * sin) <= boxes[:, 4] / 2
    inside &= np.abs(offset[2]) <= boxes[:, 5] / 2
    return inside


@dataclass(frozen=True)
class BoxAnnotations:
    """What a detection evaluation reads of each box beyond its geometry and unified class
    (nuScenes' devkit evaluates its own classes, attributes, and drops boxes without points)."""

    names: np.ndarray  # (M,) str
    attributes: np.ndarray  # (M,) str, '' for none
    lidar_points: np.ndarray  # (M,) int32
    radar_points: np.ndarray  # (M,) int32

    @property
    def num_points(self) -> np.ndarray:
        """LiDAR plus radar points, the count the devkit filters ground truth on."""
        return self.lidar_points + self.radar_points


def box_annotations(frame: Frame) -> BoxAnnotations:
    """The frame's box annotations; absent fields read as the unified class name, no attribute,
    the frame's points inside each box (sweeps included) and no radar point."""
    count = len(frame.boxes)
    names = frame.extras.get("box_names")
    dataset = frame.meta.get("dataset")
    if names is None and dataset in _ANNOTATED_DATASETS:
        raise FrameFormatError(
            f"frame {dataset}/{frame.meta.get('sequence', '?')}/{frame.meta.get('index', '?')} has no box_names: "
            "it was converted before occbench kept the source's box annotations; convert it again"
        )
    if names is None:
        unknown = np.unique(frame.box_labels[(frame.box_labels < 0) | (frame.box_labels >= NUM_CLASSES)])
        if unknown.size:
            raise FrameFormatError(f"box_labels holds unknown class id(s) {unknown[:5].tolist()}")
        names = np.array(CLASSES)[frame.box_labels]
    lidar = frame.extras.get("box_lidar_points")
    if lidar is None:
        lidar = inside_boxes(frame.points, frame.boxes).sum(axis=0)
    return BoxAnnotations(
        names=np.asarray(names, dtype=str).reshape(count),
        attributes=np.asarray(frame.extras.get("box_attributes", np.full(count, "")), dtype=str).reshape(count),
        lidar_points=np.asarray(lidar, dtype=np.int32).reshape(count),
        radar_points=np.asarray(frame.extras.get("box_radar_points", np.zeros(count)), np.int32).reshape(count),
    )


def set_box_annotations(frame: Frame, annotations: BoxAnnotations) -> None:
    frame.extras["box_names"] = np.asarray(annotations.names, dtype=str)
    frame.extras["box_attributes"] = np.asarray(annotations.attributes, dtype=str)
    frame.extras["box_lidar_points"] = np.asarray(annotations.lidar_points, dtype=np.int32)
    frame.extras["box_radar_points"] = np.asarray(annotations.radar_points, dtype=np.int32)
    frame.validate()


def ego_origin(frame: Frame) -> np.ndarray:
    """Where detection ranges are measured from: the ego origin, else the sensor origin."""
    return np.asarray(frame.extras.get("ego_origin", frame.sensor_origin), dtype=np.float64)


def bicycle_racks(frame: Frame) -> np.ndarray:
    """The frame's bicycle racks (K, 7), none where the source has no such annotation."""
    return np.asarray(frame.extras.get("bicycle_racks", np.zeros((0, 7))), dtype=np.float32)


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
        frame = Frame(**required, meta=meta, extras=data)
    except FrameFormatError as err:
        raise FrameFormatError(f"{path}: {err}") from err
    unknown = np.unique(frame.semantic[(frame.semantic >= NUM_CLASSES) & (frame.semantic != IGNORE_INDEX)])
    if unknown.size:  # a loss would index past its classes with them
        raise FrameFormatError(f"{path}: semantic holds unknown class id(s) {unknown[:5].tolist()} "
                               f"(known: 0-{NUM_CLASSES - 1}, {IGNORE_INDEX} = ignore)")
    return frame
