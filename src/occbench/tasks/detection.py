"""3D object detection: a CenterPoint-style head on the backbone's dense BEV map.

Head (Yin et al., CenterPoint, CVPR 2021): a shared 3x3 convolution, then per
class group (CenterPoint's "tasks") a heatmap branch with one channel per class
and a regression branch of 8 channels: the centre's offset within its BEV cell
(x, y, in cells), the centre's height z (m), the log of the extents (dx, dy, dz)
and the heading as (sin, cos). Velocity is not regressed: the frames are single
sweeps, from which it cannot be observed, so the evaluation leaves AVE (and AAE:
the boxes carry no attributes) undefined, and NDS scores both 0 as the devkit does.

Targets: per class a heatmap of gaussians at the boxes' centre cells, radius as
CenterPoint's ``gaussian_radius`` (CornerNet's three cases, with CenterPoint's
(b + sqrt) / 2 roots) of the box's extents in cells, at least ``min_radius``.
Loss per group: CenterNet's focal loss on the heatmaps (alpha 2, beta 4, over the
positives) + ``regression_weight`` * L1 of the 8 values at the boxes' centre cells
(summed over the values, averaged over the boxes), summed over the groups.

Decoding: per class the ``top_k`` peaks of a 3x3 max-pool NMS on the heatmap above
``score_threshold``, then a greedy rotated BEV NMS (IoU above ``nms_iou`` within a
class suppresses), at most the metric's 500 boxes a frame. The rotated IoU clips
the box polygons in plain torch, vectorised over the pairs (``rotated_iou``).
Classes: the groups name the classes the frames' boxes carry as their source's
detection class (``frame.box_annotations``): on the synthetic world, KITTI and
Waymo its unified classes; on nuScenes the devkit's 10 (car, truck, bus, trailer,
construction_vehicle, pedestrian, motorcycle, bicycle, traffic_cone, barrier),
which the unified taxonomy merges (bus, trailer and construction vehicle into
truck), so a nuScenes run trains and is scored on the official classes.
Evaluation: nuScenes-style mAP, TP errors and NDS (occbench.metrics.detection) of
the groups' classes within ``class_ranges`` metres of the ego origin, as the devkit
filters: ground truth without LiDAR or radar points and cycles in bicycle racks
left out; nuScenes' undefined TP errors (a cone's orientation) stay undefined.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.data.taxonomy import THING_CLASSES
from occbench.metrics.detection import (NUSCENES_CLASS_RANGE, NUSCENES_TP_EXCLUSIONS, DetectionBoxes, DetectionSettings,
                                       annotated_ground_truth, evaluate_detection)
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.occupancy_head import BevLayout
from occbench.models.voxelize import VoxelBatch
from occbench.tasks.base import Evaluator, Task, TaskContext

SETTINGS = "finetune.detection"
REGRESSION = 8  # offset x, y; z; log dx, dy, dz; sin, cos of the yaw
MAX_BOXES = DetectionSettings().max_boxes_per_frame  # nuScenes' limit per frame
# The classes a group may name: the unified things, then the rest of nuScenes' detection classes.
DETECTION_CLASSES = (*THING_CLASSES, *(name for name in NUSCENES_CLASS_RANGE if name not in THING_CLASSES))


def gaussian_radius(length: torch.Tensor, width: torch.Tensor, min_overlap: float) -> torch.Tensor:
    """CenterPoint's radius (in cells) of a box of ``length`` x ``width`` cells: the least of CornerNet's three
    corner-shift cases that keep IoU >= ``min_overlap``. Each root is taken as (b + sqrt(b^2 - 4ac)) / 2, as
    CenterPoint and CenterNet compute it, not / 2a, so that the radii are theirs."""
    cases = (
        (1.0, length + width, length * width * (1 - min_overlap) / (1 + min_overlap)),
        (4.0, 2 * (length + width), (1 - min_overlap) * length * width),
        (4 * min_overlap, -2 * min_overlap * (length + width), (min_overlap - 1) * length * width),
    )
    roots = [(b + torch.sqrt(b**2 - 4 * a * c)) / 2 for a, b, c in cases]
    return torch.minimum(torch.minimum(roots[0], roots[1]), roots[2])


def focal_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """CenterNet's focal loss, summed (the caller divides by the positives): -(1 - p)^2 log p where the
    target is 1, -(1 - t)^4 p^2 log(1 - p) elsewhere; log-sigmoids for stability."""
    p = torch.sigmoid(logits)
    positive = target == 1
    loss = torch.where(positive, (1 - p) ** 2 * F.logsigmoid(logits),
                       (1 - target) ** 4 * p**2 * F.logsigmoid(-logits))
    return -loss.sum()


def box_corners(boxes: torch.Tensor) -> torch.Tensor:
    """The BEV corners (N, 4, 2), counter-clockwise, of boxes (N, >= 7) given as x, y, z, dx, dy, dz, yaw."""
    signs = boxes.new_tensor([[1, -1], [1, 1], [-1, 1], [-1, -1]]) / 2
    local = signs[None] * boxes[:, None, 3:5]
    cos, sin = torch.cos(boxes[:, 6])[:, None], torch.sin(boxes[:, 6])[:, None]
    x = cos * local[..., 0] - sin * local[..., 1] + boxes[:, None, 0]
    y = sin * local[..., 0] + cos * local[..., 1] + boxes[:, None, 1]
    return torch.stack([x, y], dim=-1)


def _polygon_area(vertices: torch.Tensor) -> torch.Tensor:
    """Shoelace area of closed polygons (..., K, 2); repeated vertices add nothing."""
    following = vertices.roll(-1, dims=-2)
    cross = vertices[..., 0] * following[..., 1] - following[..., 0] * vertices[..., 1]
    return cross.sum(-1).abs() / 2


def rotated_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """BEV IoU (N, M) of rotated boxes a (N, >= 7) and b (M, >= 7).

    Sutherland-Hodgman clipping of each a-polygon by the four edges of each b-box, in plain
    torch so that it runs wherever the boxes are, CPU or GPU, vectorised over all pairs
    (shapely is not a dependency and loops over pairs; the usual rotated-IoU kernels are
    CUDA-only). Polygons are kept as 8 vertex slots (two convex quadrilaterals meet in at most
    8 vertices); a polygon of fewer vertices repeats its last one, which adds no area.
    """
    n, m = len(a), len(b)
    if n == 0 or m == 0:
        return a.new_zeros((n, m))
    clip = box_corners(b)[None].expand(n, m, 4, 2)
    polygon = box_corners(a)[:, None].expand(n, m, 4, 2)
    polygon = torch.cat([polygon, polygon[:, :, -1:].expand(n, m, 4, 2)], dim=2)  # (N, M, 8, 2)
    for edge in range(4):
        start, end = clip[:, :, edge, None], clip[:, :, (edge + 1) % 4, None]
        direction = end - start
        # Signed distance (times the edge length) of each vertex from the edge; >= 0 inside.
        side = direction[..., 0] * (polygon[..., 1] - start[..., 1]) - direction[..., 1] * (polygon[..., 0] - start[..., 0])
        previous, previous_side = polygon.roll(1, dims=2), side.roll(1, dims=2)
        inside, previous_inside = side >= 0, previous_side >= 0
        crossing = inside != previous_inside
        t = (previous_side / torch.where(crossing, previous_side - side, torch.ones_like(side)))[..., None]
        intersection = previous + t * (polygon - previous)
        # Each vertex yields the edge's crossing (if any), then itself (if inside), in polygon order.
        candidates = torch.stack([intersection, polygon], dim=3).flatten(2, 3)  # (N, M, 16, 2)
        keep = torch.stack([crossing, inside], dim=3).flatten(2, 3)
        order = torch.argsort((~keep).to(torch.int8), dim=2, stable=True)[..., :8]
        count = keep.sum(2, keepdim=True).clamp(max=8)
        slots = torch.arange(8, device=a.device)[None, None]
        order = torch.gather(order, 2, torch.minimum(slots, (count - 1).clamp(min=0)))
        polygon = torch.gather(candidates, 2, order[..., None].expand(n, m, 8, 2))
        polygon = torch.where(count[..., None] > 0, polygon, torch.zeros_like(polygon))
    intersection = _polygon_area(polygon)
    union = (a[:, 3] * a[:, 4])[:, None] + (b[:, 3] * b[:, 4])[None] - intersection
    return intersection / union.clamp(min=1e-12)


def rotated_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, threshold: float) -> torch.Tensor:
    """Indices of the boxes kept by greedy NMS by falling score; only boxes of the same label suppress."""
    order = torch.argsort(scores, descending=True, stable=True)
    boxes, labels = boxes[order], labels[order]
    suppresses = ((rotated_iou(boxes, boxes) > threshold) & (labels[:, None] == labels[None])).cpu().numpy()
    suppressed = np.zeros(len(order), bool)
    kept = []
    for index in range(len(order)):
        if not suppressed[index]:
            kept.append(index)
            suppressed |= suppresses[index]
    return order[torch.as_tensor(kept, dtype=torch.long, device=order.device)]


@dataclass
class Objects:
    """The boxes of a batch that have a target: their sample, class (task order), centre cell and regression."""

    sample: torch.Tensor  # (K,)
    label: torch.Tensor  # (K,) index into DetectionTask.class_names
    cell_x: torch.Tensor  # (K,)
    cell_y: torch.Tensor  # (K,)
    regression: torch.Tensor  # (K, REGRESSION)
    extent: torch.Tensor  # (K, 2) dx, dy in cells


class DetectionEvaluator(Evaluator):
    """Every held-out frame's decoded boxes and ground truth, scored at once as the devkit filters
    them (ranges from each frame's ego origin, boxes without points, cycles in bicycle racks)."""

    def __init__(self, task: "DetectionTask") -> None:
        self.task = task
        self.ground_truth: list[DetectionBoxes] = []
        self.predictions: list[DetectionBoxes] = []
        self.ego_xy: list[np.ndarray] = []
        self.racks: list[np.ndarray] = []
        self.names_seen: set[str] = set()

    def update(self, output: BackboneOutput, predictions: torch.Tensor, batch: Batch, voxels: VoxelBatch) -> None:
        for sample, found in enumerate(self.task.detect(predictions, output)):
            annotated = batch.box_annotations[sample]
            boxes = batch.boxes[sample, :len(annotated.names)].detach().cpu().numpy()
            # Velocity is not predicted, so not scored (tp_exclusions): the ground truth's is left out.
            self.ground_truth.append(annotated_ground_truth(boxes, annotated, None, self.task.class_names))
            self.predictions.append(_predicted(found))
            self.ego_xy.append(batch.ego_origins[sample, :2].double().cpu().numpy())
            self.racks.append(batch.bicycle_racks[sample].cpu().numpy())
            self.names_seen.update(str(name) for name in annotated.names)

    def result(self) -> dict:
        if self.names_seen and not self.names_seen & set(self.task.class_names):
            raise ValueError(f"the held-out frames' boxes are of classes {sorted(self.names_seen)}, none of "
                             f"{SETTINGS}.class_groups {sorted(self.task.class_names)}: on nuScenes the groups "
                             "name the devkit's 10 detection classes (README, section Methods, tasks and datasets)")
        return evaluate_detection(self.ground_truth, self.predictions, self.task.evaluation,
                                  ego_xy=np.stack(self.ego_xy), bicycle_racks=self.racks).to_dict()


def _predicted(found: dict[str, torch.Tensor]) -> DetectionBoxes:
    boxes = found["boxes"].detach().double().cpu().numpy()
    return DetectionBoxes(center=boxes[:, :3], size=boxes[:, 3:6], yaw=boxes[:, 6],
                          labels=found["labels"].cpu().numpy(), scores=found["scores"].detach().double().cpu().numpy())


def _branch(in_channels: int, hidden: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, hidden, 3, padding=1, bias=False), nn.BatchNorm2d(hidden),
                         nn.ReLU(inplace=True), nn.Conv2d(hidden, out_channels, 1))


class DetectionTask(Task):
    needs = frozenset({"boxes"})
    needs_bev = True
    main_metric = "mAP"
    more_metrics = ("NDS",)

    def __init__(self, backbone: SparseBackbone, settings: dict, context: TaskContext | None = None):
        super().__init__(backbone, settings, context)
        groups = settings["class_groups"]
        self.class_names = tuple(name for group in groups for name in group)
        if len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"{SETTINGS}.class_groups: a class is in more than one group: {groups}")
        if set(settings["class_ranges"]) != set(self.class_names):
            raise ValueError(f"{SETTINGS}.class_ranges names {sorted(settings['class_ranges'])}, the class groups "
                             f"{sorted(self.class_names)}: each evaluated class needs its range")
        self.class_index = {name: index for index, name in enumerate(self.class_names)}
        self.register_buffer("group_of", torch.tensor([g for g, group in enumerate(groups) for _ in group]),
                             persistent=False)
        # No velocity or attribute is predicted; nuScenes leaves more undefined for some classes.
        self.evaluation = DetectionSettings.from_mapping({
            "class_range": {name: settings["class_ranges"][name] for name in self.class_names},
            "tp_exclusions": {name: sorted({"vel_err", "attr_err", *NUSCENES_TP_EXCLUSIONS.get(name, ())})
                              for name in self.class_names}})
        hidden = settings["hidden_dim"]
        self.shared = nn.Sequential(nn.Conv2d(backbone.bev_channels, hidden, 3, padding=1, bias=False),
                                    nn.BatchNorm2d(hidden), nn.ReLU(inplace=True))
        self.heatmaps = nn.ModuleList(_branch(hidden, hidden, len(group)) for group in groups)
        self.regressions = nn.ModuleList(_branch(hidden, hidden, REGRESSION) for _ in groups)
        for branch in self.heatmaps:  # CenterPoint's prior: every cell starts at p = 0.1
            nn.init.constant_(branch[-1].bias, -math.log((1 - 0.1) / 0.1))

    def forward(self, output: BackboneOutput) -> torch.Tensor:
        """(B, classes + 8 * groups, Y, X): every class's heatmap logits, then each group's regression."""
        shared = self.shared(output.bev)
        return torch.cat([*(head(shared) for head in self.heatmaps), *(head(shared) for head in self.regressions)], 1)

    def split(self, predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Heatmap channels (B, classes, Y, X) and regression (B, groups, 8, Y, X) of the head's output."""
        heat, regression = predictions.float().split([len(self.class_names), REGRESSION * len(self.heatmaps)], 1)
        return heat, regression.unflatten(1, (len(self.heatmaps), REGRESSION))

    def labels(self, batch: Batch) -> torch.Tensor:
        """(B, M) class index of the task of each box (by its source's class name), -1 where not detected
        and on padding rows."""
        labels = torch.full(batch.box_labels.shape, -1, dtype=torch.long)
        for sample, annotated in enumerate(batch.box_annotations):
            labels[sample, :len(annotated.names)] = torch.tensor(
                [self.class_index.get(str(name), -1) for name in annotated.names], dtype=torch.long)
        return labels.to(batch.box_labels.device)

    def objects(self, batch: Batch, layout: BevLayout) -> Objects:
        """The batch's boxes of a detected class whose centre lies on the BEV map, with their targets."""
        labels = self.labels(batch)
        boxes = batch.boxes.to(labels.device).float()
        origin, cell = boxes.new_tensor(layout.origin), boxes.new_tensor(layout.cell)
        centre = (boxes[..., :2] - origin) / cell
        whole = torch.floor(centre)
        cells = boxes.new_tensor(layout.cells)
        keep = (labels >= 0) & (whole >= 0).all(-1) & (whole < cells).all(-1)
        sample = torch.nonzero(keep)[:, 0]
        boxes, centre, whole = boxes[keep], centre[keep], whole[keep].long()
        regression = torch.cat([centre - whole, boxes[:, 2:3], torch.log(boxes[:, 3:6]),
                                torch.sin(boxes[:, 6:7]), torch.cos(boxes[:, 6:7])], 1)
        return Objects(sample, labels[keep], whole[:, 0], whole[:, 1], regression, boxes[:, 3:5] / cell)

    def heatmap_targets(self, objects: Objects, shape: tuple[int, ...]) -> torch.Tensor:
        """(B, classes, Y, X): per class the cell-wise max of its boxes' gaussians (1 at each centre cell).
        sigma = (2 r + 1) / 6 and the gaussian cut at r cells from the centre, as CenterNet draws it."""
        batch, classes, height, width = shape
        heat = objects.regression.new_zeros((batch * classes, height, width))
        radius = gaussian_radius(objects.extent[:, 0], objects.extent[:, 1], self.settings["gaussian_overlap"])
        radius = torch.clamp(torch.floor(radius), min=self.settings["min_radius"])[:, None]
        sigma = (2 * radius + 1) / 6
        dx = torch.arange(width, device=heat.device)[None] - objects.cell_x[:, None]  # (K, X)
        dy = torch.arange(height, device=heat.device)[None] - objects.cell_y[:, None]  # (K, Y)
        gx = torch.where(dx.abs() <= radius, torch.exp(-dx**2 / (2 * sigma**2)), 0)
        gy = torch.where(dy.abs() <= radius, torch.exp(-dy**2 / (2 * sigma**2)), 0)
        gaussians = (gy[:, :, None] * gx[:, None, :]).flatten(1)
        target = (objects.sample * classes + objects.label)[:, None].expand_as(gaussians)
        return heat.flatten(1).scatter_reduce_(0, target, gaussians, "amax").view(shape)

    def loss(self, predictions: torch.Tensor, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        heat, regression = self.split(predictions)
        objects = self.objects(batch, BevLayout.of(output))
        target = self.heatmap_targets(objects, tuple(heat.shape))
        groups = len(self.heatmaps)
        group = self.group_of[objects.label]
        per_object = torch.ones_like(group, dtype=heat.dtype)
        boxes = heat.new_zeros(groups).index_add_(0, group, per_object).clamp(min=1)
        focal = torch.stack([focal_loss(heat[:, self.group_of == g], target[:, self.group_of == g])
                             for g in range(groups)]) / boxes
        predicted = regression[objects.sample, group, :, objects.cell_y, objects.cell_x]  # (K, 8)
        l1 = (predicted - objects.regression).abs().sum(1)
        l1 = heat.new_zeros(groups).index_add_(0, group, l1) / boxes
        heatmap_loss, regression_loss = focal.sum(), l1.sum()
        loss = self.settings["heatmap_weight"] * heatmap_loss + self.settings["regression_weight"] * regression_loss
        return loss, {"heatmap": heatmap_loss.item(), "regression": regression_loss.item()}

    def decode(self, heat: torch.Tensor, regression: torch.Tensor, layout: BevLayout) -> list[dict[str, torch.Tensor]]:
        """Boxes (N, 7), scores and labels of each frame from heatmap probabilities and regression values."""
        height, width = heat.shape[2:]
        peaks = heat * (heat == F.max_pool2d(heat, 3, stride=1, padding=1))
        scores, cells = peaks.flatten(2).topk(min(self.settings["top_k"], height * width), dim=2)  # (B, C, K)
        origin, cell = heat.new_tensor(layout.origin), heat.new_tensor(layout.cell)
        frames = []
        for sample in range(len(heat)):
            label, rank = torch.nonzero(scores[sample] >= self.settings["score_threshold"], as_tuple=True)
            index = cells[sample, label, rank]
            cell_y, cell_x = index // width, index % width
            values = regression[sample, self.group_of[label], :, cell_y, cell_x]  # (N, 8)
            centre = (torch.stack([cell_x, cell_y], 1) + values[:, :2]) * cell + origin
            yaw = torch.atan2(values[:, 6], values[:, 7])
            boxes = torch.cat([centre, values[:, 2:3], torch.exp(values[:, 3:6]), yaw[:, None]], 1)
            score = scores[sample, label, rank]
            kept = rotated_nms(boxes, score, label, self.settings["nms_iou"])[:MAX_BOXES]
            frames.append({"boxes": boxes[kept], "scores": score[kept], "labels": label[kept]})
        return frames

    def detect(self, predictions: torch.Tensor, output: BackboneOutput) -> list[dict[str, torch.Tensor]]:
        """The head's output decoded into each frame's boxes."""
        heat, regression = self.split(predictions)
        return self.decode(torch.sigmoid(heat), regression, BevLayout.of(output))

    def evaluator(self) -> DetectionEvaluator:
        return DetectionEvaluator(self)
