"""Detection metrics equal nuscenes-devkit's DetectionEval on random boxes and on a converted nuScenes
sample (the fixture tables around the real sweep, through the devkit's official path), and hand cases."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

from nuscenes_fixture import needs_devkit, needs_real
from occbench.data.frame import bicycle_racks, ego_origin
from occbench.metrics import detection
from occbench.metrics.detection import (
    NUSCENES_CLASS_RANGE,
    TP_METRICS,
    DetectionBoxes,
    DetectionSettings,
    evaluate_detection,
    evaluate_frames,
    frame_ground_truth,
)
from occbench.metrics.nuscenes_devkit import devkit_metrics

CLASSES = list(NUSCENES_CLASS_RANGE)
ATTRIBUTES = {
    "pedestrian": ["pedestrian.moving", "pedestrian.sitting_lying_down", "pedestrian.standing"],
    "bicycle": ["cycle.with_rider", "cycle.without_rider"],
    "motorcycle": ["cycle.with_rider", "cycle.without_rider"],
    "traffic_cone": [""], "barrier": [""],
}
VEHICLE_ATTRIBUTES = ["vehicle.moving", "vehicle.parked", "vehicle.stopped"]


def random_ground_truth(rng: np.random.Generator, count: int, nan_velocity: bool = True,
                        spread: float = 55.0) -> dict:
    labels = rng.choice(CLASSES, count)
    attributes = [rng.choice(ATTRIBUTES.get(name, VEHICLE_ATTRIBUTES)) for name in labels]
    attributes = np.where(rng.random(count) < 0.05, "", attributes)  # some annotations lack one
    velocity = rng.normal(0, 3, (count, 2))
    if nan_velocity:
        velocity[rng.random(count) < 0.1] = np.nan
    return dict(center=np.c_[rng.uniform(-spread, spread, (count, 2)), rng.normal(0, 1, count)],
                size=rng.uniform(0.4, 5, (count, 3)), yaw=rng.uniform(-np.pi, np.pi, count),
                velocity=velocity, labels=labels, attributes=attributes)


def noisy_predictions(rng: np.random.Generator, gt: dict, false_positives: int) -> dict:
    """Copies of 80 % of the ground truth with noise, plus random boxes; scores with ties."""
    kept = np.flatnonzero(rng.random(len(gt["yaw"])) < 0.8)
    fake = random_ground_truth(rng, false_positives)
    fake["center"][:, :2] = rng.uniform(-50, 50, (false_positives, 2))
    boxes = {key: np.concatenate([gt[key][kept], fake[key]]) for key in gt}
    total = len(boxes["yaw"])
    boxes["center"] = boxes["center"] + rng.normal(0, 0.8, (total, 3))
    boxes["size"] = boxes["size"] * rng.uniform(0.7, 1.3, (total, 3))
    boxes["yaw"] = boxes["yaw"] + rng.normal(0, 0.5, total)
    boxes["velocity"] = np.nan_to_num(boxes["velocity"]) + rng.normal(0, 1, (total, 2))
    swap = rng.random(total) < 0.3
    boxes["attributes"] = np.where(swap, fake["attributes"][:1].repeat(total), boxes["attributes"])
    boxes["labels"] = np.where(rng.random(total) < 0.05, rng.choice(CLASSES, total), boxes["labels"])
    boxes["scores"] = np.round(rng.random(total), 2)  # rounded: ties in confidence
    order = rng.permutation(total)
    return {key: value[order] for key, value in boxes.items()}


def random_scene(seed: int, frames: int = 6, boxes: int = 40, spread: float = 55.0):
    """Frames of random boxes; even seeds give LiDAR point counts (some 0), odd seeds none.

    A small spread crowds the boxes, so predictions compete for the same ground truth.
    """
    rng = np.random.default_rng(seed)
    gt, pred, ego = [], [], rng.uniform(-3, 3, (frames, 2))
    for _ in range(frames):
        frame_gt = random_ground_truth(rng, boxes, spread=spread)
        pred.append(DetectionBoxes(**noisy_predictions(rng, frame_gt, false_positives=boxes // 4)))
        if seed % 2 == 0:
            frame_gt["num_points"] = np.where(rng.random(boxes) < 0.1, 0, rng.integers(1, 100, boxes))
        gt.append(DetectionBoxes(**frame_gt))
    return gt, pred, ego


def assert_close(ours: float, theirs: float, what: str) -> None:
    if math.isnan(theirs):
        assert math.isnan(ours), f"{what}: ours {ours}, devkit NaN"
    else:
        assert ours == pytest.approx(theirs, abs=1e-6), what


def assert_equals_devkit(ours, theirs) -> None:
    """Every AP and TP error, their means, mAP and NDS agree to 1e-6."""
    for name in CLASSES:
        for threshold in (0.5, 1.0, 2.0, 4.0):
            assert_close(ours.label_aps[name][threshold], theirs.get_label_ap(name, threshold),
                         f"AP {name} @ {threshold}")
        for metric in TP_METRICS:
            assert_close(ours.label_tp_errors[name][metric], theirs.get_label_tp(name, metric),
                         f"{metric} {name}")
    for metric in TP_METRICS:
        assert_close(ours.tp_errors[metric], theirs.tp_errors[metric], f"mean {metric}")
    assert_close(ours.mean_ap, theirs.mean_ap, "mAP")
    assert_close(ours.nd_score, theirs.nd_score, "NDS")


@pytest.mark.parametrize(("seed", "spread"), [(0, 55.0), (1, 55.0), (2, 8.0), (3, 8.0)])
def test_equals_the_devkit_on_random_boxes(seed, spread):
    gt, pred, ego = random_scene(seed, spread=spread)
    ours = evaluate_detection(gt, pred, ego_xy=ego)
    assert_equals_devkit(ours, devkit_metrics(gt, pred, ego))
    assert 0.05 < ours.mean_ap < 0.95  # the scene is neither trivial nor hopeless


def test_equals_the_devkit_with_bicycle_racks():
    """Racks over half the cycles, turned at random: those cycles and predictions on them drop out."""
    gt, pred, ego = random_scene(4, spread=20.0)
    rng = np.random.default_rng(4)
    racks = []
    for frame in gt:
        cycles = np.flatnonzero(np.isin(frame.labels, ["bicycle", "motorcycle"]))[::2]
        racks.append(np.c_[frame.center[cycles] + rng.normal(0, 0.3, (len(cycles), 3)),
                           np.tile([3.0, 1.5, 4.0], (len(cycles), 1)), rng.uniform(-np.pi, np.pi, len(cycles))])
    ours = evaluate_detection(gt, pred, ego_xy=ego, bicycle_racks=racks)
    assert_equals_devkit(ours, devkit_metrics(gt, pred, ego, bicycle_racks=racks))
    without = evaluate_detection(gt, pred, ego_xy=ego)
    assert ours.label_aps["bicycle"] != without.label_aps["bicycle"]
    assert ours.label_aps["car"] == without.label_aps["car"]


def test_equals_the_devkit_with_absent_classes_and_empty_frames():
    """Classes without ground truth score AP 0 and errors 1; a frame may hold no box."""
    rng = np.random.default_rng(7)
    gt, pred = [], []
    for count in (30, 0, 25):
        frame = random_ground_truth(rng, count)
        keep = np.isin(frame["labels"], ["car", "pedestrian", "barrier"])
        frame = {key: value[keep] for key, value in frame.items()}
        gt.append(DetectionBoxes(**frame))
        pred.append(DetectionBoxes(**noisy_predictions(rng, frame, false_positives=5)))
    ours = evaluate_detection(gt, pred)
    assert ours.label_aps["bus"][2.0] == 0.0 and ours.label_tp_errors["bus"]["trans_err"] == 1.0
    assert ours.to_dict()["class_tp_errors"]["barrier"]["vel_err"] is None  # excluded: null in JSON
    assert_equals_devkit(ours, devkit_metrics(gt, pred))


def test_chunked_candidate_pairs_give_the_same_numbers(monkeypatch):
    gt, pred, ego = random_scene(2, spread=8.0)
    whole = evaluate_detection(gt, pred, ego_xy=ego)
    monkeypatch.setattr(detection, "_PAIR_BUDGET", 7)
    chunked = evaluate_detection(gt, pred, ego_xy=ego)
    assert chunked.label_aps == whole.label_aps and chunked.nd_score == whole.nd_score


def test_a_perfect_prediction_scores_one_and_an_empty_one_zero():
    rng = np.random.default_rng(3)
    frames = []
    for _ in range(3):
        boxes = random_ground_truth(rng, 30, nan_velocity=False)
        boxes["labels"][:10] = CLASSES  # every class present
        boxes["center"][:, :2] = rng.uniform(-20, 20, (30, 2))  # all within range
        frames.append(boxes)
    gt = [DetectionBoxes(**boxes) for boxes in frames]
    perfect = [DetectionBoxes(**boxes, scores=rng.random(30)) for boxes in frames]
    empty = [DetectionBoxes(center=np.zeros((0, 3)), size=np.zeros((0, 3)), yaw=[], labels=[], scores=[])
             for _ in frames]
    best = evaluate_detection(gt, perfect)
    assert best.mean_ap == pytest.approx(1.0, abs=1e-12)
    assert best.nd_score == pytest.approx(1.0, abs=1e-12)
    worst = evaluate_detection(gt, empty)
    assert worst.mean_ap == 0.0 and worst.nd_score == 0.0


def test_hand_computed_average_precision_and_translation_error():
    """A false positive first, then two hits: precision is r below recall 0.5, 0.5 + (r-0.5)/3 above.

    AP = sum over recall points 0.11..1 of (precision - 0.1) / (90 * 0.9) = 32.45 / 81.
    ATE: the running mean error is 0.1 then 0.15, resampled by confidence 0.9 - 0.2 r, so
    0.1 up to recall 0.5 and 0.05 + 0.1 r above: (4.0 + 6.275) / 90.
    """
    settings = DetectionSettings.from_mapping({"class_range": {"car": 50}})
    gt = [DetectionBoxes(center=[[0, 0, 0], [10, 0, 0]], size=[[2, 4, 1.5]] * 2, yaw=[0, 0],
                         labels=["car", "car"])]
    pred = [DetectionBoxes(center=[[20, 0, 0], [0.1, 0, 0], [10, 0.2, 0]], size=[[2, 4, 1.5]] * 3,
                           yaw=[0, 0, 0], labels=["car"] * 3, scores=[0.9, 0.8, 0.7])]
    metrics = evaluate_detection(gt, pred, settings)
    for threshold in (0.5, 1.0, 2.0, 4.0):
        assert metrics.label_aps["car"][threshold] == pytest.approx(32.45 / 81, abs=1e-12)
    errors = metrics.label_tp_errors["car"]
    assert errors["trans_err"] == pytest.approx(10.275 / 90, abs=1e-12)
    assert errors["scale_err"] == pytest.approx(0.0, abs=1e-12)
    assert errors["attr_err"] == 1.0  # no ground truth attribute at all: the devkit's 1


def test_a_hit_beyond_a_threshold_is_a_false_positive_there():
    """0.7 m off: a miss at 0.5 m (AP 0) and a hit from 1 m on (AP 1)."""
    settings = DetectionSettings.from_mapping({"class_range": {"car": 50}})
    gt = [DetectionBoxes(center=[[5, 5, 0]], size=[[2, 4, 1.5]], yaw=[0], labels=[0])]
    pred = [DetectionBoxes(center=[[5.7, 5, 0]], size=[[2, 4, 1.5]], yaw=[0], labels=[0], scores=[0.5])]
    aps = evaluate_detection(gt, pred, settings).label_aps["car"]
    assert aps == pytest.approx({0.5: 0.0, 1.0: 1.0, 2.0: 1.0, 4.0: 1.0}, abs=1e-12)


def test_settings_from_params_keep_nuscenes_defaults_for_what_is_left_out():
    settings = DetectionSettings.from_mapping({"class_range": {"car": 30, "barrier": 20}, "dist_ths": [1, 2]})
    assert settings.class_names == ("car", "barrier")
    assert settings.tp_exclusions == {"barrier": ("attr_err", "vel_err")}
    assert settings.half_turn_classes == ("barrier",)
    assert settings.min_recall == 0.1 and settings.dist_thresholds == (1, 2)
    with pytest.raises(ValueError, match="unknown detection settings"):
        DetectionSettings.from_mapping({"class_ranges": {"car": 30}})
    with pytest.raises(ValueError, match="tp_threshold"):
        DetectionSettings.from_mapping({"dist_ths": [0.5, 1.0]})


def test_bad_input_gets_an_error_naming_the_problem():
    box = dict(center=[[0, 0, 0]], size=[[1, 1, 1]], yaw=[0], scores=[0.5])
    gt = [DetectionBoxes(**box, labels=["car"])]
    with pytest.raises(ValueError, match=r"unknown classes \['cyclist'\]"):
        evaluate_detection(gt, [DetectionBoxes(**box, labels=["cyclist"])])
    with pytest.raises(ValueError, match="predictions frame 0: yaw has shape"):
        evaluate_detection(gt, [DetectionBoxes(**{**box, "yaw": [0, 1]}, labels=["car"])])
    with pytest.raises(ValueError, match="1 ground-truth frames but 2 prediction frames"):
        evaluate_detection(gt, [DetectionBoxes(**box, labels=["car"])] * 2)
    with pytest.raises(ValueError, match="predictions need scores"):
        evaluate_detection(gt, [DetectionBoxes(**{**box, "scores": None}, labels=["car"])])
    with pytest.raises(ValueError, match="sizes must be > 0"):
        evaluate_detection(gt, [DetectionBoxes(**{**box, "size": [[1, 0, 1]]}, labels=["car"])])


# nuScenes categories the converted sample annotates, with their boxes' extents (l, w, h) and
# attributes; an ambulance and an animal have no detection class: neither side may evaluate them.
CATEGORIES = {
    "vehicle.car": ((4.5, 1.9, 1.7), VEHICLE_ATTRIBUTES), "vehicle.truck": ((7.0, 2.5, 3.0), VEHICLE_ATTRIBUTES),
    "vehicle.bus.rigid": ((11.0, 2.9, 3.4), VEHICLE_ATTRIBUTES),
    "vehicle.bus.bendy": ((17.0, 2.9, 3.4), VEHICLE_ATTRIBUTES),
    "vehicle.trailer": ((10.0, 2.8, 3.8), VEHICLE_ATTRIBUTES),
    "vehicle.construction": ((6.5, 2.8, 3.2), VEHICLE_ATTRIBUTES),
    "vehicle.bicycle": ((1.8, 0.6, 1.3), ATTRIBUTES["bicycle"]),
    "vehicle.motorcycle": ((2.1, 0.8, 1.5), ATTRIBUTES["motorcycle"]),
    "human.pedestrian.adult": ((0.7, 0.7, 1.75), ATTRIBUTES["pedestrian"]),
    "human.pedestrian.child": ((0.5, 0.5, 1.2), ATTRIBUTES["pedestrian"]),
    "human.pedestrian.construction_worker": ((0.7, 0.7, 1.8), ATTRIBUTES["pedestrian"]),
    "movable_object.trafficcone": ((0.4, 0.4, 1.0), [None]), "movable_object.barrier": ((0.5, 2.5, 1.0), [None]),
    "vehicle.emergency.ambulance": ((6.0, 2.3, 2.6), VEHICLE_ATTRIBUTES), "animal": ((0.8, 0.4, 0.6), [None]),
}


def annotated_sample_objects(seed: int = 0) -> tuple:
    """Objects of every detection class around scene-0061's ego: most standing on real ground points,
    some beyond their class range, some up in the air with no LiDAR point (a few of those with radar
    points), a bicycle and a motorcycle in a bicycle rack, a cone within its 30 m of the sensor but
    not of the ego, some annotated in one keyframe only (no velocity), some without attribute."""
    from nuscenes_fixture import SWEEP, ObjectSpec

    rng = np.random.default_rng(seed)
    real = np.fromfile(SWEEP, dtype=np.float32).reshape(-1, 5)[:, :3]
    ground = real[(real[:, 2] < -1.5) & (np.hypot(real[:, 0], real[:, 1]) < 45)]
    objects = []
    for category, (size, attributes) in CATEGORIES.items():
        for _ in range(5):
            extent = np.asarray(size) * rng.uniform(0.8, 1.2, 3)
            foot = ground[rng.integers(len(ground))]
            placement = rng.random()
            if placement < 0.15:  # far out
                centre = (*rng.uniform(45, 60) * np.array([np.cos(t := rng.uniform(0, 2 * np.pi)), np.sin(t)]), -1.0)
            elif placement < 0.35:  # in the air: no LiDAR point
                centre = (foot[0], foot[1], 8.0)
            else:  # standing on a ground return
                centre = (foot[0], foot[1], foot[2] - 0.05 + extent[2] / 2)
            attribute = attributes[rng.integers(len(attributes))] if rng.random() > 0.1 else None
            keyframes = ((0,), (1,), (0, 1), (0, 1))[rng.integers(4)]
            velocity = (*rng.normal(0, 2, 2), 0.0) if len(keyframes) == 2 and rng.random() < 0.7 else (0, 0, 0)
            objects.append(ObjectSpec(category, attribute, centre, *extent, rng.uniform(-np.pi, np.pi), velocity,
                                      keyframes, radar_points=int(placement >= 0.15 and rng.random() < 0.5) * 3))
    objects += [
        ObjectSpec("static_object.bicycle_rack", None, (6.0, 3.0, -1.2), 4.0, 2.0, 1.6, 0.4, (0, 0, 0), (0, 1)),
        ObjectSpec("vehicle.bicycle", "cycle.without_rider", (5.5, 3.0, -1.3), 1.7, 0.6, 1.2, 1.9, (0, 0, 0), (0, 1)),
        ObjectSpec("vehicle.motorcycle", "cycle.without_rider", (6.8, 3.3, -1.2), 2.0, 0.8, 1.4, 2.0, (0, 0, 0),
                   (0, 1)),
        # 29.6 m from the LiDAR, 30.5 m from the ego origin 0.94 m behind it: out of range.
        ObjectSpec("movable_object.trafficcone", None, (0.0, 29.6, -1.4), 0.4, 0.4, 1.0, 0.0, (0, 0, 0), (0,),
                   radar_points=2),
    ]
    return tuple(objects)


def predictions_from(rng: np.random.Generator, gt: DetectionBoxes, false_positives: int) -> DetectionBoxes:
    """Noisy copies of 80 % of ``gt`` (shifted, resized, turned, some attributes and classes wrong,
    some barriers turned half a turn) plus random boxes, with scores that tie."""
    fake = random_ground_truth(rng, false_positives, nan_velocity=False, spread=50.0)
    fake["center"][:, 2] = -1.0
    kept = np.flatnonzero(rng.random(len(gt.yaw)) < 0.8)
    boxes = {key: np.concatenate([np.asarray(getattr(gt, key))[kept], fake[key]])
             for key in ("center", "size", "yaw", "labels", "attributes")}
    boxes["velocity"] = np.concatenate([np.nan_to_num(gt.velocity[kept]), fake["velocity"]])
    total = len(boxes["yaw"])
    boxes["center"] = boxes["center"] + rng.normal(0, 0.6, (total, 3))
    boxes["size"] = boxes["size"] * rng.uniform(0.7, 1.3, (total, 3))
    boxes["yaw"] = (boxes["yaw"] + rng.normal(0, 0.4, total)
                    + np.pi * ((boxes["labels"] == "barrier") & (rng.random(total) < 0.5)))
    boxes["velocity"] = boxes["velocity"] + rng.normal(0, 1, (total, 2))
    boxes["attributes"] = np.where(rng.random(total) < 0.2, fake["attributes"][0], boxes["attributes"])
    boxes["labels"] = np.where(rng.random(total) < 0.05, rng.choice(CLASSES, total), boxes["labels"])
    order = rng.permutation(total)
    return DetectionBoxes(**{key: value[order] for key, value in boxes.items()},
                          scores=np.round(rng.random(total), 2)[order])


@pytest.fixture(scope="module")
def converted_sample(tmp_path_factory):
    """scene-0061 of the nuScenes fixture (the real sweep) with many annotated objects, converted by
    occbench, loaded by the devkit, and predictions on its frames."""
    from nuscenes import NuScenes
    from nuscenes_fixture import SWEEP, build_nuscenes

    from occbench.data.converters.nuscenes import NuScenesConverter

    fixture = build_nuscenes(tmp_path_factory.mktemp("nuscenes") / "nuscenes", SWEEP, annotated_sample_objects())
    converter = NuScenesConverter({"kind": "nuscenes", "root": str(fixture.root), "version": "v1.0-mini",
                                   "sweeps": 0, "cameras": [], "lidarseg": False, "occupancy": None})
    frames = [converter.load(source) for source in converter.sources() if source.scene == "scene-0061"]
    rng = np.random.default_rng(0)
    predictions = [predictions_from(rng, frame_ground_truth(frame, DetectionSettings()), 15) for frame in frames]
    return NuScenes("v1.0-mini", str(fixture.root), verbose=False), frames, predictions


def official_evaluation(nusc, frames, predictions, folder):
    """nuscenes-devkit's DetectionEval from a results file, as a submission is scored; its metrics."""
    from nuscenes.eval.common.config import config_factory
    from nuscenes.eval.detection.evaluate import DetectionEval

    from occbench.metrics.nuscenes_devkit import results_json

    path = folder / "results.json"
    path.write_text(json.dumps(results_json(frames, predictions)))
    evaluator = DetectionEval(nusc, config_factory("detection_cvpr_2019"), str(path), eval_set="mini_train",
                              output_dir=str(folder / "devkit"), verbose=False)
    return evaluator.evaluate()[0]


@needs_real
@needs_devkit
def test_equals_the_devkit_on_a_converted_nuscenes_sample(converted_sample, tmp_path):
    """Ground truth from occbench's converted frames against the devkit's own: load_gt from the
    tables, add_center_dist from the ego poses, filter_eval_boxes with the NuScenes object."""
    nusc, frames, predictions = converted_sample
    theirs = official_evaluation(nusc, frames, predictions, tmp_path)
    ours = evaluate_frames(frames, predictions)
    assert_equals_devkit(ours, theirs)
    assert 0.05 < ours.mean_ap < 0.95 and all(ours.label_aps[name][4.0] > 0 for name in CLASSES)
    assert not math.isnan(ours.tp_errors["attr_err"]) and not math.isnan(ours.tp_errors["vel_err"])


@needs_real
@needs_devkit
@pytest.mark.parametrize("dropped", ["point counts", "ego origin", "bicycle racks"])
def test_without_what_frames_keep_the_numbers_differ_from_the_devkit(converted_sample, tmp_path, dropped):
    """Each of the frames' fields matters: evaluated without it, occbench no longer equals the devkit."""
    nusc, frames, predictions = converted_sample
    theirs = official_evaluation(nusc, frames, predictions, tmp_path)
    settings = DetectionSettings()
    gt = [frame_ground_truth(frame, settings) for frame in frames]
    ego = np.array([ego_origin(frame)[:2] for frame in frames])
    racks = [bicycle_racks(frame) for frame in frames]
    if dropped == "point counts":
        gt = [dataclasses.replace(boxes, num_points=None) for boxes in gt]
    elif dropped == "ego origin":
        ego = None
    else:
        racks = None
    ours = evaluate_detection(gt, predictions, settings, ego_xy=ego, bicycle_racks=racks)
    with pytest.raises(AssertionError):
        assert_equals_devkit(ours, theirs)


def test_default_settings_are_the_devkits_detection_cvpr_2019():
    pytest.importorskip("nuscenes", reason="nuscenes-devkit is not installed")
    from nuscenes.eval.common.config import config_factory

    config, ours = config_factory("detection_cvpr_2019"), DetectionSettings()
    assert dict(ours.class_range) == config.class_range and ours.class_names == tuple(config.class_names)
    assert list(ours.dist_thresholds) == config.dist_ths and ours.tp_threshold == config.dist_th_tp
    assert (ours.min_recall, ours.min_precision) == (config.min_recall, config.min_precision)
    assert (ours.max_boxes_per_frame, ours.mean_ap_weight) == (config.max_boxes_per_sample, config.mean_ap_weight)


def test_a_frame_without_annotations_is_evaluated_on_its_own_classes_and_points():
    """A synthetic-style frame: unified class names, points counted in each box; the empty car is
    not ground truth, so one prediction on the car with points is a perfect detection."""
    from occbench.data.frame import Frame

    boxes = [[5, 0, 0, 4, 2, 1.5, 0], [-8, 3, 0, 4, 2, 1.5, 0.5], [0, 6, 0, 1, 1, 1, 0]]
    points = [[5, 0, 0], [6, 0.5, 0.2], [0, 6, 0]]
    frame = Frame(points=points, intensity=np.zeros(3), ring=np.zeros(3), semantic=np.zeros(3),
                  instance=np.zeros(3), boxes=boxes, box_labels=[8, 8, 11])
    settings = DetectionSettings.from_mapping({"class_range": {"car": 20, "cyclist": 20}})
    gt = frame_ground_truth(frame, settings)
    assert gt.labels.tolist() == ["car", "car", "cyclist"] and gt.num_points.tolist() == [2, 0, 1]
    hit = DetectionBoxes(center=[[5, 0, 0], [0, 6, 0]], size=[[4, 2, 1.5], [1, 1, 1]], yaw=[0, 0],
                         labels=["car", "cyclist"], scores=[0.9, 0.8])
    metrics = evaluate_frames([frame], [hit], settings)
    assert metrics.mean_ap == pytest.approx(1.0, abs=1e-12)
    assert metrics.label_tp_errors["car"]["trans_err"] == pytest.approx(0.0, abs=1e-12)


@needs_real
@needs_devkit
def test_the_detection_tasks_evaluator_scores_nuscenes_frames_on_the_devkits_classes(converted_sample):
    """The fine-tuning task, its class groups naming the devkit's 10 classes, trains on the boxes' source
    classes (not the unified ones, which merge bus and trailer into truck) and scores a batch of the
    converted frames exactly as ``evaluate_frames``, which equals the devkit (the test above)."""
    import torch

    from occbench.config import load_params
    from occbench.data.batch import collate
    from occbench.models.backbone import SparseBackbone
    from occbench.tasks.detection import DetectionTask
    from smoke import ROOT

    _, frames, predictions = converted_sample
    params = load_params(ROOT / "params.yaml")
    groups = [["car"], ["truck", "construction_vehicle"], ["bus", "trailer"], ["barrier"], ["motorcycle", "bicycle"],
              ["pedestrian", "traffic_cone"]]
    settings = {**params["finetune"]["detection"], "class_groups": groups, "class_ranges": NUSCENES_CLASS_RANGE}
    task = DetectionTask(SparseBackbone.from_params(params, "small"), settings)
    batch = collate([(str(number), frame) for number, frame in enumerate(frames)], frozenset({"boxes"}))
    labels = task.labels(batch)
    names = [task.class_names[label] for label in labels[0][labels[0] >= 0].tolist()]
    assert names == [name for name in batch.box_annotations[0].names if name in task.class_names]
    assert {"bus", "trailer", "construction_vehicle"} <= {str(n) for a in batch.box_annotations for n in a.names}
    # Decoded boxes as the head would give them: float32, class indices of the task.
    decoded = [{"boxes": torch.from_numpy(np.column_stack([p.center, p.size, p.yaw])).float(),
                "scores": torch.from_numpy(p.scores), "labels": torch.tensor([task.class_index[n] for n in p.labels])}
               for p in predictions]
    task.detect = lambda head_output, backbone_output: decoded
    evaluator = task.evaluator()
    evaluator.update(None, None, batch, None)
    same = [dataclasses.replace(p, center=f["boxes"][:, :3].double().numpy(), size=f["boxes"][:, 3:6].double().numpy(),
                                yaw=f["boxes"][:, 6].double().numpy(), velocity=None, attributes=None)
            for p, f in zip(predictions, decoded)]
    expected = evaluate_frames(frames, same, task.evaluation).to_dict()
    assert evaluator.result() == expected and expected["mAP"] > 0.05
