"""The same boxes through nuscenes-devkit's DetectionEval, for parity tests and benchmarks.

Builds the devkit's in-memory EvalBoxes from ``DetectionBoxes`` (no dataset on disk),
filters them with the devkit's own ``filter_eval_boxes`` and runs
``DetectionEval.evaluate``. The database the filter reads holds only the bicycle racks
given (x, y, z, dx, dy, dz, yaw per rack, as ``Frame.boxes``). ``results_json`` writes
predictions on converted nuScenes frames in the devkit's submission format instead, for
its whole official path on a real dataroot. Needs the ``nuscenes`` package
(nuscenes-devkit).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, Sequence

import numpy as np

from occbench.data.frame import Frame
from occbench.metrics.detection import DetectionBoxes


def to_eval_boxes(frames: Sequence[DetectionBoxes], ego_xy: np.ndarray, is_prediction: bool) -> Any:
    """The devkit's EvalBoxes, one sample per frame, the ego offset set as add_center_dist does."""
    from nuscenes.eval.common.data_classes import EvalBoxes
    from nuscenes.eval.detection.data_classes import DetectionBox
    from pyquaternion import Quaternion

    eval_boxes = EvalBoxes()
    for index, frame in enumerate(frames):
        boxes = []
        for i in range(len(frame.yaw)):
            center = tuple(float(v) for v in frame.center[i])
            boxes.append(DetectionBox(
                sample_token=f"frame{index}", translation=center, size=tuple(map(float, frame.size[i])),
                rotation=tuple(Quaternion(axis=[0, 0, 1], angle=float(frame.yaw[i])).elements),
                velocity=(0.0, 0.0) if frame.velocity is None else tuple(map(float, frame.velocity[i])),
                ego_translation=(center[0] - ego_xy[index, 0], center[1] - ego_xy[index, 1], center[2]),
                num_pts=-1 if frame.num_points is None else int(frame.num_points[i]),
                detection_name=str(frame.labels[i]),
                detection_score=float(frame.scores[i]) if is_prediction else -1.0,
                attribute_name="" if frame.attributes is None else str(frame.attributes[i])))
        eval_boxes.add_boxes(f"frame{index}", boxes)
    return eval_boxes


def _rack_database(bicycle_racks: Sequence[Any] | None, num_frames: int) -> SimpleNamespace:
    """What filter_eval_boxes reads of a NuScenes table: each sample's rack annotations."""
    from pyquaternion import Quaternion

    samples = {f"frame{index}": {"anns": []} for index in range(num_frames)}
    annotations = {}
    for index, racks in enumerate(bicycle_racks or []):
        for i, (x, y, z, dx, dy, dz, yaw) in enumerate(np.asarray(racks, np.float64).reshape(-1, 7)):
            token = f"rack{index}_{i}"
            samples[f"frame{index}"]["anns"].append(token)
            annotations[token] = {"category_name": "static_object.bicycle_rack", "translation": [x, y, z],
                                  "size": [dy, dx, dz],
                                  "rotation": list(Quaternion(axis=[0, 0, 1], angle=yaw).elements)}
    tables = {"sample": samples, "sample_annotation": annotations}
    return SimpleNamespace(get=lambda table, token: tables[table][token])


def filtered_eval_boxes(ground_truth: Sequence[DetectionBoxes], predictions: Sequence[DetectionBoxes],
                        ego_xy: np.ndarray, config: Any,
                        bicycle_racks: Sequence[Any] | None = None) -> tuple[Any, Any]:
    """Ground truth and predictions as EvalBoxes after the devkit's range, point and rack filter."""
    from nuscenes.eval.common.loaders import filter_eval_boxes

    database = _rack_database(bicycle_racks, len(ground_truth))
    return (filter_eval_boxes(database, to_eval_boxes(ground_truth, ego_xy, False), config.class_range),
            filter_eval_boxes(database, to_eval_boxes(predictions, ego_xy, True), config.class_range))


def devkit_evaluate(gt_boxes: Any, pred_boxes: Any, config: Any) -> Any:
    """``DetectionEval.evaluate`` (all classes and thresholds) on filtered EvalBoxes: DetectionMetrics."""
    from nuscenes.eval.detection.evaluate import DetectionEval

    evaluator = SimpleNamespace(cfg=config, verbose=False, gt_boxes=gt_boxes, pred_boxes=pred_boxes)
    return DetectionEval.evaluate(evaluator)[0]


def devkit_metrics(ground_truth: Sequence[DetectionBoxes], predictions: Sequence[DetectionBoxes],
                   ego_xy: np.ndarray | None = None, bicycle_racks: Sequence[Any] | None = None) -> Any:
    """The devkit's DetectionMetrics under nuScenes' detection_cvpr_2019 configuration."""
    from nuscenes.eval.common.config import config_factory

    config = config_factory("detection_cvpr_2019")
    ego = np.zeros((len(ground_truth), 2)) if ego_xy is None else np.asarray(ego_xy, np.float64)
    return devkit_evaluate(*filtered_eval_boxes(ground_truth, predictions, ego, config, bicycle_racks), config)


def results_json(frames: Sequence[Frame], predictions: Sequence[DetectionBoxes]) -> dict:
    """Predictions in each frame's coordinates as a nuScenes results file: global coordinates
    through the frame's pose, w, l, h sizes, one entry per frame's sample_token, in frame order."""
    from pyquaternion import Quaternion

    results = {}
    for frame, boxes in zip(frames, predictions, strict=True):
        token = frame.meta["sample_token"]
        rotation, translation = frame.pose[:3, :3], frame.pose[:3, 3]
        entries = []
        for i in range(len(boxes.yaw)):
            cos, sin = np.cos(boxes.yaw[i]), np.sin(boxes.yaw[i])
            heading = rotation @ np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
            velocity = np.zeros(2) if boxes.velocity is None else np.asarray(boxes.velocity[i], np.float64)
            dx, dy, dz = map(float, boxes.size[i])
            entries.append({
                "sample_token": token, "translation": (rotation @ boxes.center[i] + translation).tolist(),
                "size": [dy, dx, dz], "rotation": list(Quaternion(matrix=heading).elements),
                "velocity": (rotation @ np.append(velocity, 0.0))[:2].tolist(), "detection_name": str(boxes.labels[i]),
                "detection_score": float(boxes.scores[i]),
                "attribute_name": "" if boxes.attributes is None else str(boxes.attributes[i])})
        results[token] = entries
    meta = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False, "use_external": False}
    return {"meta": meta, "results": results}
