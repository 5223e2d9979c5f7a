"""nuScenes through its official devkit: LIDAR_TOP keyframes as occbench frames.

The devkit's ``NuScenes`` tables are the source of truth for poses, splits,
annotations and lidarseg files, so this converter only adds what the devkit
does not do for us: reading the ring column (``LidarPointCloud`` drops it),
mapping native categories onto the unified classes by name, and packing boxes,
instance ids, merged sweeps and cameras into the frame format. Each box also keeps
what the devkit's DetectionEval reads of it (its detection class by the devkit's own
category mapping, its attribute, its LiDAR and radar point counts, NaN velocity
where the devkit has none), the frame its ego origin and bicycle racks, so that a
nuScenes evaluation of frames is the devkit's.

Settings (``datasets.<name>`` in params.yaml)
    root      the nuScenes dataroot (holds samples/, sweeps/, maps/, <version>/)
    version   table version, v1.0-mini or v1.0-trainval
    sweeps    previous non-keyframe sweeps merged into each keyframe (0: keyframe only)
    cameras   camera channels whose keyframe image is stored in the frame (may be empty)
    lidarseg  read nuScenes-lidarseg point labels (else every point is ignore)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from occbench.data.convert import FrameSource
from occbench.data.frame import BoxAnnotations, Camera, Frame, add_camera, set_box_annotations
from occbench.data.occupancy_aggregation import AggregationSettings
from occbench.data.taxonomy import IGNORE_INDEX, NUSCENES, map_labels, unified_id

# Official scene splits (nuscenes.utils.splits) that form train and val of each table version.
_SPLITS = {
    "v1.0-mini": {"train": "mini_train", "val": "mini_val"},
    "v1.0-trainval": {"train": "train", "val": "val"},
}
_SETTINGS = ("root", "version", "sweeps", "cameras", "lidarseg", "occupancy")
# LIDAR_TOP files hold float32 x, y, z, intensity (0..255), ring (0..31).
_COLUMNS = 5
# The devkit's bicycle racks: no box of their own, but cycles inside one are not evaluated.
_BICYCLE_RACK = "static_object.bicycle_rack"
# Like the devkit's multisweep reader: merged sweeps lose the points within this
# square around their sensor, returns from the ego vehicle that motion
# compensation would otherwise smear into a trail behind the car.
_MIN_SWEEP_DISTANCE = 1.0


def read_sweep(path: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points (N, 3) float32, intensity (N,) in [0, 1] and ring (N,) int16 of one ``.pcd.bin``."""
    path = Path(path)
    raw = np.fromfile(path, dtype=np.float32)
    if raw.size == 0 or raw.size % _COLUMNS:
        raise ValueError(
            f"{path}: {raw.nbytes} bytes is not a whole number of nuScenes LiDAR points "
            f"({_COLUMNS} float32 each): the file is truncated or corrupt"
        )
    scan = raw.reshape(-1, _COLUMNS)
    return scan[:, :3].copy(), scan[:, 3] / np.float32(255), scan[:, 4].astype(np.int16)


def _require_devkit() -> None:
    try:
        import nuscenes  # noqa: F401
    except ImportError as err:
        raise ImportError(
            "the nuscenes converter needs nuscenes-devkit: pip install --no-deps nuscenes-devkit==1.2.0 "
            "pyquaternion opencv-python-headless scikit-learn cachetools (see the install notes: "
            "--no-deps keeps numpy 2)"
        ) from err


class NuScenesConverter:
    """LIDAR_TOP keyframes of the official train/val scenes, one sample in memory at a time."""

    def __init__(self, settings: dict[str, Any]) -> None:
        missing = [key for key in _SETTINGS if key not in settings]
        if missing:
            raise ValueError(f"nuscenes dataset settings lack {', '.join(missing)}")
        _require_devkit()
        from nuscenes import NuScenes

        self.occupancy_aggregation = AggregationSettings.from_settings(settings)
        self.root = Path(settings["root"])
        self.version = settings["version"]
        self.sweeps = int(settings["sweeps"])
        self.channels = list(settings["cameras"])
        self.lidarseg = bool(settings["lidarseg"])
        if self.version not in _SPLITS:
            raise ValueError(
                f"nuscenes version {self.version!r} has no official train/val split; "
                f"use one of {', '.join(_SPLITS)}"
            )
        if self.sweeps < 0:
            raise ValueError(f"nuscenes sweeps must be >= 0, got {self.sweeps}")
        self.table_root = self.root / self.version
        if not self.table_root.is_dir():
            raise FileNotFoundError(f"{self.table_root}: no nuScenes tables of version {self.version} here")
        # Built once: the conversion driver forks its workers, which inherit these tables.
        try:
            self.nusc = NuScenes(version=self.version, dataroot=str(self.root), verbose=False)
        except AssertionError as err:  # the devkit checks its inputs (maps, lidarseg files) by assert
            raise ValueError(f"{self.table_root}: nuscenes-devkit cannot load these tables: {err}") from err
        unknown = sorted({c["name"] for c in self.nusc.category} - NUSCENES.keys())
        if unknown:
            raise ValueError(
                f"{self.table_root / 'category.json'}: categories {unknown} have no entry in "
                "occbench.data.taxonomy.NUSCENES"
            )
        if self.lidarseg:
            self._prepare_lidarseg()
        self._sources, self._samples = self._list_frames()

    def _prepare_lidarseg(self) -> None:
        if not hasattr(self.nusc, "lidarseg"):
            raise FileNotFoundError(
                f"{self.table_root / 'lidarseg.json'}: not found, so this dataroot has no "
                "nuScenes-lidarseg labels; install them or set lidarseg: false"
            )
        no_index = [c["name"] for c in self.nusc.category if "index" not in c]
        if no_index:
            raise ValueError(
                f"{self.table_root / 'category.json'}: categories {no_index} have no lidarseg 'index' "
                "(use the category.json that comes with nuScenes-lidarseg)"
            )
        # Raw lidarseg values are category indices; their meaning comes from the names.
        self._label_table = {c["index"]: NUSCENES[c["name"]] for c in self.nusc.category}
        self._labels_of = {r["sample_data_token"]: r["filename"] for r in self.nusc.lidarseg}

    def _list_frames(self) -> tuple[list[FrameSource], dict[str, tuple[str, int]]]:
        """Every LIDAR_TOP keyframe of the scenes in this version's train and val splits."""
        from nuscenes.utils.splits import create_splits_scenes

        official = create_splits_scenes()
        split_of = {scene: split for split, name in _SPLITS[self.version].items() for scene in official[name]}
        sources, samples = [], {}
        for scene in self.nusc.scene:
            split = split_of.get(scene["name"])
            if split is None:
                continue
            token, index = scene["first_sample_token"], 0
            while token:
                sample = self.nusc.get("sample", token)
                lidar = self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
                frame_id = f"{scene['name']}_{lidar['timestamp']}"
                sources.append(FrameSource(frame_id, scene=scene["name"], split=split,
                                           location=str(self.root / lidar["filename"])))
                samples[frame_id] = (token, index)
                token, index = sample["next"], index + 1
        return sources, samples

    def sources(self) -> list[FrameSource]:
        return list(self._sources)

    def load(self, source: FrameSource) -> Frame:
        sample_token, index = self._samples[source.frame_id]
        sample = self.nusc.get("sample", sample_token)
        lidar = self.nusc.get("sample_data", sample["data"]["LIDAR_TOP"])
        points, intensity, ring = read_sweep(self.root / lidar["filename"])
        pose = self._sensor_to_world(lidar)
        semantic = (self._semantic(lidar, sample_token, source.scene, len(points)) if self.lidarseg
                    else np.full(len(points), IGNORE_INDEX, np.uint8))
        boxes, labels, velocity, instance, annotations, racks, tracks = self._boxes(lidar, pose, points)
        if self.sweeps:
            extra_points, extra_intensity, extra_ring = self._previous_sweeps(lidar, pose)
            count = len(extra_points)
            points = np.concatenate([points, extra_points])
            intensity = np.concatenate([intensity, extra_intensity])
            ring = np.concatenate([ring, extra_ring])
            semantic = np.concatenate([semantic, np.full(count, IGNORE_INDEX, np.uint8)])
            instance = np.concatenate([instance, np.zeros(count, np.int32)])
        frame = Frame(
            points=points, intensity=intensity, ring=ring, semantic=semantic, instance=instance,
            boxes=boxes, box_labels=labels, pose=pose,
            meta={"dataset": "nuscenes", "sequence": source.scene, "index": index,
                  "sensor": "nuscenes32", "num_beams": 32, "timestamp": lidar["timestamp"] * 1e-6,
                  "sample_token": sample_token},
            extras={"box_velocity": velocity, "box_track_id": tracks, "bicycle_racks": racks,
                    # The ego pose's origin, from which the devkit measures class ranges.
                    "ego_origin": np.linalg.inv(self._ego_from_sensor(lidar))[:3, 3]},
        )
        set_box_annotations(frame, annotations)
        for channel in self.channels:
            add_camera(frame, channel, self._camera(sample, channel, pose))
        return frame

    def _sensor_to_world(self, record: dict) -> np.ndarray:
        """Sensor-to-world transform of a sample_data: ego pose at its timestamp x calibration."""
        from nuscenes.utils.geometry_utils import transform_matrix
        from pyquaternion import Quaternion

        ego = self.nusc.get("ego_pose", record["ego_pose_token"])
        world_from_ego = transform_matrix(ego["translation"], Quaternion(ego["rotation"]))
        return world_from_ego @ self._ego_from_sensor(record)

    def _ego_from_sensor(self, record: dict) -> np.ndarray:
        from nuscenes.utils.geometry_utils import transform_matrix
        from pyquaternion import Quaternion

        calibration = self.nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        return transform_matrix(calibration["translation"], Quaternion(calibration["rotation"]))

    def _semantic(self, lidar: dict, sample_token: str, scene: str, count: int) -> np.ndarray:
        filename = self._labels_of.get(lidar["token"])
        if filename is None:
            raise ValueError(
                f"sample {sample_token} of {scene}: its LIDAR_TOP keyframe {lidar['token']} has no record "
                f"in {self.table_root / 'lidarseg.json'}"
            )
        path = self.root / filename
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size != count:
            raise ValueError(f"{path}: {raw.size} lidarseg labels for the {count} points of {lidar['filename']}")
        return map_labels(raw, self._label_table, str(path))

    def _boxes(self, lidar: dict, pose: np.ndarray, points: np.ndarray):
        """Boxes (M, 7), unified labels, xy velocity in the LiDAR frame (NaN where the devkit has
        none), per-point instance ids, the boxes' annotations, the bicycle racks (K, 7) and each box's
        track id: its instance's row in the devkit's instance table, plus 1."""
        from nuscenes.eval.detection.utils import category_to_detection_name
        from nuscenes.utils.geometry_utils import points_in_box

        # get_sample_data moves the sample's annotations into the LiDAR frame.
        _, found, _ = self.nusc.get_sample_data(lidar["token"])
        kept = [(box, NUSCENES[box.name]) for box in found if NUSCENES[box.name] is not None]
        racks = np.array([_box_row(box) for box in found if box.name == _BICYCLE_RACK], np.float32).reshape(-1, 7)
        boxes = np.array([_box_row(box) for box, _ in kept], np.float32).reshape(-1, 7)
        labels = np.array([unified_id(name) for _, name in kept], np.int16)
        world_to_lidar = pose[:3, :3].T
        velocity = np.array([(world_to_lidar @ self.nusc.box_velocity(box.token))[:2] for box, _ in kept],
                            np.float32).reshape(-1, 2)
        records = [self.nusc.get("sample_annotation", box.token) for box, _ in kept]
        annotations = BoxAnnotations(
            names=np.array([category_to_detection_name(box.name) or "" for box, _ in kept], dtype=str),
            attributes=np.array([self._attribute(record) for record in records], dtype=str),
            lidar_points=np.array([record["num_lidar_pts"] for record in records], np.int32),
            radar_points=np.array([record["num_radar_pts"] for record in records], np.int32))
        instance = np.zeros(len(points), np.int32)
        # Largest first, so a point inside several boxes keeps the smallest one's id.
        for i in np.argsort(-boxes[:, 3:6].prod(axis=1), kind="stable"):
            instance[points_in_box(kept[i][0], points.T)] = i + 1
        tracks = np.array([self.nusc.getind("instance", record["instance_token"]) + 1 for record in records],
                          np.int32)
        return boxes, labels, velocity, instance, annotations, racks, tracks

    def _attribute(self, record: dict) -> str:
        """The annotation's attribute name, '' for none; more than one is an error, as in the devkit."""
        tokens = record["attribute_tokens"]
        if len(tokens) > 1:
            raise ValueError(
                f"{self.table_root / 'sample_annotation.json'}: annotation {record['token']} has "
                f"{len(tokens)} attributes; nuScenes detection allows at most one"
            )
        return self.nusc.get("attribute", tokens[0])["name"] if tokens else ""

    def _previous_sweeps(self, lidar: dict, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Up to ``sweeps`` earlier non-keyframe sweeps of the scene, newest first, moved into this
        keyframe's LiDAR frame through the ego poses at their own timestamps."""
        world_to_keyframe = np.linalg.inv(pose)
        merged = []
        record = lidar
        while len(merged) < self.sweeps and record["prev"]:
            record = self.nusc.get("sample_data", record["prev"])
            if record["is_key_frame"]:
                continue  # keyframes are frames of their own
            points, intensity, ring = read_sweep(self.root / record["filename"])
            far = ~((np.abs(points[:, 0]) < _MIN_SWEEP_DISTANCE) & (np.abs(points[:, 1]) < _MIN_SWEEP_DISTANCE))
            moved = world_to_keyframe @ self._sensor_to_world(record)
            points = points[far] @ moved[:3, :3].T + moved[:3, 3]
            merged.append((points.astype(np.float32), intensity[far], ring[far]))
        if not merged:
            return np.zeros((0, 3), np.float32), np.zeros(0, np.float32), np.zeros(0, np.int16)
        return tuple(np.concatenate(column) for column in zip(*merged))

    def _camera(self, sample: dict, channel: str, lidar_to_world: np.ndarray) -> Camera:
        from PIL import Image

        token = sample["data"].get(channel)
        if token is None:
            raise ValueError(f"sample {sample['token']} has no {channel} keyframe")
        record = self.nusc.get("sample_data", token)
        calibration = self.nusc.get("calibrated_sensor", record["calibrated_sensor_token"])
        path = self.root / record["filename"]
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
        # Through the world: the camera fires at another time than the LiDAR, from another ego pose.
        camera_from_world = np.linalg.inv(self._sensor_to_world(record))
        return Camera(image=pixels, intrinsics=np.asarray(calibration["camera_intrinsic"], np.float64),
                      lidar_to_camera=camera_from_world @ lidar_to_world)


def _box_row(box) -> tuple[float, ...]:
    """A devkit Box as the frame's box row: centre, length, width, height, yaw of the length axis."""
    heading = box.orientation.rotation_matrix[:, 0]
    width, length, height = box.wlh
    return (*box.center, length, width, height, np.arctan2(heading[1], heading[0]))
