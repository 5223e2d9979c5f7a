"""SemanticKITTI sequences and KITTI 3D object detection as occbench frames.

Both datasets come from the same car (Velodyne HDL-64E, KITTI calibration
files), so they share the scan and calibration readers. Both are read with
numpy alone: the formats are flat binary arrays and whitespace-separated text,
and a devkit would add dependencies without adding checks.

Box convention (frame.py): x, y, z centre, dx along the heading, dy across it,
dz up, yaw the heading's angle from the LiDAR x axis towards y. KITTI labels
are in the rectified camera frame (x right, y down, z forward) with the
bottom-centre as location and ``rotation_y`` about camera y; a heading of
camera +x (rotation_y = 0) is LiDAR -y, hence yaw = -rotation_y - pi/2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from occbench.data.convert import FrameSource
from occbench.data.frame import Camera, Frame, add_camera, inside_boxes
from occbench.data.occupancy_aggregation import AggregationSettings
from occbench.data.taxonomy import (
    CLASS_ID,
    IGNORE_INDEX,
    KITTI_DETECTION,
    SEMANTICKITTI,
    THING_CLASSES,
    map_labels,
    unified_id,
)

SENSOR = "kitti64"
# A SemanticKITTI object with fewer points gets no instance id and no box: the
# extents of a handful of points say little about the object.
MIN_INSTANCE_POINTS = 5
# fit_box searches the yaw on at most this many points of an object.
FIT_SAMPLE = 512
# Scans are 10 Hz; SemanticKITTI sequences without times.txt are timed by index.
SCAN_PERIOD_S = 0.1
_THING_IDS = np.array([CLASS_ID[name] for name in THING_CLASSES])
# label_2 ground truth: type, truncated, occluded, alpha, bbox (4), h w l, x y z, rotation_y.
_LABEL_FIELDS = 15


# ------------------------------------------------------------------ file readers


def read_scan(path: str | Path) -> np.ndarray:
    """A KITTI velodyne .bin as float32 (N, 4): x, y, z, reflectance."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path}: 0 bytes, a scan without points")
    if size % 16:
        raise ValueError(
            f"{path}: {size} bytes is not a whole number of 16-byte points "
            "(float32 x, y, z, reflectance); the file is truncated or not a KITTI scan"
        )
    return np.fromfile(path, dtype="<f4").reshape(-1, 4)


def read_calibration(path: str | Path, required: dict[str, int]) -> dict[str, np.ndarray]:
    """The ``key: numbers`` lines of a KITTI calib file; ``required`` maps the keys the caller
    needs to their number of values, and a missing key or a wrong count is an error naming the file."""
    path = Path(path)
    values: dict[str, np.ndarray] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        key, colon, text = line.partition(":")
        if not colon:
            raise ValueError(f"{path}, line {number}: expected 'key: values', got {line.strip()[:40]!r}")
        try:
            values[key.strip()] = np.array(text.split(), dtype=np.float64)
        except ValueError:
            raise ValueError(f"{path}, line {number}: {key.strip()} holds a value that is not a number") from None
    missing = [key for key in required if key not in values]
    if missing:
        raise ValueError(f"{path}: calibration lacks {', '.join(missing)} (has {', '.join(values) or 'nothing'})")
    for key, count in required.items():
        if values[key].size != count:
            raise ValueError(f"{path}: {key} has {values[key].size} values, expected {count}")
    return values


def _homogeneous(matrix: np.ndarray) -> np.ndarray:
    """A 3x3 or 3x4 matrix as the top of a 4x4 transform."""
    out = np.eye(4)
    out[: matrix.shape[0], : matrix.shape[1]] = matrix
    return out


def _wrap(angle: np.ndarray) -> np.ndarray:
    """Angles in [-pi, pi)."""
    return (np.asarray(angle) + np.pi) % (2 * np.pi) - np.pi


# ------------------------------------------------------------------ box geometry


def fit_box(points: np.ndarray, step_deg: float = 1.0) -> np.ndarray:
    """An upright box (x, y, z, dx, dy, dz, yaw) around ``points`` (N, 3), its sides along the outline.

    LiDAR sees an object from one side: a car returns an L (rear and flank), whose
    principal axis runs along the diagonal and whose minimum-area rectangle is
    ambiguous (for an L, the rectangle on the diagonal has the same area). So the
    yaw chosen is the one whose bounding rectangle's sides pass closest to the
    points: the mean distance of each point to its nearest side, searched on a
    ``step_deg`` grid and refined to step/20, on at most FIT_SAMPLE points (an even
    subsample: the cost is points x angles). The extents use every point. dx is
    the longer side; the heading's sign cannot be told from points, so yaw is in
    [-pi/2, pi/2).
    """
    points = np.asarray(points, dtype=np.float64)
    origin = points[:, :2].mean(axis=0)
    xy = points[:, :2] - origin
    sample = xy[:: -(-len(xy) // FIT_SAMPLE)].astype(np.float32)

    def project(angles: np.ndarray, xy: np.ndarray = xy) -> tuple[np.ndarray, np.ndarray]:
        cos, sin = np.cos(angles).astype(xy.dtype), np.sin(angles).astype(xy.dtype)
        return xy[:, :1] * cos + xy[:, 1:] * sin, xy[:, 1:] * cos - xy[:, :1] * sin  # each (N, A)

    def closest(angles: np.ndarray) -> np.ndarray:
        along, across = project(angles, sample)
        gap_along = np.minimum(along - along.min(0), along.max(0) - along)
        gap_across = np.minimum(across - across.min(0), across.max(0) - across)
        return angles[np.argmin(np.minimum(gap_along, gap_across).mean(axis=0))]

    step = math.radians(step_deg)
    coarse = closest(np.arange(0.0, math.pi / 2, step))  # a rectangle repeats every 90 degrees
    angle = float(closest(coarse + np.linspace(-step, step, 41)))
    along, across = (v[:, 0] for v in project(np.array([angle])))
    mid_along, mid_across = (along.min() + along.max()) / 2, (across.min() + across.max()) / 2
    centre_xy = origin + mid_along * np.array([math.cos(angle), math.sin(angle)])
    centre_xy += mid_across * np.array([-math.sin(angle), math.cos(angle)])
    length, width = np.ptp(along), np.ptp(across)
    if width > length:
        length, width, angle = width, length, angle + math.pi / 2
    yaw = (angle + math.pi / 2) % math.pi - math.pi / 2
    z_lo, z_hi = points[:, 2].min(), points[:, 2].max()
    return np.array([*centre_xy, (z_lo + z_hi) / 2, length, width, z_hi - z_lo, yaw])


def points_in_boxes(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """For each point (N, 3), the index of the first box (M, 7) holding it, -1 for none."""
    if not len(np.reshape(boxes, (-1, 7))):
        return np.full(len(points), -1, dtype=np.int64)
    inside = inside_boxes(points, boxes)
    first = inside.argmax(axis=1)
    return np.where(inside.any(axis=1), first, -1)


def camera_to_lidar_boxes(
    location: np.ndarray, dimensions_hwl: np.ndarray, rotation_y: np.ndarray, velo_to_rect: np.ndarray
) -> np.ndarray:
    """KITTI label boxes (rectified camera frame, bottom-centre location) -> LiDAR boxes (M, 7).

    ``velo_to_rect`` is R0_rect @ Tr_velo_to_cam as a 4x4 transform. The bottom
    centre is carried into the LiDAR frame, then lifted by h/2 along LiDAR z.
    """
    location = np.asarray(location, dtype=np.float64).reshape(-1, 3)
    h, w, l = np.asarray(dimensions_hwl, dtype=np.float64).reshape(-1, 3).T
    rect_to_velo = np.linalg.inv(velo_to_rect)
    bottom = location @ rect_to_velo[:3, :3].T + rect_to_velo[:3, 3]
    centre = bottom + np.stack([np.zeros_like(h), np.zeros_like(h), h / 2], axis=1)
    yaw = _wrap(-np.asarray(rotation_y, dtype=np.float64).reshape(-1) - np.pi / 2)
    return np.column_stack([centre, l, w, h, yaw])


def lidar_to_camera_boxes(boxes: np.ndarray, velo_to_rect: np.ndarray) -> tuple[np.ndarray, ...]:
    """LiDAR boxes (M, 7) -> KITTI label geometry: location (M, 3), dimensions h w l (M, 3), rotation_y (M,)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    bottom = boxes[:, :3] - np.column_stack([np.zeros((len(boxes), 2)), boxes[:, 5] / 2])
    location = bottom @ velo_to_rect[:3, :3].T + velo_to_rect[:3, 3]
    dimensions = boxes[:, [5, 4, 3]]
    return location, dimensions, _wrap(-boxes[:, 6] - np.pi / 2)


@dataclass(frozen=True)
class KittiLabels:
    """The geometry and types of one label_2 file, DontCare and Misc lines included."""

    types: list[str]
    dimensions_hwl: np.ndarray  # (M, 3)
    location: np.ndarray  # (M, 3) bottom centre, rectified camera frame
    rotation_y: np.ndarray  # (M,)


def read_kitti_labels(path: str | Path) -> KittiLabels:
    """Parse a label_2 file; a line with the wrong number of fields or a non-number is an error
    naming the file and the line."""
    path = Path(path)
    types, values = [], []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != _LABEL_FIELDS:
            raise ValueError(f"{path}, line {number}: {len(fields)} fields, a label_2 line has {_LABEL_FIELDS}")
        try:
            values.append([float(v) for v in fields[8:]])
        except ValueError:
            raise ValueError(f"{path}, line {number}: dimensions, location or rotation_y is not a number") from None
        types.append(fields[0])
    table = np.array(values, dtype=np.float64).reshape(-1, 7)
    return KittiLabels(types, table[:, 0:3], table[:, 3:6], table[:, 6])


# ------------------------------------------------------------------ SemanticKITTI


def _instances(points: np.ndarray, raw: np.ndarray, semantic: np.ndarray) -> tuple[np.ndarray, ...]:
    """Per-frame instance numbers 1..K and a fitted box per instance.

    An object is a (raw class, raw instance id) pair among points of a thing
    class, i.e. one distinct uint32 label value; raw instance id 0 means the
    annotators gave the point no object. Numbers follow the label values' order.
    """
    instance = np.zeros(len(raw), dtype=np.int32)
    candidate = np.isin(semantic, _THING_IDS) & ((raw >> 16) > 0)
    values, inverse, counts = np.unique(raw[candidate], return_inverse=True, return_counts=True)
    kept = counts >= MIN_INSTANCE_POINTS
    numbers = np.zeros(len(values), dtype=np.int32)
    numbers[kept] = np.arange(1, int(kept.sum()) + 1)
    instance[candidate] = numbers[inverse]
    groups = np.split(points[candidate][np.argsort(inverse, kind="stable")], np.cumsum(counts)[:-1])
    boxes = [fit_box(group) for group, keep in zip(groups, kept) if keep]
    box_semantic = np.zeros(len(values), dtype=np.int16)
    box_semantic[inverse] = semantic[candidate]  # one label value, one class
    return instance, np.array(boxes, dtype=np.float32).reshape(-1, 7), box_semantic[kept]


@dataclass(frozen=True)
class _Sequence:
    poses: np.ndarray  # (F, 4, 4) LiDAR-to-world
    times: np.ndarray | None  # (F,) seconds, None without times.txt


def _read_table(path: Path, columns: int) -> np.ndarray:
    """A whitespace-separated numeric text file with ``columns`` numbers a line."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = [float(v) for v in line.split()]
        except ValueError:
            raise ValueError(f"{path}, line {number}: not a number") from None
        if len(row) != columns:
            raise ValueError(f"{path}, line {number}: {len(row)} values, expected {columns}")
        rows.append(row)
    return np.array(rows, dtype=np.float64).reshape(-1, columns)


class SemanticKittiConverter:
    """SemanticKITTI (``root/sequences/<seq>/{velodyne,labels,poses.txt,calib.txt}``).

    Sequences listed in neither split are skipped. A listed sequence without a
    ``labels/`` folder (the test sequences 11-21) converts with semantic 255; in
    a sequence that has one, a missing .label is an error rather than a silent
    ignore-frame.
    """

    def __init__(self, settings: dict[str, Any]) -> None:
        self.occupancy_aggregation = AggregationSettings.from_settings(settings)
        self.root = Path(settings["root"])
        self.splits = {
            "train": [str(s) for s in settings["train_sequences"]],
            "val": [str(s) for s in settings["val_sequences"]],
        }
        shared = set(self.splits["train"]) & set(self.splits["val"])
        if shared:
            raise ValueError(f"SemanticKITTI sequences {sorted(shared)} are listed as both train and val")
        self._sequences: dict[str, _Sequence] = {}

    def sources(self) -> list[FrameSource]:
        found = []
        for split, sequences in self.splits.items():
            for sequence in sequences:
                folder = self.root / "sequences" / sequence / "velodyne"
                if not folder.is_dir():
                    raise FileNotFoundError(f"{folder}: no such folder (sequence {sequence} of the {split} split)")
                for path in sorted(folder.glob("*.bin")):
                    if not path.stem.isdigit():
                        raise ValueError(f"{path}: a SemanticKITTI scan is named by its index, e.g. 000123.bin")
                    found.append(FrameSource(f"{sequence}_{int(path.stem):06d}", scene=sequence, split=split,
                                             location=str(path)))
        return found

    def _sequence(self, name: str) -> _Sequence:
        """Poses (as LiDAR-to-world) and times of a sequence, read once per process."""
        if name not in self._sequences:
            folder = self.root / "sequences" / name
            tr = read_calibration(folder / "calib.txt", {"Tr": 12})["Tr"].reshape(3, 4)
            velo_to_cam, cam_to_velo = _homogeneous(tr), np.linalg.inv(_homogeneous(tr))
            table = _read_table(folder / "poses.txt", 12)
            camera_poses = np.tile(np.eye(4), (len(table), 1, 1))
            camera_poses[:, :3, :] = table.reshape(-1, 3, 4)
            # poses.txt holds camera-0 poses; conjugating by Tr gives the LiDAR's.
            poses = cam_to_velo @ camera_poses @ velo_to_cam
            times_path = folder / "times.txt"
            times = _read_table(times_path, 1)[:, 0] if times_path.exists() else None
            self._sequences[name] = _Sequence(poses, times)
        return self._sequences[name]

    def load(self, source: FrameSource) -> Frame:
        scan_path = Path(source.location)
        sequence, index = source.scene, int(scan_path.stem)
        scan = read_scan(scan_path)
        info = self._sequence(sequence)
        folder = self.root / "sequences" / sequence
        if index >= len(info.poses):
            raise ValueError(f"{folder / 'poses.txt'}: {len(info.poses)} poses, none for scan {index}")
        if info.times is not None and index >= len(info.times):
            raise ValueError(f"{folder / 'times.txt'}: {len(info.times)} times, none for scan {index}")
        points = scan[:, :3]
        if (folder / "labels").is_dir():
            label_path = folder / "labels" / f"{scan_path.stem}.label"
            size = label_path.stat().st_size
            if size != 4 * len(scan):
                raise ValueError(
                    f"{label_path}: {size} bytes, but {scan_path.name} has {len(scan)} points, "
                    f"which need {4 * len(scan)} (one uint32 label each)"
                )
            raw = np.fromfile(label_path, dtype="<u4")
            semantic = map_labels(raw & 0xFFFF, SEMANTICKITTI, str(label_path))
            instance, boxes, box_labels = _instances(points, raw, semantic)
        else:
            semantic = np.full(len(scan), IGNORE_INDEX, dtype=np.uint8)
            instance = np.zeros(len(scan), dtype=np.int32)
            boxes, box_labels = np.zeros((0, 7), np.float32), np.zeros(0, np.int16)
        timestamp = float(info.times[index]) if info.times is not None else index * SCAN_PERIOD_S
        return Frame(
            points=points,
            intensity=np.clip(scan[:, 3], 0.0, 1.0),
            ring=np.full(len(scan), -1, dtype=np.int16),
            semantic=semantic,
            instance=instance,
            boxes=boxes,
            box_labels=box_labels,
            pose=info.poses[index],
            meta={"dataset": "semantickitti", "sequence": sequence, "index": index, "sensor": SENSOR,
                  "num_beams": 64, "timestamp": timestamp},
        )


# ------------------------------------------------------------------ KITTI detection


class KittiDetectionConverter:
    """KITTI 3D object detection (``root/training/{velodyne,label_2,calib,image_2}``,
    ``root/ImageSets/{train,val}.txt``): independent frames, boxes and no point labels.

    Points get semantic 255 (KITTI labels no points) and, inside box i, instance
    i + 1, which detection-style sampling can use. With ``cameras: true`` the
    image_2 PNG comes along as camera "image_2".
    """

    occupancy_aggregation = None  # single frames, no sequences to aggregate

    def __init__(self, settings: dict[str, Any]) -> None:
        self.root = Path(settings["root"])
        self.cameras = bool(settings["cameras"])

    def sources(self) -> list[FrameSource]:
        found = []
        for split in ("train", "val"):
            path = self.root / "ImageSets" / f"{split}.txt"
            if not path.is_file():
                raise FileNotFoundError(f"{path}: the {split} split file is missing (one 6-digit frame id a line)")
            for number, line in enumerate(path.read_text().splitlines(), start=1):
                frame_id = line.strip()
                if not frame_id:
                    continue
                if not frame_id.isdigit():
                    raise ValueError(f"{path}, line {number}: {frame_id[:20]!r} is not a KITTI frame id")
                scan = self.root / "training" / "velodyne" / f"{frame_id}.bin"
                found.append(FrameSource(frame_id, scene=frame_id, split=split, location=str(scan)))
        return found

    def load(self, source: FrameSource) -> Frame:
        training = self.root / "training"
        frame_id = source.frame_id
        scan = read_scan(source.location)
        calib_path = training / "calib" / f"{frame_id}.txt"
        required = {"R0_rect": 9, "Tr_velo_to_cam": 12, **({"P2": 12} if self.cameras else {})}
        calib = read_calibration(calib_path, required)
        velo_to_rect = _homogeneous(calib["R0_rect"].reshape(3, 3)) @ _homogeneous(
            calib["Tr_velo_to_cam"].reshape(3, 4))

        label_path = training / "label_2" / f"{frame_id}.txt"
        labels = read_kitti_labels(label_path)
        unknown = sorted(set(labels.types) - set(KITTI_DETECTION))
        if unknown:
            raise ValueError(f"{label_path}: object type(s) {unknown} are not in the KITTI mapping table")
        classes = np.array([unified_id(KITTI_DETECTION[t]) for t in labels.types], dtype=np.int16)
        keep = classes != IGNORE_INDEX
        boxes = camera_to_lidar_boxes(labels.location[keep], labels.dimensions_hwl[keep], labels.rotation_y[keep],
                                      velo_to_rect)
        points = scan[:, :3]
        frame = Frame(
            points=points,
            intensity=np.clip(scan[:, 3], 0.0, 1.0),
            ring=np.full(len(scan), -1, dtype=np.int16),
            semantic=np.full(len(scan), IGNORE_INDEX, dtype=np.uint8),
            instance=points_in_boxes(points, boxes) + 1,
            boxes=boxes,
            box_labels=classes[keep],
            meta={"dataset": "kitti", "sequence": frame_id, "index": int(frame_id), "sensor": SENSOR,
                  "num_beams": 64, "timestamp": None},  # KITTI object frames are single snapshots with no time
        )
        if self.cameras:
            add_camera(frame, "image_2", self._image_2(training / "image_2" / f"{frame_id}.png", calib,
                                                      velo_to_rect))
        return frame

    @staticmethod
    def _image_2(path: Path, calib: dict[str, np.ndarray], velo_to_rect: np.ndarray) -> Camera:
        """Camera 2 as K plus extrinsics: P2 = K [I | t] holds camera 2's offset t from the
        rectified camera 0, which belongs in lidar_to_camera so that K reproduces P2."""
        from PIL import Image  # Pillow comes with matplotlib; only camera users need it

        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"), dtype=np.uint8)
        projection = calib["P2"].reshape(3, 4)
        intrinsics = projection[:, :3]
        offset = np.eye(4)
        offset[:3, 3] = np.linalg.solve(intrinsics, projection[:, 3])
        return Camera(image=rgb, intrinsics=intrinsics, lidar_to_camera=offset @ velo_to_rect)
