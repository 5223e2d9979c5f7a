"""nuScenes-style 3D detection metrics: AP at BEV centre distances, the five TP errors, mAP and NDS.

The numbers equal nuscenes-devkit's ``DetectionEval`` (``accumulate``, ``calc_ap``,
``calc_tp`` and ``DetectionMetrics``) on the same boxes, including its tie-breaking,
its interpolation at 101 recall points and its handling of NaN errors. It is written
here rather than the devkit called because the harness needs both the devkit's numbers
and at least 5x its speed (benchmarks/detection_eval.py), and the devkit loops over
boxes in Python and reads a dataset on disk to filter them. Its per-box loops become
numpy arrays: candidate pairs from a distance matrix per frame and class, and the greedy
match stepping over the confidence rank within each frame and class, for all frames,
classes and thresholds at once. Parity is tested against the devkit.

Boxes are filtered as ``filter_eval_boxes`` does: by BEV distance to the ego (per-class
ranges from the settings), ground truth with zero LiDAR/radar points is dropped, and
bicycles and motorcycles whose centre lies in a bicycle rack are dropped where the racks
are given. ``evaluate_frames`` takes all of that from the frames themselves: the boxes'
source detection classes (nuScenes: the devkit's 10, not the unified training classes),
attributes and point counts, each frame's ego origin and racks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from occbench.data.frame import BoxAnnotations, Frame, bicycle_racks, box_annotations, ego_origin
from occbench.metrics.stats import nan_to_none

TP_METRICS = ("trans_err", "scale_err", "orient_err", "vel_err", "attr_err")

# nuScenes' official ranges in metres (the devkit's detection_cvpr_2019 configuration).
NUSCENES_CLASS_RANGE = {
    "car": 50.0, "truck": 50.0, "bus": 50.0, "trailer": 50.0, "construction_vehicle": 50.0,
    "pedestrian": 40.0, "motorcycle": 40.0, "bicycle": 40.0, "traffic_cone": 30.0, "barrier": 30.0,
}
# Errors the devkit does not define for a class (reported as NaN, left out of the class mean).
NUSCENES_TP_EXCLUSIONS = {
    "traffic_cone": ("attr_err", "vel_err", "orient_err"),
    "barrier": ("attr_err", "vel_err"),
}
_NUM_RECALLS = 101  # the devkit's DetectionMetricData.nelem
_PAIR_BUDGET = 1 << 22  # prediction-gt pairs held at once while collecting candidates


@dataclass(frozen=True)
class DetectionSettings:
    """The evaluation protocol; the defaults are nuScenes' detection_cvpr_2019 configuration.

    ``class_range`` names the evaluated classes, in order, with their BEV range in metres.
    ``tp_exclusions``: the TP errors left undefined (NaN) per class; ``half_turn_classes``
    have a heading only up to 180 degrees (the devkit's barrier); ``bicycle_rack_classes``
    do not count inside a bicycle rack.
    """

    class_range: Mapping[str, float] = field(default_factory=lambda: dict(NUSCENES_CLASS_RANGE))
    dist_thresholds: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)
    tp_threshold: float = 2.0
    min_recall: float = 0.1
    min_precision: float = 0.1
    max_boxes_per_frame: int = 500
    mean_ap_weight: float = 5.0
    tp_exclusions: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: dict(NUSCENES_TP_EXCLUSIONS))
    half_turn_classes: tuple[str, ...] = ("barrier",)
    bicycle_rack_classes: tuple[str, ...] = ("bicycle", "motorcycle")

    def __post_init__(self) -> None:
        if not self.class_range:
            raise ValueError("class_range names no class")
        if self.tp_threshold not in self.dist_thresholds:
            raise ValueError(f"tp_threshold {self.tp_threshold} is not one of the "
                             f"dist_thresholds {list(self.dist_thresholds)}")
        if not (0 <= self.min_precision < 1 and 0 <= self.min_recall <= 1):
            raise ValueError("min_precision must lie in [0, 1) and min_recall in [0, 1]")
        for name in (*self.tp_exclusions, *self.half_turn_classes, *self.bicycle_rack_classes):
            if name not in self.class_range:
                raise ValueError(f"settings name class {name!r}, which class_range does not hold")
        for name, metrics in self.tp_exclusions.items():
            unknown = set(metrics) - set(TP_METRICS)
            if unknown:
                raise ValueError(f"tp_exclusions of {name!r} name unknown errors {sorted(unknown)}; "
                                 f"known: {list(TP_METRICS)}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return tuple(self.class_range)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "DetectionSettings":
        """Settings from params (the devkit's JSON keys); keys left out keep nuScenes' values."""
        keys = {"class_range": "class_range", "dist_ths": "dist_thresholds",
                "dist_th_tp": "tp_threshold", "min_recall": "min_recall",
                "min_precision": "min_precision", "max_boxes_per_sample": "max_boxes_per_frame",
                "mean_ap_weight": "mean_ap_weight", "tp_exclusions": "tp_exclusions",
                "half_turn_classes": "half_turn_classes", "bicycle_rack_classes": "bicycle_rack_classes"}
        unknown = set(mapping) - set(keys)
        if unknown:
            raise ValueError(f"unknown detection settings {sorted(unknown)}; known: {sorted(keys)}")
        values = {keys[key]: value for key, value in mapping.items()}
        if "class_range" in values:
            values["class_range"] = {str(k): float(v) for k, v in values["class_range"].items()}
            # Exclusions and half turns default to nuScenes' only where their classes are evaluated.
            values.setdefault("tp_exclusions", {k: v for k, v in NUSCENES_TP_EXCLUSIONS.items()
                                                if k in values["class_range"]})
            for key in ("half_turn_classes", "bicycle_rack_classes"):
                values.setdefault(key, tuple(k for k in getattr(cls, key) if k in values["class_range"]))
        for key in ("dist_thresholds", "half_turn_classes", "bicycle_rack_classes"):
            if key in values:
                values[key] = tuple(values[key])
        if "tp_exclusions" in values:
            values["tp_exclusions"] = {k: tuple(v) for k, v in values["tp_exclusions"].items()}
        return cls(**values)


@dataclass(frozen=True)
class DetectionBoxes:
    """The boxes of one frame, ground truth or predictions, as arrays of N rows.

    ``size``: extents in one fixed axis order for ground truth and predictions (the devkit's
    w, l, h or the frame's dx, dy, dz; the scale error pairs them axis by axis).
    ``labels``: class names or indices into ``DetectionSettings.class_names``.
    ``velocity`` may hold NaN (no velocity known; left out of AVE as the devkit does);
    None stands for zero, the devkit's default.
    ``attributes``: attribute names, '' for none; ground truth without one leaves the
    box out of AAE. ``scores`` are required for predictions. ``num_points`` (LiDAR plus
    radar points, ground truth only) drops boxes with 0; -1 means unknown.
    """

    center: Any
    size: Any
    yaw: Any
    labels: Any
    velocity: Any = None
    scores: Any = None
    attributes: Any = None
    num_points: Any = None


@dataclass(frozen=True)
class DetectionMetrics:
    """Per class AP at each threshold and TP errors (NaN where excluded), and the summaries."""

    label_aps: dict[str, dict[float, float]]
    label_tp_errors: dict[str, dict[str, float]]
    mean_ap_weight: float

    @property
    def mean_dist_aps(self) -> dict[str, float]:
        return {name: float(np.mean(list(aps.values()))) for name, aps in self.label_aps.items()}

    @property
    def mean_ap(self) -> float:
        return float(np.mean(list(self.mean_dist_aps.values())))

    @property
    def tp_errors(self) -> dict[str, float]:
        """Mean over classes of each error, NaN-aware; NaN where no class defines it."""
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return {metric: float(np.nanmean([errors[metric] for errors in self.label_tp_errors.values()]))
                    for metric in TP_METRICS}

    @property
    def tp_scores(self) -> dict[str, float]:
        """1 - error, bounded below by 0; an undefined error scores 0 as in the devkit."""
        return {metric: 0.0 if math.isnan(error) else max(0.0, 1.0 - error)
                for metric, error in self.tp_errors.items()}

    @property
    def nd_score(self) -> float:
        total = self.mean_ap_weight * self.mean_ap + sum(self.tp_scores.values())
        return float(total / (self.mean_ap_weight + len(TP_METRICS)))

    def to_dict(self) -> dict[str, Any]:
        """Numbers only, for metrics.json; undefined values are null."""
        return {
            "mAP": self.mean_ap, "NDS": self.nd_score,
            "tp_errors": {k: nan_to_none(v) for k, v in self.tp_errors.items()},
            "class_ap": self.mean_dist_aps,
            "class_ap_at": {name: {str(th): ap for th, ap in aps.items()}
                            for name, aps in self.label_aps.items()},
            "class_tp_errors": {name: {k: nan_to_none(v) for k, v in errors.items()}
                                for name, errors in self.label_tp_errors.items()},
        }


@dataclass
class _Flat:
    """All frames' boxes concatenated in frame order, as the devkit's ``EvalBoxes.all``."""

    frame: np.ndarray
    label: np.ndarray
    center: np.ndarray
    size: np.ndarray
    yaw: np.ndarray
    velocity: np.ndarray
    attribute: np.ndarray
    score: np.ndarray
    num_points: np.ndarray

    def select(self, keep: np.ndarray) -> "_Flat":
        return _Flat(**{name: value[keep] for name, value in vars(self).items()})


def evaluate_detection(ground_truth: Sequence[DetectionBoxes], predictions: Sequence[DetectionBoxes],
                       settings: DetectionSettings | None = None,
                       ego_xy: Any = None, bicycle_racks: Sequence[Any] | None = None) -> DetectionMetrics:
    """Detection metrics over frames paired by position.

    ``ego_xy`` (F, 2): the ego position in each frame's box coordinates, from which the
    class ranges are measured; the origin where not given. ``bicycle_racks``: per frame
    the rack boxes (K, 7) as x, y, z, dx, dy, dz, yaw (dx along the heading, as
    ``Frame.boxes``); boxes of the settings' bicycle_rack_classes inside one do not count.
    """
    settings = settings or DetectionSettings()
    if not ground_truth:
        raise ValueError("no frames to evaluate")
    if len(ground_truth) != len(predictions):
        raise ValueError(f"{len(ground_truth)} ground-truth frames but {len(predictions)} prediction frames")
    ego = np.zeros((len(ground_truth), 2)) if ego_xy is None else np.asarray(ego_xy, np.float64)
    if ego.shape != (len(ground_truth), 2):
        raise ValueError(f"ego_xy has shape {ego.shape}, expected ({len(ground_truth)}, 2)")
    for index, frame in enumerate(predictions):
        if len(frame.center) > settings.max_boxes_per_frame:
            raise ValueError(f"prediction frame {index} holds {len(frame.center)} boxes, more than "
                             f"max_boxes_per_frame={settings.max_boxes_per_frame}")
    racks = _racks(bicycle_racks, len(ground_truth))
    rack_classes = [settings.class_names.index(name) for name in settings.bicycle_rack_classes]
    gt = _in_range(_flatten(ground_truth, settings, "ground truth"), ego, settings)
    gt = _outside_racks(gt.select(gt.num_points != 0), racks, rack_classes)
    pred = _outside_racks(_in_range(_flatten(predictions, settings, "predictions"), ego, settings),
                          racks, rack_classes)

    num_classes = len(settings.class_names)
    order = _confidence_order(pred)
    matches = _match(gt, pred, order, num_classes, np.asarray(settings.dist_thresholds, np.float64))
    tp_index = settings.dist_thresholds.index(settings.tp_threshold)

    label_aps: dict[str, dict[float, float]] = {}
    label_tp_errors: dict[str, dict[str, float]] = {}
    for class_id, name in enumerate(settings.class_names):
        num_gt = int(np.count_nonzero(gt.label == class_id))
        ranked = order[pred.label[order] == class_id]
        curves = [_curves(matches[t, ranked], pred.score[ranked], num_gt)
                  for t in range(len(settings.dist_thresholds))]
        label_aps[name] = {threshold: _average_precision(curve, settings)
                           for threshold, curve in zip(settings.dist_thresholds, curves)}
        errors = _tp_errors(gt, pred, ranked, matches[tp_index, ranked], curves[tp_index],
                            name in settings.half_turn_classes, settings)
        excluded = settings.tp_exclusions.get(name, ())
        label_tp_errors[name] = {metric: math.nan if metric in excluded else errors[metric]
                                 for metric in TP_METRICS}
    return DetectionMetrics(label_aps, label_tp_errors, float(settings.mean_ap_weight))


def annotated_ground_truth(boxes: np.ndarray, annotations: BoxAnnotations, velocity: np.ndarray | None,
                           class_names: Sequence[str]) -> DetectionBoxes:
    """Boxes (M, 7) of the evaluated ``class_names``, as the devkit evaluates them: by their source
    detection class, with attribute, LiDAR plus radar points and velocity (NaN where unknown)."""
    keep = np.isin(annotations.names, class_names)
    boxes = np.asarray(boxes, np.float64)[keep]
    return DetectionBoxes(center=boxes[:, :3], size=boxes[:, 3:6], yaw=boxes[:, 6], labels=annotations.names[keep],
                          velocity=None if velocity is None else np.asarray(velocity, np.float64)[keep],
                          attributes=annotations.attributes[keep], num_points=annotations.num_points[keep])


def frame_ground_truth(frame: Frame, settings: DetectionSettings) -> DetectionBoxes:
    """The frame's boxes of the evaluated classes (``annotated_ground_truth``)."""
    return annotated_ground_truth(frame.boxes, box_annotations(frame), frame.extras.get("box_velocity"),
                                  settings.class_names)


def evaluate_frames(frames: Sequence[Frame], predictions: Sequence[DetectionBoxes],
                    settings: DetectionSettings | None = None) -> DetectionMetrics:
    """Predictions, in each frame's coordinates, against the frames' own ground truth: ranges
    measured from each frame's ego origin, cycles in its bicycle racks left out.

    The devkit evaluates in global coordinates; the BEV distances agree where the LiDAR frame
    is level (a yaw-only pose, as the test tables'). A pose tilted by t moves a distance d with a
    height difference h by up to d (1 - cos t) + h sin t, about 2 cm at 1 degree: on real poses
    the official numbers come from ``results_json`` and the devkit.
    """
    settings = settings or DetectionSettings()
    return evaluate_detection([frame_ground_truth(frame, settings) for frame in frames], predictions, settings,
                              ego_xy=np.array([ego_origin(frame)[:2] for frame in frames]).reshape(-1, 2),
                              bicycle_racks=[bicycle_racks(frame) for frame in frames])


def _flatten(frames: Sequence[DetectionBoxes], settings: DetectionSettings, what: str) -> _Flat:
    """Concatenate and check the frames' arrays; errors name the frame and the field."""
    class_ids = {name: i for i, name in enumerate(settings.class_names)}
    parts: dict[str, list[np.ndarray]] = {name: [] for name in _Flat.__dataclass_fields__}
    for index, frame in enumerate(frames):
        where = f"{what} frame {index}"
        center = _array(frame.center, (-1, 3), np.float64, f"{where}: center")
        count = len(center)
        parts["center"].append(center)
        parts["size"].append(_array(frame.size, (count, 3), np.float64, f"{where}: size"))
        parts["yaw"].append(_array(frame.yaw, (count,), np.float64, f"{where}: yaw"))
        velocity = (np.zeros((count, 2)) if frame.velocity is None
                    else _array(frame.velocity, (count, 2), np.float64, f"{where}: velocity"))
        parts["velocity"].append(velocity)
        parts["label"].append(_class_ids(frame.labels, count, class_ids, f"{where}: labels"))
        attributes = (np.full(count, "") if frame.attributes is None
                      else _array(frame.attributes, (count,), str, f"{where}: attributes"))
        parts["attribute"].append(attributes)
        if what == "predictions" and frame.scores is None:
            raise ValueError(f"{where}: predictions need scores")
        scores = (np.full(count, -1.0) if frame.scores is None
                  else _array(frame.scores, (count,), np.float64, f"{where}: scores"))
        if np.isnan(scores).any():
            raise ValueError(f"{where}: scores hold NaN")
        parts["score"].append(scores)
        parts["num_points"].append(np.full(count, -1, np.int64) if frame.num_points is None
                                   else _array(frame.num_points, (count,), np.int64, f"{where}: num_points"))
        parts["frame"].append(np.full(count, index, np.int64))
        for name in ("center", "size", "yaw"):
            if not np.isfinite(parts[name][-1]).all():
                raise ValueError(f"{where}: {name} holds NaN or inf")
        if count and (parts["size"][-1] <= 0).any():
            raise ValueError(f"{where}: sizes must be > 0")
    return _Flat(**{name: np.concatenate(arrays) for name, arrays in parts.items()})


def _array(values: Any, shape: tuple[int, ...], dtype: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=dtype)
    if array.size == 0 and shape[0] in (0, -1):
        return array.reshape((0, *shape[1:]))
    if array.ndim != len(shape) or any(want not in (-1, got) for want, got in zip(shape, array.shape)):
        expected = ", ".join("N" if n == -1 else str(n) for n in shape)
        raise ValueError(f"{what} has shape {array.shape}, expected ({expected})")
    return array


def _class_ids(labels: Any, count: int, class_ids: Mapping[str, int], what: str) -> np.ndarray:
    """Class indices from names or indices, with an error naming what is unknown."""
    labels = np.asarray(labels)
    if labels.shape != (count,):
        raise ValueError(f"{what} has shape {labels.shape}, expected ({count},)")
    if labels.dtype.kind in "USO":
        unknown = sorted(set(labels.tolist()) - set(class_ids))
        if unknown:
            raise ValueError(f"{what}: unknown classes {unknown}; evaluated: {list(class_ids)}")
        names, inverse = np.unique(labels.astype(str), return_inverse=True)
        return np.array([class_ids[name] for name in names], np.int64)[inverse.reshape(-1)]
    if count and labels.dtype.kind not in "iu":
        raise ValueError(f"{what} must be class names or integer class indices, not {labels.dtype}")
    ids = labels.astype(np.int64)
    if count and (ids.min() < 0 or ids.max() >= len(class_ids)):
        raise ValueError(f"{what} hold class indices outside [0, {len(class_ids)})")
    return ids


def _in_range(boxes: _Flat, ego: np.ndarray, settings: DetectionSettings) -> _Flat:
    """Boxes closer to the ego (BEV) than their class's range, as ``filter_eval_boxes``."""
    ranges = np.array([settings.class_range[name] for name in settings.class_names], np.float64)
    offset = boxes.center[:, :2] - ego[boxes.frame]
    return boxes.select(np.sqrt(np.sum(offset**2, axis=1)) < ranges[boxes.label])


def _racks(racks: Sequence[Any] | None, num_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """The frame index of each rack and the racks (K, 7), all frames concatenated."""
    if racks is None:
        return np.zeros(0, np.int64), np.zeros((0, 7))
    if len(racks) != num_frames:
        raise ValueError(f"bicycle_racks holds {len(racks)} frames, the boxes {num_frames}")
    boxes = [_array(frame, (-1, 7), np.float64, f"bicycle_racks of frame {i}") for i, frame in enumerate(racks)]
    return np.repeat(np.arange(num_frames), [len(b) for b in boxes]), np.concatenate(boxes)


def _outside_racks(boxes: _Flat, racks: tuple[np.ndarray, np.ndarray], rack_classes: list[int]) -> _Flat:
    """Boxes of rack_classes whose centre lies in a rack of their frame removed (bounds included)."""
    rack_frame, rack = racks
    candidates = np.flatnonzero(np.isin(boxes.label, rack_classes))
    box_index, rack_index = _group_pairs(boxes.frame[candidates], rack_frame)
    offset = boxes.center[candidates[box_index]] - rack[rack_index, :3]
    cos, sin = np.cos(rack[rack_index, 6]), np.sin(rack[rack_index, 6])
    local = np.stack([cos * offset[:, 0] + sin * offset[:, 1], -sin * offset[:, 0] + cos * offset[:, 1],
                      offset[:, 2]], axis=1)
    inside = np.all(np.abs(local) <= rack[rack_index, 3:6] / 2, axis=1)
    keep = np.ones(len(boxes.label), bool)
    keep[candidates[box_index[inside]]] = False
    return boxes.select(keep)


def _confidence_order(pred: _Flat) -> np.ndarray:
    """Predictions by class, then by falling score; ties by falling position, as the devkit's sort."""
    return np.lexsort((np.arange(len(pred.score)), pred.score, pred.label))[::-1]


def _bev_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt((a[:, 0] - b[:, 0]) ** 2 + (a[:, 1] - b[:, 1]) ** 2)


def _match(gt: _Flat, pred: _Flat, order: np.ndarray, num_classes: int,
           thresholds: np.ndarray) -> np.ndarray:
    """Matched ground-truth index per threshold and prediction (-1: a false positive).

    The devkit's greedy match: by falling confidence, each prediction takes the nearest
    untaken ground truth of its frame and class if nearer than the threshold. Only pairs
    nearer than the largest threshold can match, so those candidates are collected from
    each frame-and-class distance matrix; predictions of different frames or classes never
    compete, so the greedy steps run over the rank within a frame and class, vectorised
    over all frames, classes and thresholds.
    """
    matches = np.full((len(thresholds), len(pred.score)), -1, np.int64)
    if len(gt.score) == 0 or len(pred.score) == 0:
        return matches
    pred_group = pred.frame * num_classes + pred.label
    cand_pred, cand_gt, cand_dist = _candidates(gt.frame * num_classes + gt.label, pred_group,
                                                gt.center, pred.center, thresholds.max())
    if len(cand_pred) == 0:
        return matches
    # One padded row of candidates per prediction that has any, in ground-truth order.
    rows, row_of = np.unique(cand_pred, return_inverse=True)
    first = np.searchsorted(row_of, np.arange(len(rows)))
    column = np.arange(len(row_of)) - first[row_of]
    width = int(column.max()) + 1
    row_gt = np.full((len(rows), width), len(gt.score), np.int64)  # padding: a never-taken column
    row_dist = np.full((len(rows), width), np.inf)
    row_gt[row_of, column] = cand_gt
    row_dist[row_of, column] = cand_dist

    # Rank of each candidate row among its frame and class by the devkit's confidence order.
    position = np.empty(len(order), np.int64)
    position[order] = np.arange(len(order))
    by_group = np.lexsort((position[rows], pred_group[rows]))
    groups_sorted = pred_group[rows][by_group]
    group_first = np.searchsorted(groups_sorted, groups_sorted, side="left")
    rank = np.empty(len(rows), np.int64)
    rank[by_group] = np.arange(len(rows)) - group_first
    steps = np.argsort(rank, kind="stable")
    bounds = np.searchsorted(rank[steps], np.arange(int(rank.max()) + 2))

    taken = np.zeros((len(thresholds), len(gt.score) + 1), bool)
    levels = np.arange(len(thresholds))[:, None]
    for step in range(len(bounds) - 1):
        active = steps[bounds[step]:bounds[step + 1]]
        gts = row_gt[active]
        dist = np.where(taken[:, gts] | (row_dist[active][None] >= thresholds[:, None, None]),
                        np.inf, row_dist[active][None])
        nearest = np.argmin(dist, axis=2)
        matched = np.isfinite(np.take_along_axis(dist, nearest[..., None], axis=2)[..., 0])
        chosen = gts[np.arange(len(active))[None], nearest]
        taken[np.broadcast_to(levels, chosen.shape)[matched], chosen[matched]] = True
        matches[:, rows[active]] = np.where(matched, chosen, -1)
    return matches


def _candidates(gt_group: np.ndarray, pred_group: np.ndarray, gt_center: np.ndarray,
                pred_center: np.ndarray, max_threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(prediction, ground truth, distance) of the same frame and class nearer than max_threshold.

    The entries of each frame-and-class distance matrix, in chunks of bounded size.
    """
    sorted_groups = np.sort(gt_group)
    count = (np.searchsorted(sorted_groups, pred_group, side="right")
             - np.searchsorted(sorted_groups, pred_group, side="left"))
    ends = np.cumsum(count)
    found = []
    low = 0
    while low < len(count):
        high = max(int(np.searchsorted(ends, ends[low] - count[low] + _PAIR_BUDGET, side="right")), low + 1)
        pair_pred, pair_gt = _group_pairs(pred_group[low:high], gt_group)
        pair_pred += low
        dist = _bev_distance(pred_center[pair_pred], gt_center[pair_gt])
        near = dist < max_threshold
        found.append((pair_pred[near], pair_gt[near], dist[near]))
        low = high
    return tuple(np.concatenate(parts) for parts in zip(*found))


def _group_pairs(query_group: np.ndarray, key_group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every (query, key) index pair of equal group; per query, keys in their original order."""
    key_order = np.argsort(key_group, kind="stable")
    sorted_keys = key_group[key_order]
    start = np.searchsorted(sorted_keys, query_group, side="left")
    count = np.searchsorted(sorted_keys, query_group, side="right") - start
    pair_query = np.repeat(np.arange(len(query_group)), count)
    offsets = np.arange(len(pair_query)) - np.repeat(np.cumsum(count) - count, count)
    return pair_query, key_order[start[pair_query] + offsets]


@dataclass
class _Curves:
    """A class's precision and confidence at the 101 recall points, or None without matches."""

    precision: np.ndarray
    confidence: np.ndarray


def _curves(matched_gt: np.ndarray, scores: np.ndarray, num_gt: int) -> _Curves | None:
    """The devkit's interpolation of precision and confidence over recall."""
    is_tp = matched_gt >= 0
    if num_gt == 0 or not is_tp.any():
        return None
    tp = np.cumsum(is_tp).astype(float)
    fp = np.cumsum(~is_tp).astype(float)
    recall_points = np.linspace(0, 1, _NUM_RECALLS)
    recall = tp / float(num_gt)
    precision = np.interp(recall_points, recall, tp / (fp + tp), right=0)
    confidence = np.interp(recall_points, recall, scores, right=0)
    return _Curves(precision, confidence)


def _average_precision(curves: _Curves | None, settings: DetectionSettings) -> float:
    if curves is None:
        return 0.0
    precision = curves.precision[round(100 * settings.min_recall) + 1:] - settings.min_precision
    precision[precision < 0] = 0
    return float(np.mean(precision)) / (1.0 - settings.min_precision)


def _tp_errors(gt: _Flat, pred: _Flat, ranked: np.ndarray, matched_gt: np.ndarray,
               curves: _Curves | None, half_turn: bool, settings: DetectionSettings) -> dict[str, float]:
    """The five errors at the TP threshold, averaged over recalls above min_recall as ``calc_tp``."""
    if curves is None:
        return dict.fromkeys(TP_METRICS, 1.0)
    is_tp = matched_gt >= 0
    p, g = ranked[is_tp], matched_gt[is_tp]
    intersection = np.prod(np.minimum(pred.size[p], gt.size[g]), axis=1)
    union = np.prod(pred.size[p], axis=1) + np.prod(gt.size[g], axis=1) - intersection
    period = np.pi if half_turn else 2 * np.pi
    yaw = (gt.yaw[g] - pred.yaw[p] + period / 2) % period - period / 2
    yaw = np.where(yaw > np.pi, yaw - 2 * np.pi, yaw)
    has_attribute = gt.attribute[g] != ""
    errors = {
        "trans_err": _bev_distance(pred.center[p], gt.center[g]),
        "scale_err": 1 - intersection / union,
        "orient_err": np.abs(yaw),
        "vel_err": _bev_distance(pred.velocity[p], gt.velocity[g]),
        "attr_err": np.where(has_attribute, 1.0 - (gt.attribute[g] == pred.attribute[p]), np.nan),
    }
    match_conf = pred.score[p]
    first = round(100 * settings.min_recall) + 1
    nonzero = np.nonzero(curves.confidence)[0]
    last = nonzero[-1] if len(nonzero) else 0
    result = {}
    for metric, values in errors.items():
        if last < first:
            result[metric] = 1.0
            continue
        resampled = np.interp(curves.confidence[::-1], match_conf[::-1], _cummean(values)[::-1])[::-1]
        result[metric] = float(np.mean(resampled[first:last + 1]))
    return result


def _cummean(values: np.ndarray) -> np.ndarray:
    """Running mean ignoring NaN; all ones where every value is NaN (the devkit's cummean)."""
    valid = ~np.isnan(values)
    if not valid.any():
        return np.ones(len(values))
    sums = np.nancumsum(values)
    counts = np.cumsum(valid)
    return np.divide(sums, counts, out=np.zeros_like(sums), where=counts != 0)
