"""The unified class list every dataset is mapped onto, and the mapping tables.

Fine-tuning across datasets is only defined when all of them speak the same
labels, so converters map their native labels to these and nothing downstream
ever sees a native id. The list is the common denominator of nuScenes
lidarseg, SemanticKITTI and Waymo segmentation: a finer class that one of them
lacks (bus vs truck, trunk vs foliage, sign vs pole) is merged into the class
all of them can express. Native labels with no unified counterpart (noise,
debris, animals, "other") map to ``None`` and become IGNORE_INDEX.

One exception to the common denominator: nuScenes lidarseg has no pole class
(poles and signs are part of ``static.manmade``), so its poles are labelled
``building`` and ``pole`` never occurs in nuScenes. Merging poles into
buildings everywhere would throw away a class three of the four sources
label; a nuScenes evaluation simply has no pole IoU.

Unified classes
    road          drivable surface, lane markings
    sidewalk      sidewalks, curbs
    other_ground  parking, other flat ground
    terrain       grass, soil, walkable natural ground
    building      buildings and other man-made structures
    barrier       barriers, fences, traffic cones
    vegetation    trees (trunk and crown), bushes
    pole          poles, traffic signs, traffic lights
    car           passenger cars (Waymo: every VEHICLE box)
    truck         trucks, buses, trailers, construction and other vehicles
    pedestrian    people on foot
    cyclist       bicycles and motorcycles, with or without rider
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "other_ground",
    "terrain",
    "building",
    "barrier",
    "vegetation",
    "pole",
    "car",
    "truck",
    "pedestrian",
    "cyclist",
)
IGNORE_INDEX = 255
NUM_CLASSES = len(CLASSES)
# Semantic occupancy uses one more class: free space.
EMPTY_INDEX = NUM_CLASSES
CLASS_ID = {name: index for index, name in enumerate(CLASSES)}
# Classes that count as objects: they get boxes, instance ids and SPOT's higher class weight.
THING_CLASSES: tuple[str, ...] = ("car", "truck", "pedestrian", "cyclist")

# nuScenes category names (category.json, used by lidarseg and by boxes) -> unified.
# Follows the official 16-class lidarseg merge, with its classes merged further.
NUSCENES: dict[str, str | None] = {
    "noise": None,
    "animal": None,
    "human.pedestrian.adult": "pedestrian",
    "human.pedestrian.child": "pedestrian",
    "human.pedestrian.construction_worker": "pedestrian",
    "human.pedestrian.personal_mobility": None,
    "human.pedestrian.police_officer": "pedestrian",
    "human.pedestrian.stroller": None,
    "human.pedestrian.wheelchair": None,
    "movable_object.barrier": "barrier",
    "movable_object.debris": None,
    "movable_object.pushable_pullable": None,
    "movable_object.trafficcone": "barrier",
    "static_object.bicycle_rack": None,
    "vehicle.bicycle": "cyclist",
    "vehicle.bus.bendy": "truck",
    "vehicle.bus.rigid": "truck",
    "vehicle.car": "car",
    "vehicle.construction": "truck",
    "vehicle.emergency.ambulance": None,
    "vehicle.emergency.police": None,
    "vehicle.motorcycle": "cyclist",
    "vehicle.trailer": "truck",
    "vehicle.truck": "truck",
    "flat.driveable_surface": "road",
    "flat.other": "other_ground",
    "flat.sidewalk": "sidewalk",
    "flat.terrain": "terrain",
    "static.manmade": "building",
    "static.other": None,
    "static.vegetation": "vegetation",
    "vehicle.ego": None,
}

# SemanticKITTI raw label ids (lower 16 bits of a .label entry) -> unified.
SEMANTICKITTI: dict[int, str | None] = {
    0: None,  # unlabeled
    1: None,  # outlier
    10: "car",
    11: "cyclist",  # bicycle
    13: "truck",  # bus
    15: "cyclist",  # motorcycle
    16: "truck",  # on-rails
    18: "truck",
    20: "truck",  # other-vehicle
    30: "pedestrian",  # person
    31: "cyclist",  # bicyclist
    32: "cyclist",  # motorcyclist
    40: "road",
    44: "other_ground",  # parking
    48: "sidewalk",
    49: "other_ground",
    50: "building",
    51: "barrier",  # fence
    52: "building",  # other-structure
    60: "road",  # lane-marking
    70: "vegetation",
    71: "vegetation",  # trunk
    72: "terrain",
    80: "pole",
    81: "pole",  # traffic-sign
    99: None,  # other-object
    252: "car",  # moving-car
    253: "cyclist",  # moving-bicyclist
    254: "pedestrian",  # moving-person
    255: "cyclist",  # moving-motorcyclist
    256: "truck",  # moving-on-rails
    257: "truck",  # moving-bus
    258: "truck",  # moving-truck
    259: "truck",  # moving-other-vehicle
}

# KITTI 3D detection label_2 types -> unified; "DontCare" regions carry no object.
KITTI_DETECTION: dict[str, str | None] = {
    "Car": "car",
    "Van": "car",
    "Truck": "truck",
    "Tram": "truck",
    "Pedestrian": "pedestrian",
    "Person_sitting": "pedestrian",
    "Cyclist": "cyclist",
    "Misc": None,
    "DontCare": None,
}

# Waymo v1 segmentation types (segmentation_pb2.Segmentation.Type) -> unified.
WAYMO_SEGMENTATION: dict[str, str | None] = {
    "TYPE_UNDEFINED": None,
    "TYPE_CAR": "car",
    "TYPE_TRUCK": "truck",
    "TYPE_BUS": "truck",
    "TYPE_OTHER_VEHICLE": "truck",
    "TYPE_MOTORCYCLIST": "cyclist",
    "TYPE_BICYCLIST": "cyclist",
    "TYPE_PEDESTRIAN": "pedestrian",
    "TYPE_SIGN": "pole",
    "TYPE_TRAFFIC_LIGHT": "pole",
    "TYPE_POLE": "pole",
    "TYPE_CONSTRUCTION_CONE": "barrier",
    "TYPE_BICYCLE": "cyclist",
    "TYPE_MOTORCYCLE": "cyclist",
    "TYPE_BUILDING": "building",
    "TYPE_VEGETATION": "vegetation",
    "TYPE_TREE_TRUNK": "vegetation",
    "TYPE_CURB": "sidewalk",
    "TYPE_ROAD": "road",
    "TYPE_LANE_MARKER": "road",
    "TYPE_OTHER_GROUND": "other_ground",
    "TYPE_WALKABLE": "terrain",
    "TYPE_SIDEWALK": "sidewalk",
}

# Waymo v1 box types (label_pb2.Label.Type) -> unified. Waymo does not tell cars
# from trucks: every VEHICLE box becomes a car. Signs are not detection objects.
WAYMO_BOXES: dict[str, str | None] = {
    "TYPE_UNKNOWN": None,
    "TYPE_VEHICLE": "car",
    "TYPE_PEDESTRIAN": "pedestrian",
    "TYPE_SIGN": None,
    "TYPE_CYCLIST": "cyclist",
}

MAPPINGS: dict[str, Mapping] = {
    "nuscenes": NUSCENES,
    "semantickitti": SEMANTICKITTI,
    "kitti_detection": KITTI_DETECTION,
    "waymo_segmentation": WAYMO_SEGMENTATION,
    "waymo_boxes": WAYMO_BOXES,
}


def unified_id(name: str | None) -> int:
    """The unified id of a unified class name, IGNORE_INDEX for ``None``."""
    return IGNORE_INDEX if name is None else CLASS_ID[name]


def map_labels(native: np.ndarray, table: Mapping[int, str | None], source: str) -> np.ndarray:
    """Native integer labels -> unified uint8 ids; an id the table does not know is an error naming ``source``."""
    lut = np.full(max(table) + 1, -1, dtype=np.int32)
    for native_id, name in table.items():
        lut[native_id] = unified_id(name)
    native = np.asarray(native, dtype=np.int64)
    inside = (native >= 0) & (native < len(lut))
    mapped = np.full(native.shape, -1, dtype=np.int32)
    mapped[inside] = lut[native[inside]]
    unknown = np.unique(native[mapped < 0])
    if unknown.size:
        raise ValueError(f"{source}: label id(s) {unknown[:10].tolist()} are not in the mapping table")
    return mapped.astype(np.uint8)
