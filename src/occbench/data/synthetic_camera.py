"""Pinhole cameras for the synthetic world: ray-cast RGB images with exact calibration.

Each pixel gets one ray through its centre: pixel (row j, column i) covers
[i, i + 1) x [j, j + 1) in image coordinates, so its ray goes through
(i + 0.5, j + 0.5), and ``frame.Camera.project`` of the surface that ray hits
lands back inside that pixel. The intrinsics are square-pixel (fx = fy, from
the horizontal field of view) with the principal point at the image centre.

Camera placement is given relative to the LiDAR: ``position`` in LiDAR
coordinates, ``yaw_deg`` turning the optical axis left from the LiDAR's x axis
and ``pitch_deg`` raising it (negative looks down). The image x axis stays
horizontal (no roll); ``lidar_to_camera`` uses the OpenCV axes (x right,
y down, z forward), as the frame format requires.

Shading is deliberately simple and stable, so colour tells the class apart:
base colour of the hit's class, scaled by its material (the primitive's
reflectivity) and by the light: ambient, plus Lambert from a fixed sun
direction on the true surface normal, plus a fill light along the view ray
(the |cos incidence| that ``raycast.trace`` returns). There are no shadows.
Rays that hit nothing get a sky gradient from horizon to zenith.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from occbench.config import from_settings
from occbench.data.frame import Camera
from occbench.data.raycast import Primitives, intersect_ground, trace
from occbench.data.taxonomy import CLASSES

if TYPE_CHECKING:
    from occbench.data.synthetic import Scene

# RGB base colour of each unified class: plausible, but of distinct hue so classes stay apart.
_COLOUR_OF = {
    "road": (90, 90, 90),
    "sidewalk": (200, 180, 150),
    "other_ground": (160, 100, 170),
    "terrain": (120, 160, 50),
    "building": (200, 110, 80),
    "barrier": (240, 140, 20),
    "vegetation": (40, 120, 50),
    "pole": (120, 110, 190),
    "car": (200, 40, 45),
    "truck": (50, 90, 205),
    "pedestrian": (215, 60, 200),
    "cyclist": (40, 200, 195),
}
CLASS_COLOURS = np.array([_COLOUR_OF[name] for name in CLASSES], dtype=np.float64)
SKY_HORIZON = np.array([180.0, 205.0, 240.0])
SKY_ZENITH = np.array([95.0, 145.0, 215.0])
# Unit vector towards the sun, in world coordinates.
SUN = np.array([0.45, 0.3, 0.84]) / np.linalg.norm([0.45, 0.3, 0.84])
AMBIENT, SUNLIGHT, FILL = 0.35, 0.45, 0.2  # sum to 1: a lit surface never saturates
# A primitive's colour is scaled by MATERIAL_BASE + (1 - MATERIAL_BASE) * reflectivity, so glass
# reads darker than paint; the ground's class colour is used as it is.
MATERIAL_BASE = 0.6


@dataclass(frozen=True)
class CameraConfig:
    """One pinhole camera of the rig, mounted relative to the LiDAR."""

    name: str
    width: int
    height: int
    hfov_deg: float
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    yaw_deg: float = 0.0
    pitch_deg: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "position", tuple(float(v) for v in self.position))
        problems = []
        if not self.name.replace("_", "").isalnum():
            problems.append("name must be letters, digits and '_' (it names frame fields)")
        if self.width < 1 or self.height < 1:
            problems.append("width and height must be >= 1")
        if not 0 < self.hfov_deg < 180:
            problems.append("hfov_deg must be in (0, 180)")
        if len(self.position) != 3:
            problems.append("position must be (x, y, z)")
        if not -90 < self.pitch_deg < 90:
            problems.append("pitch_deg must be in (-90, 90)")
        if problems:
            raise ValueError(f"camera config {self}: {'; '.join(problems)}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CameraConfig:
        return from_settings(cls, d, "camera")

    def intrinsics(self) -> np.ndarray:
        """K (3, 3): square pixels, principal point at the image centre."""
        focal = self.width / 2 / np.tan(np.radians(self.hfov_deg) / 2)
        return np.array([[focal, 0, self.width / 2], [0, focal, self.height / 2], [0, 0, 1.0]])

    def lidar_to_camera(self) -> np.ndarray:
        """LiDAR -> camera (OpenCV axes) as a (4, 4) rigid transform."""
        yaw, pitch = np.radians(self.yaw_deg), np.radians(self.pitch_deg)
        forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
        right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
        rotation = np.stack([right, np.cross(forward, right), forward])  # rows: camera axes
        transform = np.eye(4)
        transform[:3, :3] = rotation
        transform[:3, 3] = -rotation @ np.asarray(self.position)
        return transform



def _box_normals(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Outward normal of the face each point lies on: the axis where it is furthest out."""
    cos, sin = np.cos(params[:, 6]), np.sin(params[:, 6])
    dx, dy = points[:, 0] - params[:, 0], points[:, 1] - params[:, 1]
    local = np.stack([cos * dx + sin * dy, -sin * dx + cos * dy, points[:, 2] - params[:, 2]], 1)
    axis = np.argmax(np.abs(local) / params[:, 3:6], axis=1)
    normal = np.zeros_like(local)
    rows = np.arange(len(local))
    normal[rows, axis] = np.sign(local[rows, axis])
    return np.stack([cos * normal[:, 0] - sin * normal[:, 1],
                     sin * normal[:, 0] + cos * normal[:, 1], normal[:, 2]], 1)


def _cylinder_normals(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """Radial on the side wall, vertical on the caps (whichever the point is nearer to)."""
    radial = points[:, :2] - params[:, :2]
    distance = np.maximum(np.linalg.norm(radial, axis=1), 1e-12)
    middle, half = (params[:, 2] + params[:, 3]) / 2, (params[:, 3] - params[:, 2]) / 2
    height = points[:, 2] - middle
    on_side = distance / params[:, 4] >= np.abs(height) / half
    side = np.column_stack([radial / distance[:, None], np.zeros(len(points))])
    cap = np.zeros_like(side)
    cap[:, 2] = np.sign(height)
    return np.where(on_side[:, None], side, cap)


def _spheroid_normals(points: np.ndarray, params: np.ndarray) -> np.ndarray:
    """The gradient of |(p - c) / radii|^2."""
    radii = params[:, [3, 3, 4]]
    gradient = (points - params[:, :3]) / radii**2
    return gradient / np.maximum(np.linalg.norm(gradient, axis=1, keepdims=True), 1e-12)


_NORMALS = {"box": _box_normals, "cylinder": _cylinder_normals, "spheroid": _spheroid_normals}


def _shade_hits(scene: Scene, origin: np.ndarray, dirs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Colour (R, 3) of each ray's nearest surface, and whether it hit one.

    ``trace`` reports the hit primitive's instance; tracing copies of the
    primitives whose instance is their running index tells which primitive
    each ray hit, which gives its exact normal.
    """
    tagged, starts, first = [], [], 0
    for group in scene.primitives:
        count = len(group.params)
        tagged.append(Primitives(group.kind, group.params, group.semantic,
                                 np.arange(first, first + count), group.reflectivity))
        starts.append(first)
        first += count
    traced = trace(tagged, origin, dirs)
    which = traced.instance
    ground_range, ground_cos = intersect_ground(origin, dirs)
    on_ground = ground_range < traced.range
    distance = np.where(on_ground, ground_range, traced.range)
    hit = np.isfinite(distance)
    points = origin + np.where(hit, distance, 0.0)[:, None] * dirs

    normal = np.tile([0.0, 0.0, 1.0], (len(dirs), 1))
    semantic = np.zeros(len(dirs), dtype=np.int64)
    material = np.ones(len(dirs))
    semantic[on_ground] = scene.layout.ground_class(points[on_ground, :2])
    on_object = hit & ~on_ground
    for group, start in zip(scene.primitives, starts):
        rows = on_object & (which >= start) & (which < start + len(group.params))
        index = which[rows] - start
        normal[rows] = _NORMALS[group.kind](points[rows], np.asarray(group.params)[index])
        semantic[rows] = np.asarray(group.semantic)[index]
        material[rows] = MATERIAL_BASE + (1 - MATERIAL_BASE) * np.asarray(group.reflectivity)[index]

    cos = np.where(on_ground, ground_cos, traced.cos_incidence)
    light = AMBIENT + SUNLIGHT * np.clip(normal @ SUN, 0.0, None) + FILL * cos
    return CLASS_COLOURS[semantic] * (material * light)[:, None], hit


def render_camera(scene: Scene, lidar_pose: np.ndarray, config: CameraConfig) -> Camera:
    """The image camera ``config`` takes of ``scene`` from the LiDAR at ``lidar_pose``, with its calibration.

    ``scene`` needs ``primitives`` (world coordinates) and ``layout.ground_class``;
    ``lidar_pose`` is the LiDAR-to-world transform. Deterministic.
    """
    pose = np.asarray(lidar_pose, dtype=np.float64)
    if pose.shape != (4, 4):
        raise ValueError(f"camera {config.name!r}: lidar_pose must be 4x4, got shape {pose.shape}")
    intrinsics, lidar_to_camera = config.intrinsics(), config.lidar_to_camera()
    u = np.arange(config.width) + 0.5
    v = np.arange(config.height) + 0.5
    columns, rows = np.meshgrid(u, v, indexing="xy")
    pixels = np.stack([columns, rows, np.ones_like(columns)], -1)
    camera_dirs = pixels.reshape(-1, 3) @ np.linalg.inv(intrinsics).T
    # Camera -> LiDAR -> world on row vectors: d @ R_lidar_to_camera, then @ R_pose^T.
    dirs = camera_dirs @ lidar_to_camera[:3, :3] @ pose[:3, :3].T
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    origin = pose[:3, :3] @ np.asarray(config.position) + pose[:3, 3]

    colour, hit = _shade_hits(scene, origin, dirs)
    elevation = np.clip(dirs[:, 2], 0.0, 1.0)[:, None]
    sky = SKY_HORIZON + (SKY_ZENITH - SKY_HORIZON) * elevation
    colour = np.where(hit[:, None], colour, sky)
    image = np.round(np.clip(colour, 0, 255)).astype(np.uint8).reshape(config.height, config.width, 3)
    return Camera(image=image, intrinsics=intrinsics, lidar_to_camera=lidar_to_camera)
