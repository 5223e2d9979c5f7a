import json
import math

import numpy as np
import pytest
import torch

from occbench.metrics.segmentation import ConfusionMatrix, segmentation_metrics

# Targets and predictions over 3 classes; 255 is ignored whatever was predicted.
TARGET = [0, 0, 0, 1, 1, 2, 2, 2, 255, 255]
PRED = [0, 0, 1, 1, 2, 2, 2, 0, 1, 2]
# Rows = target, columns = prediction, counted by hand from the pairs above.
EXPECTED_MATRIX = [
    [2, 1, 0],
    [0, 1, 1],
    [1, 0, 2],
]
# IoU = tp / (row + column - tp): 2/(3+3-2), 1/(2+2-1), 2/(3+3-2).
EXPECTED_IOU = [2 / 4, 1 / 3, 2 / 4]


def test_hand_computed_case():
    cm = ConfusionMatrix(3)
    cm.update(np.array(PRED), np.array(TARGET))
    assert cm.matrix.dtype == np.int64
    np.testing.assert_array_equal(cm.matrix, EXPECTED_MATRIX)
    np.testing.assert_allclose(cm.iou(), EXPECTED_IOU)
    assert cm.miou() == pytest.approx((0.5 + 1 / 3 + 0.5) / 3)
    assert cm.accuracy() == pytest.approx(5 / 8)


def test_torch_and_numpy_inputs_accumulate_alike():
    from_torch, from_numpy = ConfusionMatrix(3), ConfusionMatrix(3)
    for _ in range(2):
        from_torch.update(torch.tensor(PRED), torch.tensor(TARGET))
        from_numpy.update(np.array(PRED, dtype=np.uint8), np.array(TARGET, dtype=np.uint8))
    np.testing.assert_array_equal(from_torch.matrix, 2 * np.array(EXPECTED_MATRIX))
    np.testing.assert_array_equal(from_numpy.matrix, from_torch.matrix)


def test_ignored_targets_do_not_count_even_with_out_of_range_predictions():
    cm = ConfusionMatrix(2, ignore_index=255)
    cm.update(np.array([1, 7]), np.array([1, 255]))
    np.testing.assert_array_equal(cm.matrix, [[0, 0], [0, 1]])


def test_out_of_range_ids_are_rejected():
    with pytest.raises(ValueError, match="pred"):
        ConfusionMatrix(2).update(np.array([2]), np.array([0]))
    with pytest.raises(ValueError, match="entries"):
        ConfusionMatrix(2).update(np.array([0, 1]), np.array([0]))


def test_absent_class_is_nan_and_excluded_from_miou():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))  # class 2 never occurs
    iou = cm.iou()
    np.testing.assert_allclose(iou[:2], [1 / 2, 1 / 2])
    assert math.isnan(iou[2])
    assert cm.miou() == pytest.approx(0.5)


def test_segmentation_metrics_is_json_with_null_for_nan():
    cm = ConfusionMatrix(3)
    cm.update(np.array([0, 1, 1]), np.array([0, 1, 0]))
    metrics = segmentation_metrics(cm, ["road", "car", "pole"])
    assert metrics == {
        "miou": pytest.approx(0.5),
        "accuracy": pytest.approx(2 / 3),
        "iou": {"road": 0.5, "car": 0.5, "pole": None},
    }
    assert "NaN" not in json.dumps(metrics, allow_nan=False)


def test_empty_matrix_gives_null_metrics():
    metrics = segmentation_metrics(ConfusionMatrix(2), ["road", "car"])
    assert metrics == {"miou": None, "accuracy": None, "iou": {"road": None, "car": None}}
    with pytest.raises(ValueError, match="class names"):
        segmentation_metrics(ConfusionMatrix(2), ["road"])


def test_bootstrap_over_two_frames_spans_their_own_mious():
    """Resampling 2 frames gives {A, A}, {A, B}, {B, B}; doubling a frame's counts keeps its IoUs, and each
    pure resample has probability 1/4 > 2.5 %, so the 95 % interval runs from one frame's mIoU to the other's."""
    from occbench.metrics.segmentation import bootstrap_miou_interval

    perfect = np.diag([5, 5])  # mIoU 1
    half = np.array([[5, 5], [0, 5]])  # IoU 5/10 and 5/10: mIoU 0.5
    low, high = bootstrap_miou_interval(np.stack([perfect, half]))
    assert (low, high) == (0.5, 1.0)
    same = bootstrap_miou_interval(np.stack([half, half, half]))
    assert same == (0.5, 0.5)


def test_bootstrap_over_one_frame_is_no_interval():
    """A validation set of one frame (a tiny dataset) has no sampling interval: NaN, not scipy's error after a
    whole fine-tuning run."""
    from occbench.metrics.segmentation import bootstrap_miou_interval

    low, high = bootstrap_miou_interval(np.diag([5, 5])[None])
    assert np.isnan(low) and np.isnan(high)
