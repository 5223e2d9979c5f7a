"""The embedded synthetic LiDAR world: streets with traffic, seen by simulated spinning LiDARs.

It makes the whole benchmark runnable without downloading a dataset, with
labels that are exact by construction, and its sensors mimic those of the real
datasets (``SENSOR_PROFILES``) so that cross-sensor transfer can be studied on
it. The steps are kept apart so each can grow on its own:

    build_world(rng, scene_config, sequence_config) -> World   a street and its traffic, for a scene
    World.scene_at(t) -> Scene, World.lidar_pose(t, height)     the world at time t, where the LiDAR is
    observe(scene, lidar_pose, sensor, rng, velocities) -> Frame one sweep: nearest surface, noise, dropout
    generate_frame(seed, scene_index, frame_in_scene, sensor, scene_config, sequence_config) -> Frame

Coordinates. The world has z up and the ground at z = 0; its origin is where
the ego vehicle stands at t = 0. The street is laid out in street coordinates
(u along the main road, v across it) turned by ``StreetLayout.heading``. A
frame is in LiDAR coordinates (x forward along the ego's heading, y left, z
up, the ground at z = -height); its ``pose`` maps them to the world.

Motion. Whatever moves goes straight at a constant velocity, so the world is
an analytic function of time: a worker makes frame k of a scene without making
frames 0..k-1, bit for bit the same in any order. The ego drives along the
main road in a right-hand lane at a per-scene speed (sometimes standing);
other cars, trucks and cyclists drive along their lanes, pedestrians walk along
the sidewalks, parked vehicles stand on parking strips and lots. Objects are
placed so that no two of them (nor the ego) ever overlap during the scene. A
sweep is instantaneous (no rolling-shutter distortion).

Frame extras written besides the required fields (frame.py):
    box_velocity  float32 (M, 2)  velocity over the ground of each box (not relative to
                                  the ego), in LiDAR x, y axes, m/s
    box_track_id  int32   (M,)    the object's id within its scene (>= 1), the same in
                                  every frame of the scene; ids of objects not seen in a
                                  frame are absent from it
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, fields, replace
from functools import lru_cache
from typing import Any, Callable, Sequence

import numpy as np

from occbench.config import from_settings
from occbench.data.frame import Frame, OccupancySpec, add_camera, set_occupancy
from occbench.data.raycast import (
    PARAMS_PER_KIND,
    Primitives,
    bounding_spheres,
    intersect_ground,
    trace,
)
from occbench.data.synthetic_camera import CameraConfig, render_camera
from occbench.data.synthetic_occupancy import semantic_occupancy
from occbench.data.taxonomy import CLASS_ID, CLASSES, THING_CLASSES

# Rough near-infrared reflectivity of the materials the world is made of.
REFLECTIVITY = {
    "asphalt": 0.12,
    "paving": 0.2,
    "concrete": 0.35,
    "grass": 0.45,
    "facade": 0.3,
    "bark": 0.25,
    "foliage": 0.5,
    "metal": 0.6,
    "car_paint": 0.55,
    "glass": 0.1,
    "fabric": 0.3,
    "skin": 0.4,
    "cone_plastic": 0.8,  # traffic cones carry retro-reflective bands
}
GROUND_MATERIAL = {"road": "asphalt", "sidewalk": "concrete", "other_ground": "paving",
                   "terrain": "grass"}
# Indexed by class id, to look up many ground points at once.
GROUND_REFLECTIVITY = np.array(
    [REFLECTIVITY[GROUND_MATERIAL[name]] if name in GROUND_MATERIAL else 0.0 for name in CLASSES]
)
# Where two streets' ground classes meet (a crossing), the lower rank wins.
_GROUND_RANK = np.full(len(CLASSES), len(CLASSES), dtype=np.int64)
for _rank, _name in enumerate(("road", "sidewalk", "other_ground", "terrain")):
    _GROUND_RANK[CLASS_ID[_name]] = _rank
INTENSITY_NOISE_STD = 0.02
# Street rectangle (u_min, v_min, u_max, v_max) of the vehicle carrying the sensor at t = 0.
EGO_FOOTPRINT = np.array([-2.5, -1.2, 2.5, 1.2])
PLACEMENT_TRIES = 30
# Nothing comes closer than this to anything else (or to the ego) at any time of a scene.
CLEARANCE = 0.3
# Probability that the ego stands still for a whole scene.
EGO_STOPPED = 0.2


@dataclass(frozen=True)
class SensorProfile:
    """A spinning LiDAR: one ring of returns per beam, a fixed azimuth step.

    Beams are evenly spaced from ``fov_down_deg`` to ``fov_up_deg`` unless
    ``elevations_deg`` lists every beam's elevation (lowest first), as for a
    sensor built from blocks of lasers with different spacing. ``name`` is what
    frames record as their sensor.
    """

    beams: int
    fov_up_deg: float
    fov_down_deg: float
    azimuth_step_deg: float
    min_range: float
    max_range: float
    range_noise_std: float
    dropout: float
    height: float
    name: str = "custom"
    elevations_deg: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if self.elevations_deg is not None:
            object.__setattr__(self, "elevations_deg", tuple(float(e) for e in self.elevations_deg))
        problems = []
        if self.beams < 1 or self.fov_down_deg > self.fov_up_deg or self.azimuth_step_deg <= 0:
            problems.append("needs beams >= 1, fov_down_deg <= fov_up_deg, azimuth_step_deg > 0")
        if not 0 <= self.min_range < self.max_range or not 0 <= self.dropout < 1:
            problems.append("needs 0 <= min_range < max_range and 0 <= dropout < 1")
        if self.range_noise_std < 0 or self.height <= 0:
            problems.append("needs range_noise_std >= 0 and height > 0")
        table = self.elevations_deg
        if table is not None and (
            len(table) != self.beams
            or np.any(np.diff(table) <= 0)
            or not np.isclose(table[0], self.fov_down_deg)
            or not np.isclose(table[-1], self.fov_up_deg)
        ):
            problems.append(
                f"elevations_deg must list one elevation per beam ({self.beams}), increasing from "
                f"fov_down_deg to fov_up_deg; when overriding beams or the field of view of a "
                f"profile with a table, give elevations_deg too (or null for even spacing)"
            )
        if problems:
            raise ValueError(f"sensor {self.name!r}: " + "; ".join(problems))

    def elevations(self) -> np.ndarray:
        """Elevation of each beam in radians (beams,), lowest first."""
        if self.elevations_deg is not None:
            return np.radians(self.elevations_deg)
        return np.radians(np.linspace(self.fov_down_deg, self.fov_up_deg, self.beams))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensorProfile:
        """``{"profile": <name>, <field>: <override>, ...}`` or every field spelled out (a custom sensor).

        Overrides keep the profile's name, so frames still say which real sensor they mimic.
        """
        d = dict(d)
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names - {"profile"})
        if unknown:
            raise ValueError(f"sensor settings: unknown key(s) {unknown}; known: profile, {sorted(names)}")
        if "profile" not in d:
            missing = sorted(f.name for f in fields(cls) if f.default is MISSING and f.name not in d)
            if missing:
                raise ValueError(f"sensor settings: no 'profile' and no {missing} for a custom sensor")
            return cls(**d)
        profile = d.pop("profile")
        if profile not in SENSOR_PROFILES:
            raise ValueError(f"unknown sensor profile {profile!r}; known: {sorted(SENSOR_PROFILES)}")
        return replace(SENSOR_PROFILES[profile], **d)


def _hdl64_elevations() -> tuple[float, ...]:
    """HDL-64E: an upper block of 32 lasers from -8.33 to +2 deg (~1/3 deg apart) and a lower
    block of 32 from -8.83 to -24.8 deg (~1/2 deg apart), after the HDL-64E S2 manual."""
    lower = np.linspace(-24.8, -8.83, 32)
    upper = np.linspace(-8.33, 2.0, 32)
    return tuple(np.round(np.concatenate([lower, upper]), 4).tolist())


# The sensors of the real datasets, approximately. The 64-beam profiles scan coarser in azimuth than
# the real sensors (the real step is given) to keep a frame at ~110k points (~2.5 MB on disk) and its
# generation near 0.1 s; override azimuth_step_deg for the real density. Noise and dropout are rough
# choices that keep the sensors' ordering (the HDL-32E is the noisiest and loses the most returns),
# not measurements.
SENSOR_PROFILES: dict[str, SensorProfile] = {
    # nuScenes LIDAR_TOP, a Velodyne HDL-32E. The nuScenes paper (Caesar et al., CVPR 2020): 32
    # beams, +10 to -30 deg, <= 70 m, +-2 cm, 20 Hz; ~0.33 deg azimuth at 20 Hz (HDL-32E spec
    # sheet: 0.1-0.4 deg), the real step here; mounted ~1.84 m above the ground (LIDAR_TOP
    # calibration).
    "nuscenes32": SensorProfile(
        name="nuscenes32", beams=32, fov_up_deg=10.0, fov_down_deg=-30.0, azimuth_step_deg=0.33,
        min_range=1.0, max_range=70.0, range_noise_std=0.03, dropout=0.1, height=1.84,
    ),
    # Waymo Open Dataset TOP LiDAR (Sun et al., CVPR 2020: 64 beams, +2.4 to -17.6 deg, 75 m;
    # range images 2650 columns wide, i.e. 0.136 deg azimuth), roughly 2.1 m above the ground.
    # Azimuth step 0.2 deg (real 0.136).
    "waymo64": SensorProfile(
        name="waymo64", beams=64, fov_up_deg=2.4, fov_down_deg=-17.6, azimuth_step_deg=0.2,
        min_range=1.0, max_range=75.0, range_noise_std=0.01, dropout=0.02, height=2.1,
    ),
    # KITTI / SemanticKITTI, a Velodyne HDL-64E (spec sheet: +2 to -24.8 deg in two blocks, 120 m,
    # < 2 cm; ~0.08 deg azimuth at 10 Hz) mounted 1.73 m above the ground (Geiger et al., IJRR
    # 2013). Azimuth step 0.2 deg (real ~0.08).
    "kitti64": SensorProfile(
        name="kitti64", beams=64, fov_up_deg=2.0, fov_down_deg=-24.8, azimuth_step_deg=0.2,
        min_range=1.0, max_range=120.0, range_noise_std=0.02, dropout=0.05, height=1.73,
        elevations_deg=_hdl64_elevations(),
    ),
}


@dataclass(frozen=True)
class SceneConfig:
    """How big the world is and how many objects of each kind it tries to place.

    Counts are per 2 x ``extent`` metres of street, the stretch one frame sees: a
    scene whose ego drives further gets a longer street with proportionally more
    objects. ``extent`` is also how far the world reaches to either side of the
    main road. The counts of classes added later have defaults, so scene settings
    written before them still build a complete street.
    """

    extent: float
    num_buildings: int
    num_trees: int
    num_poles: int
    num_cars: int
    num_pedestrians: int
    num_cyclists: int
    num_trucks: int = 3
    num_barriers: int = 6

    def __post_init__(self) -> None:
        counts = [getattr(self, f.name) for f in fields(self) if f.name.startswith("num_")]
        if self.extent <= 0 or min(counts) < 0:
            raise ValueError(f"{self}: needs extent > 0 and non-negative counts")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneConfig:
        return from_settings(cls, d, "scene")


@dataclass(frozen=True)
class SequenceConfig:
    """How a scene unfolds in time: its frames, and how much moves in it.

    ``moving_fraction`` is the share of cars, trucks, cyclists and pedestrians
    that move; the ego's speed is drawn per scene up to ``ego_max_speed`` (m/s).
    """

    frames_per_scene: int
    frame_interval: float
    ego_max_speed: float
    moving_fraction: float

    def __post_init__(self) -> None:
        if self.frames_per_scene < 1 or self.frame_interval <= 0 or self.ego_max_speed < 0:
            raise ValueError(f"{self}: needs frames_per_scene >= 1, frame_interval > 0, "
                             f"ego_max_speed >= 0")
        if not 0 <= self.moving_fraction <= 1:
            raise ValueError(f"{self}: needs 0 <= moving_fraction <= 1")

    @property
    def duration(self) -> float:
        """Seconds from the first frame of a scene to its last."""
        return (self.frames_per_scene - 1) * self.frame_interval


# A snapshot: one frame, nothing moves.
STILL = SequenceConfig(frames_per_scene=1, frame_interval=1.0, ego_max_speed=0.0, moving_fraction=0.0)


@dataclass(frozen=True)
class StreetLayout:
    """A straight main road through the ego's start, optionally one crossing street.

    Street coordinates (u along the main road, v across it) are the world
    coordinates rotated by ``heading``; the ego starts at u = v = 0 and drives
    towards +u. Beside each side of the main road lies a parking strip
    (``parking_width[0]`` on the right, -v side, ``[1]`` on the left; 0 = none),
    then the sidewalk; ``lots`` are street rectangles (u0, v0, u1, v1) of
    parking lots (other_ground) where the ground would otherwise be terrain.
    """

    heading: float
    main_offset: float  # v of the main road's centre line
    cross_at: float | None  # u of the crossing street's centre line, None = no crossing
    road_half_width: float
    sidewalk_width: float
    lanes: int  # per direction
    parking_width: tuple[float, float] = (0.0, 0.0)
    lots: tuple[tuple[float, float, float, float], ...] = ()

    def to_street(self, xy: np.ndarray) -> np.ndarray:
        cos, sin = np.cos(self.heading), np.sin(self.heading)
        return np.stack([cos * xy[:, 0] + sin * xy[:, 1], -sin * xy[:, 0] + cos * xy[:, 1]], -1)

    def ground_class(self, xy: np.ndarray) -> np.ndarray:
        """Unified class of the ground at world positions ``xy`` (N, 2)."""
        return self.street_class(self.to_street(np.asarray(xy, dtype=np.float64).reshape(-1, 2)))

    def street_class(self, uv: np.ndarray) -> np.ndarray:
        """Unified class of the ground at street positions ``uv`` (N, 2)."""
        lateral = uv[:, 1] - self.main_offset
        distance = np.abs(lateral)
        strip = np.where(lateral < 0, self.parking_width[0], self.parking_width[1])
        w = self.road_half_width
        labels = np.select(
            [distance < w, distance < w + strip, distance < w + strip + self.sidewalk_width],
            [CLASS_ID["road"], CLASS_ID["other_ground"], CLASS_ID["sidewalk"]],
            CLASS_ID["terrain"],
        )
        if self.cross_at is not None:
            distance = np.abs(uv[:, 0] - self.cross_at)
            cross = np.select([distance < w, distance < w + self.sidewalk_width],
                              [CLASS_ID["road"], CLASS_ID["sidewalk"]], CLASS_ID["terrain"])
            labels = np.where(_GROUND_RANK[cross] < _GROUND_RANK[labels], cross, labels)
        for u0, v0, u1, v1 in self.lots:
            inside = (uv[:, 0] >= u0) & (uv[:, 0] < u1) & (uv[:, 1] >= v0) & (uv[:, 1] < v1)
            labels = np.where(inside & (labels == CLASS_ID["terrain"]), CLASS_ID["other_ground"], labels)
        return labels.astype(np.uint8)

    def road_frame(self, road: int, along: float, lateral: float) -> tuple[np.ndarray, float]:
        """Street position ``lateral`` metres left of a road's centre line; the road's heading."""
        if road == 0:
            return np.array([along, self.main_offset + lateral]), 0.0
        return np.array([self.cross_at - lateral, along]), np.pi / 2

    def edges(self, road: int, side: int) -> tuple[float, float, float]:
        """Distances from a road's centre line to its kerb, the parking strip's outer edge and
        the sidewalk's outer edge, on ``side`` -1 (right) or +1 (left)."""
        strip = self.parking_width[int(side > 0)] if road == 0 else 0.0
        w = self.road_half_width
        return w, w + strip, w + strip + self.sidewalk_width

    def lane_offset(self, lane: int) -> float:
        """Distance from the centre line to the middle of lane ``lane`` (0 = the innermost)."""
        return (lane + 0.5) * self.road_half_width / self.lanes


@dataclass(frozen=True)
class Scene:
    """Everything a sensor can see at one instant, in world coordinates.

    ``objects`` (K, 7) are the boxes of the things (car, truck, pedestrian,
    cyclist); a primitive with instance k > 0 is a part of ``objects[k - 1]``.
    """

    layout: StreetLayout
    primitives: tuple[Primitives, ...]
    objects: np.ndarray
    object_labels: np.ndarray


@dataclass(frozen=True)
class World:
    """A street with everything on it for a whole scene: the state at t = 0 plus velocities.

    ``primitive_velocities[i]`` (K_i, 2) is the world x, y velocity of each primitive of
    ``primitives[i]``; ``object_velocities`` (K, 2) that of each object. An object's
    index + 1 is its instance id in every snapshot and its track id in every frame.
    """

    layout: StreetLayout
    primitives: tuple[Primitives, ...]
    primitive_velocities: tuple[np.ndarray, ...]
    objects: np.ndarray
    object_velocities: np.ndarray
    object_labels: np.ndarray
    ego_speed: float

    def scene_at(self, t: float) -> Scene:
        """The world at ``t`` seconds after the scene's start."""
        moved = []
        for group, velocity in zip(self.primitives, self.primitive_velocities):
            params = group.params.copy()
            params[:, :2] += velocity * t
            moved.append(replace(group, params=params))
        objects = self.objects.copy()
        objects[:, :2] += self.object_velocities * t
        return Scene(self.layout, tuple(moved), objects, self.object_labels)

    def ego_pose(self, t: float) -> np.ndarray:
        """Ego-to-world 4x4 at ``t``: the ego frame sits on the ground, x forward along the road."""
        cos, sin = np.cos(self.layout.heading), np.sin(self.layout.heading)
        travelled = self.ego_speed * t
        pose = np.eye(4)
        pose[:2, :2] = [[cos, -sin], [sin, cos]]
        pose[:2, 3] = [cos * travelled, sin * travelled]
        return pose

    def lidar_pose(self, t: float, height: float) -> np.ndarray:
        """LiDAR-to-world 4x4 at ``t`` of a LiDAR mounted ``height`` above the ego's origin."""
        pose = self.ego_pose(t)
        pose[2, 3] = height
        return pose


@dataclass(frozen=True)
class Hits:
    """The returns of one sweep, in LiDAR coordinates; instance ids index Scene.objects."""

    points: np.ndarray
    ring: np.ndarray
    intensity: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray


# A part is (kind, params in the object's frame, class name, material). Objects stand on
# z = 0, face +x, and their box parts are unrotated in that frame.
Part = tuple[str, list[float], str, str]


def _building(rng: np.random.Generator) -> list[Part]:
    length, depth, height = rng.uniform(8, 25), rng.uniform(6, 15), rng.uniform(4, 18)
    return [("box", [0, 0, height / 2, length, depth, height, 0], "building", "facade")]


def _tree(rng: np.random.Generator) -> list[Part]:
    radius, half_height = rng.uniform(1.2, 3.0), rng.uniform(1.2, 3.0)
    crown_z = rng.uniform(1.5, 3.0) + 0.7 * half_height
    return [
        ("cylinder", [0, 0, 0, crown_z, rng.uniform(0.12, 0.3)], "vegetation", "bark"),
        ("spheroid", [0, 0, crown_z, radius, half_height], "vegetation", "foliage"),
    ]


def _pole(rng: np.random.Generator) -> list[Part]:
    return [("cylinder", [0, 0, 0, rng.uniform(4, 9), rng.uniform(0.07, 0.15)], "pole", "metal")]


def _jersey_barrier(rng: np.random.Generator) -> list[Part]:
    """A row of concrete kerb-side barriers: a wide foot under a narrower wall."""
    length = rng.uniform(3, 8)
    return [
        ("box", [0, 0, 0.15, length, 0.6, 0.3, 0], "barrier", "concrete"),
        ("box", [0, 0, 0.55, length, 0.25, 0.5, 0], "barrier", "concrete"),
    ]


def _fence(rng: np.random.Generator) -> list[Part]:
    length, height = rng.uniform(5, 15), rng.uniform(1.0, 2.0)
    return [("box", [0, 0, height / 2, length, 0.05, height, 0], "barrier", "metal")]


def _cones(rng: np.random.Generator) -> list[Part]:
    """A line of traffic cones, 1.5 to 3 m apart."""
    count, spacing = int(rng.integers(3, 7)), rng.uniform(1.5, 3.0)
    return [
        ("spheroid", [(i - (count - 1) / 2) * spacing, 0, 0.36, 0.16, 0.36], "barrier", "cone_plastic")
        for i in range(count)
    ]


def _car(rng: np.random.Generator) -> list[Part]:
    length, width = rng.uniform(3.8, 4.9), rng.uniform(1.7, 2.0)
    clearance, body, cabin = 0.2, rng.uniform(0.6, 0.8), rng.uniform(0.45, 0.6)
    cabin_length, cabin_z = length * rng.uniform(0.45, 0.6), clearance + body + cabin / 2
    return [
        ("box", [0, 0, clearance + body / 2, length, width, body, 0], "car", "car_paint"),
        ("box", [-0.05 * length, 0, cabin_z, cabin_length, 0.85 * width, cabin, 0], "car", "glass"),
    ]


def _truck(rng: np.random.Generator) -> list[Part]:
    """A rigid bus (body, window band, roof) or a truck (cab with windscreen, cargo box)."""
    width = rng.uniform(2.35, 2.55)
    if rng.random() < 0.35:
        length, height = rng.uniform(10, 12.5), rng.uniform(2.9, 3.3)
        return [
            ("box", [0, 0, 0.825, length, width, 0.95, 0], "truck", "car_paint"),
            ("box", [0, 0, (1.3 + height - 0.3) / 2, length - 0.1, width - 0.04, height - 1.6, 0],
             "truck", "glass"),
            ("box", [0, 0, height - 0.15, length, width, 0.3, 0], "truck", "car_paint"),
        ]
    length, height, cab_height = rng.uniform(6.5, 10), rng.uniform(3.0, 3.8), rng.uniform(2.6, 3.0)
    cab_x, cargo_length = length / 2 - 1.1, length - 2.4
    return [
        ("box", [cab_x, 0, 1.15, 2.2, width, 1.4, 0], "truck", "car_paint"),
        ("box", [cab_x, 0, (1.85 + cab_height) / 2, 2.2, width - 0.1, cab_height - 1.85, 0],
         "truck", "glass"),
        ("box", [-length / 2 + cargo_length / 2, 0, (0.9 + height) / 2, cargo_length, width,
                 height - 0.9, 0], "truck", "metal"),
    ]


def _pedestrian(rng: np.random.Generator) -> list[Part]:
    s = rng.uniform(0.85, 1.1)
    return [
        ("box", [0, 0, 0.43 * s, 0.25 * s, 0.38 * s, 0.86 * s, 0], "pedestrian", "fabric"),
        ("box", [0, 0, 1.16 * s, 0.28 * s, 0.48 * s, 0.6 * s, 0], "pedestrian", "fabric"),
        ("spheroid", [0, 0, 1.58 * s, 0.1 * s, 0.13 * s], "pedestrian", "skin"),
    ]


def _bicycle(rng: np.random.Generator) -> list[Part]:
    return [("box", [0, 0, 0.475, rng.uniform(1.6, 1.85), 0.15, 0.95, 0], "cyclist", "metal")]


def _cyclist(rng: np.random.Generator) -> list[Part]:
    return _bicycle(rng) + [
        ("box", [-0.1, 0, 1.225, 0.5, 0.42, 0.75, 0], "cyclist", "fabric"),
        ("spheroid", [0, 0, 1.72, 0.1, 0.13], "cyclist", "skin"),
    ]


def _rotate_shift(xy: np.ndarray, yaw: float, shift: np.ndarray) -> np.ndarray:
    """Points (N, 2) rotated by ``yaw`` about the origin, then shifted."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([cos * xy[:, 0] - sin * xy[:, 1], sin * xy[:, 0] + cos * xy[:, 1]], -1) + shift


def _wrap(angle: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * np.asarray(angle)))


def _move(kind: str, params: np.ndarray, yaw: float, shift: np.ndarray) -> np.ndarray:
    """Primitive rows (K, P) rigidly rotated by ``yaw`` about z, then shifted in x, y."""
    moved = params.copy()
    moved[:, :2] = _rotate_shift(params[:, :2], yaw, shift)
    if kind == "box":
        moved[:, 6] = _wrap(params[:, 6] + yaw)
    return moved


def _local_bounds(parts: list[Part]) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds of an object's parts in its own frame, down to the ground."""
    lows, highs = [], []
    for kind, p, _, _ in parts:
        if kind == "box":
            centre, half = p[:3], np.divide(p[3:6], 2)
        elif kind == "cylinder":
            centre, half = [p[0], p[1], (p[2] + p[3]) / 2], [p[4], p[4], (p[3] - p[2]) / 2]
        else:
            centre, half = p[:3], [p[3], p[3], p[4]]
        lows.append(np.subtract(centre, half))
        highs.append(np.add(centre, half))
    lo, hi = np.min(lows, axis=0), np.max(highs, axis=0)
    lo[2] = 0.0  # a car's box reaches the road even though its body has ground clearance
    return lo, hi


def _ever_close(lo, hi, velocity, others_lo, others_hi, others_velocity, duration) -> np.ndarray:
    """Whether rectangle [lo, hi], moving at ``velocity``, comes within CLEARANCE of each of the
    other moving rectangles (F, 2) at some time in [0, duration] (all positions at t = 0).

    Per axis the rectangles overlap while two linear functions of t stay positive; the times
    all four hold form one interval, intersected with [0, duration].
    """
    relative = velocity - others_velocity
    start = np.zeros(len(others_lo))
    end = np.full(len(others_lo), float(duration))
    # Overlap on an axis <=> gap_a + rate t > 0 for both (gap_a, rate) below.
    for gap, rate in ((others_hi + CLEARANCE - lo, -relative), (hi - others_lo + CLEARANCE, relative)):
        with np.errstate(divide="ignore", invalid="ignore"):
            crossing = -gap / rate
        start = np.maximum(start, np.where(rate > 0, crossing, -np.inf).max(1))
        end = np.minimum(end, np.where(rate < 0, crossing, np.inf).min(1))
        end = np.where(((rate == 0) & (gap <= 0)).any(1), -np.inf, end)
    return start <= end


class _WorldBuilder:
    """Places objects in street coordinates, away from each other (at all times) and wrong ground."""

    def __init__(self, rng, layout: StreetLayout, bounds: np.ndarray, duration: float,
                 ego_speed: float) -> None:
        self.rng, self.layout, self.duration = rng, layout, duration
        self.bounds = bounds  # (u_min, v_min, u_max, v_max) where objects may be
        # Street rectangles (F, 4) taken at t = 0 and their velocities (F, 2).
        self.footprints = EGO_FOOTPRINT[None].copy()
        self.velocities = np.array([[ego_speed, 0.0]])
        # Per primitive kind: (params, class id, instance, reflectivity, velocity) rows.
        self.rows: dict[str, list[tuple]] = {kind: [] for kind in PARAMS_PER_KIND}
        self.objects: list[np.ndarray] = []
        self.object_velocities: list[np.ndarray] = []
        self.object_labels: list[int] = []

    def random_road(self) -> int:
        """The main road (0) or the crossing street (1), in proportion to their length in the world."""
        if self.layout.cross_at is None:
            return 0
        main, cross = self.bounds[2] - self.bounds[0], self.bounds[3] - self.bounds[1]
        return int(self.rng.random() < cross / (main + cross))

    def random_along(self, road: int) -> float:
        return self.rng.uniform(self.bounds[road], self.bounds[road + 2])

    def scatter(self, count: int, propose: Callable[[], tuple]) -> None:
        """Try to place ``count`` objects ``propose()`` suggests (None: there is no spot for
        one); give up on one after a few tries."""
        for _ in range(count):
            for _ in range(PLACEMENT_TRIES):
                proposal = propose()
                if proposal is None or self.place(*proposal):
                    break

    def place(self, parts: list[Part], centre: np.ndarray, heading: float, ground=None,
              speed: float = 0.0, at: float = 0.0) -> bool:
        """Add the object if its spot is free; it moves forward at ``speed``.

        ``centre`` and ``heading`` are in street coordinates at time ``at``; the object's whole
        footprint must lie on ``ground`` (class ids; None = anywhere) and inside the bounds then.
        """
        lo, hi = _local_bounds(parts)
        middle = _rotate_shift(((lo + hi) / 2)[None, :2], heading, centre)[0]
        cos, sin = abs(np.cos(heading)), abs(np.sin(heading))
        along, across = (hi[:2] - lo[:2]) / 2
        half = np.array([cos * along + sin * across, sin * along + cos * across])
        if (middle < self.bounds[:2]).any() or (middle > self.bounds[2:]).any():
            return False
        velocity = speed * np.array([np.cos(heading), np.sin(heading)])
        start = middle - velocity * at  # the footprint's middle at t = 0
        rect_lo, rect_hi = start - half, start + half
        if _ever_close(rect_lo, rect_hi, velocity, self.footprints[:, :2], self.footprints[:, 2:],
                       self.velocities, self.duration).any():
            return False
        if ground is not None:  # sampled at most 2 m apart: no street fits between samples
            steps = [np.linspace(-h, h, int(np.ceil(h)) + 2) for h in half]
            samples = np.stack(np.meshgrid(*steps, indexing="ij"), -1).reshape(-1, 2) + middle
            if not np.isin(self.layout.street_class(samples), ground).all():
                return False
        self.footprints = np.vstack([self.footprints, np.concatenate([rect_lo, rect_hi])])
        self.velocities = np.vstack([self.velocities, velocity])
        centre = centre - velocity * at
        label = parts[0][2]
        instance = 0
        if label in THING_CLASSES:
            box = np.concatenate([(lo + hi) / 2, hi - lo, [0.0]])[None]
            self.objects.append(_move("box", box, heading, centre)[0])
            self.object_velocities.append(velocity)
            self.object_labels.append(CLASS_ID[label])
            instance = len(self.objects)
        shade = self.rng.uniform(0.8, 1.2)  # objects of one material still differ a little
        for kind, params, name, material in parts:
            moved = _move(kind, np.array([params], dtype=np.float64), heading, centre)[0]
            reflectivity = min(REFLECTIVITY[material] * shade, 1.0)
            self.rows[kind].append((moved, CLASS_ID[name], instance, reflectivity, velocity))
        return True

    def finish(self, ego_speed: float) -> World:
        """Rotate everything from street into world coordinates; freeze it (worlds are cached)."""
        heading, origin = self.layout.heading, np.zeros(2)

        def frozen(array: np.ndarray) -> np.ndarray:
            array.setflags(write=False)
            return array

        primitives, velocities = [], []
        for kind, rows in self.rows.items():
            params = np.array([r[0] for r in rows], dtype=np.float64).reshape(-1, PARAMS_PER_KIND[kind])
            primitives.append(Primitives(
                kind=kind,
                params=frozen(_move(kind, params, heading, origin)),
                semantic=frozen(np.array([r[1] for r in rows], dtype=np.uint8)),
                instance=frozen(np.array([r[2] for r in rows], dtype=np.int32)),
                reflectivity=frozen(np.array([r[3] for r in rows], dtype=np.float64)),
            ))
            velocity = np.array([r[4] for r in rows], dtype=np.float64).reshape(-1, 2)
            velocities.append(frozen(_rotate_shift(velocity, heading, origin)))
        objects = np.array(self.objects, dtype=np.float64).reshape(-1, 7)
        object_velocities = np.array(self.object_velocities, dtype=np.float64).reshape(-1, 2)
        return World(
            layout=self.layout,
            primitives=tuple(primitives),
            primitive_velocities=tuple(velocities),
            objects=frozen(_move("box", objects, heading, origin)),
            object_velocities=frozen(_rotate_shift(object_velocities, heading, origin)),
            object_labels=frozen(np.array(self.object_labels, dtype=np.int16)),
            ego_speed=ego_speed,
        )


def _random_layout(rng: np.random.Generator, extent: float, u_max: float) -> StreetLayout:
    """Road widths, lanes, the ego's lane, parking strips and lots, maybe a crossing."""
    road_half_width, sidewalk = rng.uniform(3.5, 7.0), rng.uniform(1.5, 4.0)
    lanes = max(1, int(road_half_width // 3.0))
    # The ego drives in a right-hand lane, so the main road's centre line lies to its left.
    main_offset = (int(rng.integers(lanes)) + 0.5) * road_half_width / lanes
    parking = tuple(float(rng.uniform(2.3, 3.0)) if rng.random() < 0.5 else 0.0 for _ in range(2))
    cross_at = rng.uniform(-0.6 * extent, u_max - 0.4 * extent) if rng.random() < 0.5 else None
    lots = []
    for _ in range(rng.poisson(0.6 * (u_max + extent) / (2 * extent))):
        side = rng.choice((-1, 1))
        kerb = road_half_width + parking[int(side > 0)] + sidewalk  # the lot touches the sidewalk
        u0, length, depth = rng.uniform(-extent, u_max), rng.uniform(20, 50), rng.uniform(15, 30)
        v_near, v_far = main_offset + side * kerb, main_offset + side * (kerb + depth)
        lots.append((u0, min(v_near, v_far), u0 + length, max(v_near, v_far)))
    return StreetLayout(
        heading=rng.uniform(-np.pi, np.pi),
        main_offset=main_offset,
        cross_at=cross_at,
        road_half_width=road_half_width,
        sidewalk_width=sidewalk,
        lanes=lanes,
        parking_width=parking,
        lots=tuple(lots),
    )


def build_world(rng: np.random.Generator, config: SceneConfig, sequence: SequenceConfig) -> World:
    """A random street with its traffic for one scene of ``sequence``.

    The street reaches ``config.extent`` behind the ego's start and in front of
    where it ends; counts in ``config`` (per 2 x extent of street) are upper
    bounds: an object that finds no free spot, now or later in the scene, is
    left out.
    """
    ego_speed = 0.0 if rng.random() < EGO_STOPPED else rng.uniform(0.3, 1.0) * sequence.ego_max_speed
    extent, duration = config.extent, sequence.duration
    u_max = extent + ego_speed * duration
    layout = _random_layout(rng, extent, u_max)
    bounds = np.array([-extent, -extent, u_max, extent])
    builder = _WorldBuilder(rng, layout, bounds, duration, ego_speed)
    scale = (u_max + extent) / (2 * extent)
    terrain, sidewalk = [CLASS_ID["terrain"]], [CLASS_ID["sidewalk"]]
    parking = [CLASS_ID["other_ground"]]

    def count(n: int) -> int:
        return int(round(n * scale))

    def beside(parts_of, offset, ground, facing="along"):
        """A proposal: an object ``offset(edges, half_width)`` metres from a random road's centre
        line, on a random side (``edges``: that side's StreetLayout.edges)."""
        def propose():
            parts = parts_of(rng)
            lo, hi = _local_bounds(parts)
            road, side = builder.random_road(), rng.choice((-1, 1))
            lateral = side * offset(layout.edges(road, side), (hi[1] - lo[1]) / 2)
            centre, heading = layout.road_frame(road, builder.random_along(road), lateral)
            heading += rng.uniform(-np.pi, np.pi) if facing == "any" else rng.choice((0, np.pi))
            return parts, centre, heading, ground
        return propose

    def mover(parts_of, speeds, offset, static, with_traffic=True):
        """A proposal for a thing that moves (moving_fraction of them) or else stands (``static``).

        It moves along a random road ``offset(edges, side)`` metres from its centre line: with
        the traffic (right-hand) or, for pedestrians, either way.
        """
        def propose():
            if rng.random() >= sequence.moving_fraction:
                return static()
            parts = parts_of(rng)
            road, side = builder.random_road(), rng.choice((-1, 1))
            lateral = side * offset(layout.edges(road, side))
            centre, heading = layout.road_frame(road, builder.random_along(road), lateral)
            heading += (side > 0) * np.pi if with_traffic else rng.choice((0, np.pi))
            return parts, centre, heading, None, rng.uniform(*speeds), rng.uniform(0, duration)
        return propose

    def parked(parts_of):
        """A vehicle on a parking strip or across the bays of a lot; None where there is neither."""
        strips = [side for side in (-1, 1) if layout.parking_width[int(side > 0)] > 0]

        def propose():
            if not strips and not layout.lots:
                return None
            parts = parts_of(rng)
            choice = int(rng.integers(len(strips) + len(layout.lots)))
            if choice < len(strips):
                kerb, strip_edge, _ = layout.edges(0, strips[choice])
                lateral = strips[choice] * (kerb + strip_edge) / 2
                centre, heading = layout.road_frame(0, builder.random_along(0), lateral)
                return parts, centre, heading + rng.choice((0, np.pi)) + rng.normal(0, 0.03), parking
            u0, v0, u1, v1 = layout.lots[choice - len(strips)]
            centre = np.array([rng.uniform(u0, u1), rng.uniform(v0, v1)])
            return parts, centre, rng.choice((-1, 1)) * np.pi / 2 + rng.normal(0, 0.05), parking
        return propose

    def on_sidewalk(edges, half=0.0):
        return edges[1] + rng.uniform(0.4, edges[2] - edges[1] - 0.4)

    builder.scatter(count(config.num_buildings), beside(
        _building, lambda edges, half: edges[2] + rng.uniform(0.5, 6) + half, terrain))
    builder.scatter(count(config.num_trees), beside(
        _tree, lambda edges, half: edges[2] + half + rng.uniform(0.2, 8), terrain, facing="any"))
    builder.scatter(count(config.num_poles), beside(
        _pole, lambda edges, half: edges[1] + rng.uniform(0.3, 0.6), sidewalk))
    barriers = [
        beside(_jersey_barrier, lambda edges, half: edges[1] + 0.45, sidewalk),
        beside(_fence, lambda edges, half: edges[2] + rng.uniform(0.2, 1.5), terrain),
        beside(_cones, lambda edges, half: edges[0] + 0.35, parking + sidewalk),
    ]
    builder.scatter(count(config.num_barriers), lambda: barriers[rng.integers(len(barriers))]())

    def lane(edges):
        return layout.lane_offset(int(rng.integers(layout.lanes)))

    builder.scatter(count(config.num_trucks), mover(_truck, (4.0, 11.0), lane, parked(_truck)))
    builder.scatter(count(config.num_cars), mover(_car, (4.0, 14.0), lane, parked(_car)))
    builder.scatter(count(config.num_cyclists), mover(
        _cyclist, (3.0, 7.0), lambda edges: edges[0] - 0.6,
        beside(_bicycle, lambda edges, half: edges[1] + 0.5, sidewalk, facing="any")))
    builder.scatter(count(config.num_pedestrians), mover(
        _pedestrian, (0.8, 1.8), on_sidewalk,
        beside(_pedestrian, on_sidewalk, sidewalk, facing="any"), with_traffic=False))
    return builder.finish(ego_speed)


def build_scene(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """A random street at one instant: roads, parking, sidewalks and terrain on the ground,
    objects where they belong, the ego (unseen) at the world origin."""
    return build_world(rng, config, STILL).scene_at(0.0)


@lru_cache(maxsize=4)
def scene_world(seed: int, scene_index: int, config: SceneConfig, sequence: SequenceConfig) -> World:
    """The world of scene ``scene_index`` of the synthetic dataset ``seed``.

    Cached: a worker making consecutive frames of a scene builds its world once.
    """
    return build_world(np.random.default_rng([seed, scene_index]), config, sequence)


def beam_directions(sensor: SensorProfile) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (R, 3) in LiDAR coordinates, ring-major, and the ring of each ray
    (0 = lowest beam). The azimuth step is rounded so that whole steps fill 360 degrees."""
    steps = max(int(round(360.0 / sensor.azimuth_step_deg)), 1)
    azimuth = np.arange(steps) * (2 * np.pi / steps)
    elevation, azimuth = np.meshgrid(sensor.elevations(), azimuth, indexing="ij")
    dirs = np.stack([
        np.cos(elevation) * np.cos(azimuth),
        np.cos(elevation) * np.sin(azimuth),
        np.sin(elevation),
    ], -1).reshape(-1, 3)
    return dirs, np.repeat(np.arange(sensor.beams), steps)


def _within(primitives: tuple[Primitives, ...], origin: np.ndarray, reach: float) -> tuple[Primitives, ...]:
    """The primitives whose bounding sphere comes within ``reach`` of ``origin``: a long street
    holds many more than one sweep can see."""
    kept = []
    for group in primitives:
        centre, radius = bounding_spheres(group.kind, group.params)
        near = np.linalg.norm(centre - origin, axis=1) - radius <= reach
        kept.append(Primitives(group.kind, group.params[near], group.semantic[near],
                               group.instance[near], group.reflectivity[near]))
    return tuple(kept)


def cast_rays(scene: Scene, lidar_pose: np.ndarray, sensor: SensorProfile,
              rng: np.random.Generator) -> Hits:
    """One sweep of ``sensor`` at ``lidar_pose`` (LiDAR-to-world): nearest surface per beam,
    then the sensor's flaws.

    Range noise is along the ray, so a point keeps its beam's exact elevation;
    returns outside [min_range, max_range] after noise and dropped returns are removed.
    """
    dirs, ring = beam_directions(sensor)
    rotation, origin = lidar_pose[:3, :3], lidar_pose[:3, 3]
    world_dirs = dirs @ rotation.T
    reach = sensor.max_range + 5 * sensor.range_noise_std
    traced = trace(_within(scene.primitives, origin, reach), origin, world_dirs)
    ground_range, ground_cos = intersect_ground(origin, world_dirs)
    on_ground = ground_range < traced.range
    true_range = np.where(on_ground, ground_range, traced.range)
    cos = np.where(on_ground, ground_cos, traced.cos_incidence)
    semantic, reflectivity = traced.semantic.copy(), traced.reflectivity.copy()
    ground_xy = origin[:2] + ground_range[on_ground, None] * world_dirs[on_ground, :2]
    semantic[on_ground] = scene.layout.ground_class(ground_xy)
    reflectivity[on_ground] = GROUND_REFLECTIVITY[semantic[on_ground]]
    instance = np.where(on_ground, 0, traced.instance)

    measured = true_range + rng.normal(0.0, sensor.range_noise_std, len(dirs))
    keep = np.isfinite(true_range) & (measured >= sensor.min_range) & (measured <= sensor.max_range)
    keep &= rng.random(len(dirs)) >= sensor.dropout
    intensity = reflectivity * cos + rng.normal(0.0, INTENSITY_NOISE_STD, len(dirs))
    return Hits(
        points=dirs[keep] * measured[keep, None],
        ring=ring[keep],
        intensity=np.clip(intensity[keep], 0.0, 1.0),
        semantic=semantic[keep],
        instance=instance[keep],
    )


def observe(scene: Scene, lidar_pose: np.ndarray, sensor: SensorProfile, rng: np.random.Generator,
            object_velocities: np.ndarray) -> Frame:
    """The frame of one sweep of ``scene`` from ``lidar_pose``, in LiDAR coordinates.

    Instance ids are renumbered to the boxes kept: a point with instance i > 0
    belongs to ``boxes[i - 1]``, whose label ``box_labels[i - 1]`` is the
    point's semantic class. Only objects hit by at least one return get a box,
    in the order of ``scene.objects``; ``object_velocities`` (K, 2) are theirs
    in the world. meta holds the sensor's name only.
    """
    hits = cast_rays(scene, lidar_pose, sensor, rng)
    seen = np.unique(hits.instance[hits.instance > 0])
    instance = np.where(hits.instance > 0, np.searchsorted(seen, hits.instance) + 1, 0)
    rotation, origin = lidar_pose[:3, :3], lidar_pose[:3, 3]
    boxes = scene.objects[seen - 1]
    boxes[:, :3] = (boxes[:, :3] - origin) @ rotation  # rows times R = R^T applied to each
    boxes[:, 6] = _wrap(boxes[:, 6] - np.arctan2(rotation[1, 0], rotation[0, 0]))
    velocity = np.pad(object_velocities[seen - 1], ((0, 0), (0, 1))) @ rotation
    return Frame(
        points=hits.points,
        intensity=hits.intensity,
        ring=hits.ring,
        semantic=hits.semantic,
        instance=instance,
        boxes=boxes,
        box_labels=scene.object_labels[seen - 1],
        pose=lidar_pose,
        sensor_origin=np.zeros(3),
        meta={"sensor": sensor.name},
        extras={
            "box_velocity": velocity[:, :2].astype(np.float32),
            "box_track_id": seen.astype(np.int32),
        },
    )


def generate_frame(seed: int, scene_index: int, frame_in_scene: int, sensor: SensorProfile,
                   scene_config: SceneConfig, sequence_config: SequenceConfig, *,
                   occupancy: OccupancySpec | None = None, cameras: Sequence[CameraConfig] = ()) -> Frame:
    """Frame ``frame_in_scene`` of scene ``scene_index`` of the synthetic dataset ``seed``.

    A pure function of its arguments: the world of the scene at t = frame_in_scene x
    frame_interval, seen from the ego's LiDAR then. Sensor noise has its own
    random stream per frame, so frames need not be made in order. With
    ``occupancy`` the frame carries the exact semantic occupancy of that
    snapshot; each camera of ``cameras`` adds an image rendered from it.
    """
    if not 0 <= frame_in_scene < sequence_config.frames_per_scene:
        raise ValueError(f"frame {frame_in_scene} of a scene of {sequence_config.frames_per_scene} frames")
    world = scene_world(seed, scene_index, scene_config, sequence_config)
    t = frame_in_scene * sequence_config.frame_interval
    snapshot, pose = world.scene_at(t), world.lidar_pose(t, sensor.height)
    frame = observe(snapshot, pose, sensor, np.random.default_rng([seed, scene_index, frame_in_scene]),
                    world.object_velocities)
    frame.meta.update(dataset="synthetic", sequence=f"{scene_index:04d}", index=frame_in_scene,
                      timestamp=float(t), num_beams=sensor.beams)
    if occupancy is not None:
        set_occupancy(frame, semantic_occupancy(snapshot, pose, occupancy.point_range, occupancy.voxel_size))
    for camera in cameras:
        add_camera(frame, camera.name, render_camera(snapshot, pose, camera))
    return frame
