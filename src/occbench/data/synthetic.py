"""The embedded synthetic LiDAR world: procedural street scenes seen by a simulated spinning LiDAR.

It makes the whole benchmark runnable without downloading a dataset, with
labels that are exact by construction. Three steps are kept apart so each can
grow on its own (other sensors, ego motion, cameras, occupancy ground truth):

    build_scene(rng, config)      -> Scene  (primitives with class, instance, reflectivity)
    cast_rays(scene, sensor, rng) -> Hits   (one sweep: nearest surface, noise, dropout)
    generate_frame(seed, index, sensor, scene_config) -> Frame

Scene coordinates: z up, ground at z = 0, the sensor at (0, 0, sensor.height).
Frames are in LiDAR coordinates (the sensor is the origin, the ground at
z = -height); the pose is the identity until sequences with ego motion exist.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from occbench.data.frame import Frame
from occbench.data.raycast import PARAMS_PER_KIND, Primitives, intersect_ground, trace
from occbench.data.taxonomy import CLASS_ID, CLASSES, THING_CLASSES

# Rough near-infrared reflectivity of the materials the world is made of.
REFLECTIVITY = {
    "asphalt": 0.12,
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
}
GROUND_MATERIAL = {"road": "asphalt", "sidewalk": "concrete", "terrain": "grass"}
# Indexed by class id, to look up many ground points at once.
GROUND_REFLECTIVITY = np.array(
    [REFLECTIVITY[GROUND_MATERIAL[name]] if name in GROUND_MATERIAL else 0.0 for name in CLASSES]
)
INTENSITY_NOISE_STD = 0.02
# Street rectangle (u_min, v_min, u_max, v_max) of the vehicle carrying the sensor.
EGO_FOOTPRINT = np.array([-2.5, -1.2, 2.5, 1.2])
PLACEMENT_TRIES = 30


@dataclass(frozen=True)
class SensorProfile:
    """A spinning LiDAR: beams evenly spaced in elevation, a fixed azimuth step."""

    beams: int
    fov_up_deg: float
    fov_down_deg: float
    azimuth_step_deg: float
    min_range: float
    max_range: float
    range_noise_std: float
    dropout: float
    height: float
    name: str = "synthetic-32"

    def __post_init__(self) -> None:
        if self.beams < 1 or self.fov_down_deg > self.fov_up_deg or self.azimuth_step_deg <= 0:
            raise ValueError(f"{self}: needs beams >= 1, fov_down <= fov_up, azimuth_step > 0")
        if not 0 <= self.min_range < self.max_range or not 0 <= self.dropout < 1:
            raise ValueError(f"{self}: needs 0 <= min_range < max_range and 0 <= dropout < 1")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SensorProfile:
        return cls(**d)


@dataclass(frozen=True)
class SceneConfig:
    """How big the world is and how many objects of each kind it tries to place."""

    extent: float
    num_buildings: int
    num_trees: int
    num_poles: int
    num_cars: int
    num_pedestrians: int
    num_cyclists: int

    def __post_init__(self) -> None:
        counts = [getattr(self, f.name) for f in fields(self) if f.name.startswith("num_")]
        if self.extent <= 0 or min(counts) < 0:
            raise ValueError(f"{self}: needs extent > 0 and non-negative counts")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SceneConfig:
        return cls(**d)


@dataclass(frozen=True)
class StreetLayout:
    """A main road through the sensor's position, optionally a crossing street.

    Street coordinates (u along the main road, v across it) are the scene
    coordinates rotated by ``heading``; the sensor is at u = v = 0.
    """

    heading: float
    main_offset: float  # v of the main road's centre line
    cross_at: float | None  # u of the crossing street's centre line, None = no crossing
    road_half_width: float
    sidewalk_width: float

    def to_street(self, xy: np.ndarray) -> np.ndarray:
        cos, sin = np.cos(self.heading), np.sin(self.heading)
        return np.stack([cos * xy[:, 0] + sin * xy[:, 1], -sin * xy[:, 0] + cos * xy[:, 1]], -1)

    def ground_class(self, xy: np.ndarray) -> np.ndarray:
        """Unified class of the ground at scene positions ``xy`` (N, 2)."""
        uv = self.to_street(xy)
        distance = np.abs(uv[:, 1] - self.main_offset)
        if self.cross_at is not None:
            distance = np.minimum(distance, np.abs(uv[:, 0] - self.cross_at))
        kerb = self.road_half_width + self.sidewalk_width
        return np.select(
            [distance < self.road_half_width, distance < kerb],
            [CLASS_ID["road"], CLASS_ID["sidewalk"]],
            CLASS_ID["terrain"],
        ).astype(np.uint8)

    def road_frame(self, road: int, along: float, lateral: float) -> tuple[np.ndarray, float]:
        """Street position ``lateral`` metres left of a road's centre line; the road's heading."""
        if road == 0:
            return np.array([along, self.main_offset + lateral]), 0.0
        return np.array([self.cross_at - lateral, along]), np.pi / 2

    def clearance(self, lo: np.ndarray, hi: np.ndarray) -> float:
        """Distance from the street-aligned rectangle [lo, hi] to the nearest road centre line."""
        lines = [(1, self.main_offset)]  # (street axis the line is constant in, its position)
        if self.cross_at is not None:
            lines.append((0, self.cross_at))
        return min(max(lo[axis] - at, at - hi[axis], 0.0) for axis, at in lines)


@dataclass(frozen=True)
class Scene:
    """Everything a sensor can see, in scene coordinates.

    ``objects`` (K, 7) are the boxes of the things (car, pedestrian, cyclist);
    a primitive with instance k > 0 is a part of ``objects[k - 1]``.
    """

    layout: StreetLayout
    primitives: tuple[Primitives, ...]
    objects: np.ndarray
    object_labels: np.ndarray


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


def _car(rng: np.random.Generator) -> list[Part]:
    length, width = rng.uniform(3.8, 4.9), rng.uniform(1.7, 2.0)
    clearance, body, cabin = 0.2, rng.uniform(0.6, 0.8), rng.uniform(0.45, 0.6)
    cabin_length, cabin_z = length * rng.uniform(0.45, 0.6), clearance + body + cabin / 2
    return [
        ("box", [0, 0, clearance + body / 2, length, width, body, 0], "car", "car_paint"),
        ("box", [-0.05 * length, 0, cabin_z, cabin_length, 0.85 * width, cabin, 0], "car", "glass"),
    ]


def _pedestrian(rng: np.random.Generator) -> list[Part]:
    s = rng.uniform(0.85, 1.1)
    return [
        ("box", [0, 0, 0.43 * s, 0.25 * s, 0.38 * s, 0.86 * s, 0], "pedestrian", "fabric"),
        ("box", [0, 0, 1.16 * s, 0.28 * s, 0.48 * s, 0.6 * s, 0], "pedestrian", "fabric"),
        ("spheroid", [0, 0, 1.58 * s, 0.1 * s, 0.13 * s], "pedestrian", "skin"),
    ]


def _cyclist(rng: np.random.Generator) -> list[Part]:
    length = rng.uniform(1.6, 1.85)
    return [
        ("box", [0, 0, 0.475, length, 0.15, 0.95, 0], "cyclist", "metal"),
        ("box", [-0.1, 0, 1.225, 0.5, 0.42, 0.75, 0], "cyclist", "fabric"),
        ("spheroid", [0, 0, 1.72, 0.1, 0.13], "cyclist", "skin"),
    ]


def _rotate_shift(xy: np.ndarray, yaw: float, shift: np.ndarray) -> np.ndarray:
    """Points (N, 2) rotated by ``yaw`` about the origin, then shifted."""
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([cos * xy[:, 0] - sin * xy[:, 1], sin * xy[:, 0] + cos * xy[:, 1]], -1) + shift


def _move(kind: str, params: np.ndarray, yaw: float, shift: np.ndarray) -> np.ndarray:
    """Primitive rows (K, P) rigidly rotated by ``yaw`` about z, then shifted in x, y."""
    moved = params.copy()
    moved[:, :2] = _rotate_shift(params[:, :2], yaw, shift)
    if kind == "box":
        moved[:, 6] = np.angle(np.exp(1j * (params[:, 6] + yaw)))
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


class _SceneBuilder:
    """Places objects in street coordinates, away from each other, the sensor and wrong ground."""

    def __init__(self, rng: np.random.Generator, layout: StreetLayout, extent: float) -> None:
        self.rng, self.layout, self.extent = rng, layout, extent
        self.footprints = EGO_FOOTPRINT[None]  # (F, 4) street rectangles already taken
        # Per primitive kind: (params, class id, instance, reflectivity) rows.
        self.rows: dict[str, list[tuple[np.ndarray, int, int, float]]] = {
            kind: [] for kind in PARAMS_PER_KIND
        }
        self.objects: list[np.ndarray] = []
        self.object_labels: list[int] = []

    def random_road(self) -> int:
        return int(self.rng.integers(2)) if self.layout.cross_at is not None else 0

    def scatter(self, count: int, make, lateral, facing, min_clearance: float | None) -> None:
        """Try to place ``count`` objects beside random roads; give up on one after a few tries.

        ``lateral(rng, half_width)`` is the offset left of the road's centre line, given the
        object's half-width across the road;
        ``facing(rng, lateral)`` the heading relative to the road.
        """
        for _ in range(count):
            for _ in range(PLACEMENT_TRIES):
                parts = make(self.rng)
                lo, hi = _local_bounds(parts)
                road = self.random_road()
                along = self.rng.uniform(-self.extent, self.extent)
                offset = lateral(self.rng, (hi[1] - lo[1]) / 2)
                centre, road_heading = self.layout.road_frame(road, along, offset)
                if self._place(parts, lo, hi, centre, road_heading + facing(self.rng, offset),
                               min_clearance):
                    break

    def _place(self, parts, lo, hi, centre, heading, min_clearance) -> bool:
        """Add the object at street position ``centre``, facing ``heading``, if its spot is free."""
        middle = _rotate_shift(((lo + hi) / 2)[None, :2], heading, centre)[0]
        cos, sin = abs(np.cos(heading)), abs(np.sin(heading))
        along, across = (hi[:2] - lo[:2]) / 2
        half = np.array([cos * along + sin * across, sin * along + cos * across])
        rect_lo, rect_hi = middle - half, middle + half
        if np.abs(middle).max() > self.extent:
            return False
        if min_clearance is not None and self.layout.clearance(rect_lo, rect_hi) <= min_clearance:
            return False
        taken = self.footprints
        if ((rect_lo < taken[:, 2:] + 0.3) & (taken[:, :2] - 0.3 < rect_hi)).all(1).any():
            return False
        self.footprints = np.vstack([taken, np.concatenate([rect_lo, rect_hi])])
        label = parts[0][2]
        instance = 0
        if label in THING_CLASSES:
            box = np.concatenate([(lo + hi) / 2, hi - lo, [0.0]])[None]
            self.objects.append(_move("box", box, heading, centre)[0])
            self.object_labels.append(CLASS_ID[label])
            instance = len(self.objects)
        shade = self.rng.uniform(0.8, 1.2)  # objects of one material still differ a little
        for kind, params, name, material in parts:
            moved = _move(kind, np.array([params], dtype=np.float64), heading, centre)[0]
            reflectivity = min(REFLECTIVITY[material] * shade, 1.0)
            self.rows[kind].append((moved, CLASS_ID[name], instance, reflectivity))
        return True

    def finish(self) -> Scene:
        """Rotate everything from street into scene coordinates."""
        heading, origin = self.layout.heading, np.zeros(2)
        primitives = []
        for kind, rows in self.rows.items():
            params = np.array([r[0] for r in rows], dtype=np.float64)
            params = params.reshape(-1, PARAMS_PER_KIND[kind])
            primitives.append(Primitives(
                kind=kind,
                params=_move(kind, params, heading, origin),
                semantic=np.array([r[1] for r in rows], dtype=np.uint8),
                instance=np.array([r[2] for r in rows], dtype=np.int32),
                reflectivity=np.array([r[3] for r in rows], dtype=np.float64),
            ))
        objects = np.array(self.objects, dtype=np.float64).reshape(-1, 7)
        return Scene(
            layout=self.layout,
            primitives=tuple(primitives),
            objects=_move("box", objects, heading, origin),
            object_labels=np.array(self.object_labels, dtype=np.int16),
        )


def build_scene(rng: np.random.Generator, config: SceneConfig) -> Scene:
    """A random street: roads, sidewalks and terrain on the ground, objects where they belong.

    Counts in ``config`` are upper bounds: an object that finds no free spot is left out.
    """
    road_half_width, sidewalk = rng.uniform(3.5, 7.0), rng.uniform(1.5, 4.0)
    layout = StreetLayout(
        heading=rng.uniform(-np.pi, np.pi),
        main_offset=rng.uniform(-1, 1) * (road_half_width - 2.0),
        cross_at=rng.uniform(-0.6, 0.6) * config.extent if rng.random() < 0.5 else None,
        road_half_width=road_half_width,
        sidewalk_width=sidewalk,
    )
    w, kerb = road_half_width, road_half_width + sidewalk
    builder = _SceneBuilder(rng, layout, config.extent)

    def either_side(rng, distance):
        return rng.choice((-1.0, 1.0)) * distance

    def along_road(rng, lateral):
        return 0.0

    def with_traffic(rng, lateral):  # right-hand traffic, a little off the lane direction
        return (0.0 if lateral < 0 else np.pi) + rng.normal(0, 0.05)

    def any_way(rng, lateral):
        return rng.uniform(-np.pi, np.pi)

    builder.scatter(
        config.num_buildings, _building,
        lambda rng, half_width: either_side(rng, kerb + rng.uniform(0.5, 6) + half_width),
        along_road, min_clearance=kerb,
    )
    builder.scatter(
        config.num_trees, _tree,
        lambda rng, half_width: either_side(rng, kerb + rng.uniform(1, 8)),
        any_way, min_clearance=w + 0.5,
    )
    builder.scatter(
        config.num_poles, _pole,
        lambda rng, half_width: either_side(rng, w + rng.uniform(0.3, 0.6)),
        any_way, min_clearance=w,
    )
    builder.scatter(
        config.num_cars, _car,
        lambda rng, half_width: rng.uniform(-1, 1) * (w - half_width - 0.2),
        with_traffic, min_clearance=None,
    )
    builder.scatter(
        config.num_pedestrians, _pedestrian,
        lambda rng, half_width: either_side(rng, w + rng.uniform(0.4, sidewalk - 0.4)),
        any_way, min_clearance=w,
    )
    builder.scatter(
        config.num_cyclists, _cyclist,
        lambda rng, half_width: either_side(rng, w - rng.uniform(0.5, 1.2)),
        with_traffic, min_clearance=None,
    )
    return builder.finish()


def beam_directions(sensor: SensorProfile) -> tuple[np.ndarray, np.ndarray]:
    """Unit ray directions (R, 3), ring-major, and the ring of each ray (0 = lowest beam).

    The azimuth step is rounded so that a whole number of steps fills 360 degrees.
    """
    elevation = np.radians(np.linspace(sensor.fov_down_deg, sensor.fov_up_deg, sensor.beams))
    steps = max(int(round(360.0 / sensor.azimuth_step_deg)), 1)
    azimuth = np.arange(steps) * (2 * np.pi / steps)
    elevation, azimuth = np.meshgrid(elevation, azimuth, indexing="ij")
    dirs = np.stack([
        np.cos(elevation) * np.cos(azimuth),
        np.cos(elevation) * np.sin(azimuth),
        np.sin(elevation),
    ], -1).reshape(-1, 3)
    return dirs, np.repeat(np.arange(sensor.beams), steps)


def cast_rays(scene: Scene, sensor: SensorProfile, rng: np.random.Generator) -> Hits:
    """One sweep of ``sensor`` at (0, 0, height): nearest surface per beam, then the sensor's flaws.

    Range noise is along the ray, so a point keeps its beam's exact elevation;
    returns outside [min_range, max_range] after noise and dropped returns are removed.
    """
    dirs, ring = beam_directions(sensor)
    origin = np.array([0.0, 0.0, sensor.height])
    traced = trace(scene.primitives, origin, dirs)
    ground_range, ground_cos = intersect_ground(origin, dirs)
    on_ground = ground_range < traced.range
    true_range = np.where(on_ground, ground_range, traced.range)
    cos = np.where(on_ground, ground_cos, traced.cos_incidence)
    semantic, reflectivity = traced.semantic.copy(), traced.reflectivity.copy()
    ground_xy = origin[:2] + ground_range[on_ground, None] * dirs[on_ground, :2]
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


def generate_frame(seed: int, index: int, sensor: SensorProfile, scene: SceneConfig) -> Frame:
    """Frame ``index`` of the synthetic dataset ``seed``: a fresh scene and one sweep of it.

    A pure function of its arguments. Instance ids are renumbered to the boxes
    kept: a point with instance i > 0 belongs to ``boxes[i - 1]``, whose label
    ``box_labels[i - 1]`` is the point's semantic class. Only objects hit by at
    least one return get a box, in the order they were placed.
    """
    scene_rng, sensor_rng = np.random.default_rng([seed, index]).spawn(2)
    world = build_scene(scene_rng, scene)
    hits = cast_rays(world, sensor, sensor_rng)
    seen = np.unique(hits.instance[hits.instance > 0])
    instance = np.where(hits.instance > 0, np.searchsorted(seen, hits.instance) + 1, 0)
    boxes = world.objects[seen - 1]
    boxes[:, 2] -= sensor.height
    return Frame(
        points=hits.points,
        intensity=hits.intensity,
        ring=hits.ring,
        semantic=hits.semantic,
        instance=instance,
        boxes=boxes,
        box_labels=world.object_labels[seen - 1],
        pose=np.eye(4),
        sensor_origin=np.zeros(3),
        meta={"dataset": "synthetic", "sequence": f"{seed}", "index": index, "sensor": sensor.name},
    )
