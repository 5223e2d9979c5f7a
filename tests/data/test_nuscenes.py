"""The nuScenes converter: its reader on a real sweep, and the whole conversion on a
fixture table set (tests/nuscenes_fixture.py) that the real devkit loads."""

import json
import math
from pathlib import Path

import numpy as np
import pytest

from nuscenes_fixture import (INTRINSICS, OBJECTS, SWEEP, ObjectSpec, box_mask, build_nuscenes, needs_devkit,
                              needs_real)
from occbench.data import taxonomy
from occbench.data.convert import run_conversion
from occbench.data.converters.nuscenes import NuScenesConverter, read_sweep
from occbench.data.dataset import FrameIndex
from occbench.data.frame import bicycle_racks, box_annotations, cameras, ego_origin, occupancy_grid
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX


# What the fixture's lidarseg names must become, spelled out here rather than read from taxonomy.
UNIFIED = {
    "static.manmade": CLASS_ID["building"], "flat.driveable_surface": CLASS_ID["road"],
    "static.vegetation": CLASS_ID["vegetation"], "vehicle.car": CLASS_ID["car"],
    "human.pedestrian.adult": CLASS_ID["pedestrian"], "movable_object.trafficcone": CLASS_ID["barrier"],
    "vehicle.ego": IGNORE_INDEX, "noise": IGNORE_INDEX,
}


def settings(root: Path, **changes) -> dict:
    return {"kind": "nuscenes", "root": str(root), "version": "v1.0-mini", "sweeps": 0,
            "cameras": ["CAM_FRONT"], "lidarseg": True, "occupancy": None, **changes}


def convert(base: Path, name: str, config: dict, workers: int = 1) -> tuple[list[str], FrameIndex]:
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base)
        failures = run_conversion(name, NuScenesConverter(config), config, workers)
    return failures, FrameIndex(base / "results" / "data" / name / "index.json")


def far_from_sensor(points: np.ndarray) -> np.ndarray:
    """The devkit's multisweep rule: a merged sweep drops points in the 1 m square around its sensor."""
    return ~((np.abs(points[:, 0]) < 1.0) & (np.abs(points[:, 1]) < 1.0))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """The fixture tables, loaded by the real devkit, converted once with and once without sweeps."""
    from nuscenes import NuScenes

    base = tmp_path_factory.mktemp("nuscenes")
    fixture = build_nuscenes(base / "nuscenes", SWEEP)
    nusc = NuScenes("v1.0-mini", str(fixture.root), verbose=False)
    assert [scene["name"] for scene in nusc.scene] == ["scene-0061", "scene-0103", "scene-0077"]
    assert len(nusc.lidarseg) == len(fixture.keyframes) == 5
    assert len(nusc.get("sample", fixture.keyframe("scene-0061", 0).sample_token)["anns"]) == 4
    plain = convert(base, "nusc", settings(fixture.root))
    merged = convert(base, "nusc_sweeps", settings(fixture.root, sweeps=5, cameras=[]))
    return fixture, plain, merged


@needs_real
def test_reader_gives_the_real_sweep_exactly():
    raw = np.fromfile(SWEEP, dtype=np.float32).reshape(-1, 5)
    points, intensity, ring = read_sweep(SWEEP)
    assert points.shape == (34_688, 3) and points.dtype == np.float32
    assert np.array_equal(points, raw[:, :3])
    assert ring.dtype == np.int16 and np.array_equal(ring, raw[:, 4]) and (ring.min(), ring.max()) == (0, 31)
    assert intensity.dtype == np.float32 and np.array_equal(intensity, raw[:, 3] / np.float32(255))
    assert intensity.min() == 0.0 and intensity.max() == 1.0


@pytest.mark.parametrize("floats", [0, 7, 5 * 3 + 2])
def test_reader_names_a_truncated_file(tmp_path, floats):
    path = tmp_path / "broken.pcd.bin"
    np.arange(floats, dtype=np.float32).tofile(path)
    with pytest.raises(ValueError, match=r"broken\.pcd\.bin.*truncated"):
        read_sweep(path)


def test_a_version_without_train_and_val_is_refused(tmp_path):
    pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed")
    with pytest.raises(ValueError, match="v1.0-test"):
        NuScenesConverter(settings(tmp_path, version="v1.0-test"))


@needs_real
@needs_devkit
def test_official_splits_decide_train_val_and_left_out_scenes(dataset):
    fixture, (failures, index), _ = dataset
    assert failures == []
    ids = {k.scene: [] for k in fixture.keyframes}
    for keyframe in fixture.keyframes:
        ids[keyframe.scene].append(keyframe.frame_id)
    assert index.ids("train") == ids["scene-0061"] and len(ids["scene-0061"]) == 2
    assert index.ids("val") == ids["scene-0103"] and len(ids["scene-0103"]) == 2
    assert len(index.frames) == 4  # scene-0077 is in the test split: left out
    assert {entry["scene"] for entry in index.frames.values()} == {"scene-0061", "scene-0103"}


@needs_real
@needs_devkit
def test_points_poses_and_meta(dataset):
    fixture, (_, index), _ = dataset
    for keyframe in fixture.keyframes[:4]:
        frame = index.load(keyframe.frame_id)
        raw = np.fromfile(keyframe.lidar_path, dtype=np.float32).reshape(-1, 5)
        assert np.array_equal(frame.points, raw[:, :3])
        assert np.array_equal(frame.ring, raw[:, 4].astype(np.int16))
        assert np.allclose(frame.pose, keyframe.lidar_to_world, atol=1e-9)
        assert frame.meta["dataset"] == "nuscenes" and frame.meta["sensor"] == "nuscenes32"
        assert frame.meta["sequence"] == keyframe.scene and frame.meta["index"] == keyframe.index
        assert frame.meta["sample_token"] == keyframe.sample_token
        assert frame.meta["timestamp"] == pytest.approx(keyframe.timestamp * 1e-6, abs=1e-6)
    # The world is static: both keyframes of a scene put every point at the same world place.
    first, second = (index.load(fixture.keyframe("scene-0061", i).frame_id) for i in (0, 1))
    to_world = [f.points @ f.pose[:3, :3].T + f.pose[:3, 3] for f in (first, second)]
    assert np.abs(to_world[0] - to_world[1]).max() < 1e-3


@needs_real
@needs_devkit
def test_boxes_come_out_in_the_lidar_frame_with_length_first(dataset):
    fixture, (_, index), _ = dataset
    first = index.load(fixture.keyframe("scene-0061", 0).frame_id)
    # Placed in this keyframe's LiDAR frame (the fixture stores them in world coordinates);
    # the animal maps to no unified class and is dropped.
    expected = np.array([[-5.0, -4.6, -1.0, 4.4, 1.9, 1.8, 1.45],
                         [3.0, 7.0, -1.1, 0.8, 0.7, 1.8, 0.3],
                         [-5.8, -2.6, -1.3, 0.8, 0.8, 1.0, 0.0]])
    assert np.allclose(first.boxes, expected, atol=1e-4)
    assert first.box_labels.tolist() == [CLASS_ID["car"], CLASS_ID["pedestrian"], CLASS_ID["barrier"]]
    # The second keyframe: the ego moved and turned, the pedestrian walked on.
    keyframe = fixture.keyframe("scene-0061", 1)
    second = index.load(keyframe.frame_id)
    placed = [box for box in keyframe.boxes if box.category != "animal"]
    assert len(second.boxes) == len(placed) == 2
    for box, want in zip(second.boxes, placed):
        assert np.allclose(box[:3], want.center, atol=1e-4)
        assert np.allclose(box[3:6], [want.length, want.width, want.height])
        assert math.remainder(float(box[6]) - want.yaw, 2 * math.pi) == pytest.approx(0, abs=1e-5)
    assert not np.allclose(second.boxes[0, :3], first.boxes[0, :3], atol=0.5)  # not a frame-free copy
    # Each box keeps its object's track id (its instance's row in the devkit's table, + 1) across keyframes.
    tracks = dict(zip(first.box_labels.tolist(), first.extras["box_track_id"].tolist()))
    assert len(set(tracks.values())) == 3 and min(tracks.values()) >= 1
    assert second.extras["box_track_id"].tolist() == [tracks[label] for label in second.box_labels.tolist()]


@needs_real
@needs_devkit
def test_points_in_a_box_get_its_instance_and_overlaps_the_smallest(dataset):
    fixture, (_, index), _ = dataset
    frame = index.load(fixture.keyframe("scene-0061", 0).frame_id)
    inside = [box_mask(frame.points, box[:3], *box[3:6], box[6]) for box in frame.boxes]
    car, pedestrian, cone = inside
    assert car.sum() > 500 and pedestrian.sum() > 5 and (car & cone).sum() > 10
    expected = np.zeros(frame.num_points, np.int32)
    expected[car], expected[pedestrian], expected[cone] = 1, 2, 3  # the cone is the smaller box
    assert np.array_equal(frame.instance, expected)
    empty = index.load(fixture.keyframe("scene-0103", 0).frame_id)
    assert empty.boxes.shape == (0, 7) and not empty.instance.any()
    assert empty.extras["box_velocity"].shape == (0, 2)


@needs_real
@needs_devkit
def test_lidarseg_labels_are_mapped_by_category_name(dataset):
    # The fixture's raw indices are the official ones reversed: only a reader that goes
    # through the category table's names gets these right.
    fixture, (_, index), _ = dataset
    for keyframe in fixture.keyframes[:4]:
        frame = index.load(keyframe.frame_id)
        assert set(keyframe.names) <= UNIFIED.keys()
        expected = np.array([UNIFIED[name] for name in keyframe.names], np.uint8)
        assert np.array_equal(frame.semantic, expected)


@needs_real
@needs_devkit
def test_box_velocity_is_rotated_into_the_lidar_frame(dataset):
    fixture, (_, index), _ = dataset
    for i in (0, 1):
        keyframe = fixture.keyframe("scene-0061", i)
        frame = index.load(keyframe.frame_id)
        world = np.array([box.velocity for box in keyframe.boxes if box.category != "animal"])
        expected = (world @ keyframe.lidar_to_world[:3, :3])[:, :2]
        assert frame.extras["box_velocity"].dtype == np.float32
        assert np.allclose(frame.extras["box_velocity"], expected, atol=1e-5, equal_nan=True)
        assert np.linalg.norm(frame.extras["box_velocity"][1]) == pytest.approx(1.3, abs=1e-5)  # walker
    # A single annotation: no velocity, NaN as the devkit's box_velocity (its AVE leaves it out).
    assert np.isnan(index.load(fixture.keyframe("scene-0061", 0).frame_id).extras["box_velocity"][2]).all()


@needs_real
@needs_devkit
def test_boxes_keep_detection_class_attribute_point_counts_and_the_ego_origin(dataset):
    fixture, (_, index), _ = dataset
    for keyframe in fixture.keyframes[:2]:
        annotations = box_annotations(index.load(keyframe.frame_id))
        placed = [box for box in keyframe.boxes if box.category != "animal"]
        # The devkit's detection classes, finer than the unified ones (the cone is a barrier there).
        assert annotations.names.tolist() == ["car", "pedestrian", "traffic_cone"][:len(placed)]
        assert annotations.attributes.tolist() == ["vehicle.parked", "pedestrian.moving", ""][:len(placed)]
        assert annotations.lidar_points.tolist() == [box.lidar_points for box in placed]
        assert annotations.radar_points.tolist() == [0] * len(placed) and min(annotations.lidar_points) > 5
    frame = index.load(fixture.keyframe("scene-0061", 0).frame_id)
    # The ego origin lies 0.94 m behind and 1.84 m below LIDAR_TOP, whose y axis is the car's forward.
    assert np.allclose(ego_origin(frame), [0.0, -0.943713, -1.84023], atol=1e-9)
    assert bicycle_racks(frame).shape == (0, 7)


@needs_real
@needs_devkit
def test_bicycle_racks_are_kept_apart_from_the_boxes(tmp_path):
    rack = ObjectSpec("static_object.bicycle_rack", None, (2.0, -8.0, -1.2), 6.0, 1.5, 1.2, 0.7, (0, 0, 0), (0,))
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP, (*OBJECTS, rack))
    converter = NuScenesConverter(settings(fixture.root, cameras=[]))
    keyframe = fixture.keyframe("scene-0061", 0)
    frame = converter.load(next(s for s in converter.sources() if s.frame_id == keyframe.frame_id))
    assert len(frame.boxes) == 3  # the rack is no box of a unified class
    assert np.allclose(bicycle_racks(frame), [[2.0, -8.0, -1.2, 6.0, 1.5, 1.2, 0.7]], atol=1e-4)


@needs_real
@needs_devkit
def test_an_annotation_with_two_attributes_is_named(tmp_path):
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP)
    table = fixture.root / "v1.0-mini" / "sample_annotation.json"
    records = json.loads(table.read_text())
    records[0]["attribute_tokens"] *= 2
    table.write_text(json.dumps(records))
    converter = NuScenesConverter(settings(fixture.root, cameras=[]))
    source = next(s for s in converter.sources() if s.frame_id == fixture.keyframe("scene-0061", 0).frame_id)
    with pytest.raises(ValueError, match=rf"sample_annotation\.json: annotation {records[0]['token']} has 2 attr"):
        converter.load(source)


@needs_real
@needs_devkit
def test_camera_image_intrinsics_and_lidar_to_camera(dataset):
    fixture, (_, index), _ = dataset
    for keyframe in fixture.keyframes[:4]:
        frame = index.load(keyframe.frame_id)
        camera = cameras(frame)["CAM_FRONT"]
        assert np.array_equal(camera.image, keyframe.image)
        assert np.array_equal(camera.intrinsics, INTRINSICS)
        expected = np.linalg.inv(keyframe.camera_to_world) @ keyframe.lidar_to_world
        assert np.allclose(camera.lidar_to_camera, expected, atol=1e-9)
        # A world point 10 m straight ahead of the camera lands on the principal point.
        ahead = keyframe.camera_to_world @ [0.0, 0.0, 10.0, 1.0]
        in_lidar = (np.linalg.inv(frame.pose) @ ahead)[:3]
        pixels, visible = camera.project(in_lidar[None])
        assert visible[0] and np.allclose(pixels[0], [32.0, 24.0], atol=1e-6)


@needs_real
@needs_devkit
def test_sweeps_are_merged_motion_compensated_and_unlabelled(dataset):
    fixture, (_, plain), (failures, merged) = dataset
    assert failures == []
    keyframe = fixture.keyframe("scene-0061", 1)
    alone, frame = plain.load(keyframe.frame_id), merged.load(keyframe.frame_id)
    n = alone.num_points
    assert len(keyframe.sweeps) == 2  # sweeps: 5 asks for more than the scene holds since its start
    assert np.array_equal(frame.points[:n], alone.points) and np.array_equal(frame.semantic[:n], alone.semantic)
    assert np.array_equal(frame.instance[:n], alone.instance)
    start = n
    for path, _ in keyframe.sweeps:  # newest first
        raw = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
        far = far_from_sensor(raw)
        block = slice(start, start + far.sum())
        # Every sweep sees the same static world: after compensation its points sit on the keyframe's.
        assert np.abs(frame.points[block] - alone.points[far]).max() < 1e-3
        assert not np.allclose(raw[far, :3], alone.points[far], atol=0.5)  # they did need moving
        assert np.array_equal(frame.ring[block], raw[far, 4].astype(np.int16))
        assert np.array_equal(frame.intensity[block], raw[far, 3] / np.float32(255))
        start = block.stop
    assert frame.num_points == start > n
    assert (frame.semantic[n:] == IGNORE_INDEX).all() and not frame.instance[n:].any()
    # The first keyframe of a scene has no earlier sweep.
    first = fixture.keyframe("scene-0061", 0).frame_id
    assert merged.load(first).num_points == plain.load(first).num_points


@needs_real
@needs_devkit
def test_sweeps_takes_only_as_many_as_asked(dataset):
    fixture, _, _ = dataset
    keyframe = fixture.keyframe("scene-0061", 1)
    converter = NuScenesConverter(settings(fixture.root, sweeps=1, cameras=[]))
    source = next(s for s in converter.sources() if s.frame_id == keyframe.frame_id)
    newest = np.fromfile(keyframe.sweeps[0][0], dtype=np.float32).reshape(-1, 5)
    assert converter.load(source).num_points == len(newest) + far_from_sensor(newest).sum()


@needs_real
@needs_devkit
def test_a_truncated_sweep_is_named_and_the_other_frames_convert(tmp_path):
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP)
    broken = fixture.keyframe("scene-0103", 1)
    data = broken.lidar_path.read_bytes()
    broken.lidar_path.write_bytes(data[:-8])
    failures, index = convert(tmp_path, "nusc", settings(fixture.root), workers=2)
    assert len(failures) == 1
    assert str(broken.lidar_path) in failures[0] and "ValueError" in failures[0] and "truncated" in failures[0]
    assert sorted(index.frames) == sorted(k.frame_id for k in fixture.keyframes[:3])
    assert all(index.frame_path(frame_id).exists() for frame_id in index.frames)


@needs_real
@needs_devkit
def test_lidarseg_of_the_wrong_length_is_named(tmp_path):
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP)
    keyframe = fixture.keyframe("scene-0061", 0)
    labels = fixture.root / f"lidarseg/v1.0-mini/{keyframe.lidar_token}_lidarseg.bin"
    labels.write_bytes(labels.read_bytes()[:-10])
    converter = NuScenesConverter(settings(fixture.root))
    source = next(s for s in converter.sources() if s.frame_id == keyframe.frame_id)
    with pytest.raises(ValueError, match=rf"{keyframe.lidar_token}_lidarseg\.bin: 34678 lidarseg labels"):
        converter.load(source)


@needs_real
@needs_devkit
def test_a_keyframe_without_lidarseg_names_its_sample(tmp_path):
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP)
    keyframe = fixture.keyframe("scene-0103", 0)
    table = fixture.root / "v1.0-mini" / "lidarseg.json"
    records = [r for r in json.loads(table.read_text()) if r["sample_data_token"] != keyframe.lidar_token]
    table.write_text(json.dumps(records))
    (fixture.root / f"lidarseg/v1.0-mini/{keyframe.lidar_token}_lidarseg.bin").unlink()
    converter = NuScenesConverter(settings(fixture.root))
    source = next(s for s in converter.sources() if s.frame_id == keyframe.frame_id)
    with pytest.raises(ValueError, match=f"sample {keyframe.sample_token}"):
        converter.load(source)
    unlabelled = NuScenesConverter(settings(fixture.root, lidarseg=False)).load(source)
    assert (unlabelled.semantic == IGNORE_INDEX).all()


@needs_real
@needs_devkit
def test_a_category_without_a_unified_mapping_is_an_error(tmp_path, monkeypatch):
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP)
    monkeypatch.delitem(taxonomy.NUSCENES, "animal")
    with pytest.raises(ValueError, match=r"category\.json.*'animal'"):
        NuScenesConverter(settings(fixture.root))


@needs_real
@needs_devkit
def test_conversion_builds_each_scenes_occupancy_from_its_labelled_points(dataset, tmp_path):
    fixture, (_, plain), _ = dataset
    grid = {"range": [-50.0, -50.0, -5.0, 50.0, 50.0, 3.0], "voxel_size": [0.5, 0.5, 0.5], "frames_per_block": 40}
    failures, index = convert(tmp_path, "nusc_occupancy", settings(fixture.root, cameras=[], occupancy=grid))
    assert failures == [] and set(index.frames) == set(plain.frames)
    for frame_id in index.frames:
        frame = index.load(frame_id)
        occupancy = occupancy_grid(frame)
        assert occupancy.labels.shape == (200, 200, 16) and list(occupancy.point_range) == grid["range"]
        labelled = frame.semantic != IGNORE_INDEX
        coords, inside = occupancy.voxel_of(frame.points[labelled])
        held = occupancy.labels[tuple(coords[inside].T)]
        # Every voxel holding a labelled point of the frame is occupied, never free or unknown, and
        # nearly all carry that point's class (a voxel takes the majority of the scene's points: measured
        # 98.7 to 99.4 % of the points); the rays make 3.7 to 4.5 times as many voxels free.
        assert (held < EMPTY_INDEX).all()
        assert (held == frame.semantic[labelled][inside]).mean() > 0.97
        assert (occupancy.labels == EMPTY_INDEX).sum() > 3 * (occupancy.labels < EMPTY_INDEX).sum()
