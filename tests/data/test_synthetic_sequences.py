"""Scenes as sequences: ego motion, moving objects, poses, and the dataset built from them."""

import numpy as np
import pytest

from occbench.data.convert import run_conversion
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.dataset import FrameIndex
from occbench.data.frame import _REQUIRED_DTYPES, cameras, occupancy_grid
from occbench.data.synthetic import (
    EGO_FOOTPRINT,
    SceneConfig,
    SensorProfile,
    SequenceConfig,
    build_world,
    generate_frame,
    scene_world,
)
from occbench.data.taxonomy import CLASS_ID

SCENE = SceneConfig(extent=40.0, num_buildings=10, num_trees=14, num_poles=10, num_cars=12,
                    num_pedestrians=8, num_cyclists=4, num_trucks=4, num_barriers=6)
SEQUENCE = SequenceConfig(frames_per_scene=8, frame_interval=0.5, ego_max_speed=14.0, moving_fraction=0.6)
SENSOR = SensorProfile.from_dict({"profile": "nuscenes32", "azimuth_step_deg": 0.8, "dropout": 0.0})
SEED = 0


def driving_scene() -> int:
    """The first scene whose ego moves (the same one every run: worlds are seeded)."""
    return next(s for s in range(10) if scene_world(SEED, s, SCENE, SEQUENCE).ego_speed > 0)


@pytest.fixture(scope="module")
def sequence():
    scene = driving_scene()
    return scene, [generate_frame(SEED, scene, k, SENSOR, SCENE, SEQUENCE) for k in range(3)]


def to_world(pose: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ pose[:3, :3].T + pose[:3, 3]


def world_boxes(frame) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Track id -> (box centre, velocity) in world coordinates."""
    rotation = frame.pose[:3, :3]
    centres = to_world(frame.pose, frame.boxes[:, :3].astype(np.float64))
    velocity = np.pad(frame.extras["box_velocity"].astype(np.float64), ((0, 0), (0, 1))) @ rotation.T
    return {int(t): (c, v[:2]) for t, c, v in zip(frame.extras["box_track_id"], centres, velocity)}


def distance_to_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance from each point to the nearest surface of any of the boxes (K, 7)."""
    best = np.full(len(points), np.inf)
    for box in boxes:
        cos, sin = np.cos(box[6]), np.sin(box[6])
        offset = points - box[:3]
        local = np.abs(np.stack([cos * offset[:, 0] + sin * offset[:, 1],
                                 -sin * offset[:, 0] + cos * offset[:, 1], offset[:, 2]], 1))
        excess = local - box[3:6] / 2
        outside = np.linalg.norm(np.maximum(excess, 0), axis=1)
        inside = np.where((excess <= 0).all(1), -excess.max(1), 0.0)
        best = np.minimum(best, outside + inside)
    return best


def test_the_ego_drives_forward_along_its_heading(sequence):
    scene, frames = sequence
    speed = scene_world(SEED, scene, SCENE, SEQUENCE).ego_speed
    for before, after in zip(frames, frames[1:]):
        step = after.pose[:3, 3] - before.pose[:3, 3]
        np.testing.assert_allclose(np.linalg.norm(step), speed * SEQUENCE.frame_interval, rtol=1e-9)
        np.testing.assert_allclose(step / np.linalg.norm(step), before.pose[:3, 0], atol=1e-9)
        assert after.pose[2, 3] == SENSOR.height
    # Speeds differ between scenes, and some egos stand still.
    speeds = [build_world(np.random.default_rng([SEED, s]), SCENE, SEQUENCE).ego_speed for s in range(12)]
    assert min(speeds) == 0 and len(set(speeds)) > 5 and max(speeds) <= SEQUENCE.ego_max_speed


def test_static_surfaces_stay_put_in_the_world(sequence):
    """Points of buildings and parked things, mapped to the world with each frame's pose,
    lie on the same surfaces in every frame."""
    scene, frames = sequence
    world = scene_world(SEED, scene, SCENE, SEQUENCE)
    buildings = next(g for g in world.primitives if g.kind == "box")
    buildings = buildings.params[buildings.semantic == CLASS_ID["building"]]
    noise = 5 * SENSOR.range_noise_std
    for f in frames:
        points = to_world(f.pose, f.points[f.semantic == CLASS_ID["building"]].astype(np.float64))
        assert len(points) > 100
        assert np.quantile(distance_to_boxes(points, buildings), 0.999) < noise
    static_seen = 0
    for before, after in zip(frames, frames[1:]):
        boxes_before, boxes_after = world_boxes(before), world_boxes(after)
        for track in boxes_before.keys() & boxes_after.keys():
            if not boxes_before[track][1].any():
                np.testing.assert_allclose(boxes_after[track][0], boxes_before[track][0], atol=1e-3)
                static_seen += 1
    assert static_seen > 0


def test_moving_objects_move_by_velocity_times_interval(sequence):
    _, frames = sequence
    moving_seen = 0
    for before, after in zip(frames, frames[1:]):
        boxes_before, boxes_after = world_boxes(before), world_boxes(after)
        for track in boxes_before.keys() & boxes_after.keys():
            (centre, velocity), (later, _) = boxes_before[track], boxes_after[track]
            np.testing.assert_allclose(later[:2] - centre[:2], velocity * SEQUENCE.frame_interval, atol=2e-3)
            moving_seen += bool(np.linalg.norm(velocity) > 0.5)
    assert moving_seen > 0


def test_boxes_are_in_lidar_axes_and_moving_things_face_their_motion(sequence):
    _, frames = sequence
    for f in frames:
        velocity = f.extras["box_velocity"]
        moving = np.linalg.norm(velocity, axis=1) > 0.5
        heading = np.stack([np.cos(f.boxes[moving, 6]), np.sin(f.boxes[moving, 6])], 1)
        direction = velocity[moving] / np.linalg.norm(velocity[moving], axis=1)[:, None]
        np.testing.assert_allclose(heading, direction, atol=1e-5)


def test_nothing_ever_overlaps_anything_else_or_the_ego():
    """Sampled over a long scene: footprints (street-aligned rectangles) of all objects stay apart."""
    sequence = SequenceConfig(frames_per_scene=41, frame_interval=0.5, ego_max_speed=14.0,
                              moving_fraction=0.7)
    for scene in range(3):
        world = build_world(np.random.default_rng(scene), SCENE, sequence)
        heading = world.layout.heading
        for t in np.linspace(0, sequence.duration, 81):
            boxes = world.scene_at(t).objects
            centre = world.layout.to_street(boxes[:, :2])
            yaw = boxes[:, 6] - heading
            cos, sin = np.abs(np.cos(yaw)), np.abs(np.sin(yaw))
            length, width = boxes[:, 3], boxes[:, 4]
            half = np.stack([cos * length + sin * width, sin * length + cos * width], 1) / 2
            ego = world.layout.to_street(world.ego_pose(t)[None, :2, 3])[0]
            lo = np.vstack([centre - half, ego + EGO_FOOTPRINT[:2]])
            hi = np.vstack([centre + half, ego + EGO_FOOTPRINT[2:]])
            overlap = ((lo[:, None] < hi[None]) & (lo[None] < hi[:, None])).all(-1)
            np.fill_diagonal(overlap, False)
            assert not overlap.any(), (scene, t, np.argwhere(overlap)[:3])


def test_a_frame_made_alone_equals_the_same_frame_made_after_its_predecessors(sequence):
    scene, frames = sequence
    scene_world.cache_clear()
    alone = generate_frame(SEED, scene, 2, SENSOR, SCENE, SEQUENCE)
    for name in _REQUIRED_DTYPES:
        assert getattr(alone, name).tobytes() == getattr(frames[2], name).tobytes(), name
    for name, value in alone.extras.items():
        assert value.tobytes() == frames[2].extras[name].tobytes(), name
    assert alone.meta == frames[2].meta


def settings(**changes) -> dict:
    base = {
        "kind": "synthetic", "seed": 3, "num_scenes": 4, "frames_per_scene": 3, "frame_interval": 0.5,
        "val_fraction": 0.25, "ego_max_speed": 14.0, "moving_fraction": 0.5,
        "sensor": {"profile": "nuscenes32", "beams": 16, "azimuth_step_deg": 2.0},
        "scene": {"extent": 40.0, "num_buildings": 6, "num_trees": 6, "num_poles": 4, "num_cars": 6,
                  "num_trucks": 2, "num_pedestrians": 4, "num_cyclists": 2, "num_barriers": 4},
        "occupancy": {"range": [-20.0, -20.0, -4.0, 20.0, 20.0, 4.0], "voxel_size": [1.0, 1.0, 1.0]},
        "cameras": [{"name": "front", "width": 64, "height": 32, "hfov_deg": 90.0}],
    }
    return {**base, **changes}


def test_converter_lists_scenes_and_keeps_each_scene_in_one_split():
    sources = SyntheticConverter(settings(num_scenes=5, val_fraction=0.4)).sources()
    assert [s.frame_id for s in sources[:4]] == ["0000_000", "0000_001", "0000_002", "0001_000"]
    assert len(sources) == 15 and {s.scene for s in sources} == {f"{i:04d}" for i in range(5)}
    splits = {s.scene: s.split for s in sources}
    assert all(splits[s.scene] == s.split for s in sources)
    assert [splits[f"{i:04d}"] for i in range(5)] == ["train"] * 3 + ["val"] * 2
    # Every split keeps at least one scene.
    two = SyntheticConverter(settings(num_scenes=2, val_fraction=0.9)).sources()
    assert {s.split for s in two} == {"train", "val"}
    with pytest.raises(ValueError, match="num_scenes is 1"):
        SyntheticConverter(settings(num_scenes=1))
    with pytest.raises(ValueError, match="unknown sensor profile"):
        SyntheticConverter(settings(sensor={"profile": "hdl128"}))


def test_conversion_with_workers_writes_the_generated_frames(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = settings()
    converter = SyntheticConverter(config)
    assert run_conversion("synthetic", converter, config, workers=2) == []
    index = FrameIndex("results/data/synthetic/index.json")
    assert len(index.ids("train")) == 9 and len(index.ids("val")) == 3
    written = index.load("0002_001")
    direct = generate_frame(3, 2, 1, converter.sensor, converter.scene, converter.sequence,
                            occupancy=converter.occupancy, cameras=converter.cameras)
    assert written.meta["sequence"] == "0002" and written.meta["index"] == 1
    assert occupancy_grid(written).labels.shape == (40, 40, 8)
    assert np.array_equal(occupancy_grid(written).labels, occupancy_grid(direct).labels)
    assert np.array_equal(cameras(written)["front"].image, cameras(direct)["front"].image)
    assert cameras(written)["front"].image.shape == (32, 64, 3)
    assert np.array_equal(written.points, direct.points.astype(np.float32))
    assert np.array_equal(written.extras["box_track_id"], direct.extras["box_track_id"])
