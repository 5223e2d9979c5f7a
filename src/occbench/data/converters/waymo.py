"""Waymo Open Dataset v1 (``segment-*.tfrecord`` files of ``dataset_pb2.Frame``) -> occbench frames.

The official tools (waymo-open-dataset-tf-2-12-0) pin tensorflow 2.13 and
numpy 1.23, so this converter runs in its own environment (workflow/envs/waymo.yml,
or .venv-waymo), where occbench runs from the source tree:
``PYTHONPATH=src .venv-waymo/bin/python -m occbench ... convert --dataset NAME``.

Settings: ``root`` holds ``training/`` and/or ``validation/`` with the segment
files (the folder is the split); ``lasers`` lists the lasers to keep (default
``["TOP"]``, the 64-beam mid-range LiDAR; ``"ALL"`` for all five);
``return_index`` is 1 (first return, default) or 2.

Conventions of the frames written here:

- Coordinates are Waymo's vehicle frame (x forward, y left, z up), in which
  Waymo gives both the decoded points and the laser labels; ``sensor_origin``
  is the TOP LiDAR's position from its extrinsic and ``pose`` is vehicle-to-world.
- ``intensity`` is ``tanh(raw)``: Waymo's raw intensity is unbounded (most
  returns below 1, a long tail far above it from retro-reflectors); tanh brings it into
  [0, 1) without a dataset-wide maximum and keeps the resolution where most
  returns lie.
- ``ring`` counts beams from the bottom (0 = lowest), as the synthetic world
  and nuScenes do; Waymo's range-image row 0 is the top-most beam. With
  several lasers, each laser's rings follow those of the lasers before it in
  LaserName order (TOP 0..63, then e.g. FRONT 64..263).
- Segment files are located without decoding a frame: ``sources`` walks the
  TFRecord length headers only. Frame ids are ``<file stem>_<record number>``;
  Waymo's context name and timestamp go into ``meta``. A damaged file keeps the
  records before the damage, and the damage becomes one more source whose
  ``load`` raises, so the conversion reports it with the file named.
- ``sources`` runs no TensorFlow op: the conversion driver forks its workers
  after it, and TensorFlow hangs in a child forked after it has run.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from occbench.data.convert import FrameSource
from occbench.data.frame import Frame
from occbench.data.occupancy_aggregation import AggregationSettings
from occbench.data.taxonomy import IGNORE_INDEX, WAYMO_BOXES, WAYMO_SEGMENTATION, map_labels, unified_id

SPLITS = {"training": "train", "validation": "val"}
LASERS = ("TOP", "FRONT", "SIDE_LEFT", "SIDE_RIGHT", "REAR")
_HEADER = struct.Struct("<QI")  # record length, masked CRC-32C of the length
_FOOTER = struct.Struct("<I")  # masked CRC-32C of the data
_LOCATION = "#record"

ENV_HINT = (
    "the Waymo converter runs in its own environment: build it with "
    "`python3.11 -m venv .venv-waymo && .venv-waymo/bin/pip install "
    "waymo-open-dataset-tf-2-12-0==1.6.7 google-crc32c pyyaml jsonschema tqdm` "
    "(or let Snakemake build workflow/envs/waymo.yml) and run "
    "`PYTHONPATH=src .venv-waymo/bin/python -m occbench --params params.yaml convert --dataset NAME`"
)


class _Tools:
    """The Waymo environment's modules, imported once per converter."""

    def __init__(self) -> None:
        try:
            import google_crc32c
            import tensorflow as tf
            from google.protobuf.message import DecodeError
            from waymo_open_dataset import dataset_pb2, label_pb2
            from waymo_open_dataset.protos import segmentation_pb2
            from waymo_open_dataset.utils import range_image_utils, transform_utils
        except ImportError as err:
            raise ImportError(f"cannot import the Waymo Open Dataset tools ({err}); {ENV_HINT}") from err
        self.crc32c = google_crc32c.value
        self.tf = tf
        self.DecodeError = DecodeError
        self.dataset_pb2 = dataset_pb2
        self.label_pb2 = label_pb2
        self.segmentation_pb2 = segmentation_pb2
        self.range_image_utils = range_image_utils
        self.transform_utils = transform_utils

    def masked_crc(self, data: bytes) -> int:
        """TFRecord's checksum: CRC-32C, rotated and offset so CRCs of CRCs stay distinct."""
        crc = self.crc32c(data)
        return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


class _FileRecords:
    """Where each record of one TFRecord file starts, and where the file is damaged, if it is."""

    def __init__(self, path: Path, tools: _Tools) -> None:
        self.path = path
        self.offsets: list[int] = []
        self.damage: str | None = None  # what is wrong at record len(offsets)
        size = path.stat().st_size
        offset = 0
        with open(path, "rb") as handle:
            while offset < size:
                handle.seek(offset)
                header = handle.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    self.damage = f"the file ends inside the header of record {len(self.offsets)} (byte {offset})"
                    return
                length, length_crc = _HEADER.unpack(header)
                if tools.masked_crc(header[:8]) != length_crc:
                    self.damage = (f"the length header of record {len(self.offsets)} (byte {offset}) "
                                   "fails its CRC check")
                    return
                end = offset + _HEADER.size + length + _FOOTER.size
                if end > size:
                    self.damage = (f"record {len(self.offsets)} (byte {offset}) needs {length} bytes of data "
                                   f"but the file ends at byte {size}: it is truncated")
                    return
                self.offsets.append(offset)
                offset = end

    def read(self, number: int, tools: _Tools) -> bytes:
        """The data of record ``number``, checked against both of its CRCs."""
        where = f"{self.path}: record {number}"
        if number >= len(self.offsets):
            raise ValueError(f"{self.path}: {self.damage}" if number == len(self.offsets) and self.damage
                             else f"{where}: no such record (the file has {len(self.offsets)})")
        offset = self.offsets[number]
        with open(self.path, "rb") as handle:
            handle.seek(offset)
            header = handle.read(_HEADER.size)
            length, length_crc = _HEADER.unpack(header)
            data = handle.read(length)
            footer = handle.read(_FOOTER.size)
        if tools.masked_crc(header[:8]) != length_crc or len(data) < length or len(footer) < _FOOTER.size:
            raise ValueError(f"{where} (byte {offset}) changed since the file was listed")
        if tools.masked_crc(data) != _FOOTER.unpack(footer)[0]:
            raise ValueError(f"{where} (byte {offset}): its data fails the CRC check: the file is corrupt")
        return data


def _laser_names(setting: Any) -> list[str]:
    """The ``lasers`` setting as laser names in LaserName order."""
    names = [setting] if isinstance(setting, str) else list(setting)
    if names == ["ALL"]:
        return list(LASERS)
    unknown = sorted(set(names) - set(LASERS))
    if unknown or not names:
        raise ValueError(f"waymo dataset: lasers {names} is not 'ALL' or a non-empty list of {list(LASERS)}")
    return [name for name in LASERS if name in names]


class WaymoConverter:
    def __init__(self, settings: dict[str, Any]) -> None:
        self.occupancy_aggregation = AggregationSettings.from_settings(settings)
        self.root = Path(settings["root"])
        self.lasers = _laser_names(settings["lasers"])
        self.return_index = settings["return_index"]
        if self.return_index not in (1, 2):
            raise ValueError(f"waymo dataset: return_index is {self.return_index!r}, expected 1 or 2")
        self.tools = _Tools()
        segmentation = self.tools.segmentation_pb2.Segmentation.Type
        self.segmentation_table = {segmentation.Value(name): cls for name, cls in WAYMO_SEGMENTATION.items()}
        box_type = self.tools.label_pb2.Label.Type
        self.box_table = {box_type.Value(name): cls for name, cls in WAYMO_BOXES.items()}
        self.files: dict[Path, _FileRecords] = {}

    def _records(self, path: Path) -> _FileRecords:
        if path not in self.files:
            self.files[path] = _FileRecords(path, self.tools)
        return self.files[path]

    def sources(self) -> list[FrameSource]:
        """Every record of every segment file; a damaged file adds one source (whose load raises) for the damage."""
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: Waymo root folder not found")
        sources = []
        for folder, split in SPLITS.items():
            for path in sorted((self.root / folder).glob("segment-*.tfrecord")):
                records = self._records(path)
                count = len(records.offsets) + (records.damage is not None)
                sources += [
                    FrameSource(f"{path.stem}_{number:04d}", scene=path.stem, split=split,
                                location=f"{path}{_LOCATION}{number}")
                    for number in range(count)
                ]
        if not sources:
            raise FileNotFoundError(
                f"{self.root}: no segment-*.tfrecord files in {' or '.join(f'{f}/' for f in SPLITS)}"
            )
        return sources

    def load(self, source: FrameSource) -> Frame:
        file, _, number = source.location.rpartition(_LOCATION)
        path, number = Path(file), int(number)
        data = self._records(path).read(number, self.tools)
        frame = self.tools.dataset_pb2.Frame()
        try:
            frame.ParseFromString(data)
        except self.tools.DecodeError as err:
            raise ValueError(f"{path}: record {number} is not a Waymo Frame ({err})") from err
        return self._convert(frame, f"{path}: record {number}", number)

    def _convert(self, frame, where: str, number: int) -> Frame:
        calibrations = {c.name: c for c in frame.context.laser_calibrations}
        lasers = {laser.name: laser for laser in frame.lasers}
        laser_name = self.tools.dataset_pb2.LaserName
        pose = np.array(frame.pose.transform, dtype=np.float64).reshape(4, 4)
        if laser_name.TOP not in calibrations:
            raise ValueError(f"{where}: the frame has no TOP laser calibration")
        parts, ring_offset = [], 0
        for name in self.lasers:
            code = laser_name.Name.Value(name)
            if code not in lasers or code not in calibrations:
                raise ValueError(f"{where}: the frame has no {name} laser data or calibration")
            part = self._laser_points(lasers[code], calibrations[code], pose, f"{where}, laser {name}")
            part["ring"] += ring_offset
            ring_offset += part.pop("height")
            parts.append(part)
        fields = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
        boxes, box_labels, velocity, tracks = self._boxes(frame.laser_labels, where)
        top = np.array(calibrations[laser_name.TOP].extrinsic.transform, dtype=np.float64).reshape(4, 4)
        return Frame(
            points=fields["points"],
            intensity=np.tanh(fields["intensity"]),
            ring=fields["ring"],
            semantic=fields["semantic"],
            instance=fields["instance"],
            boxes=boxes,
            box_labels=box_labels,
            pose=pose,
            sensor_origin=top[:3, 3],
            meta={
                "dataset": "waymo",
                "sequence": frame.context.name,
                "index": number,
                "sensor": "waymo64",
                "timestamp": frame.timestamp_micros / 1e6,
                # Waymo's metrics match frames by context name and exact microseconds.
                "context_name": frame.context.name,
                "timestamp_micros": int(frame.timestamp_micros),
                "lasers": self.lasers,
                "return_index": self.return_index,
            },
            extras={"box_velocity": velocity, "box_track_id": tracks},
        )

    def _matrix(self, compressed: bytes, proto, dtype, where: str) -> np.ndarray:
        """A zlib-compressed MatrixFloat / MatrixInt32, as Waymo stores range images, as an array.

        Not frame_utils.parse_range_image_and_camera_projection: it hands protobuf a
        bytearray, which the protobuf 4 (upb) installed with the tools rejects, and it
        decodes every laser and camera projection where one or two images are needed."""
        matrix = proto()
        try:
            matrix.ParseFromString(zlib.decompress(compressed))
        except (zlib.error, self.tools.DecodeError) as err:
            raise ValueError(f"{where}: cannot decompress a range image ({err})") from err
        values = np.fromiter(matrix.data, dtype=dtype, count=len(matrix.data))  # twice as fast as np.array
        if values.size != np.prod(matrix.shape.dims):
            raise ValueError(f"{where}: a range image holds {values.size} values for shape {list(matrix.shape.dims)}")
        return values.reshape(matrix.shape.dims)

    def _laser_points(self, laser, calibration, pose: np.ndarray, where: str) -> dict[str, Any]:
        """Decode one laser's range image as frame_utils.convert_range_image_to_cartesian does (same
        range_image_utils call), keeping each point's range-image row and segmentation label."""
        pb2, tf, utils = self.tools.dataset_pb2, self.tools.tf, self.tools.range_image_utils
        returns = laser.ri_return1 if self.return_index == 1 else laser.ri_return2
        if not returns.range_image_compressed:
            raise ValueError(f"{where}: no range image for return {self.return_index}")
        image = self._matrix(returns.range_image_compressed, pb2.MatrixFloat, np.float32, where)
        height = image.shape[0]
        if len(calibration.beam_inclinations):
            inclination = np.array(calibration.beam_inclinations, dtype=np.float64)
        else:  # lasers with uniformly spaced beams only give the extremes
            inclination = utils.compute_inclination(
                tf.constant([calibration.beam_inclination_min, calibration.beam_inclination_max]), height
            ).numpy()
        if inclination.shape != (height,):
            raise ValueError(f"{where}: {inclination.size} beam inclinations for {height} range-image rows")
        extrinsic = np.array(calibration.extrinsic.transform, dtype=np.float64).reshape(4, 4)
        pixel_pose = frame_pose = None
        if laser.name == pb2.LaserName.TOP:
            # Each TOP pixel carries the vehicle pose at its capture time: undoes the ego motion of the sweep.
            if not laser.ri_return1.range_image_pose_compressed:
                raise ValueError(f"{where}: no range image pose")
            per_pixel = self._matrix(laser.ri_return1.range_image_pose_compressed, pb2.MatrixFloat, np.float32,
                                     where)
            rotation = self.tools.transform_utils.get_rotation_matrix(
                per_pixel[..., 0], per_pixel[..., 1], per_pixel[..., 2])
            pixel_pose = self.tools.transform_utils.get_transform(rotation, per_pixel[..., 3:])[None]
            frame_pose = tf.convert_to_tensor(pose[None])
        xyz = utils.extract_point_cloud_from_range_image(
            tf.convert_to_tensor(image[None, ..., 0]), tf.convert_to_tensor(extrinsic[None]),
            tf.convert_to_tensor(inclination[None, ::-1]),  # row 0 is the top beam
            pixel_pose=pixel_pose, frame_pose=frame_pose,
        )[0].numpy()
        rows, cols = np.nonzero(image[..., 0] > 0)
        count = rows.size
        semantic = np.full(count, IGNORE_INDEX, dtype=np.uint8)
        instance = np.zeros(count, dtype=np.int32)
        if returns.segmentation_label_compressed:
            labels = self._matrix(returns.segmentation_label_compressed, pb2.MatrixInt32, np.int32, where)
            if labels.shape[:2] != image.shape[:2]:
                raise ValueError(f"{where}: segmentation labels of shape {labels.shape} for a range image "
                                 f"of shape {image.shape}")
            instance = labels[rows, cols, 0]
            semantic = map_labels(labels[rows, cols, 1], self.segmentation_table, where)
        return {
            "points": xyz[rows, cols],
            "intensity": image[rows, cols, 1],
            "ring": (height - 1 - rows).astype(np.int16),
            "semantic": semantic,
            "instance": instance,
            "height": height,
        }

    def _boxes(self, labels, where: str) -> tuple[np.ndarray, ...]:
        """laser_labels (vehicle frame) -> boxes (x, y, z, length, width, height, heading), classes,
        velocities and track ids (``track_id`` of each label's id)."""
        kept = []
        for label in labels:
            if label.type not in self.box_table:
                raise ValueError(f"{where}: laser label type {label.type} is not in taxonomy.WAYMO_BOXES")
            cls = self.box_table[label.type]
            if cls is not None:
                kept.append((label.box, unified_id(cls), label.metadata, label.id))
        boxes = np.array([[b.center_x, b.center_y, b.center_z, b.length, b.width, b.height, b.heading]
                          for b, _, _, _ in kept], dtype=np.float32).reshape(-1, 7)
        classes = np.array([cls for _, cls, _, _ in kept], dtype=np.int16)
        velocity = np.array([[m.speed_x, m.speed_y] for _, _, m, _ in kept], dtype=np.float32).reshape(-1, 2)
        tracks = np.array([track_id(name) for _, _, _, name in kept], dtype=np.int32)
        return boxes, classes, velocity, tracks


def track_id(label_id: str) -> int:
    """A Waymo label's object id (a string, the same in every frame of the segment) as a positive int32.

    31 bits of its BLAKE2 hash: frames convert independently, so no table can number a
    segment's objects; two of a segment's few hundred objects share an id with odds about 1e-5."""
    digest = hashlib.blake2b(label_id.encode(), digest_size=4).digest()
    return int.from_bytes(digest, "little") % (2**31 - 1) + 1
