"""Waymo v1 test records made from the real fixture frame with the official tools.

Run it in the Waymo environment: ``.venv-waymo/bin/python tests/waymo_fixture.py SOURCE OUT_DIR``.

../shared/data/real/waymo_val_fixture.tfrecord is one real frame with real laser
calibrations and 18 laser labels but no range images. Here every laser gets
range images made by casting its real beams (inclinations, extrinsic) into a
scene known exactly: a ground plane at the bottom of the labelled vehicle, and
every laser_label box as a solid. Rays through a thin sign also give a second
return from what lies behind it. The TOP sweep is taken while the vehicle drives
forward, and its per-pixel poses record that, so a decoder that ignores them
misplaces points. Range images, pixel poses, camera projections and segmentation
labels are stored as Waymo stores them (serialised Matrix protos, zlib), the
records are written by TensorFlow's TFRecordWriter, and the official
frame_utils decodes the result back onto the cast points before anything is kept.

Written under OUT_DIR:
    good/validation/segment-<context>_with_camera_labels.tfrecord
        record 0: the real frame; record 1: 0.1 s later and further on, with
        segmentation labels for the TOP laser
    damaged/validation/segment-<context>_corrupt.tfrecord    one byte of record 1's data changed
    damaged/training/segment-<context>_truncated.tfrecord    the file ends inside record 1
    expected.json    what a converter must recover (read by tests without the Waymo tools)
"""

from __future__ import annotations

import argparse
import json
import math
import struct
import zlib
from pathlib import Path

import numpy as np
import tensorflow as tf
from waymo_open_dataset import dataset_pb2, label_pb2
from waymo_open_dataset.protos import segmentation_pb2
from waymo_open_dataset.utils import frame_utils

# Range-image shapes of Waymo's lasers: TOP is 64 x 2650, the short-range ones 200 x 600.
SHAPES = {"TOP": (64, 2650)}
SHORT_RANGE_SHAPE = (200, 600)
# Waymo truncates TOP at 75 m and the others at 20 m; TOP reaches 80 m here, as the
# one labelled vehicle stands 77 m away.
MAX_RANGE = {"TOP": 80.0}
SHORT_RANGE_MAX = 20.0
# Raw intensity of each surface (Waymo's is unbounded: signs are retro-reflective).
RAW_INTENSITY = {"ground": 0.3, "TYPE_VEHICLE": 2.0, "TYPE_SIGN": 40.0}
SEGMENTATION = {"ground": "TYPE_ROAD", "TYPE_VEHICLE": "TYPE_CAR", "TYPE_SIGN": "TYPE_SIGN"}
CAR_INSTANCE = 7
SPEED = 5.0  # m/s along the vehicle's x axis
SWEEP = 0.1  # s: TOP column j is captured SWEEP * (j + 0.5) / width after the frame's timestamp
FRAME_STEP_MICROS = 100_000


def read_frame(path: Path) -> dataset_pb2.Frame:
    records = list(tf.data.TFRecordDataset(str(path)))
    if len(records) != 1:
        raise SystemExit(f"{path}: expected one Frame record, found {len(records)}")
    frame = dataset_pb2.Frame()
    frame.ParseFromString(records[0].numpy())
    return frame


def translation(x: float) -> np.ndarray:
    transform = np.eye(4)
    transform[0, 3] = x
    return transform


def roll_pitch_yaw(rotation: np.ndarray) -> tuple[float, float, float]:
    """Angles of rotation = Rz(yaw) Ry(pitch) Rx(roll), the convention of Waymo's pixel poses."""
    return (math.atan2(rotation[2, 1], rotation[2, 2]),
            math.atan2(-rotation[2, 0], math.hypot(rotation[2, 1], rotation[2, 2])),
            math.atan2(rotation[1, 0], rotation[0, 0]))


def inclinations(calibration, height: int) -> np.ndarray:
    """Beam inclinations, lowest first; lasers without a table have uniformly spaced beams."""
    if len(calibration.beam_inclinations):
        return np.array(calibration.beam_inclinations)
    low, high = calibration.beam_inclination_min, calibration.beam_inclination_max
    return low + (np.arange(height) + 0.5) / height * (high - low)


def beam_directions(calibration, shape: tuple[int, int]) -> np.ndarray:
    """Unit ray direction of every range-image pixel (H, W, 3) in the vehicle frame.

    Row 0 is the top-most beam; column j looks at vehicle-frame azimuth
    pi * (1 - 2 (j + 0.5) / W): from straight behind, over the left side, round
    to behind again. This is the layout range_image_utils decodes, written out
    independently so that the official decoding is checked, not reused."""
    height, width = shape
    extrinsic = np.array(calibration.extrinsic.transform).reshape(4, 4)
    inclination = inclinations(calibration, height)[::-1]
    azimuth = math.pi * (1 - 2 * (np.arange(width) + 0.5) / width) - math.atan2(extrinsic[1, 0], extrinsic[0, 0])
    incl, az = np.meshgrid(inclination, azimuth, indexing="ij")
    sensor = np.stack([np.cos(az) * np.cos(incl), np.sin(az) * np.cos(incl), np.sin(incl)], axis=-1)
    return sensor @ extrinsic[:3, :3].T


def cast(origins: np.ndarray, directions: np.ndarray, ground_z: float, boxes: np.ndarray, max_range: float,
         exclude: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Range to the nearest surface of each ray (inf: none within max_range) and which surface it is
    (0 none, 1 ground, 2 + k box k); a ray never hits its surface in ``exclude``."""
    exclude = np.zeros(len(directions), dtype=np.int64) if exclude is None else exclude
    best = np.full(len(directions), np.inf)
    surface = np.zeros(len(directions), dtype=np.int64)
    # How near each box comes to the rays' origins (which lie within 1 m of each other).
    reach = np.linalg.norm(boxes[:, :2] - origins[:, :2].mean(axis=0), axis=1) - np.hypot(boxes[:, 3], boxes[:, 4])
    with np.errstate(divide="ignore", invalid="ignore"):
        t = (ground_z - origins[:, 2]) / directions[:, 2]
        hit = (directions[:, 2] < 0) & (exclude != 1)
        best[hit], surface[hit] = t[hit], 1
        for k in np.flatnonzero(reach < max_range + 1.0):  # boxes out of range cannot be hit
            cx, cy, cz, length, width, height, heading = boxes[k]
            c, s = math.cos(heading), math.sin(heading)
            to_box = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
            o = (origins - [cx, cy, cz]) @ to_box.T
            d = directions @ to_box.T
            half = np.array([length, width, height]) / 2
            t1, t2 = (-half - o) / d, (half - o) / d
            near = np.minimum(t1, t2).max(axis=1)
            far = np.maximum(t1, t2).min(axis=1)
            hit = (near <= far) & (near > 0) & (near < best) & (exclude != 2 + k)
            best[hit], surface[hit] = near[hit], 2 + k
    surface[best > max_range] = 0
    best[surface == 0] = np.inf
    return best, surface


def compress(array: np.ndarray, proto) -> bytes:
    """An array as Waymo stores range images: a MatrixFloat / MatrixInt32 proto, serialised, zlib-compressed."""
    matrix = proto()
    matrix.shape.dims.extend(array.shape)
    matrix.data.extend(array.ravel().tolist())
    return zlib.compress(matrix.SerializeToString())


def label_boxes(frame: dataset_pb2.Frame) -> np.ndarray:
    return np.array([[lab.box.center_x, lab.box.center_y, lab.box.center_z, lab.box.length, lab.box.width,
                      lab.box.height, lab.box.heading] for lab in frame.laser_labels])


def pixel_poses(pose: np.ndarray, delay: np.ndarray) -> np.ndarray:
    """Vehicle pose (roll, pitch, yaw, x, y, z) in the world when each pixel was taken, driving along x."""
    per_pixel = np.zeros((*delay.shape, 6), dtype=np.float32)
    per_pixel[..., :3] = roll_pitch_yaw(pose[:3, :3])
    per_pixel[..., 3:] = pose[:3, 3] + np.multiply.outer(SPEED * delay, pose[:3, 0])
    return per_pixel


def render(frame: dataset_pb2.Frame, ground_z: float, with_segmentation: bool) -> dict:
    """Give every laser of ``frame`` cast range images; return the points per return, laser and surface kind."""
    boxes = label_boxes(frame)
    kinds = ["ground"] + [label_pb2.Label.Type.Name(lab.type) for lab in frame.laser_labels]
    surface_kind = np.array(["none", *kinds])  # surface 0 is no return
    intensity = np.array([-1.0] + [RAW_INTENSITY[kind] for kind in kinds], dtype=np.float32)
    segment_class = np.array([0] + [segmentation_pb2.Segmentation.Type.Value(SEGMENTATION[kind]) for kind in kinds])
    instance = np.array([0] + [CAR_INSTANCE if kind == "TYPE_VEHICLE" else 0 for kind in kinds])
    pose = np.array(frame.pose.transform).reshape(4, 4)
    counts: dict = {"1": {}, "2": {}}
    del frame.lasers[:]
    for calibration in sorted(frame.context.laser_calibrations, key=lambda c: c.name):
        name = dataset_pb2.LaserName.Name.Name(calibration.name)
        shape = SHAPES.get(name, SHORT_RANGE_SHAPE)
        directions = beam_directions(calibration, shape).reshape(-1, 3)
        extrinsic = np.array(calibration.extrinsic.transform).reshape(4, 4)
        laser = frame.lasers.add(name=calibration.name)
        delay = np.zeros(shape)  # when each pixel was taken; only TOP's pixel poses can tell the decoder
        if name == "TOP":
            delay[:] = SWEEP * (np.arange(shape[1]) + 0.5) / shape[1]
            laser.ri_return1.range_image_pose_compressed = compress(pixel_poses(pose, delay), dataset_pb2.MatrixFloat)
            # frame_utils needs camera projections of the lasers it decodes; nothing here projects.
            laser.ri_return1.camera_projection_compressed = compress(np.zeros((*shape, 6), np.int32),
                                                                     dataset_pb2.MatrixInt32)
        origins = extrinsic[:3, 3] + np.outer(SPEED * delay.ravel(), [1.0, 0.0, 0.0])
        limit = MAX_RANGE.get(name, SHORT_RANGE_MAX)
        first, first_surface = cast(origins, directions, ground_z, boxes, limit)
        stored = [(laser.ri_return1, first, first_surface)]
        if name == "TOP":  # second returns: only a thin sign lets light through to what lies behind it
            second, second_surface = np.full_like(first, np.inf), np.zeros_like(first_surface)
            through = np.flatnonzero(surface_kind[first_surface] == "TYPE_SIGN")
            second[through], second_surface[through] = cast(origins[through], directions[through], ground_z,
                                                            boxes, limit, exclude=first_surface[through])
            stored.append((laser.ri_return2, second, second_surface))
        for index, (returns, ranges, surface) in enumerate(stored, start=1):
            image = np.zeros((len(directions), 4), dtype=np.float32)  # range, intensity, elongation, no-label zone
            image[:, 0] = np.where(surface > 0, ranges, -1.0)
            image[:, 1] = intensity[surface]
            returns.range_image_compressed = compress(image.reshape(*shape, 4), dataset_pb2.MatrixFloat)
            if with_segmentation and name == "TOP":  # Waymo labels the TOP laser only
                labels = np.stack([instance[surface], segment_class[surface]], axis=-1).reshape(*shape, 2)
                returns.segmentation_label_compressed = compress(labels, dataset_pb2.MatrixInt32)
            counts[str(index)][name] = {kind: int((surface_kind[surface] == kind).sum()) for kind in RAW_INTENSITY}
        if name == "TOP":
            hits = (origins + directions * first[:, None])[first_surface > 0]
    check_official_decoding(frame, hits)
    return counts


def check_official_decoding(frame: dataset_pb2.Frame, hits: np.ndarray) -> None:
    """frame_utils must decode the stored TOP first return onto the cast hit points, in row-major order.

    Its parse_range_image_and_camera_projection cannot run here: it hands protobuf a
    bytearray, which the protobuf 4 (upb) these tools install rejects; the protos
    are decompressed here instead, with the same zlib."""
    def parse(compressed: bytes, proto):
        matrix = proto()
        matrix.ParseFromString(zlib.decompress(compressed))
        return matrix

    top = next(laser for laser in frame.lasers if laser.name == dataset_pb2.LaserName.TOP)
    only_top = dataset_pb2.Frame()
    only_top.CopyFrom(frame)
    del only_top.context.laser_calibrations[:]
    only_top.context.laser_calibrations.extend(
        c for c in frame.context.laser_calibrations if c.name == dataset_pb2.LaserName.TOP)
    points, _ = frame_utils.convert_range_image_to_point_cloud(
        only_top,
        {top.name: [parse(top.ri_return1.range_image_compressed, dataset_pb2.MatrixFloat)]},
        {top.name: [parse(top.ri_return1.camera_projection_compressed, dataset_pb2.MatrixInt32)]},
        parse(top.ri_return1.range_image_pose_compressed, dataset_pb2.MatrixFloat),
    )
    error = float(np.abs(points[0] - hits).max()) if points[0].shape == hits.shape else math.inf
    if error > 0.005:
        raise SystemExit(f"frame_utils decodes the TOP range image off the cast points: "
                         f"{points[0].shape} vs {hits.shape}, max error {error} m")


def write_records(path: Path, frames: list[dataset_pb2.Frame]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tf.io.TFRecordWriter(str(path)) as writer:
        for frame in frames:
            writer.write(frame.SerializeToString())


def build(source: Path, out: Path) -> dict:
    """Write the records under ``out`` and return what a converter must recover from them."""
    real = read_frame(source)
    vehicle = next(lab for lab in real.laser_labels if lab.type == label_pb2.Label.TYPE_VEHICLE)
    ground_z = vehicle.box.center_z - vehicle.box.height / 2  # the vehicle stands on the ground
    context = real.context.name
    frames, expected = [], []
    for index in range(2):
        frame = dataset_pb2.Frame()
        frame.CopyFrom(real)
        driven = SPEED * index * FRAME_STEP_MICROS / 1e6  # metres since record 0, along the vehicle's x
        frame.timestamp_micros += index * FRAME_STEP_MICROS
        pose = np.array(real.pose.transform).reshape(4, 4) @ translation(driven)
        del frame.pose.transform[:]
        frame.pose.transform.extend(pose.ravel().tolist())
        for label in frame.laser_labels:  # the world stands still, so the labels move back
            label.box.center_x -= driven
        counts = render(frame, ground_z, with_segmentation=index == 1)
        frames.append(frame)
        expected.append({
            "timestamp_micros": frame.timestamp_micros,
            "pose": pose.tolist(),
            "segmentation": index == 1,
            "labels": [{"type": label_pb2.Label.Type.Name(lab.type), "box": box.tolist(), "id": lab.id,
                        "speed": [lab.metadata.speed_x, lab.metadata.speed_y]}
                       for lab, box in zip(frame.laser_labels, label_boxes(frame))],
            "points": counts,
        })
    files = {
        "good": f"good/validation/segment-{context}_with_camera_labels.tfrecord",
        "corrupt": f"damaged/validation/segment-{context}_corrupt.tfrecord",
        "truncated": f"damaged/training/segment-{context}_truncated.tfrecord",
    }
    write_records(out / files["good"], frames)
    data = (out / files["good"]).read_bytes()
    second = 12 + struct.unpack_from("<Q", data)[0] + 4  # byte where record 1 starts
    inside = second + 12 + struct.unpack_from("<Q", data, second)[0] // 2  # a byte of record 1's data
    corrupt = bytearray(data)
    corrupt[inside] ^= 0xFF
    (out / files["corrupt"]).parent.mkdir(parents=True, exist_ok=True)
    (out / files["corrupt"]).write_bytes(bytes(corrupt))
    (out / files["truncated"]).parent.mkdir(parents=True, exist_ok=True)
    (out / files["truncated"]).write_bytes(data[:inside])
    top = next(c for c in real.context.laser_calibrations if c.name == dataset_pb2.LaserName.TOP)
    return {
        "context_name": context,
        "files": files,
        "ground_z": ground_z,
        "raw_intensity": RAW_INTENSITY,
        "segmentation": SEGMENTATION,
        "car_instance": CAR_INSTANCE,
        "ego": {"speed": SPEED, "sweep": SWEEP},
        "top_inclinations": list(top.beam_inclinations),
        "top_extrinsic": np.array(top.extrinsic.transform).reshape(4, 4).tolist(),
        "frames": expected,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="the real one-frame tfrecord (waymo_val_fixture.tfrecord)")
    parser.add_argument("out", type=Path, help="folder to write the records and expected.json into")
    args = parser.parse_args()
    expected = build(args.source, args.out)
    (args.out / "expected.json").write_text(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
