"""Global training augmentations, applied identically to everything geometric in a frame.

The usual LiDAR augmentations (random flips, rotation about z, global scaling,
a small translation) are only sound when the labels move with the points: a
box that keeps its yaw while its points rotate, or an occupancy grid that stays
put, teaches the model wrong geometry. So one sampled ``Transform`` (a
similarity transform: flip, then rotate, then scale, then translate) is applied
to points, sensor and ego origin, boxes, bicycle racks, box velocities and the
occupancy labels, and the calibration that relates the frame to the outside world
(camera extrinsics, pose) is updated by its inverse, so images and other frames
of the sequence still line up. Per-point labels and attributes are left as they are, and so are
extras this module does not know (they are copied unchanged).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from occbench.config import from_settings
from occbench.data.frame import (
    Frame,
    FrameFormatError,
    OccupancyGrid,
    bicycle_racks,
    cameras,
    ego_origin,
    occupancy_grid,
    set_occupancy,
)
from occbench.data.taxonomy import IGNORE_INDEX


@dataclass(frozen=True)
class Transform:
    """One sampled augmentation: p' = scale * R(rotation) @ F @ p + translation.

    ``flip_x`` is a flip along the x axis (y -> -y), ``flip_y`` one along the y
    axis (x -> -x); ``rotation`` is in radians about z. The transform is kept
    as these scalars, the matrix derived from them, so boxes turn by exactly
    ``rotation`` (no atan2 round trip) and a reflection is explicit instead of
    hidden in the sign of a determinant.
    """

    rotation: float = 0.0
    scale: float = 1.0
    flip_x: bool = False
    flip_y: bool = False
    translation: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError(f"Transform scale must be positive, got {self.scale}")
        if len(self.translation) != 3:
            raise ValueError(f"Transform translation needs 3 values, got {self.translation}")

    @property
    def linear(self) -> np.ndarray:
        """The 3x3 part: scale * rotation @ flip (z is only scaled)."""
        cos, sin = math.cos(self.rotation), math.sin(self.rotation)
        flip = np.diag([-1.0 if self.flip_y else 1.0, -1.0 if self.flip_x else 1.0, 1.0])
        rotation = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
        return self.scale * rotation @ flip

    @property
    def matrix(self) -> np.ndarray:
        """The homogeneous 4x4 matrix mapping original to augmented frame coordinates."""
        matrix = np.eye(4)
        matrix[:3, :3] = self.linear
        matrix[:3, 3] = self.translation
        return matrix

    @property
    def inverse_matrix(self) -> np.ndarray:
        """The exact inverse of ``matrix``: the linear part is scale times an orthogonal matrix."""
        inverse_linear = self.linear.T / self.scale**2
        inverse = np.eye(4)
        inverse[:3, :3] = inverse_linear
        inverse[:3, 3] = -inverse_linear @ np.asarray(self.translation, dtype=np.float64)
        return inverse

    def transform_points(self, points: np.ndarray) -> np.ndarray:
        """Augmented coordinates (float64) of ``points`` (N, 3)."""
        return np.asarray(points, np.float64) @ self.linear.T + np.asarray(self.translation)

    def transform_yaw(self, yaw: np.ndarray) -> np.ndarray:
        """Yaw after the transform, in [-pi, pi).

        A flip mirrors the heading vector (cos, sin): y -> -y gives -yaw, x -> -x
        gives pi - yaw; a box is symmetric about its own axes, so the mirrored
        heading with the same dimensions is exactly the mirrored box.
        """
        yaw = np.asarray(yaw, np.float64)
        if self.flip_x:
            yaw = -yaw
        if self.flip_y:
            yaw = np.pi - yaw
        yaw = yaw + self.rotation
        # Wrap only what is out of range, so an in-range yaw keeps every bit.
        inside = (yaw >= -np.pi) & (yaw < np.pi)
        return np.where(inside, yaw, np.mod(yaw + np.pi, 2 * np.pi) - np.pi)


@dataclass(frozen=True)
class GlobalAugmentation:
    """Settings of the global augmentation and the sampler of its transforms.

    The defaults change nothing: a run augments only what params.yaml asks for.
    """

    rotation_deg: float = 0.0  # rotation about z, uniform in [-rotation_deg, rotation_deg]
    flip_x: bool = False  # flip along the x axis (y -> -y) with p = 0.5
    flip_y: bool = False  # flip along the y axis (x -> -x) with p = 0.5
    scale_range: tuple[float, float] = (1.0, 1.0)  # global scale, uniform in [s0, s1]
    # normal, metres per axis (one number: the same for all axes)
    translation_std: tuple[float, float, float] | float = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        # YAML gives lists and may give one number for all axes: store tuples of floats.
        std = self.translation_std
        std = [std] * 3 if np.isscalar(std) else std
        object.__setattr__(self, "translation_std", tuple(float(v) for v in std))
        object.__setattr__(self, "scale_range", tuple(float(v) for v in self.scale_range))
        object.__setattr__(self, "rotation_deg", float(self.rotation_deg))
        problems = [
            f"{name} must be true or false, got {getattr(self, name)!r}"
            for name in ("flip_x", "flip_y")
            if not isinstance(getattr(self, name), bool)
        ]
        if not 0 <= self.rotation_deg <= 180:
            problems.append(f"rotation_deg must be in [0, 180], got {self.rotation_deg}")
        if len(self.scale_range) != 2 or not 0 < self.scale_range[0] <= self.scale_range[1]:
            problems.append(
                f"scale_range must be [s0, s1] with 0 < s0 <= s1, got {self.scale_range}"
            )
        if len(self.translation_std) != 3 or min(self.translation_std) < 0:
            problems.append(
                f"translation_std must be 3 non-negative values, got {self.translation_std}"
            )
        if problems:
            raise ValueError("augmentation settings: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GlobalAugmentation:
        return from_settings(cls, d, "augmentation")

    def sample(self, rng: np.random.Generator) -> Transform:
        """Draw one transform.

        Every draw is made whatever the settings, so turning one augmentation on
        or off does not change the values the others draw for the same seed.
        """
        flips = rng.random(2)
        rotation = math.radians(self.rotation_deg) * rng.uniform(-1.0, 1.0)
        s0, s1 = self.scale_range
        scale = s0 + (s1 - s0) * rng.random()
        translation = rng.standard_normal(3) * np.asarray(self.translation_std)
        return Transform(
            rotation=float(rotation),
            scale=float(scale),
            flip_x=bool(self.flip_x and flips[0] < 0.5),
            flip_y=bool(self.flip_y and flips[1] < 0.5),
            translation=tuple(float(v) for v in translation),
        )

    def apply(self, frame: Frame, transform: Transform) -> Frame:
        """A new frame with ``transform`` applied; ``frame`` itself is not modified."""
        return apply_transform(frame, transform)

    def __call__(self, frame: Frame, rng: np.random.Generator) -> Frame:
        return apply_transform(frame, self.sample(rng))


def apply_transform(frame: Frame, transform: Transform) -> Frame:
    """``frame`` with ``transform`` applied to its geometry (see the module docstring).

    The new pose and camera extrinsics include the scale and any reflection, so
    they are similarity transforms, not rigid ones: invert them with
    ``np.linalg.inv``, not by transposing the rotation.
    """
    velocity = frame.extras.get("box_velocity")
    if velocity is not None and velocity.shape != (len(frame.boxes), 2):
        raise FrameFormatError(
            f"{_describe(frame)}: box_velocity has shape {velocity.shape}, "
            f"expected ({len(frame.boxes)}, 2)"
        )
    inverse = transform.inverse_matrix
    augmented = Frame(
        points=transform.transform_points(frame.points),
        intensity=frame.intensity.copy(),
        ring=frame.ring.copy(),
        semantic=frame.semantic.copy(),
        instance=frame.instance.copy(),
        boxes=_transform_boxes(frame.boxes, transform),
        box_labels=frame.box_labels.copy(),
        # pose' @ (A p) == pose @ p: aggregation across frames still lines up.
        pose=frame.pose @ inverse,
        sensor_origin=transform.transform_points(frame.sensor_origin[None])[0],
        meta=copy.deepcopy(frame.meta),
    )
    if velocity is not None:
        # Velocities are differences of positions: linear part only, no translation.
        augmented.extras["box_velocity"] = (
            velocity.astype(np.float64) @ transform.linear[:2, :2].T
        ).astype(velocity.dtype)
    if "ego_origin" in frame.extras:
        augmented.extras["ego_origin"] = transform.transform_points(ego_origin(frame)[None])[0]
    if "bicycle_racks" in frame.extras:
        augmented.extras["bicycle_racks"] = _transform_boxes(bicycle_racks(frame), transform).astype(np.float32)
    grid = occupancy_grid(frame)
    if grid is not None:
        set_occupancy(augmented, resample_occupancy(grid, transform))
    for name, camera in cameras(frame).items():
        # Images and intrinsics stay: only the frame's coordinates moved.
        augmented.extras[f"lidar_to_camera_{name}"] = camera.lidar_to_camera @ inverse
    # Everything else is copied, so editing the new frame never reaches the input.
    for name, value in frame.extras.items():
        if name not in augmented.extras:
            augmented.extras[name] = value.copy()
    return augmented


def _transform_boxes(boxes: np.ndarray, transform: Transform) -> np.ndarray:
    """Boxes (M, 7) moved, scaled and turned with the points, in float64."""
    boxes = np.asarray(boxes, np.float64).copy()
    if len(boxes):
        boxes[:, :3] = transform.transform_points(boxes[:, :3])
        boxes[:, 3:6] *= transform.scale
        boxes[:, 6] = _float32_yaw(transform.transform_yaw(boxes[:, 6]))
    return boxes


def resample_occupancy(grid: OccupancyGrid, transform: Transform) -> OccupancyGrid:
    """The grid's labels seen through ``transform``, on the same range and voxel size.

    Each output voxel takes the label of the source voxel its centre maps back to
    (nearest neighbour), IGNORE_INDEX where that lies outside the source grid.
    Voxel centres map onto voxel centres under flips of a grid symmetric about
    the origin in x and y, and under quarter turns too when it is square: there
    the result is exact.
    The transform rotates about z only, so x, y and z resample separately: the
    work is one (X, Y) map and one Z map, not X*Y*Z matrix products.
    """
    inverse = transform.inverse_matrix
    low = np.asarray(grid.point_range[:3], np.float64)
    size = np.asarray(grid.voxel_size, np.float64)
    shape = grid.labels.shape
    centre_x, centre_y, centre_z = (
        low[axis] + (np.arange(shape[axis]) + 0.5) * size[axis] for axis in range(3)
    )
    cx, cy = np.meshgrid(centre_x, centre_y, indexing="ij")
    source_x = inverse[0, 0] * cx + inverse[0, 1] * cy + inverse[0, 3]
    source_y = inverse[1, 0] * cx + inverse[1, 1] * cy + inverse[1, 3]
    source_z = inverse[2, 2] * centre_z + inverse[2, 3]
    ix = np.floor((source_x - low[0]) / size[0]).astype(np.int64)
    iy = np.floor((source_y - low[1]) / size[1]).astype(np.int64)
    iz = np.floor((source_z - low[2]) / size[2]).astype(np.int64)
    inside_xy = (ix >= 0) & (ix < shape[0]) & (iy >= 0) & (iy < shape[1])
    inside_z = (iz >= 0) & (iz < shape[2])
    # Resample z first, then gather whole z columns by flat (x, y) index: copying
    # contiguous columns is ~4x faster than one three-index gather.
    columns = np.asarray(grid.labels, np.uint8)[:, :, np.clip(iz, 0, shape[2] - 1)]
    flat_xy = np.clip(ix, 0, shape[0] - 1) * shape[1] + np.clip(iy, 0, shape[1] - 1)
    labels = columns.reshape(shape[0] * shape[1], shape[2])[flat_xy]
    labels[~inside_xy] = IGNORE_INDEX
    labels[:, :, ~inside_z] = IGNORE_INDEX
    return OccupancyGrid(labels, grid.point_range, grid.voxel_size)


def _float32_yaw(yaw: np.ndarray) -> np.ndarray:
    """``yaw`` as the float32 boxes store it, still in [-pi, pi).

    float32(-pi) lies just below -pi and float32 rounding can carry a yaw just
    below pi up to above it; both mean a heading of -pi, stored as the nearest
    float32 inside the range.
    """
    stored = np.asarray(yaw).astype(np.float32)
    wide = stored.astype(np.float64)  # a float32 array would compare against float32(pi)
    outside = (wide < -np.pi) | (wide >= np.pi)
    stored[outside] = np.nextafter(np.float32(-np.pi), np.float32(0))
    return stored


def _describe(frame: Frame) -> str:
    """Name a frame in errors: augmentation sees frames, not the files they came from."""
    meta = frame.meta
    return f"frame {meta.get('dataset', '?')}/{meta.get('sequence', '?')}/{meta.get('index', '?')}"
