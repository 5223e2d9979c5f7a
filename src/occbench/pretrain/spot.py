"""SPOT (Yan et al., arXiv 2309.10527): semantic occupancy prediction from the BEV map.

Targets: the semantic occupancy of each frame (``NUM_CLASSES`` classes + empty,
``Batch.occupancy``) on a grid aligned with the backbone's BEV map: the same
x/y range, each BEV cell covering k x k occupancy columns (k a whole number).
Head: a 3x3 convolution on the dense BEV features, then a 1x1 convolution to
k * k * Z * (classes + 1) channels, unfolded (pixel shuffle) into the class
logits of the k x k columns of Z voxels under each cell: per-voxel logits
along z. Loss: class-weighted cross-entropy + ``lovasz_weight`` *
Lovasz-softmax (Berman et al., CVPR 2018) over every labelled voxel; class
weights ``foreground`` for the road users (``foreground_classes``),
``empty`` for free space, ``other`` for the rest (SPOT: 2.0 / 0.01 / 1.0).
Voxels below the ground (IGNORE_INDEX) count nowhere. The training loader
applies beam re-sampling (``data.beams.BeamResampler``) and class-balanced
frame sampling (``data.sampling``) when the settings switch them on.

Deviations (SPOT's code is not public):

- SPOT's foreground list names car, pedestrian, cyclist, bicycle and
  motorcycle; the unified taxonomy has no bicycle or motorcycle class (both
  are ``cyclist``), and trucks and buses (``truck``) are not on SPOT's list,
  so they weigh 1.0;
- the head's layout (3x3 conv, BN, ReLU, 1x1 conv, pixel shuffle) is ours: the
  paper says only "a light head on the BEV features predicting along z";
- the targets are the dataset's occupancy grid (on the synthetic world the
  exact geometry, occluded voxels included), not labelled points aggregated
  over the sequence as on real data;
- the Lovasz-softmax term of a training step is computed on ``lovasz_voxels``
  labelled voxels drawn at random (null: all of them, as SPOT): sorting the
  800k labelled voxels of a default batch for 13 classes takes 1.2 s on one
  core, five times the backbone's forward pass; on 100k voxels the held-out
  mIoU after 40 steps on two frames is the same (0.146 against 0.150);
- the pretext metric is per-frame semantic occupancy mIoU over the classes
  present (in target or prediction) of each held-out frame, with geometric
  IoU (occupied vs empty), averaged over frames; see ``pretext_metrics`` for
  why it also reports them for the decision without the class weights.

The BEV map's layout (its stride and grid) is read from the backbone's output
(``BevLayout``); at construction, from its output on one point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.data.beams import BeamResampler
from occbench.data.frame import occupancy_grid
from occbench.data.loader import LoaderOptions
from occbench.data.taxonomy import CLASS_ID, CLASSES, EMPTY_INDEX, IGNORE_INDEX, NUM_CLASSES
from occbench.metrics.segmentation import ConfusionMatrix
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.voxelize import VoxelBatch, voxelize
from occbench.pretrain.base import PretrainMethod, RunContext

OCCUPANCY_CLASSES = NUM_CLASSES + 1  # the semantic classes, then empty (EMPTY_INDEX)
SETTINGS = "pretrain.methods.spot"


def class_weights(settings: dict) -> torch.Tensor:
    """Cross-entropy weight of each occupancy class (OCCUPANCY_CLASSES,): foreground / other / empty."""
    unknown = sorted(set(settings["foreground_classes"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"{SETTINGS}.foreground_classes: {unknown} are not taxonomy classes {list(CLASSES)}")
    weights = settings["class_weights"]
    values = torch.full((OCCUPANCY_CLASSES,), float(weights["other"]))
    values[[CLASS_ID[name] for name in settings["foreground_classes"]]] = float(weights["foreground"])
    values[EMPTY_INDEX] = float(weights["empty"])
    return values


def lovasz_grad(sorted_truth: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovasz extension of the Jaccard loss at errors sorted descending (Berman et al., Alg. 1);
    column-wise for a (V, C) matrix of 0/1 ground truth in the errors' order."""
    total = sorted_truth.sum(0)
    intersection = total - sorted_truth.cumsum(0)
    union = total + (1 - sorted_truth).cumsum(0)
    jaccard = 1 - intersection / union
    return torch.cat([jaccard[:1], jaccard[1:] - jaccard[:-1]])


def lovasz_softmax(probabilities: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Lovasz-softmax loss (Berman et al., CVPR 2018) of (V, C) class probabilities against (V,) labels.

    The mean over the classes present in ``labels`` (Berman's ``classes='present'``)
    of the Lovasz extension of the Jaccard loss at the per-voxel errors |1[y = c] - p_c|;
    all classes are sorted at once (one sort along the voxel axis), not one by one.
    """
    if labels.numel() == 0:
        return probabilities.sum() * 0.0
    truth = F.one_hot(labels, probabilities.shape[1]).to(probabilities.dtype)
    errors = (truth - probabilities).abs()
    sorted_errors, order = errors.sort(dim=0, descending=True)
    per_class = (sorted_errors * lovasz_grad(truth.gather(0, order))).sum(0)
    return per_class[truth.sum(0) > 0].mean()


@dataclass(frozen=True)
class BevLayout:
    """Where the BEV map lies: its x/y origin, cell size and cells, from a backbone's output."""

    origin: tuple[float, float]
    cell: tuple[float, float]
    cells: tuple[int, int]  # along x, along y
    described: str

    @classmethod
    def of(cls, output: BackboneOutput) -> "BevLayout":
        grid, stride = output.grid, output.bev_stride
        cell = (grid.voxel_size[0] * stride, grid.voxel_size[1] * stride)
        cells = (output.bev.shape[3], output.bev.shape[2])  # the map is (B, C, y, x)
        described = (f"the BEV map (voxelization range {list(grid.point_cloud_range)}, voxel size "
                     f"{list(grid.voxel_size)}, BEV stride {stride}: {cells[0]} x {cells[1]} cells of "
                     f"{cell[0]} x {cell[1]} m)")
        return cls(tuple(grid.point_cloud_range[:2]), cell, cells, described)

    @classmethod
    def of_backbone(cls, backbone: SparseBackbone) -> "BevLayout":
        """The layout of ``backbone``'s BEV map, read from its output on one point (eval mode, no grad)."""
        grid, device = backbone.grid, next(backbone.parameters()).device
        point = (grid.lower + grid.size / 2)[None].to(device)
        training = backbone.training
        backbone.eval()
        with torch.no_grad():
            output = backbone(voxelize([point], [torch.zeros(1, device=device)], grid), with_bev=True)
        backbone.train(training)
        return cls.of(output)


def upsampling(bev: BevLayout, occupancy: dict, shape: tuple[int, ...]) -> int:
    """How many occupancy columns per BEV cell and axis (k), if the grids align; else a ValueError naming both.

    ``occupancy``: {"range": [x0, y0, z0, x1, y1, z1], "voxel_size": [dx, dy, dz]}, ``shape`` (X, Y, Z).
    """
    point_range, voxel = occupancy["range"], occupancy["voxel_size"]
    ratios = [bev.cell[axis] / voxel[axis] for axis in (0, 1)]
    k = round(ratios[0])
    problems = []
    if not all(math.isclose(r, k, abs_tol=1e-6) for r in ratios) or k < 1:
        problems.append(f"a BEV cell is not the same whole number of occupancy voxels along x and y ({ratios})")
    for axis, name in enumerate("xy"):
        start, stop = bev.origin[axis], bev.origin[axis] + bev.cells[axis] * bev.cell[axis]
        if not (math.isclose(point_range[axis], start, abs_tol=1e-6)
                and math.isclose(point_range[axis + 3], stop, abs_tol=1e-6)):
            problems.append(f"{name} spans [{point_range[axis]}, {point_range[axis + 3]}] in the occupancy grid "
                            f"but [{start}, {stop}] in the BEV map")
        elif k >= 1 and shape[axis] != bev.cells[axis] * k:
            problems.append(f"{shape[axis]} occupancy voxels along {name} for {bev.cells[axis]} BEV cells of {k}")
    if problems:
        raise ValueError(f"SPOT: the occupancy grid (range {list(point_range)}, voxel size {list(voxel)}) does not "
                         f"align with {bev.described}: " + "; ".join(problems))
    return k


class SPOT(PretrainMethod):
    paper = "Yan et al., SPOT: scalable 3D pre-training via occupancy prediction, arXiv 2309.10527 (no public code)"
    differs = ("head layout ours (3x3 conv, 1x1 conv, pixel shuffle); bicycle and motorcycle are the taxonomy's "
               "cyclist; Lovasz-softmax on lovasz_voxels random labelled voxels a step; targets: the dataset's "
               "occupancy grid")
    headline_metrics = ("miou", "geometric_iou", "geometric_iou_unweighted")
    needs = frozenset({"occupancy"})
    needs_bev = True

    def __init__(self, backbone: SparseBackbone, settings: dict, context: RunContext | None = None,
                 occupancy: dict | None = None):
        """``occupancy``: the targets' grid ({"range", "voxel_size"}); by default that of the run's first frame."""
        super().__init__(backbone, settings, context)
        if occupancy is None:
            occupancy = self._grid_of_run(context)
        self.occupancy = {"range": [float(v) for v in occupancy["range"]],
                          "voxel_size": [float(v) for v in occupancy["voxel_size"]]}
        point_range, voxel = self.occupancy["range"], self.occupancy["voxel_size"]
        shape = tuple(round((point_range[axis + 3] - point_range[axis]) / voxel[axis]) for axis in range(3))
        self.k = upsampling(BevLayout.of_backbone(backbone), self.occupancy, shape)
        self.depth = shape[2]  # voxels along z: the logits of a column
        self.register_buffer("class_weights", class_weights(settings), persistent=False)
        hidden = settings["hidden_dim"]
        self.head = nn.Sequential(
            nn.Conv2d(backbone.bev_channels, hidden, 3, padding=1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, self.k * self.k * self.depth * OCCUPANCY_CLASSES, 1),
        )

    @staticmethod
    def _grid_of_run(context: RunContext | None) -> dict:
        if context is None:
            raise ValueError("SPOT needs the targets' occupancy grid: a RunContext or the occupancy argument")
        first = context.frame_ids[0]
        grid = occupancy_grid(context.index.load(first))
        if grid is None:
            raise ValueError(f"{context.index.path}: frame {first!r} has no semantic occupancy, which SPOT "
                             "pre-trains on (datasets.<name>.occupancy)")
        return {"range": list(grid.point_range), "voxel_size": list(grid.voxel_size)}

    def loader_options(self) -> LoaderOptions:
        beams = self.settings["beam_resampling"]
        transforms = (BeamResampler(p=beams["p"], down_factor=beams["down_factor"], up_factor=beams["up_factor"]),) \
            if beams["enabled"] else ()
        return LoaderOptions(transforms=transforms, class_balanced=self.settings["class_balanced_sampling"])

    def logits(self, output: BackboneOutput, batch: Batch) -> torch.Tensor:
        """Class logits (B, OCCUPANCY_CLASSES, X, Y, Z) of the batch's occupancy voxels."""
        if batch.occupancy_grid != self.occupancy:
            raise ValueError(f"SPOT was built for the occupancy grid {self.occupancy}, but frames "
                             f"{batch.frame_ids} have {batch.occupancy_grid}")
        if upsampling(BevLayout.of(output), batch.occupancy_grid, tuple(batch.occupancy.shape[1:])) != self.k:
            raise ValueError(f"SPOT was built for {self.k} x {self.k} occupancy columns per BEV cell; this "
                             f"backbone's BEV map has other cells ({BevLayout.of(output).described})")
        shuffled = F.pixel_shuffle(self.head(output.bev), self.k)  # (B, classes * Z, Y, X)
        b, _, y, x = shuffled.shape
        return shuffled.reshape(b, OCCUPANCY_CLASSES, self.depth, y, x).permute(0, 1, 4, 3, 2)

    def terms(self, logits: torch.Tensor, target: torch.Tensor,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(class-weighted cross-entropy, Lovasz-softmax) over the labelled voxels; the Lovasz term over
        ``lovasz_voxels`` of them drawn with ``generator`` when there are more (all without a generator)."""
        cross_entropy = F.cross_entropy(logits.float(), target, weight=self.class_weights, ignore_index=IGNORE_INDEX)
        labelled = torch.nonzero(target.reshape(-1) != IGNORE_INDEX).squeeze(1)
        cap = self.settings["lovasz_voxels"]
        if generator is not None and cap is not None and labelled.numel() > cap:
            labelled = labelled[torch.randperm(labelled.numel(), generator=generator)[:cap].to(labelled.device)]
        voxel = torch.unravel_index(labelled, target.shape)
        probabilities = logits.movedim(1, -1)[voxel].float().softmax(1)
        return cross_entropy, lovasz_softmax(probabilities, target[voxel])

    def loss(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
             generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        cross_entropy, lovasz = self.terms(self.logits(output, batch), batch.occupancy.long(), generator)
        loss = cross_entropy + self.settings["lovasz_weight"] * lovasz
        return loss, {"cross_entropy": cross_entropy.item(), "lovasz": lovasz.item()}

    @torch.no_grad()
    def pretext_metrics(self, output: BackboneOutput, batch: Batch, voxels: VoxelBatch,
                        generator: torch.Generator) -> dict[str, float]:
        """Semantic occupancy mIoU (the classes but empty, each where present in target or prediction),
        geometric IoU (occupied vs empty) and per-class IoU over the batch's labelled voxels, with the
        loss terms (the Lovasz term over every labelled voxel).

        Two decisions: the argmax of the logits (``miou``, ``geometric_iou``), and the argmax once the
        log class weights are taken off (``*_unweighted``). Weighted cross-entropy trains the logits
        towards w_c p_c, so at an empty weight of 0.01 the plain argmax calls a voxel empty only when
        p_empty exceeds about 100 times every other class: it over-predicts occupancy and its
        geometric IoU starts at the share of occupied voxels (``occupied_share``, what calling every
        voxel occupied scores) and rises slowly; the unweighted decision shows the geometry learnt.
        """
        logits, target = self.logits(output, batch), batch.occupancy.long()
        cross_entropy, lovasz = self.terms(logits, target, None)
        raw = self._confusion(logits.argmax(1), target)
        unweighted = self._confusion((logits - self.class_weights.log()[:, None, None, None]).argmax(1), target)
        occupied = raw.matrix[:EMPTY_INDEX].sum() / raw.matrix.sum() if raw.matrix.sum() else math.nan
        return {
            **self._ious(raw, ""),
            **self._ious(unweighted, "_unweighted"),
            "occupied_share": float(occupied),
            "cross_entropy": cross_entropy.item(),
            "lovasz": lovasz.item(),
            **{f"iou_{name}": float(value) for name, value in zip((*CLASSES, "empty"), raw.iou())},
        }

    @staticmethod
    def _confusion(prediction: torch.Tensor, target: torch.Tensor) -> ConfusionMatrix:
        confusion = ConfusionMatrix(OCCUPANCY_CLASSES)
        confusion.update(prediction, target)
        return confusion

    @staticmethod
    def _ious(confusion: ConfusionMatrix, suffix: str) -> dict[str, float]:
        semantic = confusion.iou()[:NUM_CLASSES]
        defined = semantic[~np.isnan(semantic)]
        matrix = confusion.matrix
        both_occupied = matrix[:EMPTY_INDEX, :EMPTY_INDEX].sum()
        either_occupied = matrix.sum() - matrix[EMPTY_INDEX, EMPTY_INDEX]
        return {f"miou{suffix}": float(defined.mean()) if defined.size else math.nan,
                f"geometric_iou{suffix}": float(both_occupied / either_occupied) if either_occupied else math.nan}
