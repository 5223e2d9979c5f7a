"""The sensor profiles: what they claim about the real sensors, and the gap between them."""

from dataclasses import replace

import numpy as np
import pytest

from occbench.data.synthetic import (
    SENSOR_PROFILES,
    SceneConfig,
    SensorProfile,
    SequenceConfig,
    build_world,
    observe,
)
from occbench.data.taxonomy import CLASS_ID

SCENE = SceneConfig(extent=50.0, num_buildings=10, num_trees=14, num_poles=10, num_cars=10,
                    num_pedestrians=6, num_cyclists=3, num_trucks=3, num_barriers=6)
STILL = SequenceConfig(frames_per_scene=1, frame_interval=0.5, ego_max_speed=0.0, moving_fraction=0.0)


def test_profiles_follow_the_real_sensors():
    nuscenes, waymo, kitti = (SENSOR_PROFILES[name] for name in ("nuscenes32", "waymo64", "kitti64"))
    def geometry(p):
        return p.beams, p.fov_up_deg, p.fov_down_deg, p.height

    assert geometry(nuscenes) == (32, 10, -30, 1.84)
    assert geometry(waymo) == (64, 2.4, -17.6, 2.1)
    assert geometry(kitti) == (64, 2.0, -24.8, 1.73)
    assert nuscenes.max_range < waymo.max_range < kitti.max_range
    assert nuscenes.range_noise_std > waymo.range_noise_std and nuscenes.dropout > waymo.dropout
    for name, profile in SENSOR_PROFILES.items():
        assert profile.name == name
        elevations = np.degrees(profile.elevations())
        assert len(elevations) == profile.beams and (np.diff(elevations) > 0).all()
        np.testing.assert_allclose(elevations[[0, -1]], [profile.fov_down_deg, profile.fov_up_deg])


def test_kitti64_has_two_blocks_the_upper_one_denser():
    gaps = np.diff(np.degrees(SENSOR_PROFILES["kitti64"].elevations()))
    lower, upper = gaps[:31], gaps[32:]
    np.testing.assert_allclose(lower, lower.mean(), atol=1e-3)
    np.testing.assert_allclose(upper, upper.mean(), atol=1e-3)
    assert 0.3 < upper.mean() < 0.36 and 0.45 < lower.mean() < 0.55


def test_from_dict_takes_a_profile_with_overrides_or_a_full_custom_sensor():
    coarse = SensorProfile.from_dict({"profile": "waymo64", "azimuth_step_deg": 1.0, "dropout": 0.0})
    assert coarse == replace(SENSOR_PROFILES["waymo64"], azimuth_step_deg=1.0, dropout=0.0)
    assert coarse.name == "waymo64"
    assert SensorProfile.from_dict({"profile": "kitti64"}) == SENSOR_PROFILES["kitti64"]
    custom = {"beams": 16, "fov_up_deg": 15.0, "fov_down_deg": -15.0, "azimuth_step_deg": 0.2,
              "min_range": 0.5, "max_range": 100.0, "range_noise_std": 0.03, "dropout": 0.0, "height": 1.9}
    sensor = SensorProfile.from_dict(custom)
    assert sensor.name == "custom"
    np.testing.assert_allclose(np.diff(np.degrees(sensor.elevations())), 2.0)
    table = SensorProfile.from_dict({**custom, "beams": 3, "elevations_deg": [-15, 10, 15], "name": "odd"})
    np.testing.assert_allclose(np.degrees(table.elevations()), [-15, 10, 15])


def test_from_dict_names_what_is_wrong():
    known = r"known: \['kitti64', 'nuscenes32', 'waymo64'\]"
    with pytest.raises(ValueError, match=r"unknown sensor profile 'velodyne'; " + known):
        SensorProfile.from_dict({"profile": "velodyne"})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['beam'\]"):
        SensorProfile.from_dict({"profile": "nuscenes32", "beam": 16})
    with pytest.raises(ValueError, match=r"no 'profile' and no \['dropout', 'height'\]"):
        SensorProfile.from_dict({"beams": 16, "fov_up_deg": 15.0, "fov_down_deg": -15.0,
                                 "azimuth_step_deg": 0.2, "min_range": 0.5, "max_range": 100.0,
                                 "range_noise_std": 0.03})
    # kitti64's elevation table fixes its beams: fewer beams need a table (or none) too.
    with pytest.raises(ValueError, match="elevations_deg must list one elevation per beam"):
        SensorProfile.from_dict({"profile": "kitti64", "beams": 32})
    uniform = SensorProfile.from_dict({"profile": "kitti64", "beams": 32, "elevations_deg": None})
    assert len(uniform.elevations()) == 32


def test_profiles_differ_in_beam_density_and_range_on_the_same_scene():
    """The cross-sensor gap: same street, same azimuth step, the three sensors at one spot."""
    world = build_world(np.random.default_rng(11), SCENE, STILL)
    scene = world.scene_at(0.0)
    frames = {}
    for name, profile in SENSOR_PROFILES.items():
        sensor = replace(profile, azimuth_step_deg=0.5, dropout=0.0)
        frames[name] = observe(scene, world.lidar_pose(0.0, sensor.height), sensor,
                               np.random.default_rng(0), world.object_velocities)
    counts = {name: f.num_points for name, f in frames.items()}
    assert counts["waymo64"] > 1.7 * counts["nuscenes32"] and counts["kitti64"] > 1.7 * counts["nuscenes32"]

    def facade_rings(f):
        """How many rings hit the facades, and the elevation span (deg) they cover."""
        x, y, z = f.points[f.semantic == CLASS_ID["building"]].T
        elevation = np.degrees(np.arctan2(z, np.hypot(x, y)))
        return len(np.unique(f.ring[f.semantic == CLASS_ID["building"]])), np.ptp(elevation)

    rings = {name: facade_rings(f) for name, f in frames.items()}
    # Per degree of the facades' vertical extent, the 64-beam sensors put more than twice as many
    # rings (3 to 4x here): the gap in beam density that SPOT closes.
    for name in ("waymo64", "kitti64"):
        assert rings[name][0] / rings[name][1] > 2 * rings["nuscenes32"][0] / rings["nuscenes32"][1]
    def ring_spacing(f):
        elevation = np.degrees(np.arctan2(f.points[:, 2], np.hypot(f.points[:, 0], f.points[:, 1])))
        return np.median(np.diff(np.unique(np.round(elevation, 3))))

    # Ring spacing in elevation: 1.29 deg (HDL-32E), 0.32 deg (Waymo), 1/3 and 1/2 deg (HDL-64E).
    spacing = {name: ring_spacing(f) for name, f in frames.items()}
    assert spacing["nuscenes32"] > 3 * spacing["waymo64"] and spacing["nuscenes32"] > 2 * spacing["kitti64"]
    reach = {name: np.hypot(f.points[:, 0], f.points[:, 1]).max() for name, f in frames.items()}
    assert reach["nuscenes32"] <= 70 and reach["kitti64"] > 90
