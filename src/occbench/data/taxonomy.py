"""The unified class list every dataset is mapped onto.

Fine-tuning across datasets is only defined when all of them speak the same
labels, so converters map their native ids to these and nothing downstream
ever sees a native id.
"""

from __future__ import annotations

CLASSES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "terrain",
    "building",
    "vegetation",
    "pole",
    "car",
    "pedestrian",
    "cyclist",
)
IGNORE_INDEX = 255
NUM_CLASSES = len(CLASSES)
CLASS_ID = {name: index for index, name in enumerate(CLASSES)}
# Classes that count as objects for detection and for SPOT's class weights.
THING_CLASSES: tuple[str, ...] = ("car", "pedestrian", "cyclist")
