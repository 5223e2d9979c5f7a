"""The detection task: targets and decoding by hand, the rotated IoU and NMS, the metric's ends, learning, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from occbench.config import load_params
from occbench.data.batch import Batch
from occbench.data.frame import BoxAnnotations
from occbench.data.taxonomy import CLASS_ID, CLASSES
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.occupancy_head import BevLayout
from occbench.models.voxelize import VoxelGrid
from occbench.tasks.base import FinetuneModel
from occbench.tasks.detection import (REGRESSION, DetectionTask, focal_loss, gaussian_radius, rotated_iou,
                                      rotated_nms)
from overfitting import overfit
from smoke import ROOT, finetune, read_run

SETTINGS = load_params(ROOT / "params.yaml")["finetune"]["detection"]
# 16 m x 8 m, 0.25 m voxels: 16 x 8 BEV cells of 1 m at stride 4.
TINY_GRID = VoxelGrid((0.0, 0.0, -1.0, 16.0, 8.0, 1.0), (0.25, 0.25, 0.25))
LAYOUT = BevLayout((0.0, 0.0), (1.0, 1.0), (16, 8), "a 16 x 8 map of 1 m cells")
# One box of each class (x, y, z, dx, dy, dz, yaw), padded by a zero row, as Batch.boxes holds them.
BOXES = torch.tensor([[3.3, 2.6, 0.2, 4.0, 1.8, 1.5, 0.3],
                      [12.7, 5.2, 0.5, 6.5, 2.5, 3.0, -2.9],
                      [7.5, 6.5, 0.1, 0.6, 0.7, 1.7, 1.2],
                      [9.1, 1.4, -0.1, 1.7, 0.6, 1.6, -0.7],
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
LABELS = torch.tensor([CLASS_ID[name] for name in ("car", "truck", "pedestrian", "cyclist")] + [-1])


def _task(**settings) -> DetectionTask:
    torch.manual_seed(0)
    return DetectionTask(SparseBackbone(TINY_GRID, (4, 4, 4), 4), {**SETTINGS, **settings})


def _annotations(labels: torch.Tensor) -> BoxAnnotations:
    """What a synthetic frame's boxes read as: their unified class names, a point each, no attribute."""
    names = np.array([CLASSES[label] for label in labels.tolist() if label >= 0])
    return BoxAnnotations(names, np.full(len(names), ""), np.ones(len(names), np.int32), np.zeros(len(names), np.int32))


def _batch(boxes=BOXES, labels=LABELS, points=None) -> Batch:
    points = torch.zeros(1, 3) if points is None else points
    return Batch(["a"], [points], [torch.zeros(len(points))], [torch.zeros(len(points), dtype=torch.long)],
                 [torch.zeros(3)], boxes=boxes[None], box_labels=labels[None], box_annotations=[_annotations(labels)],
                 ego_origins=torch.zeros(1, 3), bicycle_racks=[torch.zeros(0, 7)])


def _target_maps(task: DetectionTask, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """The heatmaps and regression maps a perfect head would predict: the targets at every centre cell."""
    objects = task.objects(batch, LAYOUT)
    heat = task.heatmap_targets(objects, (len(batch), len(task.class_names), 8, 16))
    regression = torch.zeros(len(batch), len(task.heatmaps), REGRESSION, 8, 16)
    regression[objects.sample, task.group_of[objects.label], :, objects.cell_y, objects.cell_x] = objects.regression
    return heat, regression


def test_gaussian_radius_by_hand():
    """4 x 4 cells at IoU 0.1: the third case, (-1.6 + sqrt(1.6^2 + 4 * 0.4 * 14.4)) / 2 = (-1.6 + sqrt(25.6)) / 2;
    10 x 10 at 0.7 (CornerNet's overlap): (-28 + sqrt(28^2 + 4 * 2.8 * 30)) / 2 = (-28 + sqrt(1120)) / 2."""
    assert gaussian_radius(torch.tensor(4.0), torch.tensor(4.0), 0.1).item() == pytest.approx(1.72982, abs=1e-5)
    assert gaussian_radius(torch.tensor(10.0), torch.tensor(10.0), 0.7).item() == pytest.approx(2.73320, abs=1e-5)


def test_the_heatmap_is_a_gaussian_of_the_clamped_radius():
    """A 4 m x 4 m car at cell (5, 3): radius floor(1.73) = 1, raised to min_radius 2: sigma 5/6, so the
    neighbours hold exp(-0.72) and exp(-1.44), cells 3 away 0. With min_radius 0: radius 1, sigma 1/2."""
    box = torch.tensor([[5.5, 3.5, 0.0, 4.0, 4.0, 1.5, 0.0]])
    label = torch.tensor([CLASS_ID["car"]])
    for min_radius, near, diagonal, cut in ((2, math.exp(-0.72), math.exp(-1.44), 3), (0, math.exp(-2), math.exp(-4), 2)):
        task = _task(min_radius=min_radius)
        heat = task.heatmap_targets(task.objects(_batch(box, label), LAYOUT), (1, 4, 8, 16))[0]
        assert heat[0, 3, 5] == 1 and heat[0, 3, 6].item() == pytest.approx(near, rel=1e-6)
        assert heat[0, 4, 4].item() == pytest.approx(diagonal, rel=1e-6)
        assert heat[0, 3, 5 + cut] == 0 and heat[0, 3 - cut, 5] == 0 and heat[0, 3, 5 + cut - 1] > 0
        assert (heat[1:] == 0).all()  # the other classes


def test_focal_loss_by_hand():
    """Logit 0 (p = 1/2) at a centre (target 1) and at target 1/2: (1/2)^2 ln 2 + (1/2)^4 (1/2)^2 ln 2."""
    loss = focal_loss(torch.zeros(2), torch.tensor([1.0, 0.5]))
    assert loss.item() == pytest.approx((0.25 + 1 / 64) * math.log(2), rel=1e-6)
    assert focal_loss(torch.tensor([20.0, -20.0]), torch.tensor([1.0, 0.0])).item() == pytest.approx(0, abs=1e-6)


def test_rotated_iou_by_hand():
    square = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]])
    others = torch.tensor([[0.0, 0.0, 5.0, 2.0, 2.0, 3.0, 0.0],  # the same footprint: 1
                           [1.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0],  # half of each: 2 / (4 + 4 - 2)
                           [0.0, 0.0, 0.0, 2.0, 2.0, 1.0, math.pi / 2],  # the same square turned: 1
                           [5.0, 5.0, 0.0, 2.0, 2.0, 1.0, 0.3],  # apart: 0
                           [0.0, 0.0, 0.0, 2.0, 2.0, 1.0, math.pi / 4]])  # octagon: 1 / sqrt(2)
    iou = rotated_iou(square, others)
    assert iou.shape == (1, 5)
    assert iou[0].tolist() == pytest.approx([1.0, 1 / 3, 1.0, 0.0, 1 / math.sqrt(2)], abs=1e-6)
    # A 4 x 2 rectangle and itself turned by 90 degrees meet in its 2 x 2 middle: 4 / (8 + 8 - 4).
    rectangle = torch.tensor([[1.0, 1.0, 0.0, 4.0, 2.0, 1.0, 0.2]])
    turned = rectangle.clone()
    turned[0, 6] += math.pi / 2
    assert rotated_iou(rectangle, turned).item() == pytest.approx(1 / 3, abs=1e-6)
    assert torch.allclose(rotated_iou(others, square), iou.T, atol=1e-6)


def test_rotated_nms_by_hand():
    """b overlaps a by IoU 1/3, c overlaps nothing: at IoU 0.2 a suppresses b, at 0.5 nothing is suppressed;
    a box of another label is never suppressed."""
    boxes = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0], [1.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0],
                          [6.0, 0.0, 0.0, 2.0, 2.0, 1.0, 0.0]])
    scores = torch.tensor([0.7, 0.9, 0.8])
    same = torch.zeros(3, dtype=torch.long)
    assert rotated_nms(boxes, scores, same, 0.2).tolist() == [1, 2]
    assert rotated_nms(boxes, scores, same, 0.5).tolist() == [1, 2, 0]
    assert rotated_nms(boxes, scores, torch.tensor([1, 0, 0]), 0.2).tolist() == [1, 2, 0]


def test_encoding_then_decoding_returns_the_boxes():
    task = _task()
    frame = task.decode(*_target_maps(task, _batch()), LAYOUT)[0]
    order = torch.argsort(frame["labels"])
    assert frame["labels"][order].tolist() == [0, 1, 2, 3]  # car, truck, pedestrian, cyclist
    assert frame["scores"].tolist() == [1.0] * 4
    assert torch.allclose(frame["boxes"][order], BOXES[:4], atol=1e-5)


def test_a_perfect_prediction_scores_map_1_and_none_scores_0():
    """Boxes decoded from the targets: mAP 1, every TP error 0 but AVE and AAE, which are undefined and score
    0, so NDS (5 mAP + 3) / 10 = 0.8. No box above the threshold: mAP 0, errors 1, NDS 0."""
    task = _task()
    heat, regression = _target_maps(task, _batch())
    output = BackboneOutput(None, {}, torch.zeros(1, 4, 8, 16), 4, TINY_GRID)
    perfect = torch.cat([torch.logit(heat, eps=1e-6), regression.flatten(1, 2)], 1)
    nothing = torch.cat([torch.full_like(heat, -20.0), regression.flatten(1, 2)], 1)
    for predictions, expected_map, expected_nds, error in ((perfect, 1.0, 0.8, 0.0), (nothing, 0.0, 0.0, 1.0)):
        evaluator = task.evaluator()
        evaluator.update(output, predictions, _batch(), None)
        metrics = evaluator.result()
        assert metrics["mAP"] == pytest.approx(expected_map, abs=1e-6)
        assert metrics["NDS"] == pytest.approx(expected_nds, abs=1e-5)
        assert set(metrics["class_ap"]) == {"car", "truck", "pedestrian", "cyclist"}
        for name in ("trans_err", "scale_err", "orient_err"):
            assert metrics["tp_errors"][name] == pytest.approx(error, abs=1e-5)
        assert metrics["tp_errors"]["vel_err"] is None and metrics["tp_errors"]["attr_err"] is None


def test_the_loss_of_a_head_that_outputs_the_targets():
    """Heatmap logits logit(t) (the centres at p = 1 - 1e-9) and the regression targets: no L1, and per group
    the focal loss of the shoulders, sum of (1 - t)^4 t^2 (-ln(1 - t)), over the group's boxes: car 1,
    truck 1, pedestrian + cyclist 2."""
    task = _task()
    heat, regression = _target_maps(task, _batch())
    output = BackboneOutput(None, {}, torch.zeros(1, 4, 8, 16), 4, TINY_GRID)
    predictions = torch.cat([torch.logit(heat, eps=1e-9), regression.flatten(1, 2)], 1)
    loss, logs = task.loss(predictions, output, _batch(), None, torch.Generator())
    shoulders = torch.where(heat < 1, (1 - heat) ** 4 * heat**2 * -torch.log1p(-heat), 0)[0].sum((1, 2))
    expected = shoulders[0] / 1 + shoulders[1] / 1 + (shoulders[2] + shoulders[3]) / 2
    assert logs["regression"] == pytest.approx(0, abs=1e-5)
    assert logs["heatmap"] == pytest.approx(expected.item(), rel=1e-4)
    assert loss.item() == pytest.approx(SETTINGS["heatmap_weight"] * expected.item(), rel=1e-4)


def test_a_frame_without_boxes_costs_the_background_alone():
    """All-zero head output (p = 1/2 everywhere), no box: every one of the 4 x 8 x 16 cells costs
    1^4 (1/2)^2 ln 2 and no group has a positive to divide by, so the loss is 128 ln 2, without L1."""
    task = _task()
    output = BackboneOutput(None, {}, torch.zeros(1, 4, 8, 16), 4, TINY_GRID)
    predictions = torch.zeros(1, 4 + 3 * REGRESSION, 8, 16)
    batch = _batch(BOXES[4:], LABELS[4:])
    loss, logs = task.loss(predictions, output, batch, None, torch.Generator())
    assert loss.item() == pytest.approx(128 * math.log(2), rel=1e-6) and logs["regression"] == 0
    assert task.heatmap_targets(task.objects(batch, LAYOUT), (1, 4, 8, 16)).sum() == 0


def test_class_ranges_must_name_the_groups_classes():
    with pytest.raises(ValueError, match="finetune.detection.class_ranges"):
        _task(class_ranges={"car": 50.0})
    with pytest.raises(ValueError, match="in more than one group"):
        _task(class_groups=[["car"], ["car", "truck"]], class_ranges={"car": 50.0, "truck": 50.0})


def _surface_points(boxes: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` points on the BEV outline of each box (walls at random heights), as a LiDAR would see them."""
    side = torch.rand(len(boxes), count, generator=generator)
    height = torch.rand(len(boxes), count, generator=generator) - 0.5
    edge = torch.randint(0, 4, (len(boxes), count), generator=generator)
    u = torch.where(edge < 2, side - 0.5, torch.where(edge == 2, 0.5, -0.5))
    v = torch.where(edge < 2, torch.where(edge == 0, 0.5, -0.5), side - 0.5)
    local_x, local_y = u * boxes[:, 3:4], v * boxes[:, 4:5]
    cos, sin = torch.cos(boxes[:, 6:7]), torch.sin(boxes[:, 6:7])
    x = cos * local_x - sin * local_y + boxes[:, 0:1]
    y = sin * local_x + cos * local_y + boxes[:, 1:2]
    z = boxes[:, 2:3] + height * boxes[:, 5:6]
    return torch.stack([x, y, z], -1).reshape(-1, 3)


def test_overfitting_two_tiny_frames_lowers_the_loss():
    """Two 16 m x 8 m frames of four boxes each, 300 points on their outlines, 20 AdamW steps at the default
    lr (CPU, seed 0): the loss falls to under half and the decoded boxes score on the same frames (measured:
    loss 10.7 -> 1.1, mAP 0.87; 0.99 after 30 steps)."""
    generator = torch.Generator().manual_seed(0)
    second = BOXES.clone()
    second[:4, :2] = torch.tensor([[10.0, 2.5], [4.0, 5.5], [13.5, 1.5], [1.5, 6.5]])
    frames = [_batch(boxes, LABELS, _surface_points(boxes[:4], 300, generator)) for boxes in (BOXES, second)]
    batch = Batch(["a", "b"], [f.points[0] for f in frames], [f.intensity[0] for f in frames],
                  [f.semantic[0] for f in frames], [f.origins[0] for f in frames],
                  boxes=torch.stack([BOXES, second]), box_labels=torch.stack([LABELS, LABELS]),
                  box_annotations=[_annotations(LABELS)] * 2, ego_origins=torch.zeros(2, 3),
                  bicycle_racks=[torch.zeros(0, 7)] * 2)
    torch.manual_seed(0)
    backbone = SparseBackbone(TINY_GRID, (8, 8, 8), 8)
    model = FinetuneModel(backbone, DetectionTask(backbone, {**SETTINGS, "hidden_dim": 16}))
    losses = overfit(model, batch, SETTINGS["optimizer"]["lr"], 20)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    model.eval()
    evaluator = model.task.evaluator()
    with torch.no_grad():
        evaluator.update(*model.run(batch)[:2], batch, None)
    assert evaluator.result()["mAP"] > 0.6


@pytest.mark.slow
def test_smoke_fine_tuning_from_scratch_and_from_a_pretrained_checkpoint(workdir):
    sources = ("scratch", "also-synthetic-pt_1")
    assert [finetune("detection", source, 0) for source in sources] == [0, 0]
    for source in sources:
        metrics, meta = (read_run("detection", source, 0, name) for name in ("metrics.json", "run_meta.json"))
        assert 0 <= metrics["mAP"] <= 1 and 0 <= metrics["NDS"] <= 0.8  # AVE and AAE score 0
        assert set(metrics["class_ap"]) == {"car", "truck", "pedestrian", "cyclist"}
        assert metrics["tp_errors"]["vel_err"] is None
        assert meta["main_metric"] == "mAP" and meta["run"]["task"] == "detection"
        assert {"heatmap", "regression"} <= set(meta["history"][-1])
    scratch, pretrained = (read_run("detection", source, 0, "run_meta.json") for source in sources)
    assert pretrained["pretrained"]["loaded_fraction"] == 1.0 and scratch["pretrained"] is None
    assert scratch["history"] != pretrained["history"]


def test_class_groups_that_name_none_of_the_frames_box_classes_are_an_error_naming_both():
    task = _task(class_groups=[["bus"], ["trailer"]], class_ranges={"bus": 50.0, "trailer": 50.0})
    batch = _batch()
    assert (task.labels(batch) == -1).all()  # the synthetic boxes' classes are not the task's
    task.detect = lambda head_output, backbone_output: [
        {"boxes": torch.zeros(0, 7), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}]
    evaluator = task.evaluator()
    evaluator.update(None, None, batch, None)
    with pytest.raises(ValueError, match=r"\['car', 'cyclist', 'pedestrian', 'truck'\], none of "
                                         r"finetune\.detection\.class_groups \['bus', 'trailer'\]"):
        evaluator.result()
