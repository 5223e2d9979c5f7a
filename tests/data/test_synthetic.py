from dataclasses import replace

import numpy as np
import pytest

from occbench.data.frame import _REQUIRED_DTYPES
from occbench.data.raycast import INTERSECTORS, trace
from occbench.data.synthetic import (
    SceneConfig,
    SensorProfile,
    SequenceConfig,
    StreetLayout,
    beam_directions,
    build_scene,
    generate_frame,
)
from occbench.data.taxonomy import CLASS_ID, CLASSES, NUM_CLASSES, THING_CLASSES

SCENE = SceneConfig(extent=50.0, num_buildings=10, num_trees=14, num_poles=10, num_cars=10,
                    num_pedestrians=6, num_cyclists=3, num_trucks=3, num_barriers=6)
SEQUENCE = SequenceConfig(frames_per_scene=10, frame_interval=0.5, ego_max_speed=12.0,
                          moving_fraction=0.5)
# Most tests use a coarse sensor to stay fast; the geometry is the same.
SENSOR = SensorProfile.from_dict({"profile": "nuscenes32", "beams": 16, "azimuth_step_deg": 1.0})
GROUND = [CLASS_ID[name] for name in ("road", "sidewalk", "other_ground", "terrain")]


def frame(scene_index: int, index: int = 0, sensor: SensorProfile = SENSOR, scene=SCENE, seed: int = 0):
    return generate_frame(seed, scene_index, index, sensor, scene, SEQUENCE)


@pytest.fixture(scope="module")
def frames():
    return [frame(scene, index) for scene in range(3) for index in (0, 9)]


def in_box_frame(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """``points`` in the box's own axes, relative to its centre."""
    cos, sin = np.cos(box[6]), np.sin(box[6])
    offset = points - box[:3]
    return np.stack([cos * offset[:, 0] + sin * offset[:, 1],
                     -sin * offset[:, 0] + cos * offset[:, 1], offset[:, 2]], 1)


def test_configs_check_their_values_and_keys():
    with pytest.raises(ValueError, match="dropout"):
        replace(SENSOR, dropout=1.0)
    with pytest.raises(ValueError, match="non-negative"):
        replace(SCENE, num_trucks=-1)
    with pytest.raises(ValueError, match="num_buses"):
        SceneConfig.from_dict({**vars(SCENE), "num_buses": 2})
    with pytest.raises(ValueError, match="frames_per_scene"):
        replace(SEQUENCE, frames_per_scene=0)
    with pytest.raises(ValueError, match="moving_fraction"):
        replace(SEQUENCE, moving_fraction=1.5)
    # Scene settings written before trucks and barriers existed still build a full street.
    old = {key: value for key, value in vars(SCENE).items() if key not in ("num_trucks", "num_barriers")}
    assert SceneConfig.from_dict(old).num_trucks > 0 and SceneConfig.from_dict(old).num_barriers > 0
    with pytest.raises(ValueError, match="frame 10 of a scene of 10"):
        frame(0, 10)


def test_same_arguments_give_identical_frames(frames):
    again = frame(0, 0)
    for name in _REQUIRED_DTYPES:
        assert getattr(again, name).tobytes() == getattr(frames[0], name).tobytes(), name
    assert again.extras.keys() == frames[0].extras.keys() == {"box_velocity", "box_track_id"}
    for name, value in again.extras.items():
        assert value.tobytes() == frames[0].extras[name].tobytes(), name
    assert again.meta == frames[0].meta == {
        "dataset": "synthetic", "sequence": "0000", "index": 0, "sensor": "nuscenes32", "timestamp": 0.0,
        "num_beams": 16,
    }
    assert frames[1].meta["index"] == 9 and frames[1].meta["timestamp"] == 4.5


def test_different_scene_or_seed_give_different_points(frames):
    for other in (frames[2], frame(0, 0, seed=1)):
        assert other.points.shape != frames[0].points.shape or not np.array_equal(
            other.points, frames[0].points
        )


def test_every_class_appears_and_ground_dominates_near_the_sensor(frames):
    counts = sum(np.bincount(f.semantic, minlength=NUM_CLASSES) for f in frames)
    assert (counts > 0).all(), dict(zip(CLASSES, counts))
    for f in frames:
        near = np.hypot(f.points[:, 0], f.points[:, 1]) < 10
        assert np.isin(f.semantic[near], GROUND).mean() > 0.5


def test_rings_lie_on_their_beams_and_ranges_within_limits(frames):
    nominal = np.degrees(SENSOR.elevations())
    for f in frames:
        assert f.ring.min() >= 0 and f.ring.max() < SENSOR.beams
        x, y, z = f.points.T
        elevation = np.degrees(np.arctan2(z, np.hypot(x, y)))
        # Noise moves points along their ray, so the elevation stays the beam's.
        np.testing.assert_allclose(elevation, nominal[f.ring], atol=0.01)
        distance = np.linalg.norm(f.points, axis=1)
        assert distance.min() >= SENSOR.min_range - 1e-3
        assert distance.max() <= SENSOR.max_range + 1e-3


def test_ground_points_lie_on_the_ground(frames):
    for f in frames:
        on_ground = np.isin(f.semantic, GROUND)
        # Range noise along a slanted ray moves a point a little in z too.
        np.testing.assert_allclose(f.points[on_ground, 2], -SENSOR.height, atol=0.15)
        world_z = f.points[on_ground] @ f.pose[2, :3] + f.pose[2, 3]
        np.testing.assert_allclose(world_z, 0.0, atol=0.15)


def test_instances_lie_in_their_boxes_and_share_their_labels(frames):
    things = [CLASS_ID[name] for name in THING_CLASSES]
    for f in frames:
        is_thing = np.isin(f.semantic, things)
        assert ((f.instance > 0) == is_thing).all()
        # Instance i belongs to boxes[i - 1]; every box has points, ids have no gaps.
        assert np.array_equal(np.unique(f.instance[is_thing]), np.arange(1, len(f.boxes) + 1))
        assert f.extras["box_velocity"].shape == (len(f.boxes), 2)
        track_ids = f.extras["box_track_id"]
        assert len(np.unique(track_ids)) == len(f.boxes) and (track_ids > 0).all()
        for i, (box, label) in enumerate(zip(f.boxes, f.box_labels), start=1):
            assert (f.semantic[f.instance == i] == label).all()
            local = in_box_frame(f.points[f.instance == i], box)
            assert (np.abs(local) <= box[3:6] / 2 + 0.1).all()
    # Barriers are stuff: no instance, no box.
    assert all((f.instance[f.semantic == CLASS_ID["barrier"]] == 0).all() for f in frames)


def test_dropout_removes_returns():
    kept = frame(3, sensor=replace(SENSOR, dropout=0.0)).num_points
    halved = frame(3, sensor=replace(SENSOR, dropout=0.5)).num_points
    assert 0.4 * kept < halved < 0.6 * kept


def test_intensity_is_in_unit_interval_and_informative(frames):
    intensity = np.concatenate([f.intensity for f in frames])
    semantic = np.concatenate([f.semantic for f in frames])
    assert intensity.min() >= 0 and intensity.max() <= 1
    mean = {name: intensity[semantic == CLASS_ID[name]].mean() for name in CLASSES}
    assert mean["road"] < mean["other_ground"] < mean["terrain"]  # asphalt, paving, grass


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
    empty = SceneConfig(extent=50.0, num_buildings=0, num_trees=0, num_poles=0, num_cars=0,
                        num_pedestrians=0, num_cyclists=0, num_trucks=0, num_barriers=0)
    f = frame(0, scene=empty)
    assert f.num_points > 0 and np.isin(f.semantic, GROUND).all()
    assert f.boxes.shape == (0, 7) and f.box_labels.shape == (0,)
    assert f.extras["box_velocity"].shape == (0, 2) and f.extras["box_track_id"].shape == (0,)


def test_street_layout_ground_classes():
    layout = StreetLayout(heading=np.pi / 2, main_offset=2.0, cross_at=30.0, road_half_width=4.0,
                          sidewalk_width=2.0, lanes=1, parking_width=(2.5, 0.0),
                          lots=((-20.0, 10.0, 0.0, 30.0),))
    uv = np.array([
        [0, 2], [0, -1.9],  # the main road
        [0, -2.6],  # parking strip on the right (v < 2 - 4)
        [0, -5.0], [0, 7.5],  # sidewalks: right behind the strip, left at the kerb
        [0, -9.0],  # terrain
        [30, -30], [35, -30], [37, 40],  # the crossing street's road, sidewalk, terrain beyond
        [30, -3.0],  # the crossing's road wins over the main road's parking strip
        [-10, 20],  # a parking lot
        [-10, 6.5],  # the lot does not cover the sidewalk
    ])
    names = ["road", "road", "other_ground", "sidewalk", "sidewalk", "terrain", "road", "sidewalk",
             "terrain", "road", "other_ground", "sidewalk"]
    assert layout.street_class(uv).tolist() == [CLASS_ID[name] for name in names]
    # World positions are street positions turned by the heading (90 degrees: u -> y, v -> -x).
    xy = np.stack([-uv[:, 1], uv[:, 0]], 1)
    assert np.array_equal(layout.ground_class(xy), layout.street_class(uv))


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


def brute_force_range(primitives, origin, dirs):
    nearest = np.full(len(dirs), np.inf)
    for group in primitives:
        every_ray = np.repeat(dirs, len(group.params), 0)
        every_primitive = np.tile(group.params, (len(dirs), 1))
        t, _ = INTERSECTORS[group.kind](origin, every_ray, every_primitive)
        nearest = np.minimum(nearest, t.reshape(len(dirs), -1).min(1, initial=np.inf))
    return nearest


def test_culled_trace_matches_every_ray_against_every_primitive():
    scene = build_scene(np.random.default_rng(7), SCENE)
    dirs, _ = beam_directions(SENSOR)
    origin = np.array([0.0, 0.0, SENSOR.height])
    expected = brute_force_range(scene.primitives, origin, dirs)
    assert np.isfinite(expected).mean() > 0.3
    assert np.array_equal(trace(scene.primitives, origin, dirs).range, expected)
    # Small batches split the primitives differently but find the same hits.
    assert np.array_equal(trace(scene.primitives, origin, dirs, max_pairs=500).range, expected)


def test_culling_keeps_rays_from_inside_a_footprint_and_straight_up_or_down():
    """Rays from under a tree crown, beside a pole, and vertical ones, in every direction."""
    scene = build_scene(np.random.default_rng(3), SCENE)
    crowns = next(group for group in scene.primitives if group.kind == "spheroid")
    poles = next(group for group in scene.primitives if group.kind == "cylinder")
    rng = np.random.default_rng(0)
    dirs = rng.normal(size=(3000, 3))
    dirs = np.concatenate([dirs / np.linalg.norm(dirs, axis=1, keepdims=True), [[0, 0, 1], [0, 0, -1]]])
    crown = crowns.params[np.argmax(crowns.params[:, 3])]
    pole = poles.params[0]
    under_crown = np.array([crown[0] + 0.3, crown[1], 1.0])
    beside_pole = np.array([pole[0] + pole[4] + 0.05, pole[1], 2.0])
    for origin in (under_crown, beside_pole):
        expected = brute_force_range(scene.primitives, origin, dirs)
        assert np.array_equal(trace(scene.primitives, origin, dirs).range, expected)
    assert np.isfinite(trace(scene.primitives, np.array([crown[0], crown[1], 0.5]), dirs[-2:]).range[0])
