import numpy as np
import pytest

from occbench.data import frame as frame_module
from occbench.data.frame import (
    _REQUIRED_DTYPES,
    FORMAT_VERSION,
    Frame,
    BoxAnnotations,
    FrameFormatError,
    bicycle_racks,
    box_annotations,
    ego_origin,
    grid_shape,
    load_frame,
    pose_problem,
    save_frame,
    set_box_annotations,
)


def make_frame(num_points: int = 50, num_boxes: int = 3) -> Frame:
    rng = np.random.default_rng(0)
    return Frame(
        points=rng.normal(size=(num_points, 3)),
        intensity=rng.random(num_points),
        ring=rng.integers(0, 32, num_points),
        semantic=rng.integers(0, 9, num_points),
        instance=rng.integers(0, num_boxes + 1, num_points),
        boxes=rng.normal(size=(num_boxes, 7)),
        box_labels=rng.integers(6, 9, num_boxes),
        pose=np.diag([1.0, 1.0, 1.0, 1.0]) + np.triu(rng.normal(size=(4, 4)), 1),
        sensor_origin=rng.normal(size=3),
        meta={"dataset": "test", "sequence": "s", "index": 4, "sensor": "none"},
        extras={
            "image": rng.integers(0, 255, (2, 4, 3), dtype=np.uint8),
            "occupancy": rng.random((3, 3, 2)) > 0.5,
        },
    )


def test_roundtrip_keeps_every_field_dtype_and_extra(tmp_path):
    original = make_frame()
    save_frame(original, tmp_path / "f.npz")
    loaded = load_frame(tmp_path / "f.npz")
    for name, dtype in _REQUIRED_DTYPES.items():
        assert getattr(loaded, name).dtype == dtype, name
        assert np.array_equal(getattr(loaded, name), getattr(original, name)), name
    assert loaded.meta == {"format_version": FORMAT_VERSION, **original.meta}
    assert loaded.extras.keys() == original.extras.keys()
    for name, value in original.extras.items():
        assert loaded.extras[name].dtype == value.dtype
        assert np.array_equal(loaded.extras[name], value)


def test_empty_frame_roundtrips(tmp_path):
    save_frame(make_frame(num_points=0, num_boxes=0), tmp_path / "empty.npz")
    loaded = load_frame(tmp_path / "empty.npz")
    assert loaded.points.shape == (0, 3) and loaded.boxes.shape == (0, 7)


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_unreadable_file_names_its_path(tmp_path, damage):
    path = tmp_path / "f.npz"
    save_frame(make_frame(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"not a frame")
    with pytest.raises(FrameFormatError, match=str(path)):
        load_frame(path)


def test_missing_field_is_named(tmp_path):
    path = tmp_path / "f.npz"
    arrays = {name: getattr(make_frame(), name) for name in _REQUIRED_DTYPES if name != "ring"}
    np.savez(path, meta=np.array("{}"), **arrays)
    with pytest.raises(FrameFormatError, match="ring") as err:
        load_frame(path)
    assert str(path) in str(err.value)


def test_wrong_shape_names_file_and_field(tmp_path):
    path = tmp_path / "f.npz"
    arrays = {name: getattr(make_frame(), name) for name in _REQUIRED_DTYPES}
    arrays["intensity"] = arrays["intensity"][:-1]
    np.savez(path, meta=np.array("{}"), **arrays)
    with pytest.raises(FrameFormatError, match="intensity") as err:
        load_frame(path)
    assert str(path) in str(err.value)


def test_newer_format_is_refused(tmp_path):
    path = tmp_path / "f.npz"
    arrays = {name: getattr(make_frame(), name) for name in _REQUIRED_DTYPES}
    np.savez(path, meta=np.array(f'{{"format_version": {FORMAT_VERSION + 1}}}'), **arrays)
    with pytest.raises(FrameFormatError, match="newer"):
        load_frame(path)


def test_missing_file_is_not_a_format_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_frame(tmp_path / "absent.npz")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "f.npz"
    save_frame(make_frame(), path)
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]
    before = path.read_bytes()

    def crash_midway(handle, **arrays):
        handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(frame_module.np, "savez", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        save_frame(make_frame(num_points=7), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["f.npz"]


def test_extra_may_not_shadow_a_required_field(tmp_path):
    frame = make_frame()
    frame.extras["points"] = np.zeros(3)
    with pytest.raises(ValueError, match="points"):
        save_frame(frame, tmp_path / "f.npz")


def boxed_frame() -> Frame:
    """Two overlapping boxes over hand-placed points: 3 in the car only, 1 in both, 2 in the turned
    cyclist box only (a corner of the axis-aligned 1 m square would miss it), 1 in neither."""
    points = [[0.0, 0.0, 0.0], [1.9, 0.0, 0.0], [0.0, 0.9, 0.5], [2.55, 0.0, 0.0], [3.0, 0.0, 0.0],
              [3.4, 0.2, 0.0], [9, 9, 9]]
    return Frame(points=points, intensity=np.zeros(7), ring=np.zeros(7), semantic=np.zeros(7),
                 instance=np.zeros(7), boxes=[[0, 0, 0, 5.2, 2, 1.5, 0], [3.2, 0, 0, 1, 1, 1, np.pi / 4]],
                 box_labels=[8, 11], sensor_origin=[0.5, 0, 1.5])


def test_a_frame_without_box_annotations_reads_its_own_classes_and_counts_its_points():
    frame = boxed_frame()
    annotations = box_annotations(frame)
    assert annotations.names.tolist() == ["car", "cyclist"]
    assert annotations.attributes.tolist() == ["", ""]
    assert annotations.lidar_points.tolist() == [4, 3]
    assert annotations.radar_points.tolist() == [0, 0] and annotations.num_points.tolist() == [4, 3]
    assert ego_origin(frame).tolist() == [0.5, 0.0, 1.5]  # no ego origin: the sensor's
    assert bicycle_racks(frame).shape == (0, 7)


def test_box_annotations_ego_origin_and_racks_roundtrip(tmp_path):
    frame = boxed_frame()
    set_box_annotations(frame, BoxAnnotations(names=np.array(["bus", "motorcycle"]),
                                              attributes=np.array(["vehicle.moving", ""]),
                                              lidar_points=np.array([0, 12]), radar_points=np.array([3, 0])))
    frame.extras["ego_origin"] = np.array([-0.9, 0.0, -1.8])
    frame.extras["bicycle_racks"] = np.array([[3.2, 0, 0, 2, 1, 1, 0]], np.float32)
    save_frame(frame, tmp_path / "f.npz")
    loaded = load_frame(tmp_path / "f.npz")
    annotations = box_annotations(loaded)
    assert annotations.names.tolist() == ["bus", "motorcycle"]
    assert annotations.attributes.tolist() == ["vehicle.moving", ""]
    assert annotations.num_points.tolist() == [3, 12]  # the stored counts, not the points in the boxes
    assert ego_origin(loaded).tolist() == [-0.9, 0.0, -1.8]
    assert bicycle_racks(loaded).tolist() == [[3.2 * np.float32(1), 0, 0, 2, 1, 1, 0]]


@pytest.mark.parametrize(("name", "value", "problem"), [
    ("box_names", np.array(["car"]), r"box_names has shape \(1,\), expected \(2,\)"),
    ("box_lidar_points", np.array([1.5, 2.0]), "box_lidar_points has dtype float64, expected int"),
    ("bicycle_racks", np.zeros((1, 5), np.float32), r"bicycle_racks has shape \(1, 5\), expected \(K, 7\)"),
    ("ego_origin", np.zeros(2), r"ego_origin has shape \(2,\), expected \(3,\)"),
])
def test_a_bad_box_annotation_names_the_file_and_the_field(tmp_path, name, value, problem):
    frame = boxed_frame()
    frame.extras[name] = value
    path = tmp_path / "f.npz"
    save_frame(frame, path)
    with pytest.raises(FrameFormatError, match=problem) as err:
        load_frame(path)
    assert str(path) in str(err.value)


def test_a_nuscenes_frame_converted_without_box_annotations_is_refused():
    """Read with the defaults, its buses would be scored as trucks and its cycles not at all."""
    frame = boxed_frame()
    frame.meta.update(dataset="nuscenes", sequence="scene-0061", index=3)
    with pytest.raises(FrameFormatError, match="frame nuscenes/scene-0061/3 has no box_names.*convert it again"):
        box_annotations(frame)


def test_grid_shape_counts_the_voxels_along_each_axis():
    assert grid_shape([-50.0, -50.0, -4.0, 50.0, 50.0, 4.0], [0.5, 0.5, 0.5]) == (200, 200, 16)
    assert grid_shape([0.0, 0.0, 0.0, 0.3, 0.6, 0.9], 0.1) == (3, 6, 9)  # 0.3 / 0.1 is 2.9999999999999996


def test_a_pose_is_rigid_only_as_a_rotation_and_a_translation():
    c, s = np.cos(0.3), np.sin(0.3)
    turn = np.array([[c, -s, 0, 5.0], [s, c, 0, -2.0], [0, 0, 1, 1.5], [0, 0, 0, 1]])
    assert pose_problem(np.eye(4)) is None and pose_problem(turn) is None
    assert pose_problem(turn + np.diag([1e-6, 0, 0, 0])) is None  # KITTI's 6 digits
    scaled, mirrored, sheared, nan = turn.copy(), turn.copy(), turn.copy(), turn.copy()
    scaled[:3, :3] *= 1.01
    mirrored[:, 2] *= -1
    sheared[3, 0] = 0.5
    nan[0, 3] = np.nan
    for pose in (scaled, mirrored):
        assert pose_problem(pose).startswith("its rotation part is not a rotation")
    assert pose_problem(sheared) == "its last row is [0.5, 0.0, 0.0, 1.0], not [0, 0, 0, 1]"
    assert pose_problem(nan) == "it is not a finite 4 x 4 matrix (shape (4, 4))"
    assert pose_problem(np.eye(3)) == "it is not a finite 4 x 4 matrix (shape (3, 3))"
