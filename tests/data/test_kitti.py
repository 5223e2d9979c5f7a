"""SemanticKITTI and KITTI detection converters, on real scans from ../shared/data/real."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from occbench.data.convert import run_conversion
from occbench.data.converters.kitti import (
    KittiDetectionConverter,
    SemanticKittiConverter,
    camera_to_lidar_boxes,
    fit_box,
    lidar_to_camera_boxes,
    points_in_boxes,
)
from occbench.data.dataset import FrameIndex
from occbench.data.frame import cameras, occupancy_grid
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def real_file(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        pytest.skip(f"real LiDAR sample {path} is absent (see shared/data/real/SOURCES.md)")
    return path


def transform(matrix: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def rotation_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def numbers(matrix: np.ndarray) -> str:
    return " ".join(f"{v:.12e}" for v in np.ravel(matrix))


def same_angle(a: float, b: float, period: float = 2 * math.pi, tol: float = 1e-6) -> bool:
    return abs((a - b + period / 2) % period - period / 2) < tol


# KITTI calibration of the 2011_09_26 drives (the layout of training/calib/*.txt).
P0 = np.array([[707.0493, 0, 604.0814, 0], [0, 707.0493, 180.5066, 0], [0, 0, 1, 0]])
P1 = np.array([[707.0493, 0, 604.0814, -379.7842], [0, 707.0493, 180.5066, 0], [0, 0, 1, 0]])
P2 = np.array([[707.0493, 0, 604.0814, 45.75831], [0, 707.0493, 180.5066, -0.3454157], [0, 0, 1, 0.004981016]])
P3 = np.array([[707.0493, 0, 604.0814, -334.1081], [0, 707.0493, 180.5066, 2.33066], [0, 0, 1, 0.003201153]])
R0_RECT = np.array([[0.9999128, 0.01009263, -0.008511932],
                    [-0.01012729, 0.9999406, -0.004037671],
                    [0.008470675, 0.004123522, 0.9999556]])
TR_VELO_TO_CAM = np.array([[0.006927964, -0.9999722, -0.002757829, -0.02457729],
                           [-0.001162982, 0.002749836, -0.9999955, -0.06127237],
                           [0.9999753, 0.006931141, -0.001143899, -0.3321029]])
TR_IMU_TO_VELO = np.array([[0.9999976, 0.0007553071, -0.002035826, -0.8086759],
                           [-0.0007854027, 0.9998898, -0.01482298, 0.3195559],
                           [0.002024406, 0.01482454, 0.9998881, -0.7997231]])
VELO_TO_RECT = transform(R0_RECT) @ transform(TR_VELO_TO_CAM)
KITTI_CALIB = "\n".join([
    f"P0: {numbers(P0)}", f"P1: {numbers(P1)}", f"P2: {numbers(P2)}", f"P3: {numbers(P3)}",
    f"R0_rect: {numbers(R0_RECT)}", f"Tr_velo_to_cam: {numbers(TR_VELO_TO_CAM)}",
    f"Tr_imu_to_velo: {numbers(TR_IMU_TO_VELO)}",
]) + "\n"


# ------------------------------------------------------------------ box geometry


@pytest.mark.parametrize("yaw", [-2.8, -1.2, -0.21, 0.0, 0.6, 1.5708, 2.4, 3.1])
def test_camera_lidar_box_round_trip(yaw):
    rng = np.random.default_rng(7)
    boxes = np.column_stack([
        rng.uniform([3, -20, -2], [60, 20, 0], (4, 3)),
        rng.uniform([3.5, 1.5, 1.4], [5, 2, 1.8], (4, 3)),
        yaw + rng.uniform(-0.05, 0.05, 4),
    ])
    location, hwl, rotation_y = lidar_to_camera_boxes(boxes, VELO_TO_RECT)
    back = camera_to_lidar_boxes(location, hwl, rotation_y, VELO_TO_RECT)
    np.testing.assert_allclose(back[:, :6], boxes[:, :6], atol=1e-9)
    assert all(same_angle(a, b) for a, b in zip(back[:, 6], boxes[:, 6]))
    assert np.all((back[:, 6] >= -math.pi) & (back[:, 6] < math.pi))
    np.testing.assert_allclose(hwl, boxes[:, [5, 4, 3]])


@pytest.mark.parametrize("rotation_y", [-2.5, -math.pi / 2, -0.4, 0.0, 0.9, 2.2])
def test_kitti_label_box_matches_the_object_it_describes(rotation_y):
    """Build the object's corners and surface the way the KITTI devkit defines a label (camera frame,
    x along the length, y down from the bottom centre, rotation about camera y), carry those points
    into the LiDAR frame and check the converted box: same footprint, dx = length, heading to the front."""
    h, w, l = 1.5, 1.7, 4.2
    location = np.array([2.0, 1.65, 15.0])
    grid = np.linspace(-0.5, 0.5, 11)
    local = np.array([[x * l, -(y + 0.5) * h, z * w] for x in grid for y in grid for z in grid])
    local = local[np.abs(local / [l, h, w] - [0, -0.5, 0]).max(axis=1) >= 0.5 - 1e-9]  # the surface
    c, s = math.cos(rotation_y), math.sin(rotation_y)
    rot_y = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])
    camera_points = local @ rot_y.T + location
    lidar_points = camera_points @ np.linalg.inv(VELO_TO_RECT)[:3, :3].T + np.linalg.inv(VELO_TO_RECT)[:3, 3]

    box = camera_to_lidar_boxes(location, [h, w, l], [rotation_y], VELO_TO_RECT)[0]
    fitted = fit_box(lidar_points, step_deg=0.5)
    # The camera is tilted ~0.5 degrees against the LiDAR: a few centimetres over a car.
    np.testing.assert_allclose(fitted[:6], box[:6], atol=0.08)
    assert same_angle(fitted[6], box[6], period=math.pi, tol=0.01)
    front_camera = rot_y @ np.array([l / 2, -h / 2, 0]) + location
    front_lidar = np.linalg.inv(VELO_TO_RECT)[:3] @ np.append(front_camera, 1)
    heading = box[:3] + box[3] / 2 * np.array([math.cos(box[6]), math.sin(box[6]), 0])
    np.testing.assert_allclose(heading, front_lidar, atol=0.05)
    inside = points_in_boxes(lidar_points * 0.95 + box[:3] * 0.05, box[None])  # shrunk to dodge the faces
    assert (inside == 0).all()


@pytest.mark.parametrize("yaw", [-1.4, -0.7, 0.0, 0.35, 1.2])
def test_fit_box_follows_the_sides_of_an_l_shaped_outline(yaw):
    """A car seen from behind-left: only its rear and one flank return points."""
    length, width = 4.4, 1.8
    along = np.linspace(-length / 2, length / 2, 60)
    across = np.linspace(-width / 2, width / 2, 25)
    outline = np.vstack([np.column_stack([along, np.full_like(along, width / 2)]),
                         np.column_stack([np.full_like(across, -length / 2), across])])
    heights = np.tile([-1.6, -0.9, -0.2], len(outline))
    local = np.column_stack([np.repeat(outline, 3, axis=0), heights])
    points = local @ rotation_z(yaw).T + [12.0, -4.0, 0.0]
    box = fit_box(points)
    np.testing.assert_allclose(box[:6], [12.0, -4.0, -0.9, length, width, 1.4], atol=1e-3)
    assert same_angle(box[6], yaw, period=math.pi, tol=2e-3)
    assert -math.pi / 2 <= box[6] < math.pi / 2


# ------------------------------------------------------------------ SemanticKITTI

# Tr of SemanticKITTI sequence 00 (velodyne -> camera 0).
SEQ00_TR = np.array([[4.276802385584e-04, -9.999672484946e-01, -8.084491683471e-03, -1.198459927713e-02],
                     [-7.210626507497e-03, 8.081198471645e-03, -9.999413164504e-01, -5.403984729748e-02],
                     [9.999738645903e-01, 4.859485810390e-04, -7.206933692422e-03, -2.921968648686e-01]])


def lidar_motion(index: int) -> np.ndarray:
    """LiDAR-to-world of scan ``index``: the car drives 1.5 m and turns 8 degrees a scan."""
    pose = np.eye(4)
    pose[:3, :3] = rotation_z(math.radians(8 * index))
    pose[:3, 3] = [1.5 * index, 0.3 * index, 0.02 * index]
    return pose


def write_sequence(root: Path, name: str, scans: list[np.ndarray], labels: list | None,
                   times: list[float] | None = None) -> Path:
    """A SemanticKITTI sequence folder; labels None leaves out labels/ (a test sequence)."""
    folder = root / "sequences" / name
    (folder / "velodyne").mkdir(parents=True)
    for index, scan in enumerate(scans):
        np.asarray(scan, dtype="<f4").tofile(folder / "velodyne" / f"{index:06d}.bin")
    if labels is not None:
        (folder / "labels").mkdir()
        for index, label in enumerate(labels):
            np.asarray(label, dtype="<u4").tofile(folder / "labels" / f"{index:06d}.label")
    tr = transform(SEQ00_TR)
    camera_poses = [tr @ lidar_motion(i) @ np.linalg.inv(tr) for i in range(len(scans))]
    (folder / "poses.txt").write_text("".join(numbers(p[:3]) + "\n" for p in camera_poses))
    (folder / "calib.txt").write_text(
        "".join(f"{k}: {numbers(p)}\n" for k, p in (("P0", P0), ("P1", P1), ("P2", P2), ("P3", P3)))
        + f"Tr: {numbers(SEQ00_TR)}\n")
    if times is not None:
        (folder / "times.txt").write_text("".join(f"{t:.6e}\n" for t in times))
    return folder


def _settings(root: Path, train: list[str], val: list[str]) -> dict:
    """A semantickitti dataset's settings, without occupancy aggregation."""
    return {"root": str(root), "train_sequences": train, "val_sequences": val, "occupancy": None}


def moved_copy(scan: np.ndarray, index: int) -> np.ndarray:
    """The same world points as seen from scan ``index``'s pose."""
    to_lidar = np.linalg.inv(lidar_motion(index))
    return np.column_stack([scan[:, :3] @ to_lidar[:3, :3].T + to_lidar[:3, 3], scan[:, 3]])


def test_semantickitti_real_scan_maps_classes_and_poses(tmp_path, monkeypatch):
    scan = np.fromfile(real_file("semantickitti_00_000000.bin"), dtype="<f4").reshape(-1, 4)
    label = np.fromfile(real_file("semantickitti_00_000000.label"), dtype="<u4")
    truncated = scan.tobytes()[:-6]
    unknown = label.copy()
    unknown[[3, 17]] = 77  # not a SemanticKITTI class
    folder = write_sequence(tmp_path / "kitti", "00", [scan, moved_copy(scan, 1), scan, scan, scan],
                            [label, label, label, label[:-1], unknown])
    (folder / "velodyne" / "000002.bin").write_bytes(truncated)
    settings = {"kind": "semantickitti", **_settings(tmp_path / "kitti", ["00"], [])}
    monkeypatch.chdir(tmp_path)

    failures = run_conversion("skitti", SemanticKittiConverter(settings), settings, workers=1)

    assert len(failures) == 3
    assert "velodyne/000002.bin: ValueError" in failures[0] and "16-byte points" in failures[0]
    assert "labels/000003.label: 196 bytes, but 000003.bin has 50 points" in failures[1]
    assert "labels/000004.label: label id(s) [77]" in failures[2]
    index = FrameIndex("results/data/skitti/index.json")
    assert index.ids("train") == ["00_000000", "00_000001"]
    first, second = index.load("00_000000"), index.load("00_000001")

    raw = label & 0xFFFF
    expected = {0: IGNORE_INDEX, 50: CLASS_ID["building"], 52: CLASS_ID["building"],
                70: CLASS_ID["vegetation"], 71: CLASS_ID["vegetation"], 80: CLASS_ID["pole"]}
    assert set(np.unique(raw)) == set(expected)
    np.testing.assert_array_equal(first.semantic, [expected[r] for r in raw])
    np.testing.assert_array_equal(first.points, scan[:, :3])
    np.testing.assert_array_equal(first.intensity, scan[:, 3])  # remission is already in [0, 1]
    assert (first.ring == -1).all() and (first.instance == 0).all() and len(first.boxes) == 0
    assert first.meta["dataset"] == "semantickitti" and first.meta["sequence"] == "00"
    assert (first.meta["index"], second.meta["index"]) == (0, 1)
    assert (first.meta["timestamp"], second.meta["timestamp"]) == (0.0, 0.1)
    assert first.meta["sensor"] == "kitti64"

    np.testing.assert_allclose(second.pose, lidar_motion(1), atol=1e-9)
    world = [f.points @ f.pose[:3, :3].T + f.pose[:3, 3] for f in (first, second)]
    np.testing.assert_allclose(world[0], world[1], atol=1e-4)
    assert np.abs(first.points - second.points).max() > 1.0  # the copy really moved


def test_semantickitti_things_get_instances_and_boxes(tmp_path):
    """The real excerpt holds only stuff classes; add a parked car, a moving car of 3 points
    (too few for a box) and car points without an instance id."""
    scan = np.fromfile(real_file("semantickitti_00_000000.bin"), dtype="<f4").reshape(-1, 4)
    label = np.fromfile(real_file("semantickitti_00_000000.label"), dtype="<u4")
    rng = np.random.default_rng(3)
    rear = np.column_stack([np.full(15, -2.1), np.linspace(-0.85, 0.85, 15), rng.uniform(-1.6, -0.3, 15)])
    flank = np.column_stack([np.linspace(-2.1, 2.1, 25), np.full(25, -0.85), rng.uniform(-1.6, -0.3, 25)])
    car = np.vstack([rear, flank]) @ rotation_z(0.5).T + [10.0, 5.0, 0.0]  # seen from behind and right
    moving = rng.uniform([-20, -1, -1], [-19, 0, 0], (3, 3))
    loose = rng.uniform([30, 0, -1], [31, 1, 0], (6, 3))
    extra = np.vstack([car, moving, loose])
    points = np.vstack([scan, np.column_stack([extra, np.full(len(extra), 0.5)])])
    labels = np.concatenate([label, np.full(40, (9 << 16) | 10), np.full(3, (2 << 16) | 252), np.full(6, 10)])
    write_sequence(tmp_path, "08", [points], [labels])
    converter = SemanticKittiConverter(_settings(tmp_path, [], ["08"]))
    [source] = converter.sources()
    assert (source.frame_id, source.scene, source.split) == ("08_000000", "08", "val")

    frame = converter.load(source)
    instance = frame.instance
    assert (instance[:50] == 0).all() and (instance[50:90] == 1).all() and (instance[90:] == 0).all()
    assert (frame.semantic[50:] == CLASS_ID["car"]).all()
    assert frame.box_labels.tolist() == [CLASS_ID["car"]]
    box = frame.boxes[0]
    # The fit is tight: the outermost points lie on its faces (up to float32 rounding).
    assert (points_in_boxes(car * 0.999 + box[:3] * 0.001, frame.boxes) == 0).all()
    np.testing.assert_allclose(box[:2], [10.0, 5.0], atol=0.01)
    np.testing.assert_allclose(box[3:5], [4.2, 1.7], atol=0.01)
    assert same_angle(box[6], 0.5, math.pi, 0.01)


def test_semantickitti_sequence_without_labels_is_ignore_and_timed(tmp_path):
    scan = np.fromfile(real_file("semantickitti_00_000000.bin"), dtype="<f4").reshape(-1, 4)
    write_sequence(tmp_path, "11", [scan, scan], labels=None, times=[0.0, 0.103])
    write_sequence(tmp_path, "12", [scan], labels=None)
    converter = SemanticKittiConverter(_settings(tmp_path, ["11"], []))
    assert [s.frame_id for s in converter.sources()] == ["11_000000", "11_000001"]  # 12 is not listed
    frame = converter.load(converter.sources()[1])
    assert (frame.semantic == IGNORE_INDEX).all() and (frame.instance == 0).all()
    assert frame.meta["timestamp"] == pytest.approx(0.103)

    missing = SemanticKittiConverter(_settings(tmp_path, ["11", "13"], []))
    with pytest.raises(FileNotFoundError, match=r"sequences/13/velodyne: no such folder"):
        missing.sources()


def test_semantickitti_calib_without_tr_is_named(tmp_path):
    scan = np.fromfile(real_file("semantickitti_00_000000.bin"), dtype="<f4").reshape(-1, 4)
    folder = write_sequence(tmp_path, "00", [scan], labels=None)
    (folder / "calib.txt").write_text(f"P0: {numbers(P0)}\n")
    converter = SemanticKittiConverter(_settings(tmp_path, ["00"], []))
    with pytest.raises(ValueError, match=r"00/calib.txt: calibration lacks Tr \(has P0\)"):
        converter.load(converter.sources()[0])


# ------------------------------------------------------------------ KITTI detection

# A car in the real scan 000008, placed by eye from a bird's-eye plot: rear bumper at x ~ 6.3,
# right flank from (6.7, 0.8) to (9.7, 0.2), roof at z ~ -0.1, ground at z ~ -1.7.
CAR = np.array([8.00, 1.25, -0.825, 4.10, 1.90, 1.65, -0.21])
# The same car as a label_2 line (rectified camera frame, KITTI's two decimals), and a DontCare region.
LABEL_2 = (
    "Car 0.00 0 -1.20 293.10 169.85 615.27 374.00 1.65 1.90 4.10 -1.26 1.56 7.67 -1.36\n"
    "DontCare -1 -1 -10 800.38 163.67 825.45 184.07 -1 -1 -1 -1000 -1000 -1000 -10\n"
)


def write_kitti(root: Path, frames: dict[str, str], scan: Path) -> None:
    """A KITTI object tree: frame id -> label_2 text, all frames with the real scan and calib."""
    for folder in ("velodyne", "label_2", "calib"):
        (root / "training" / folder).mkdir(parents=True, exist_ok=True)
    for frame_id, label in frames.items():
        shutil.copyfile(scan, root / "training" / "velodyne" / f"{frame_id}.bin")
        (root / "training" / "label_2" / f"{frame_id}.txt").write_text(label)
        (root / "training" / "calib" / f"{frame_id}.txt").write_text(KITTI_CALIB)
    (root / "ImageSets").mkdir()
    ids = sorted(frames)
    (root / "ImageSets" / "train.txt").write_text("\n".join(ids[:-1]) + "\n")
    (root / "ImageSets" / "val.txt").write_text(ids[-1] + "\n")


def test_kitti_detection_real_scan_box_and_instances(tmp_path, monkeypatch):
    scan_path = real_file("kitti_000008.bin")
    scan = np.fromfile(scan_path, dtype="<f4").reshape(-1, 4)
    write_kitti(tmp_path / "kitti", {"000008": LABEL_2, "000010": LABEL_2, "000011": "Tram" + LABEL_2[3:],
                                     "000012": "Sofa" + LABEL_2[3:]}, scan_path)
    (tmp_path / "kitti" / "training" / "calib" / "000010.txt").write_text(KITTI_CALIB.split("R0_rect")[0])
    settings = {"kind": "kitti", "root": str(tmp_path / "kitti"), "cameras": False}
    monkeypatch.chdir(tmp_path)

    failures = run_conversion("kitti", KittiDetectionConverter(settings), settings, workers=1)

    assert len(failures) == 2
    assert "calib/000010.txt: calibration lacks R0_rect, Tr_velo_to_cam (has P0, P1, P2, P3)" in failures[0]
    assert "label_2/000012.txt: object type(s) ['Sofa'] are not in the KITTI mapping table" in failures[1]
    index = FrameIndex("results/data/kitti/index.json")
    assert index.ids("train") == ["000008", "000011"] and index.ids("val") == []
    frame = index.load("000008")
    assert index.load("000011").box_labels.tolist() == [CLASS_ID["truck"]]

    # The box comes back where it was placed, DontCare dropped.
    assert frame.box_labels.tolist() == [CLASS_ID["car"]]
    np.testing.assert_allclose(frame.boxes[0, :6], CAR[:6], atol=0.01)
    assert same_angle(frame.boxes[0, 6], CAR[6], tol=2e-3)
    np.testing.assert_array_equal(frame.pose, np.eye(4))
    assert frame.meta["dataset"] == "kitti" and frame.meta["index"] == 8

    # Points inside the placed box (in its own frame) carry instance 1, the rest 0.
    local = (scan[:, :3] - CAR[:3]) @ rotation_z(CAR[6])
    inside = (np.abs(local) <= CAR[3:6] / 2).all(axis=1)
    margin = (np.abs(local) - CAR[3:6] / 2).max(axis=1)
    decided = np.abs(margin) > 0.02  # leave out points within rounding distance of a face
    np.testing.assert_array_equal(frame.instance[decided], inside[decided].astype(np.int32))
    # The car cluster (above the ground, around the placed box) is all inside.
    cluster = (np.abs(local[:, :2]) <= [2.4, 1.3]).all(axis=1) & (scan[:, 2] > -1.5)
    assert cluster.sum() > 1500 and (frame.instance[cluster] == 1).all()
    # dx is the length along the heading: the car's points stretch along yaw, not across it.
    body = fit_box(scan[cluster, :3])
    assert body[3] > 3.5 and body[4] < 2.0 and same_angle(body[6], CAR[6], period=math.pi, tol=math.radians(2))

    np.testing.assert_array_equal(frame.intensity, scan[:, 3])  # reflectance preserved
    np.testing.assert_array_equal(frame.points, scan[:, :3])
    assert (frame.semantic == IGNORE_INDEX).all() and (frame.ring == -1).all()


def test_kitti_label_line_with_missing_fields_is_named(tmp_path):
    scan_path = real_file("kitti_000008.bin")
    short = LABEL_2.replace("7.67 -1.36", "7.67")
    write_kitti(tmp_path, {"000008": short}, scan_path)
    converter = KittiDetectionConverter({"root": str(tmp_path), "cameras": False})
    with pytest.raises(ValueError, match=r"label_2/000008.txt, line 1: 14 fields, a label_2 line has 15"):
        converter.load(converter.sources()[0])


def test_kitti_missing_split_file_is_named(tmp_path):
    write_kitti(tmp_path, {"000008": LABEL_2}, real_file("kitti_000008.bin"))
    (tmp_path / "ImageSets" / "val.txt").unlink()
    with pytest.raises(FileNotFoundError, match=r"ImageSets/val.txt: the val split file is missing"):
        KittiDetectionConverter({"root": str(tmp_path), "cameras": False}).sources()


def test_kitti_camera_projects_like_p2(tmp_path):
    from PIL import Image

    scan_path = real_file("kitti_000008.bin")
    write_kitti(tmp_path, {"000008": LABEL_2}, scan_path)
    (tmp_path / "training" / "image_2").mkdir()
    Image.new("RGB", (1242, 375), (90, 120, 150)).save(tmp_path / "training" / "image_2" / "000008.png")
    converter = KittiDetectionConverter({"root": str(tmp_path), "cameras": True})
    frame = converter.load(converter.sources()[0])

    camera = cameras(frame)["image_2"]
    assert camera.image.shape == (375, 1242, 3) and (camera.image[0, 0] == [90, 120, 150]).all()
    pixels, visible = camera.project(frame.points)
    homogeneous = np.column_stack([frame.points, np.ones(frame.num_points)]) @ (P2 @ VELO_TO_RECT).T
    np.testing.assert_allclose(pixels, homogeneous[:, :2] / homogeneous[:, 2:], atol=1e-6)
    assert visible.mean() > 0.99  # the sample was cropped to this camera's view


def test_semantickitti_occupancy_is_aggregated_through_the_sequences_poses(tmp_path, monkeypatch):
    """Two scans of the same real points from two poses: each scan's grid gets the other's points
    exactly where its own are, so aggregating adds no occupied voxel (a wrong pose would smear them)."""
    scan = np.fromfile(real_file("semantickitti_00_000000.bin"), dtype="<f4").reshape(-1, 4)
    label = np.fromfile(real_file("semantickitti_00_000000.label"), dtype="<u4")
    write_sequence(tmp_path / "kitti", "00", [scan, moved_copy(scan, 1)], [label, label])
    occupancy = {"range": [-50.0, -50.0, -5.0, 50.0, 50.0, 3.0], "voxel_size": [0.5, 0.5, 0.5],
                 "frames_per_block": 20}
    settings = {"kind": "semantickitti", **_settings(tmp_path / "kitti", ["00"], []), "occupancy": occupancy}
    monkeypatch.chdir(tmp_path)
    assert run_conversion("skitti", SemanticKittiConverter(settings), settings, workers=1) == []
    index = FrameIndex("results/data/skitti/index.json")
    for frame_id in ("00_000000", "00_000001"):
        frame = index.load(frame_id)
        grid = occupancy_grid(frame)
        labelled = frame.semantic != IGNORE_INDEX
        coords, inside = grid.voxel_of(frame.points[labelled])
        own = {tuple(c) for c in coords[inside]}
        occupied = {tuple(c) for c in np.argwhere(grid.labels < EMPTY_INDEX)}
        assert occupied == own
        assert (grid.labels[tuple(coords[inside].T)] == frame.semantic[labelled][inside]).all()
        assert (grid.labels == EMPTY_INDEX).any()
