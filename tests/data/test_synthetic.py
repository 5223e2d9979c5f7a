from dataclasses import fields, replace
from pathlib import Path

import numpy as np
import pytest
import yaml

from occbench.data.frame import _REQUIRED_DTYPES
from occbench.data.raycast import INTERSECTORS, trace
from occbench.data.synthetic import (
    SceneConfig,
    SensorProfile,
    beam_directions,
    build_scene,
    generate_frame,
)
from occbench.data.taxonomy import CLASS_ID, NUM_CLASSES, THING_CLASSES

PARAMS = yaml.safe_load((Path(__file__).parents[2] / "params.yaml").read_text())
SYNTHETIC = PARAMS["datasets"]["synthetic"]
SCENE = SceneConfig.from_dict(SYNTHETIC["scene"])
# Most tests use a coarse sensor to stay fast; the geometry is the same.
SENSOR = replace(
    SensorProfile.from_dict(SYNTHETIC["sensor"]),
    beams=16, azimuth_step_deg=1.0, name="synthetic-16",
)
GROUND = [CLASS_ID[name] for name in ("road", "sidewalk", "terrain")]


@pytest.fixture(scope="module")
def frames():
    return [generate_frame(0, index, SENSOR, SCENE) for index in range(4)]


def test_configs_take_exactly_the_params_yaml_keys():
    assert {f.name for f in fields(SensorProfile)} - {"name"} == set(SYNTHETIC["sensor"])
    assert {f.name for f in fields(SceneConfig)} == set(SYNTHETIC["scene"])
    with pytest.raises(ValueError):
        replace(SENSOR, dropout=1.0)
    with pytest.raises(ValueError):
        replace(SCENE, num_cars=-1)


def test_same_seed_and_index_give_identical_frames(frames):
    again = generate_frame(0, 0, SENSOR, SCENE)
    for name in _REQUIRED_DTYPES:
        assert getattr(again, name).tobytes() == getattr(frames[0], name).tobytes(), name
    assert again.meta == frames[0].meta == {
        "dataset": "synthetic", "sequence": "0", "index": 0, "sensor": "synthetic-16"
    }


def test_different_index_or_seed_give_different_points(frames):
    other_seed = generate_frame(1, 0, SENSOR, SCENE)
    for other in (frames[1], other_seed):
        assert other.points.shape != frames[0].points.shape or not np.array_equal(
            other.points, frames[0].points
        )


def test_every_class_appears_and_ground_dominates_near_the_sensor(frames):
    counts = sum(np.bincount(f.semantic, minlength=NUM_CLASSES) for f in frames)
    assert (counts > 0).all(), counts
    for frame in frames:
        near = np.hypot(frame.points[:, 0], frame.points[:, 1]) < 10
        assert np.isin(frame.semantic[near], GROUND).mean() > 0.6


def test_rings_lie_on_their_beams_and_ranges_within_limits(frames):
    nominal = np.linspace(SENSOR.fov_down_deg, SENSOR.fov_up_deg, SENSOR.beams)
    for frame in frames:
        assert frame.ring.min() >= 0 and frame.ring.max() < SENSOR.beams
        x, y, z = frame.points.T
        elevation = np.degrees(np.arctan2(z, np.hypot(x, y)))
        # Noise moves points along their ray, so the elevation stays the beam's.
        np.testing.assert_allclose(elevation, nominal[frame.ring], atol=0.01)
        distance = np.linalg.norm(frame.points, axis=1)
        assert distance.min() >= SENSOR.min_range - 1e-3
        assert distance.max() <= SENSOR.max_range + 1e-3


def test_ground_points_lie_on_the_ground(frames):
    for frame in frames:
        on_ground = np.isin(frame.semantic, GROUND)
        # Range noise along a slanted ray moves a point a little in z too.
        np.testing.assert_allclose(frame.points[on_ground, 2], -SENSOR.height, atol=0.1)


def test_instances_lie_in_their_boxes_and_share_their_labels(frames):
    for frame in frames:
        things = np.isin(frame.semantic, [CLASS_ID[name] for name in THING_CLASSES])
        assert ((frame.instance > 0) == things).all()
        # Instance i belongs to boxes[i - 1]; every box has points, ids have no gaps.
        assert np.array_equal(np.unique(frame.instance[things]), np.arange(1, len(frame.boxes) + 1))
        for i, (box, label) in enumerate(zip(frame.boxes, frame.box_labels), start=1):
            points = frame.points[frame.instance == i]
            assert (frame.semantic[frame.instance == i] == label).all()
            cos, sin = np.cos(box[6]), np.sin(box[6])
            offset = points - box[:3]
            local = np.stack([
                cos * offset[:, 0] + sin * offset[:, 1],
                -sin * offset[:, 0] + cos * offset[:, 1],
                offset[:, 2],
            ], 1)
            assert (np.abs(local) <= box[3:6] / 2 + 0.1).all()


def test_dropout_removes_returns():
    kept = generate_frame(3, 0, replace(SENSOR, dropout=0.0), SCENE).num_points
    halved = generate_frame(3, 0, replace(SENSOR, dropout=0.5), SCENE).num_points
    assert 0.4 * kept < halved < 0.6 * kept


def test_intensity_is_in_unit_interval_and_informative(frames):
    for frame in frames:
        assert frame.intensity.min() >= 0 and frame.intensity.max() <= 1
        road = frame.intensity[frame.semantic == CLASS_ID["road"]].mean()
        terrain = frame.intensity[frame.semantic == CLASS_ID["terrain"]].mean()
        assert road < terrain  # asphalt is darker than grass


def test_frame_is_in_lidar_coordinates_with_identity_pose(frames):
    assert np.array_equal(frames[0].pose, np.eye(4))
    assert np.array_equal(frames[0].sensor_origin, np.zeros(3))


def test_objects_keep_clear_of_the_sensor():
    for index in range(5):
        scene = build_scene(np.random.default_rng(index), SCENE)
        for group in scene.primitives:
            if group.kind == "box":
                cos, sin = np.cos(group.params[:, 6]), np.sin(group.params[:, 6])
                x, y = group.params[:, 0], group.params[:, 1]
                local = np.abs(np.stack([-cos * x - sin * y, sin * x - cos * y], 1))
                assert (local > group.params[:, 3:5] / 2 + 1.0).any(1).all()
            else:
                radius = group.params[:, 4 if group.kind == "cylinder" else 3]
                assert (np.hypot(group.params[:, 0], group.params[:, 1]) > radius + 1.0).all()


def test_empty_scene_sees_only_ground():
    empty = SceneConfig(extent=50.0, num_buildings=0, num_trees=0, num_poles=0,
                        num_cars=0, num_pedestrians=0, num_cyclists=0)
    frame = generate_frame(0, 0, SENSOR, empty)
    assert frame.num_points > 0 and np.isin(frame.semantic, GROUND).all()
    assert frame.boxes.shape == (0, 7) and frame.box_labels.shape == (0,)


def test_intersectors_on_known_geometry():
    origin = np.zeros(3)
    ahead = np.array([[1.0, 0.0, 0.0]])
    cases = {
        "box": [10, 0, 0, 2, 2, 2, 0],
        "cylinder": [10, 0, -1, 1, 1],
        "spheroid": [10, 0, 0, 1, 2],
    }
    for kind, params in cases.items():
        t, cos = INTERSECTORS[kind](origin, ahead, np.array([params], dtype=float))
        np.testing.assert_allclose([t[0], cos[0]], [9.0, 1.0])
    # A box turned 45 degrees is hit on its corner edge, at a glancing 45 degrees.
    t, cos = INTERSECTORS["box"](origin, ahead, np.array([[10, 0, 0, 2, 2, 2, np.pi / 4]]))
    np.testing.assert_allclose([t[0], cos[0]], [10 - np.sqrt(2), np.sqrt(0.5)])
    # Looking down onto a cylinder hits its top cap.
    down = np.array([[0.0, 0.0, -1.0]])
    t, cos = INTERSECTORS["cylinder"](origin, down, np.array([[0, 0, -5, -2, 1]]))
    np.testing.assert_allclose([t[0], cos[0]], [2.0, 1.0])


def test_culled_trace_matches_every_ray_against_every_primitive():
    scene = build_scene(np.random.default_rng(7), SCENE)
    dirs, _ = beam_directions(SENSOR)
    origin = np.array([0.0, 0.0, SENSOR.height])
    nearest = np.full(len(dirs), np.inf)
    for group in scene.primitives:
        every_ray, every_primitive = np.repeat(dirs, len(group.params), 0), np.tile(
            group.params, (len(dirs), 1)
        )
        t, _ = INTERSECTORS[group.kind](origin, every_ray, every_primitive)
        nearest = np.minimum(nearest, t.reshape(len(dirs), -1).min(1, initial=np.inf))
    assert np.array_equal(trace(scene.primitives, origin, dirs).range, nearest)
