"""Seconds of occbench's detection evaluation against nuscenes-devkit's on the same boxes.

Random nuScenes-format frames (ground truth of the ten classes with the devkit's
attributes and LiDAR point counts, a tenth of them 0; predictions as noisy copies plus
false positives), evaluated by ``occbench.metrics.detection`` (end to end: arrays in,
filtering, metrics out) and by the devkit's ``DetectionEval.evaluate`` (matching and
metrics only, on EvalBoxes built and filtered beforehand, so the devkit's figure leaves
out its loading and filtering). Prints both times, the speed-up and the largest
difference between the two results. Asserts nothing about speed.

    python benchmarks/detection_eval.py [--frames 100] [--boxes 50] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from occbench.metrics.detection import NUSCENES_CLASS_RANGE, TP_METRICS, DetectionBoxes, evaluate_detection
from occbench.metrics.nuscenes_devkit import devkit_evaluate, filtered_eval_boxes

CLASSES = list(NUSCENES_CLASS_RANGE)
# The attribute names of each class's kind, by prefix; cones and barriers have none.
_ATTRIBUTE_PREFIX = {"pedestrian": "pedestrian.", "bicycle": "cycle.", "motorcycle": "cycle.",
                     "traffic_cone": None, "barrier": None}


def _attributes(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    """A random attribute of the devkit's ATTRIBUTE_NAMES that fits each box's class, '' where none does."""
    from nuscenes.eval.detection.constants import ATTRIBUTE_NAMES

    chosen = []
    for label in labels:
        prefix = _ATTRIBUTE_PREFIX.get(label, "vehicle.")
        names = [name for name in ATTRIBUTE_NAMES if prefix and name.startswith(prefix)] or [""]
        chosen.append(names[rng.integers(len(names))])
    return np.array(chosen)


def random_frames(frames: int, boxes: int, seed: int) -> tuple[list[DetectionBoxes], list[DetectionBoxes]]:
    """Per frame ``boxes`` ground-truth boxes; predictions: 80 % noisy copies and 20 % random boxes."""
    rng = np.random.default_rng(seed)
    ground_truth, predictions = [], []
    for _ in range(frames):
        center = np.c_[rng.uniform(-50, 50, (boxes, 2)), rng.normal(0, 1, boxes)]
        size, yaw = rng.uniform(0.4, 5, (boxes, 3)), rng.uniform(-np.pi, np.pi, boxes)
        labels, velocity = rng.choice(CLASSES, boxes), rng.normal(0, 3, (boxes, 2))
        attributes = _attributes(rng, labels)
        ground_truth.append(DetectionBoxes(
            center=center, size=size, yaw=yaw, labels=labels, velocity=velocity, attributes=attributes,
            num_points=np.where(rng.random(boxes) < 0.1, 0, rng.integers(1, 200, boxes))))
        copied = rng.random(boxes) < 0.8
        fake = ~copied
        pred_center = center + rng.normal(0, 0.8, (boxes, 3))
        pred_center[fake, :2] = rng.uniform(-50, 50, (fake.sum(), 2))
        predictions.append(DetectionBoxes(
            center=pred_center, size=size * rng.uniform(0.7, 1.3, (boxes, 3)),
            yaw=yaw + rng.normal(0, 0.5, boxes), labels=labels,
            velocity=velocity + rng.normal(0, 1, (boxes, 2)), scores=rng.random(boxes),
            attributes=np.where(rng.random(boxes) < 0.8, attributes, _attributes(rng, labels))))
    return ground_truth, predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--boxes", type=int, default=50, help="ground-truth and predicted boxes per frame")
    parser.add_argument("--repeats", type=int, default=5, help="runs of each; the fastest counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from nuscenes.eval.common.config import config_factory

    ground_truth, predictions = random_frames(args.frames, args.boxes, args.seed)
    ego = np.zeros((args.frames, 2))
    config = config_factory("detection_cvpr_2019")
    gt_boxes, pred_boxes = filtered_eval_boxes(ground_truth, predictions, ego, config)

    ours_seconds, devkit_seconds = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = evaluate_detection(ground_truth, predictions)
        ours_seconds.append(time.perf_counter() - start)
        start = time.perf_counter()
        theirs = devkit_evaluate(gt_boxes, pred_boxes, config)
        devkit_seconds.append(time.perf_counter() - start)

    values = [(ours.mean_ap, theirs.mean_ap), (ours.nd_score, theirs.nd_score)]
    for name in CLASSES:
        values += [(ours.label_aps[name][th], theirs.get_label_ap(name, th)) for th in config.dist_ths]
        values += [(ours.label_tp_errors[name][m], theirs.get_label_tp(name, m)) for m in TP_METRICS]
    difference = max(0.0 if np.isnan(a) and np.isnan(b) else abs(a - b) for a, b in values)
    print(f"{args.frames} frames x {args.boxes} boxes, fastest of {args.repeats}: "
          f"occbench {min(ours_seconds) * 1e3:.1f} ms, devkit {min(devkit_seconds) * 1e3:.1f} ms, "
          f"{min(devkit_seconds) / min(ours_seconds):.1f}x faster; "
          f"mAP {ours.mean_ap:.4f}, NDS {ours.nd_score:.4f}, largest difference {difference:.1e}")


if __name__ == "__main__":
    main()
