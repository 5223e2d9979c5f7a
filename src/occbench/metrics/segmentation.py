"""Semantic segmentation metrics accumulated over a whole evaluation split.

IoU is computed from one confusion matrix summed over all frames (not averaged
per frame), the convention of SemanticKITTI and nuScenes lidarseg.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from scipy import stats

from occbench.data.taxonomy import IGNORE_INDEX
from occbench.metrics.stats import nan_to_none


def _flat_ids(labels: Any) -> np.ndarray:
    """Class ids of a numpy array or torch tensor (any device) as a flat int64 array."""
    if hasattr(labels, "detach"):
        labels = labels.detach().cpu().numpy()
    return np.asarray(labels).astype(np.int64, copy=False).reshape(-1)


class ConfusionMatrix:
    """Counts of (target, prediction) pairs; rows are targets, columns predictions."""

    def __init__(self, num_classes: int, ignore_index: int = IGNORE_INDEX) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)

    def update(self, pred: Any, target: Any) -> None:
        """Add one batch; points whose target is ignore_index do not count."""
        pred, target = _flat_ids(pred), _flat_ids(target)
        if pred.shape != target.shape:
            raise ValueError(f"pred has {pred.size} entries but target {target.size}")
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        for name, ids in (("pred", pred), ("target", target)):
            if ids.size and (ids.min() < 0 or ids.max() >= self.num_classes):
                raise ValueError(f"{name} holds ids outside [0, {self.num_classes})")
        counts = np.bincount(target * self.num_classes + pred, minlength=self.num_classes**2)
        self.matrix += counts.reshape(self.num_classes, self.num_classes)

    def iou(self) -> np.ndarray:
        """Per-class IoU; NaN for a class neither present nor predicted (undefined, not 0)."""
        true_positive = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(axis=0) + self.matrix.sum(axis=1) - true_positive
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(union > 0, true_positive / union, np.nan)

    def miou(self) -> float:
        """Mean IoU over the classes whose IoU is defined; NaN if none is."""
        iou = self.iou()
        defined = iou[~np.isnan(iou)]
        return float(defined.mean()) if defined.size else float("nan")

    def accuracy(self) -> float:
        total = self.matrix.sum()
        return float(np.trace(self.matrix) / total) if total else float("nan")


def bootstrap_miou_interval(frame_matrices: np.ndarray, seed: int = 0,
                            resamples: int = 2000) -> tuple[float, float]:
    """95 % percentile interval of the mIoU when the held-out frames are resampled with replacement.

    ``frame_matrices``: (frames, C, C), one confusion matrix per held-out frame. The
    interval says how much of a run's score comes from which frames happen to be
    held out, the validation sampling error (scipy.stats.bootstrap over frames). One frame gives no
    interval (NaN, NaN; null in metrics.json): every resample is that frame, and scipy refuses it.
    """
    frame_matrices = np.asarray(frame_matrices)
    if len(frame_matrices) < 2:
        return float("nan"), float("nan")
    num_classes = frame_matrices.shape[1]

    def miou_of(rows: np.ndarray) -> float:
        cm = ConfusionMatrix(num_classes)
        cm.matrix = frame_matrices[rows.astype(np.int64)].sum(axis=0)
        return cm.miou()

    result = stats.bootstrap((np.arange(len(frame_matrices)),), miou_of, vectorized=False, n_resamples=resamples,
                             method="percentile", rng=np.random.default_rng(seed))
    return float(result.confidence_interval.low), float(result.confidence_interval.high)


def segmentation_metrics(cm: ConfusionMatrix, class_names: Sequence[str]) -> dict:
    """The metrics.json payload: numbers only, with every NaN written as null.

    JSON has no NaN and DVC rejects files that contain one, so an undefined IoU
    (class absent from target and prediction) or an empty matrix becomes null.
    """
    if len(class_names) != cm.num_classes:
        raise ValueError(f"{len(class_names)} class names for {cm.num_classes} classes")
    return {
        "miou": nan_to_none(cm.miou()),
        "accuracy": nan_to_none(cm.accuracy()),
        "iou": {name: nan_to_none(value) for name, value in zip(class_names, cm.iou())},
    }
