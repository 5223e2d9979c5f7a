import math

import numpy as np
import pytest

from occbench.data.augment import GlobalAugmentation, Transform, resample_occupancy
from occbench.data.frame import (
    Camera,
    Frame,
    FrameFormatError,
    OccupancyGrid,
    add_camera,
    cameras,
    occupancy_grid,
    set_occupancy,
)
from occbench.data.taxonomy import IGNORE_INDEX

WIDE = GlobalAugmentation(
    rotation_deg=180.0,
    flip_x=True,
    flip_y=True,
    scale_range=(0.9, 1.1),
    translation_std=(0.5, 0.5, 0.2),
)
# Same symmetric square grid everywhere, so quarter turns and flips map voxels onto voxels.
GRID_RANGE = (-8.0, -8.0, -2.0, 8.0, 8.0, 2.0)
VOXEL = (0.25, 0.25, 0.25)
BLOCK = 8  # voxels per side of a constant-label block in the block grid


def box_local(points: np.ndarray, box: np.ndarray) -> np.ndarray:
    """Coordinates of ``points`` in the box's own frame (x along its heading)."""
    d = points.astype(np.float64) - box[:3]
    cos, sin = math.cos(box[6]), math.sin(box[6])
    return np.stack([cos * d[:, 0] + sin * d[:, 1], -sin * d[:, 0] + cos * d[:, 1], d[:, 2]], 1)


def in_box(points: np.ndarray, box: np.ndarray, tol: float = 1e-4) -> np.ndarray:
    return (np.abs(box_local(points, box)) <= box[3:6] / 2 + tol).all(axis=1)


def block_labels(rng: np.random.Generator) -> np.ndarray:
    """Labels constant over BLOCK^3 voxels: nearest resampling is exact away from block borders."""
    shape = np.round((np.subtract(GRID_RANGE[3:], GRID_RANGE[:3])) / VOXEL).astype(int)
    coarse = rng.integers(0, 13, tuple(shape // BLOCK), dtype=np.uint8)
    return coarse.repeat(BLOCK, 0).repeat(BLOCK, 1).repeat(BLOCK, 2)


def make_frame(seed: int = 0, occupancy: np.ndarray | None = None) -> Frame:
    """Points in and around three boxes, a camera looking forward, a rigid pose."""
    rng = np.random.default_rng(seed)
    boxes = np.array(
        [
            [5.0, 1.0, 0.0, 4.0, 2.0, 1.5, 0.3],
            [-3.0, -4.0, 0.5, 1.0, 0.8, 1.8, -2.5],
            [2.0, -6.0, -0.5, 2.0, 1.0, 1.0, math.pi / 2],
        ]
    )
    inside = []
    for box in boxes:
        local = rng.uniform(-0.49, 0.49, (40, 3)) * box[3:6]
        cos, sin = math.cos(box[6]), math.sin(box[6])
        xy = local[:, :2] @ np.array([[cos, sin], [-sin, cos]]) + box[:2]
        inside.append(np.column_stack([xy, local[:, 2] + box[2]]))
    points = np.concatenate([*inside, rng.uniform([-7.5, -7.5, -1.8], [7.5, 7.5, 1.8], (300, 3))])
    n = len(points)
    yaw = rng.uniform(-math.pi, math.pi)
    cos, sin = math.cos(yaw), math.sin(yaw)
    pose = np.eye(4)
    pose[:3, :3] = [[cos, -sin, 0], [sin, cos, 0], [0, 0, 1]]
    pose[:3, 3] = rng.normal(scale=100.0, size=3)
    frame = Frame(
        points=points,
        intensity=rng.random(n),
        ring=rng.integers(0, 32, n),
        semantic=rng.integers(0, 13, n),
        instance=rng.integers(0, 4, n),
        boxes=boxes,
        box_labels=[8, 10, 11],
        pose=pose,
        sensor_origin=[0.1, -0.2, 1.8],
        meta={"dataset": "hand", "sequence": "s0", "index": seed},
        extras={"box_velocity": rng.normal(size=(3, 2)).astype(np.float32)},
    )
    if occupancy is None:
        occupancy = rng.integers(0, 13, (64, 64, 16), dtype=np.uint8)
    set_occupancy(frame, OccupancyGrid(occupancy, GRID_RANGE, VOXEL))
    # OpenCV camera looking along +x: x_cam = -y, y_cam = -z, z_cam = x, offset a little.
    lidar_to_camera = np.array(
        [[0, -1, 0, 0.05], [0, 0, -1, -0.3], [1, 0, 0, -0.5], [0, 0, 0, 1]], dtype=np.float64
    )
    intrinsics = np.array([[300.0, 0, 320], [0, 300.0, 240], [0, 0, 1]])
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    add_camera(frame, "front", Camera(image, intrinsics, lidar_to_camera))
    return frame


def frame_arrays(frame: Frame) -> dict[str, np.ndarray]:
    names = ("points", "intensity", "ring", "semantic", "instance", "boxes", "box_labels")
    arrays = {name: getattr(frame, name) for name in (*names, "pose", "sensor_origin")}
    return {**arrays, **frame.extras}


def assert_frames_equal(a: Frame, b: Frame) -> None:
    arrays_a, arrays_b = frame_arrays(a), frame_arrays(b)
    assert arrays_a.keys() == arrays_b.keys()
    for name in arrays_a:
        assert arrays_a[name].dtype == arrays_b[name].dtype, name
        assert np.array_equal(arrays_a[name], arrays_b[name]), name
    assert a.meta == b.meta


def test_box_contents_move_with_their_boxes_for_every_flip_and_rotation():
    frame = make_frame()
    seen_flips = set()
    for seed in range(64):
        transform = WIDE.sample(np.random.default_rng(seed))
        seen_flips.add((transform.flip_x, transform.flip_y))
        out = WIDE.apply(frame, transform)
        mirror = -1.0 if transform.flip_x != transform.flip_y else 1.0
        for box, new_box in zip(frame.boxes, out.boxes):
            assert -math.pi <= float(new_box[6]) < math.pi
            np.testing.assert_allclose(new_box[3:6], box[3:6] * transform.scale, rtol=1e-6)
            before = in_box(frame.points, box)
            after = in_box(out.points, new_box)
            assert before.sum() >= 40 and np.array_equal(before, after), (seed, transform)
            # Stronger than containment: the nose stays in front, and a reflection swaps
            # only the box's left and right.
            expected = box_local(frame.points, box) * transform.scale * [1.0, mirror, 1.0]
            np.testing.assert_allclose(box_local(out.points, new_box), expected, atol=2e-5)
        for name in ("intensity", "ring", "semantic", "instance", "box_labels"):
            assert np.array_equal(getattr(out, name), getattr(frame, name)), name
    assert seen_flips == {(False, False), (False, True), (True, False), (True, True)}


@pytest.mark.parametrize(
    "flip_x, flip_y, yaw, expected_yaw, heading",
    [
        (True, False, 0.0, 0.0, (1.0, 0.0)),  # y -> -y: still points to +x
        (False, True, 0.0, -math.pi, (-1.0, 0.0)),  # x -> -x: points to -x, yaw wrapped to -pi
        (True, False, math.pi / 2, -math.pi / 2, (0.0, -1.0)),
        (False, True, math.pi / 2, math.pi / 2, (0.0, 1.0)),
        (True, True, 0.25, 0.25 - math.pi, (-math.cos(0.25), -math.sin(0.25))),
    ],
)
def test_flip_yaw_conventions(flip_x, flip_y, yaw, expected_yaw, heading):
    new_yaw = Transform(flip_x=flip_x, flip_y=flip_y).transform_yaw(np.array([yaw]))[0]
    assert -math.pi <= new_yaw < math.pi
    assert new_yaw == pytest.approx(expected_yaw, abs=1e-12)
    assert (math.cos(new_yaw), math.sin(new_yaw)) == pytest.approx(heading, abs=1e-12)


def test_stored_float32_yaw_stays_in_range():
    frame = make_frame()
    frame.boxes[:, 6] = [0.0, np.nextafter(np.float32(np.pi), np.float32(0)), -1.0]
    out = GlobalAugmentation().apply(frame, Transform(flip_y=True))
    yaw = out.boxes[:, 6].astype(np.float64)
    assert ((yaw >= -math.pi) & (yaw < math.pi)).all()
    np.testing.assert_allclose(np.cos(yaw), [-1.0, 1.0, -math.cos(-1.0)], atol=1e-6)
    np.testing.assert_allclose(np.sin(yaw), [0.0, 0.0, math.sin(-1.0)], atol=1e-6)


def test_rotation_wraps_yaw_into_range():
    yaws = Transform(rotation=math.pi / 2).transform_yaw(np.array([3.0, -3.0, 0.0]))
    expected = [3.0 + math.pi / 2 - 2 * math.pi, -3.0 + math.pi / 2, math.pi / 2]
    np.testing.assert_allclose(yaws, expected)


def test_velocity_follows_the_motion_it_describes():
    frame = make_frame()
    dt = 0.5
    for seed in range(16):
        transform = WIDE.sample(np.random.default_rng(seed))
        out = WIDE.apply(frame, transform)
        velocity = frame.extras["box_velocity"].astype(np.float64)
        later = frame.boxes[:, :3].astype(np.float64)
        later[:, :2] += velocity * dt
        moved = transform.transform_points(later) - transform.transform_points(frame.boxes[:, :3])
        np.testing.assert_allclose(out.extras["box_velocity"], moved[:, :2] / dt, atol=1e-5)
        assert out.extras["box_velocity"].dtype == np.float32


def test_ego_origin_and_bicycle_racks_move_with_the_points():
    """A rack placed on a box stays on it; the ego origin moves as a point, not as a direction."""
    frame = make_frame()
    frame.extras["ego_origin"] = np.array([1.5, -0.5, 0.0])
    frame.extras["bicycle_racks"] = frame.boxes[1:].copy()
    for seed in range(8):
        transform = WIDE.sample(np.random.default_rng(seed))
        out = WIDE.apply(frame, transform)
        np.testing.assert_allclose(out.extras["bicycle_racks"], out.boxes[1:], atol=1e-6)
        assert out.extras["bicycle_racks"].dtype == np.float32
        np.testing.assert_allclose(out.extras["ego_origin"],
                                   transform.transform_points(np.array([[1.5, -0.5, 0.0]]))[0])


@pytest.mark.parametrize(
    "transform, expected",
    [
        (Transform(flip_x=True), lambda a: a[:, ::-1, :]),
        (Transform(flip_y=True), lambda a: a[::-1, :, :]),
        (Transform(flip_x=True, flip_y=True), lambda a: a[::-1, ::-1, :]),
        (Transform(rotation=math.pi), lambda a: a[::-1, ::-1, :]),
        # Counter-clockwise quarter turn: the voxel at (x, y) moves to (-y, x).
        (Transform(rotation=math.pi / 2), lambda a: np.rot90(a, 1, axes=(0, 1))),
        (Transform(rotation=-math.pi / 2), lambda a: np.rot90(a, -1, axes=(0, 1))),
        (
            Transform(rotation=math.pi / 2, flip_x=True),
            lambda a: np.rot90(a[:, ::-1], 1, axes=(0, 1)),
        ),
    ],
)
def test_occupancy_is_exact_for_flips_and_quarter_turns(transform, expected):
    labels = np.random.default_rng(1).integers(0, 13, (64, 64, 16), dtype=np.uint8)
    out = resample_occupancy(OccupancyGrid(labels, GRID_RANGE, VOXEL), transform)
    assert out.point_range == GRID_RANGE and out.voxel_size == VOXEL
    assert np.array_equal(out.labels, expected(labels))


@pytest.mark.parametrize(
    "transform, expected",
    [
        (Transform(flip_x=True), lambda a: a[:, ::-1, :]),
        (Transform(flip_y=True), lambda a: a[::-1, :, :]),
        (Transform(rotation=math.pi), lambda a: a[::-1, ::-1, :]),
    ],
)
def test_occupancy_flips_are_exact_on_a_rectangular_grid(transform, expected):
    labels = np.random.default_rng(4).integers(0, 13, (64, 24, 8), dtype=np.uint8)
    grid = OccupancyGrid(labels, (-8.0, -3.0, -1.0, 8.0, 3.0, 1.0), VOXEL)
    assert np.array_equal(resample_occupancy(grid, transform).labels, expected(labels))


def test_quarter_turn_moves_a_marked_voxel_where_the_point_goes():
    labels = np.zeros((64, 64, 16), np.uint8)
    grid = OccupancyGrid(labels, GRID_RANGE, VOXEL)
    point = np.array([[5.1, 1.1, 0.6]])
    coords, _ = grid.voxel_of(point)
    labels[tuple(coords[0])] = 7
    transform = Transform(rotation=math.pi / 2)
    out = resample_occupancy(grid, transform)
    new_coords, _ = out.voxel_of(transform.transform_points(point))
    assert out.labels[tuple(new_coords[0])] == 7 and (out.labels == 7).sum() == 1


def test_occupancy_shift_and_scale_mark_uncovered_voxels_unknown():
    labels = np.random.default_rng(2).integers(0, 13, (64, 64, 16), dtype=np.uint8)
    grid = OccupancyGrid(labels, GRID_RANGE, VOXEL)
    # +2 voxels along x, -1 along z.
    shifted = resample_occupancy(grid, Transform(translation=(0.5, 0.0, -0.25))).labels
    assert (shifted[:2] == IGNORE_INDEX).all() and (shifted[:, :, -1] == IGNORE_INDEX).all()
    assert np.array_equal(shifted[2:, :, :-1], labels[:-2, :, 1:])
    shrunk = resample_occupancy(grid, Transform(scale=0.5)).labels
    # The source grid now covers only the middle half of the output grid.
    assert (shrunk[:16] == IGNORE_INDEX).all() and (shrunk[:, :, 12:] == IGNORE_INDEX).all()
    assert (shrunk[16:48, 16:48, 4:12] != IGNORE_INDEX).all()


def test_occupancy_label_at_each_point_survives_any_transform():
    labels = block_labels(np.random.default_rng(3))
    frame = make_frame(occupancy=labels)
    block = BLOCK * VOXEL[0]
    checked = 0
    for seed in range(24):
        transform = WIDE.sample(np.random.default_rng(100 + seed))
        out = WIDE.apply(frame, transform)
        before, after = occupancy_grid(frame), occupancy_grid(out)
        (coords, inside), (new_coords, new_inside) = (
            before.voxel_of(frame.points),
            after.voxel_of(out.points),
        )
        # The voxel holding an augmented point maps back at most half a voxel
        # diagonal / scale away from the original point: stay that far from block borders.
        margin = math.sqrt(3) / 2 * VOXEL[0] / transform.scale + 1e-3
        offset = np.mod(frame.points - np.asarray(GRID_RANGE[:3]), block)
        clear = ((offset > margin) & (offset < block - margin)).all(axis=1)
        keep = inside & new_inside & clear
        original = before.labels[tuple(coords[keep].T)]
        augmented = after.labels[tuple(new_coords[keep].T)]
        assert np.array_equal(augmented, original), (seed, transform)
        checked += keep.sum()
    assert checked > 2000


def test_camera_projections_are_unchanged():
    frame = make_frame()
    before = cameras(frame)["front"]
    pixels, visible = before.project(frame.points)
    assert visible.sum() > 50
    for seed in range(16):
        out = WIDE(frame, np.random.default_rng(seed))
        after = cameras(out)["front"]
        assert np.array_equal(after.image, before.image)
        assert np.array_equal(after.intrinsics, before.intrinsics)
        new_pixels, new_visible = after.project(out.points)
        assert np.array_equal(new_visible, visible)
        np.testing.assert_allclose(new_pixels[visible], pixels[visible], atol=1e-2)


def test_pose_keeps_world_coordinates():
    frame = make_frame()

    def world(pose, points):
        return points.astype(np.float64) @ pose[:3, :3].T + pose[:3, 3]

    for seed in range(16):
        transform = WIDE.sample(np.random.default_rng(seed))
        out = WIDE.apply(frame, transform)
        identity = transform.inverse_matrix @ transform.matrix
        np.testing.assert_allclose(identity, np.eye(4), atol=1e-12)
        for new, old in ((out.points, frame.points), (out.sensor_origin, frame.sensor_origin)):
            new, old = new.reshape(-1, 3), old.reshape(-1, 3)
            np.testing.assert_allclose(world(out.pose, new), world(frame.pose, old), atol=1e-4)
            np.testing.assert_allclose(new, transform.transform_points(old), atol=1e-5)


def test_same_seed_same_frame_and_other_seed_other_frame():
    frame = make_frame()
    first = WIDE(frame, np.random.default_rng(7))
    assert_frames_equal(first, WIDE(frame, np.random.default_rng(7)))
    assert not np.array_equal(first.points, WIDE(frame, np.random.default_rng(8)).points)


def test_identity_returns_equal_arrays():
    frame = make_frame()
    assert_frames_equal(GlobalAugmentation().apply(frame, Transform()), frame)
    # The default settings sample the identity.
    assert GlobalAugmentation().sample(np.random.default_rng(0)) == Transform()


def test_input_frame_is_left_alone_and_shares_no_memory():
    frame = make_frame()
    snapshot = {name: value.copy() for name, value in frame_arrays(frame).items()}
    meta = {**frame.meta}
    out = WIDE(frame, np.random.default_rng(0))
    for name, value in frame_arrays(frame).items():
        assert np.array_equal(value, snapshot[name]), name
        assert not np.shares_memory(value, frame_arrays(out)[name]), name
    assert frame.meta == meta and frame.meta is not out.meta


def test_frame_without_optional_fields():
    frame = make_frame()
    bare = Frame(
        points=frame.points,
        intensity=frame.intensity,
        ring=frame.ring,
        semantic=frame.semantic,
        instance=frame.instance,
        boxes=np.zeros((0, 7)),
        box_labels=np.zeros(0),
    )
    out = WIDE(bare, np.random.default_rng(0))
    assert out.boxes.shape == (0, 7) and out.extras == {} and out.num_points == frame.num_points


def test_bad_velocity_names_the_frame():
    frame = make_frame()
    frame.extras["box_velocity"] = np.zeros((2, 2), np.float32)
    with pytest.raises(FrameFormatError, match=r"hand/s0/0: box_velocity has shape \(2, 2\)"):
        WIDE(frame, np.random.default_rng(0))


def test_sampling_ranges_and_flip_rate():
    transforms = [WIDE.sample(np.random.default_rng(seed)) for seed in range(400)]
    rotations = np.array([t.rotation for t in transforms])
    scales = np.array([t.scale for t in transforms])
    assert np.abs(rotations).max() <= math.pi and rotations.min() < -2.5 and rotations.max() > 2.5
    assert scales.min() >= 0.9 and scales.max() <= 1.1
    for attribute in ("flip_x", "flip_y"):
        assert 150 < sum(getattr(t, attribute) for t in transforms) < 250
    std = np.array([t.translation for t in transforms]).std(axis=0)
    np.testing.assert_allclose(std, [0.5, 0.5, 0.2], rtol=0.15)


def test_switching_one_augmentation_off_keeps_the_others_draws():
    no_flips = GlobalAugmentation(
        rotation_deg=180.0, scale_range=(0.9, 1.1), translation_std=(0.5, 0.5, 0.2)
    )
    for seed in range(8):
        a = WIDE.sample(np.random.default_rng(seed))
        b = no_flips.sample(np.random.default_rng(seed))
        assert (a.rotation, a.scale, a.translation) == (b.rotation, b.scale, b.translation)
        assert not b.flip_x and not b.flip_y


def test_from_dict_reads_params_and_rejects_bad_settings():
    settings = GlobalAugmentation.from_dict(
        {"rotation_deg": 45, "flip_x": True, "scale_range": [0.95, 1.05], "translation_std": 0.2}
    )
    assert settings == GlobalAugmentation(45.0, True, False, (0.95, 1.05), (0.2, 0.2, 0.2))
    with pytest.raises(ValueError, match="unknown key.*rotation"):
        GlobalAugmentation.from_dict({"rotation": 45})
    with pytest.raises(ValueError, match="scale_range"):
        GlobalAugmentation.from_dict({"scale_range": [1.1, 0.9]})
    with pytest.raises(ValueError, match="translation_std"):
        GlobalAugmentation.from_dict({"translation_std": [0.1, -0.1, 0.0]})
    with pytest.raises(ValueError, match="flip_y must be true or false"):
        GlobalAugmentation.from_dict({"flip_y": 0.5})
    with pytest.raises(ValueError, match="rotation_deg"):
        GlobalAugmentation.from_dict({"rotation_deg": -10})
