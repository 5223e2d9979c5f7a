"""A tiny but complete nuScenes table set in the devkit's JSON format, built around one real sweep.

Three scenes of version v1.0-mini:
    scene-0061  mini_train  keyframes at 0 and 0.5 s, two non-keyframe sweeps between them,
                            annotated boxes (a static car around real points, a walking
                            pedestrian, a traffic cone overlapping the car, an animal)
    scene-0103  mini_val    keyframes at 0 and 0.5 s, no annotations
    scene-0077  test split  one keyframe: in no train/val split of v1.0-mini

Every scene's world is static: the real sweep placed at the scene's first LiDAR
pose. Each LIDAR_TOP file (keyframe or sweep) holds that same world seen from
its own made-up ego pose, so motion compensation can be checked point by point.
The lidarseg category indices are deliberately not the official ones, so a
reader that hard-codes raw indices fails.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REAL = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "real"
SWEEP = REAL / "nuscenes_LIDAR_TOP_1532402927647951.pcd.bin"
needs_real = pytest.mark.skipif(
    not SWEEP.exists(), reason=f"real LiDAR test files are not at {REAL.resolve()} (../shared/data/real)")
needs_devkit = pytest.mark.skipif(
    importlib.util.find_spec("nuscenes") is None,
    reason="nuscenes-devkit is not installed (pip install --no-deps nuscenes-devkit==1.2.0 and its imports)")

VERSION = "v1.0-mini"
# The official lidarseg category names, in the official order.
CATEGORIES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade",
    "static.other", "static.vegetation", "vehicle.ego",
)
# Reversed official indices: noise is 31, vehicle.ego 0.
CATEGORY_INDEX = {name: len(CATEGORIES) - 1 - i for i, name in enumerate(CATEGORIES)}

LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)
LIDAR_YAW = -math.pi / 2  # nuScenes' LIDAR_TOP looks right: its x axis is the car's -y
CAMERA_TRANSLATION = (1.70079, 0.0159, 1.51095)
# Camera axes (x right, y down, z forward) in the ego frame (x forward, y left, z up).
CAMERA_ROTATION = np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])
CAMERA_QUATERNION = (0.5, -0.5, 0.5, -0.5)  # w, x, y, z of CAMERA_ROTATION
CAMERA_DELAY_US = 12_000  # the camera fires after the LiDAR, from another ego pose
IMAGE_SIZE = (64, 48)  # width, height
INTRINSICS = np.array([[40.0, 0.0, 32.0], [0.0, 40.0, 24.0], [0.0, 0.0, 1.0]])


@dataclass(frozen=True)
class _SceneSpec:
    name: str
    log: str
    location: str
    start_us: int
    ego_start: tuple[float, float, float]
    ego_yaw: float
    speed: float  # m/s along the initial heading
    yaw_rate: float  # rad/s
    lidar: tuple[tuple[int, bool], ...]  # (µs after start, is keyframe) of each LIDAR_TOP sweep


SCENES = (
    _SceneSpec("scene-0061", "n015-2018-07-24-11-22-45+0800", "singapore-onenorth", 1532402927647951,
               (411.3, 1180.9, 0.0), 0.4, 8.0, 0.2,
               ((0, True), (150_000, False), (300_000, False), (500_000, True))),
    _SceneSpec("scene-0103", "n008-2018-08-01-15-16-36-0400", "boston-seaport", 1533151603547590,
               (1000.0, 900.0, 0.0), -2.0, 3.0, -0.1, ((0, True), (500_000, True))),
    _SceneSpec("scene-0077", "n015-2018-07-24-11-13-19+0800", "singapore-onenorth", 1532402000000000,
               (300.0, 1000.0, 0.0), 1.0, 5.0, 0.0, ((0, True),)),
)


@dataclass(frozen=True)
class ObjectSpec:
    category: str
    attribute: str | None
    # Placement in the LiDAR frame of scene-0061's first keyframe.
    center: tuple[float, float, float]
    length: float
    width: float
    height: float
    yaw: float
    velocity: tuple[float, float, float]  # world m/s
    keyframes: tuple[int, ...]  # which keyframes of scene-0061 annotate it
    radar_points: int = 0


OBJECTS = (
    ObjectSpec("vehicle.car", "vehicle.parked", (-5.0, -4.6, -1.0), 4.4, 1.9, 1.8, 1.45, (0, 0, 0), (0, 1)),
    ObjectSpec("human.pedestrian.adult", "pedestrian.moving", (3.0, 7.0, -1.1), 0.8, 0.7, 1.8, 0.3,
                (1.2, -0.5, 0.0), (0, 1)),
    ObjectSpec("movable_object.trafficcone", None, (-5.8, -2.6, -1.3), 0.8, 0.8, 1.0, 0.0, (0, 0, 0), (0,)),
    ObjectSpec("animal", None, (10.0, -3.0, -1.5), 0.8, 0.4, 0.6, 0.2, (0, 0, 0), (0,)),
)


@dataclass
class PlacedBox:
    """An annotated box as a converter must report it: in its keyframe's LiDAR frame."""

    category: str
    center: np.ndarray
    length: float
    width: float
    height: float
    yaw: float
    velocity: np.ndarray  # world m/s; NaN where the object has a single annotation
    attribute: str  # '' for none
    lidar_points: int  # the real points inside, as the table's num_lidar_pts
    radar_points: int


@dataclass
class Keyframe:
    scene: str
    index: int
    sample_token: str
    lidar_token: str
    timestamp: int  # µs
    lidar_path: Path
    lidar_to_world: np.ndarray
    camera_to_world: np.ndarray
    image: np.ndarray
    names: np.ndarray  # lidarseg ground truth: the category name of each point
    sweeps: list[tuple[Path, np.ndarray]]  # earlier non-keyframe sweeps, newest first: file, sensor-to-world
    boxes: list[PlacedBox] = field(default_factory=list)

    @property
    def frame_id(self) -> str:
        return f"{self.scene}_{self.timestamp}"


@dataclass
class NuScenesFixture:
    root: Path
    keyframes: list[Keyframe]

    def keyframe(self, scene: str, index: int) -> Keyframe:
        return next(k for k in self.keyframes if k.scene == scene and k.index == index)


def _token(*parts: object) -> str:
    """A stable 32-hex token, as nuScenes spells them, from a record's identity."""
    return hashlib.md5("/".join(map(str, parts)).encode()).hexdigest()


def _yaw_matrix(translation, yaw: float) -> np.ndarray:
    matrix = np.eye(4)
    matrix[:2, :2] = [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]]
    matrix[:3, 3] = translation
    return matrix


def _yaw_quaternion(yaw: float) -> list[float]:
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


def _yaw_of(matrix: np.ndarray) -> float:
    return math.atan2(matrix[1, 0], matrix[0, 0])


def box_mask(points: np.ndarray, center, length: float, width: float, height: float, yaw: float) -> np.ndarray:
    """Points (N, 3) inside an upright box whose length runs along ``yaw``."""
    local = (points - np.asarray(center))[:, :2] @ np.array(
        [[math.cos(yaw), -math.sin(yaw)], [math.sin(yaw), math.cos(yaw)]])
    return ((np.abs(local[:, 0]) <= length / 2) & (np.abs(local[:, 1]) <= width / 2)
            & (np.abs(points[:, 2] - center[2]) <= height / 2))


def _ego_pose(scene: _SceneSpec, offset_us: int) -> np.ndarray:
    seconds = offset_us * 1e-6
    heading = np.array([math.cos(scene.ego_yaw), math.sin(scene.ego_yaw), 0.0])
    return _yaw_matrix(np.asarray(scene.ego_start) + scene.speed * seconds * heading,
                      scene.ego_yaw + scene.yaw_rate * seconds)


LIDAR_TO_EGO = _yaw_matrix(LIDAR_TRANSLATION, LIDAR_YAW)
CAMERA_TO_EGO = np.eye(4)
CAMERA_TO_EGO[:3, :3] = CAMERA_ROTATION
CAMERA_TO_EGO[:3, 3] = CAMERA_TRANSLATION


def _image(scene_index: int, frame_index: int) -> np.ndarray:
    width, height = IMAGE_SIZE
    y, x = np.mgrid[:height, :width]
    return np.stack([(4 * x + 50 * frame_index) % 256, (5 * y) % 256,
                     np.full_like(x, 60 * scene_index + 7)], axis=-1).astype(np.uint8)


class _Tables:
    """The JSON tables being filled; ``root`` is the dataroot their files go under."""

    def __init__(self, root: Path):
        self.root = root
        self.rows: dict[str, list[dict]] = {name: [] for name in (
            "category", "attribute", "visibility", "instance", "sensor", "calibrated_sensor", "ego_pose",
            "log", "scene", "sample", "sample_data", "sample_annotation", "map", "lidarseg")}

    def add(self, table: str, **row) -> dict:
        self.rows[table].append(row)
        return row

    def write(self) -> None:
        folder = self.root / VERSION
        folder.mkdir(parents=True)
        for name, rows in self.rows.items():
            (folder / f"{name}.json").write_text(json.dumps(rows, indent=0))


def _link(rows: list[dict]) -> None:
    for before, after in zip(rows, rows[1:]):
        before["next"], after["prev"] = after["token"], before["token"]


def build_nuscenes(root: Path, real_sweep: Path, objects: tuple[ObjectSpec, ...] = OBJECTS) -> NuScenesFixture:
    """Write the table set under ``root`` (the dataroot) and describe what a converter must find;
    ``objects`` are annotated in scene-0061."""
    real = np.fromfile(real_sweep, dtype=np.float32).reshape(-1, 5)
    tables = _Tables(root)
    for name in CATEGORIES:
        tables.add("category", token=_token("category", name), name=name, description=f"{name} objects",
                   index=CATEGORY_INDEX[name])
    for name in sorted({spec.attribute for spec in objects if spec.attribute}):
        tables.add("attribute", token=_token("attribute", name), name=name, description=name)
    for level, band in enumerate(("v0-40", "v40-60", "v60-80", "v80-100"), start=1):
        tables.add("visibility", token=str(level), level=band, description=f"visibility of {band}%")
    for channel, modality in (("LIDAR_TOP", "lidar"), ("CAM_FRONT", "camera")):
        tables.add("sensor", token=_token("sensor", channel), channel=channel, modality=modality)
    map_token = _token("map", "semantic_prior")
    (root / "maps").mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / "maps" / f"{map_token}.png")
    tables.add("map", token=map_token, log_tokens=[_token("log", s.log) for s in SCENES],
               category="semantic_prior", filename=f"maps/{map_token}.png")

    keyframes = []
    for scene_index, scene in enumerate(SCENES):
        keyframes += _add_scene(tables, scene, scene_index, real)
    _add_objects(tables, keyframes, real, objects)
    for keyframe in keyframes:
        _write_lidarseg(tables, keyframe)
    tables.write()
    return NuScenesFixture(root, keyframes)


def _add_scene(tables: _Tables, scene: _SceneSpec, scene_index: int, real: np.ndarray) -> list[Keyframe]:
    log_token, scene_token = _token("log", scene.log), _token("scene", scene.name)
    tables.add("log", token=log_token, logfile=scene.log, vehicle=scene.log[:4],
               date_captured=scene.log[5:15], location=scene.location)
    calibration = {}
    for channel, translation, quaternion, intrinsic in (
        ("LIDAR_TOP", LIDAR_TRANSLATION, _yaw_quaternion(LIDAR_YAW), []),
        ("CAM_FRONT", CAMERA_TRANSLATION, list(CAMERA_QUATERNION), INTRINSICS.tolist()),
    ):
        calibration[channel] = tables.add(
            "calibrated_sensor", token=_token("calibration", scene.name, channel),
            sensor_token=_token("sensor", channel), translation=list(translation), rotation=quaternion,
            camera_intrinsic=intrinsic)["token"]

    lidar_rows, camera_rows, samples, keyframes = [], [], [], []
    world_from_first = _ego_pose(scene, 0) @ LIDAR_TO_EGO
    world_points = real[:, :3].astype(np.float64) @ world_from_first[:3, :3].T + world_from_first[:3, 3]
    sweeps: list[tuple[Path, np.ndarray]] = []
    for offset, is_key in scene.lidar:
        timestamp = scene.start_us + offset
        lidar_to_world = _ego_pose(scene, offset) @ LIDAR_TO_EGO
        folder = "samples" if is_key else "sweeps"
        filename = f"{folder}/LIDAR_TOP/{scene.log}__LIDAR_TOP__{timestamp}.pcd.bin"
        path = tables.root / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        if offset == 0:
            real.tofile(path)  # the real sweep itself, byte for byte
        else:
            seen = real.copy()
            world_to_lidar = np.linalg.inv(lidar_to_world)
            seen[:, :3] = world_points @ world_to_lidar[:3, :3].T + world_to_lidar[:3, 3]
            seen.tofile(path)
        sample_data_token = _token("sample_data", scene.name, "LIDAR_TOP", timestamp)
        tables.add("ego_pose", token=sample_data_token, timestamp=timestamp,
                   rotation=_yaw_quaternion(_yaw_of(_ego_pose(scene, offset))),
                   translation=_ego_pose(scene, offset)[:3, 3].tolist())
        sample_token = _token("sample", scene.name, timestamp) if is_key else None
        lidar_rows.append(tables.add(
            "sample_data", token=sample_data_token, sample_token=sample_token,
            ego_pose_token=sample_data_token, calibrated_sensor_token=calibration["LIDAR_TOP"],
            timestamp=timestamp, fileformat="pcd", is_key_frame=is_key, height=0, width=0,
            filename=filename, prev="", next=""))
        if not is_key:
            sweeps.insert(0, (path, lidar_to_world))
            continue
        samples.append(tables.add("sample", token=sample_token, timestamp=timestamp, prev="", next="",
                                  scene_token=scene_token))
        camera_row, camera_to_world, image = _add_camera(tables, scene, scene_index, len(keyframes),
                                                         sample_token, offset, calibration["CAM_FRONT"])
        camera_rows.append(camera_row)
        keyframes.append(Keyframe(
            scene=scene.name, index=len(keyframes), sample_token=sample_token, lidar_token=sample_data_token,
            timestamp=timestamp, lidar_path=path, lidar_to_world=lidar_to_world,
            camera_to_world=camera_to_world, image=image, names=_stuff_names(real), sweeps=sweeps))
        sweeps = []
    # A sweep belongs to the keyframe sample that follows it.
    for row in lidar_rows:
        if row["sample_token"] is None:
            row["sample_token"] = next(r["sample_token"] for r in lidar_rows
                                       if r["is_key_frame"] and r["timestamp"] > row["timestamp"])
    for rows in (lidar_rows, camera_rows, samples):
        _link(rows)
    tables.add("scene", token=scene_token, log_token=log_token, nbr_samples=len(samples),
               first_sample_token=samples[0]["token"], last_sample_token=samples[-1]["token"],
               name=scene.name, description=f"fixture {scene.name}")
    return keyframes


def _add_camera(tables: _Tables, scene: _SceneSpec, scene_index: int, frame_index: int, sample_token: str,
                lidar_offset: int, calibration_token: str) -> tuple[dict, np.ndarray, np.ndarray]:
    offset = lidar_offset + CAMERA_DELAY_US
    timestamp = scene.start_us + offset
    filename = f"samples/CAM_FRONT/{scene.log}__CAM_FRONT__{timestamp}.png"
    (tables.root / filename).parent.mkdir(parents=True, exist_ok=True)
    image = _image(scene_index, frame_index)
    Image.fromarray(image).save(tables.root / filename)
    ego = _ego_pose(scene, offset)
    sample_data_token = _token("sample_data", scene.name, "CAM_FRONT", timestamp)
    tables.add("ego_pose", token=sample_data_token, timestamp=timestamp, rotation=_yaw_quaternion(_yaw_of(ego)),
               translation=ego[:3, 3].tolist())
    row = tables.add(
        "sample_data", token=sample_data_token, sample_token=sample_token, ego_pose_token=sample_data_token,
        calibrated_sensor_token=calibration_token, timestamp=timestamp, fileformat="png", is_key_frame=True,
        height=IMAGE_SIZE[1], width=IMAGE_SIZE[0], filename=filename, prev="", next="")
    return row, ego @ CAMERA_TO_EGO, image


def _stuff_names(real: np.ndarray) -> np.ndarray:
    """Lidarseg names of the background, from the real sweep's own coordinates."""
    x, y, z = real[:, :3].T
    distance = np.hypot(x, y)
    names = np.full(len(real), "static.manmade", dtype="<U40")
    names[z < -1.6] = "flat.driveable_surface"
    names[distance > 40] = "static.vegetation"
    names[distance < 1] = "vehicle.ego"
    names[::500] = "noise"
    return names


def _add_objects(tables: _Tables, keyframes: list[Keyframe], real: np.ndarray,
                 objects: tuple[ObjectSpec, ...]) -> None:
    """Annotate ``objects`` in scene-0061 and write their points' names into its keyframes' ground truth."""
    annotated = [k for k in keyframes if k.scene == "scene-0061"]
    first = annotated[0].lidar_to_world
    world_points = real[:, :3].astype(np.float64) @ first[:3, :3].T + first[:3, 3]
    for number, spec in enumerate(objects):
        instance_token = _token("instance", spec.category, number)
        center = first[:3, :3] @ np.asarray(spec.center) + first[:3, 3]
        world_yaw = spec.yaw + _yaw_of(first)
        velocity = np.asarray(spec.velocity, float) if len(spec.keyframes) > 1 else np.full(3, np.nan)
        rows = []
        for index in spec.keyframes:
            keyframe = annotated[index]
            at = center + np.asarray(spec.velocity) * (keyframe.timestamp - annotated[0].timestamp) * 1e-6
            inside = box_mask(world_points, at, spec.length, spec.width, spec.height, world_yaw)
            keyframe.names[inside] = spec.category
            to_lidar = np.linalg.inv(keyframe.lidar_to_world)
            keyframe.boxes.append(PlacedBox(
                spec.category, to_lidar[:3, :3] @ at + to_lidar[:3, 3], spec.length, spec.width, spec.height,
                math.remainder(world_yaw - _yaw_of(keyframe.lidar_to_world), 2 * math.pi), velocity,
                spec.attribute or "", int(inside.sum()), spec.radar_points))
            rows.append(tables.add(
                "sample_annotation", token=_token("annotation", spec.category, number, index),
                sample_token=keyframe.sample_token, instance_token=instance_token, visibility_token="4",
                attribute_tokens=[_token("attribute", spec.attribute)] if spec.attribute else [],
                translation=at.tolist(), size=[spec.width, spec.length, spec.height],
                rotation=_yaw_quaternion(world_yaw), prev="", next="", num_lidar_pts=int(inside.sum()),
                num_radar_pts=spec.radar_points))
        _link(rows)
        tables.add("instance", token=instance_token, category_token=_token("category", spec.category),
                   nbr_annotations=len(rows), first_annotation_token=rows[0]["token"],
                   last_annotation_token=rows[-1]["token"])


def _write_lidarseg(tables: _Tables, keyframe: Keyframe) -> None:
    names, inverse = np.unique(keyframe.names, return_inverse=True)
    labels = np.array([CATEGORY_INDEX[name] for name in names], np.uint8)[inverse]
    filename = f"lidarseg/{VERSION}/{keyframe.lidar_token}_lidarseg.bin"
    (tables.root / filename).parent.mkdir(parents=True, exist_ok=True)
    labels.tofile(tables.root / filename)
    tables.add("lidarseg", token=keyframe.lidar_token, sample_data_token=keyframe.lidar_token, filename=filename)
