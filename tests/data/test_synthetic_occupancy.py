from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import yaml

from occbench.data.raycast import Primitives, intersect_ground, trace
from occbench.data.synthetic import SceneConfig, build_scene
from occbench.data.synthetic_occupancy import semantic_occupancy
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX

PARAMS = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
SCENE_CONFIG = SceneConfig.from_dict(PARAMS["datasets"]["synthetic"]["scene"])
RANGE = (-50.0, -50.0, -5.0, 50.0, 50.0, 3.0)
VOXEL = 0.5
HEIGHT = 1.8
DIAGONAL = VOXEL * np.sqrt(3)
# Voxel layer holding the ground (z = -HEIGHT in LiDAR coordinates): [-2.0, -1.5).
GROUND_LAYER = 6


@dataclass(frozen=True)
class HandScene:
    """The part of a synthetic Scene that occupancy reads."""

    layout: object
    primitives: tuple[Primitives, ...]


class UniformGround:
    def __init__(self, name: str) -> None:
        self.label = CLASS_ID[name]

    def ground_class(self, xy: np.ndarray) -> np.ndarray:
        return np.full(len(xy), self.label, dtype=np.uint8)


class MovedLayout:
    """``layout`` seen from a frame that is rotated by ``yaw`` and shifted by ``shift`` in x, y."""

    def __init__(self, layout, yaw: float, shift: np.ndarray) -> None:
        self.layout, self.yaw, self.shift = layout, yaw, shift

    def ground_class(self, xy: np.ndarray) -> np.ndarray:
        return self.layout.ground_class(rotate(xy, self.yaw) + self.shift)


def rotate(xy: np.ndarray, yaw: float) -> np.ndarray:
    cos, sin = np.cos(yaw), np.sin(yaw)
    return np.stack([cos * xy[:, 0] - sin * xy[:, 1], sin * xy[:, 0] + cos * xy[:, 1]], -1)


def lidar_pose(yaw: float = 0.0, x: float = 0.0, y: float = 0.0, z: float = HEIGHT) -> np.ndarray:
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    pose[:3, 3] = x, y, z
    return pose


def pole(x: float, y: float, radius: float, height: float = 6.0) -> Primitives:
    return Primitives(
        "cylinder", np.array([[x, y, 0.0, height, radius]]), np.array([CLASS_ID["pole"]], np.uint8),
        np.zeros(1, np.int32), np.full(1, 0.6),
    )


def box(params, name: str) -> Primitives:
    return Primitives(
        "box", np.array([params], dtype=float), np.array([CLASS_ID[name]], np.uint8),
        np.zeros(1, np.int32), np.full(1, 0.5),
    )


def sweep(scene, pose: np.ndarray):
    """Directions (world), ranges and classes of a 32-beam sweep from the LiDAR at ``pose``."""
    elevation, azimuth = np.meshgrid(
        np.radians(np.linspace(-30, 10, 32)), np.radians(np.arange(0, 360, 1.0)), indexing="ij"
    )
    dirs = np.stack([
        np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)
    ], -1).reshape(-1, 3)
    origin = pose[:3, 3]
    traced = trace(scene.primitives, origin, dirs)
    ground_range, _ = intersect_ground(origin, dirs)
    on_ground = ground_range < traced.range
    distance = np.minimum(ground_range, traced.range)
    hit = np.isfinite(distance)
    semantic = traced.semantic.copy()
    ground_xy = origin[:2] + ground_range[on_ground, None] * dirs[on_ground, :2]
    semantic[on_ground] = scene.layout.ground_class(ground_xy)
    return dirs[hit], distance[hit], semantic[hit]


def to_lidar(points: np.ndarray, pose: np.ndarray) -> np.ndarray:
    return (points - pose[:3, 3]) @ pose[:3, :3]


@pytest.fixture(scope="module")
def street():
    """A params.yaml street seen from a yawed LiDAR away from the scene origin, and its grid."""
    scene = build_scene(np.random.default_rng(3), SCENE_CONFIG)
    # Within 1.2 m of the scene origin, where the scene keeps the ego vehicle's spot free.
    pose = lidar_pose(yaw=0.7, x=0.8, y=-0.6)
    return scene, pose, semantic_occupancy(scene, pose, RANGE, VOXEL)


def test_grid_shape_follows_range_and_voxel_size(street):
    scene, pose, grid = street
    assert grid.labels.shape == (200, 200, 16) and grid.labels.dtype == np.uint8
    assert grid.point_range == RANGE and grid.voxel_size == (VOXEL,) * 3
    small = semantic_occupancy(scene, pose, (-4, -2, -2, 4, 2, 2), (0.5, 0.25, 0.4))
    assert small.labels.shape == (16, 16, 10)
    with pytest.raises(ValueError, match="whole number of voxels"):
        semantic_occupancy(scene, pose, RANGE, 0.3)
    with pytest.raises(ValueError, match="not a rigid transform"):
        semantic_occupancy(scene, np.diag([2.0, 1, 1, 1]), RANGE, VOXEL)


def test_lidar_hits_fall_in_voxels_of_their_class(street):
    scene, pose, grid = street
    dirs, distance, semantic = sweep(scene, pose)
    voxel, inside = grid.voxel_of(to_lidar(pose[:3, 3] + distance[:, None] * dirs, pose))
    assert inside.sum() > 5000
    labels = grid.labels[tuple(voxel[inside].T)]
    assert (labels == semantic[inside]).mean() >= 0.95
    # Objects above the ground layer (which the ground keeps where it reaches deeper).
    above = to_lidar(pose[:3, 3] + distance[:, None] * dirs, pose)[inside, 2] >= RANGE[2] + 7 * VOXEL
    seen = 0
    for name in ("building", "vegetation", "pole", "car", "pedestrian", "cyclist"):
        hits = above & (semantic[inside] == CLASS_ID[name])
        if hits.sum() >= 10:
            seen += 1
            assert (labels[hits] == CLASS_ID[name]).mean() >= 0.95, name
    assert seen >= 3


def test_space_well_in_front_of_hits_is_empty(street):
    scene, pose, grid = street
    dirs, distance, _ = sweep(scene, pose)
    free = np.clip(distance - 1.5 * DIAGONAL, 0.0, None)  # ray length surely in front of the hit
    samples = np.concatenate([
        pose[:3, 3] + (fraction * free)[:, None] * dirs for fraction in (0.3, 0.6, 0.9)
    ])
    voxel, inside = grid.voxel_of(to_lidar(samples, pose))
    empty = grid.labels[tuple(voxel[inside].T)] == EMPTY_INDEX
    assert inside.sum() > 20000 and empty.mean() >= 0.95
    # A grazing ray runs through the ground layer long before it hits: judge those apart.
    clear_of_ground = samples[inside, 2] > DIAGONAL
    assert clear_of_ground.mean() > 0.5 and empty[clear_of_ground].mean() >= 0.98


def test_thin_pole_is_kept_in_exactly_the_voxels_it_crosses():
    # Voxel faces lie at multiples of 0.5 m. A 0.08 m pole astride x = 10 fills two columns;
    # one at a voxel corner four; one inside a column only that column.
    poles = [pole(10.02, 5.25, 0.08), pole(-12.0, 7.0, 0.08), pole(20.3, -8.2, 0.08)]
    expected = {(119, 110), (120, 110), (75, 113), (75, 114), (76, 113), (76, 114), (140, 83)}
    scene = HandScene(UniformGround("terrain"), tuple(poles))
    labels = semantic_occupancy(scene, lidar_pose(), RANGE, VOXEL).labels
    columns = {tuple(c) for c in np.argwhere((labels == CLASS_ID["pole"]).any(2))}
    assert columns == expected
    for i, j in expected:  # the whole height, from above the ground to the grid top
        assert (labels[i, j, GROUND_LAYER + 1 :] == CLASS_ID["pole"]).all()
    # In the ground layer a pole wins only where it holds the voxel centre: the third one.
    ground = [labels[i, j, GROUND_LAYER] for i, j in sorted(expected)]
    assert ground == [CLASS_ID["terrain"]] * 6 + [CLASS_ID["pole"]]


def test_below_ground_is_ignored_and_ground_follows_layout():
    layout = build_scene(np.random.default_rng(5), SCENE_CONFIG).layout
    pose = lidar_pose(yaw=0.3, x=2.0, y=-3.0)
    grid = semantic_occupancy(HandScene(layout, ()), pose, RANGE, VOXEL)
    assert (grid.labels[:, :, :GROUND_LAYER] == IGNORE_INDEX).all()
    assert (grid.labels[:, :, GROUND_LAYER + 1 :] == EMPTY_INDEX).all()
    # Each ground voxel against its footprint sampled 5 x 5 in world coordinates.
    centres = grid.centres()[:, :, GROUND_LAYER, :2].reshape(-1, 2)
    steps = (np.arange(5) - 2) * VOXEL / 5
    offsets = np.stack(np.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)
    local = (centres[:, None] + offsets[None]).reshape(-1, 2)
    world = rotate(local, 0.3) + pose[:2, 3]
    samples = layout.ground_class(world).reshape(len(centres), -1)
    label = grid.labels[:, :, GROUND_LAYER].reshape(-1)
    uniform = (samples == samples[:, :1]).all(1)
    assert uniform.mean() > 0.9 and len(np.unique(label)) >= 2
    assert (label[uniform] == samples[uniform, 0]).all()
    share = (samples == label[:, None]).mean(1)
    assert (share >= 0.5).mean() >= 0.99  # mixed voxels take their majority class


def test_ground_on_a_voxel_face_belongs_to_the_voxel_above():
    scene = HandScene(UniformGround("road"), ())
    labels = semantic_occupancy(scene, lidar_pose(z=2.0), RANGE, VOXEL).labels
    assert (labels[:, :, :GROUND_LAYER] == IGNORE_INDEX).all()
    assert (labels[:, :, GROUND_LAYER] == CLASS_ID["road"]).all()


def test_moving_the_lidar_equals_moving_the_scene_the_other_way(street):
    scene, pose, grid = street
    yaw, shift = 0.7, pose[:2, 3]
    moved = []
    for group in scene.primitives:
        params = group.params.copy()
        params[:, :2] = rotate(params[:, :2] - shift, -yaw)
        if group.kind == "box":
            params[:, 6] -= yaw
        moved.append(Primitives(group.kind, params, group.semantic, group.instance, group.reflectivity))
    other = HandScene(MovedLayout(scene.layout, yaw, shift), tuple(moved))
    labels = semantic_occupancy(other, lidar_pose(), RANGE, VOXEL).labels
    assert (labels != grid.labels).sum() <= 10  # float rounding on exact voxel faces only
    assert (grid.labels < EMPTY_INDEX).sum() > 40000


def test_things_win_over_stuff_the_deeper_over_a_grazing_one_and_ground_under_cars():
    building = box([1.0, 0.25, 2.0, 2.0, 0.5, 4.0, 0.0], "building")  # x from 0 to 2.0
    barrier = box([2.9, 0.25, 0.5, 1.8, 0.5, 1.0, 0.0], "barrier")  # x from 2.0 to 3.8
    car = box([1.25, 0.25, 0.5, 0.3, 0.4, 0.6, 0.0], "car")  # inside the building's voxels
    parked = box([8.0, 0.25, 0.6, 4.0, 0.5, 0.8, 0.0], "car")  # x from 6 to 10, z from 0.2
    scene = HandScene(UniformGround("road"), (building, barrier, car, parked))
    labels = semantic_occupancy(scene, lidar_pose(), RANGE, VOXEL).labels
    names = {index: name for name, index in CLASS_ID.items()}
    row = [names.get(int(v)) for v in labels[100:109, 100, GROUND_LAYER]]  # x from 0 to 4.5
    assert row == [
        "building", "building", "car", "building", "barrier", "barrier", "barrier", "barrier", "road"
    ]
    # The ground layer reaches 0.3 m; the parked car only its top 0.1 m from 0.2 m up.
    assert (labels[112:120, 100, GROUND_LAYER] == CLASS_ID["road"]).all()
    assert (labels[112:120, 100, GROUND_LAYER + 1] == CLASS_ID["car"]).all()
