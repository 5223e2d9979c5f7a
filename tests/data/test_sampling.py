import math
from collections import Counter

import numpy as np
import pytest

from occbench.data.dataset import write_index
from occbench.data.frame import Frame
from occbench.data.sampling import (
    class_balanced_order,
    class_balanced_weights,
    class_sample_factors,
    frame_class_sets,
)
from occbench.data.taxonomy import CLASS_ID

CAR, TRUCK, PEDESTRIAN, CYCLIST = (CLASS_ID[name] for name in ("car", "truck", "pedestrian", "cyclist"))
BUILDING = CLASS_ID["building"]

# Five frames with cars, two with trucks, one with a pedestrian, none with a cyclist.
FRAMES = {
    "f0": {CAR},
    "f1": {CAR},
    "f2": {CAR, PEDESTRIAN},
    "f3": {CAR},
    "f4": {TRUCK},
    "f5": set(),
    "f6": {CAR, TRUCK},
    "f7": {BUILDING},  # not a foreground class: counts as a frame without objects
}


def test_factors_follow_the_formula_on_a_hand_made_example():
    # N = car 5, truck 2, pedestrian 1 (sum 8); cyclist never occurs, so N_fg = 3 and m = 1/3.
    # s_car = sqrt((1/3) / (5/8)) = sqrt(8/15), s_truck = sqrt((1/3) / (2/8)) = sqrt(4/3),
    # s_pedestrian = sqrt((1/3) / (1/8)) = sqrt(8/3).
    factors = class_sample_factors(list(FRAMES.values()))
    assert factors.keys() == {CAR, TRUCK, PEDESTRIAN}
    assert factors[CAR] == pytest.approx(math.sqrt(8 / 15))
    assert factors[TRUCK] == pytest.approx(math.sqrt(4 / 3))
    assert factors[PEDESTRIAN] == pytest.approx(math.sqrt(8 / 3))
    # A frame's factor is its rarest class's s_i, never below 1.
    weights = class_balanced_weights(list(FRAMES.values()))
    np.testing.assert_allclose(weights, [1, 1, math.sqrt(8 / 3), 1, math.sqrt(4 / 3), 1, math.sqrt(4 / 3), 1])


def test_rare_classes_are_seen_more_often():
    ids = list(FRAMES)
    seen = Counter()
    for epoch in range(300):
        seen.update(class_balanced_order(ids, FRAMES, seed=0, epoch=epoch))
    per_epoch = {frame_id: seen[frame_id] / 300 for frame_id in ids}
    assert per_epoch["f2"] == pytest.approx(math.sqrt(8 / 3), abs=0.06)  # the pedestrian frame
    assert per_epoch["f4"] == pytest.approx(math.sqrt(4 / 3), abs=0.06)
    for frame_id in ("f0", "f1", "f3", "f5", "f7"):
        assert per_epoch[frame_id] == 1.0  # whole factors: exactly once, every epoch
    # Per class, showings per frame that holds it: the rarest class leads; cars ride along with the
    # frames of rarer classes (f2, f6), so their boost is no more than the trucks'.
    shown = {label: sum(per_epoch[f] for f in ids if label in FRAMES[f]) / sum(label in FRAMES[f] for f in ids)
             for label in (CAR, TRUCK, PEDESTRIAN)}
    assert shown[PEDESTRIAN] > 1.6 > shown[TRUCK] > 1.1 and shown[CAR] < 1.2


def test_order_is_deterministic_in_seed_and_epoch():
    ids = [f"frame{i:03d}" for i in range(60)]
    classes = {frame_id: {CAR} if i % 5 else {CAR, CYCLIST} for i, frame_id in enumerate(ids)}
    first = class_balanced_order(ids, classes, seed=3, epoch=7)
    assert first == class_balanced_order(ids, classes, seed=3, epoch=7)
    assert first != class_balanced_order(ids, classes, seed=3, epoch=8)
    assert first != class_balanced_order(ids, classes, seed=4, epoch=7)
    assert set(first) == set(ids)  # every frame, at least once
    assert Counter(first)["frame000"] in (1, 2)  # cyclist frames: s = sqrt((1/2) / (12/72)) = 1.73


def test_absent_classes_and_object_free_datasets_do_not_crash():
    ids = ["a", "b", "c"]
    empty = {"a": set(), "b": set(), "c": {BUILDING}}
    assert class_sample_factors(list(empty.values())) == {}
    np.testing.assert_array_equal(class_balanced_weights(list(empty.values())), [1, 1, 1])
    assert sorted(class_balanced_order(ids, empty, seed=0, epoch=0)) == ids
    assert class_balanced_order([], {}, seed=0, epoch=0) == []
    with pytest.raises(KeyError, match="no classes known for frame"):
        class_balanced_order(["a", "zzz"], empty, seed=0, epoch=0)


def make_frame(labels) -> Frame:
    m = len(labels)
    return Frame(
        points=np.zeros((4, 3)), intensity=np.zeros(4), ring=np.zeros(4), semantic=np.zeros(4),
        instance=np.zeros(4), boxes=np.zeros((m, 7)), box_labels=np.array(labels, dtype=np.int16),
        meta={"dataset": "test"},
    )


@pytest.fixture
def dataset(tmp_path):
    labels = {"a": [CAR, CAR, BUILDING], "b": [PEDESTRIAN, TRUCK], "c": [], "d": [CYCLIST]}
    splits = {"a": "train", "b": "train", "c": "val", "d": "val"}
    write_index(tmp_path / "index.json", "test",
                [{"id": i, "path": f"frames/{i}.npz", "split": splits[i], "scene": i,
                  "box_classes": sorted(set(labels[i]))} for i in labels])
    return tmp_path / "index.json"


def test_frame_class_sets_reads_the_box_classes_the_index_records(dataset):
    assert frame_class_sets(dataset) == {"a": {CAR}, "b": {PEDESTRIAN, TRUCK}, "c": set(), "d": {CYCLIST}}
    assert frame_class_sets(dataset, split="train") == {"a": {CAR}, "b": {PEDESTRIAN, TRUCK}}
    assert frame_class_sets(dataset, classes=[BUILDING, CAR])["a"] == {BUILDING, CAR}


def test_an_index_without_box_classes_asks_for_conversion(tmp_path):
    write_index(tmp_path / "index.json", "test", [{"id": "a", "path": "frames/a.npz", "split": "train", "scene": "a"}])
    with pytest.raises(ValueError, match="frame 'a' has no box_classes; convert the dataset again"):
        frame_class_sets(tmp_path / "index.json")
