"""The occupancy task: head shapes from the backbone's output, the loss by hand, learning, CLI runs."""

from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
import yaml

from occbench.config import load_params
from occbench.data.batch import Batch
from occbench.data.taxonomy import CLASS_ID, CLASSES, EMPTY_INDEX, IGNORE_INDEX
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.occupancy_head import OCCUPANCY_CLASSES
from occbench.models.voxelize import VoxelGrid
from occbench.tasks.base import FinetuneModel
from occbench.tasks.occupancy import OccupancyTask
from model_fixtures import head_output_giving
from overfitting import overfit, two_default_frames
from smoke import ROOT, finetune, read_run, run_dir

SETTINGS = load_params(ROOT / "params.yaml")["finetune"]["occupancy"]
# 8 m x 4 m, 0.25 m voxels: 8 x 4 BEV cells of 1 m at stride 4; occupancy voxels of 0.5 m, 4 along z.
TINY_GRID = VoxelGrid((0.0, 0.0, -1.0, 8.0, 4.0, 1.0), (0.25, 0.25, 0.25))
TINY_OCCUPANCY = {"range": [0.0, 0.0, -1.0, 8.0, 4.0, 1.0], "voxel_size": [0.5, 0.5, 0.5]}


def _tiny_model(grid=TINY_GRID, occupancy=TINY_OCCUPANCY, **settings) -> FinetuneModel:
    torch.manual_seed(0)
    backbone = SparseBackbone(grid, (4, 4, 4), 4)
    return FinetuneModel(backbone, OccupancyTask(backbone, {**SETTINGS, **settings}, occupancy=occupancy))


def _batch(occupancy: dict, shape: tuple[int, int, int], points: torch.Tensor) -> Batch:
    return Batch(["a"], [points], [torch.zeros(len(points))], [torch.zeros(len(points), dtype=torch.long)],
                 [torch.zeros(3)], occupancy=torch.full((1, *shape), EMPTY_INDEX, dtype=torch.uint8),
                 occupancy_grid=occupancy)


@pytest.mark.parametrize("grid, occupancy, shape", [
    (TINY_GRID, TINY_OCCUPANCY, (16, 8, 4)),
    # 16 m x 4 m at 0.5 m voxels: BEV cells of 2 m, each over 4 x 4 occupancy columns of 8 voxels.
    (VoxelGrid((0.0, 0.0, -1.0, 16.0, 4.0, 1.0), (0.5, 0.5, 0.5)),
     {"range": [0.0, 0.0, -2.0, 16.0, 4.0, 2.0], "voxel_size": [0.5, 0.5, 0.5]}, (32, 8, 8)),
])
def test_the_head_predicts_every_voxel_of_the_grid_from_the_bev_map(grid, occupancy, shape):
    model = _tiny_model(grid, occupancy)
    points = torch.tensor([[1.0, 1.0, 0.0], [3.0, 2.5, 0.5]])
    batch = _batch(occupancy, shape, points)
    output, predictions, _ = model.run(batch)
    columns = model.task.columns
    cells_x, cells_y = output.bev.shape[3], output.bev.shape[2]
    assert columns.k == round(grid.voxel_size[0] * output.bev_stride / occupancy["voxel_size"][0])
    assert predictions.shape == (1, columns.k ** 2 * columns.depth * OCCUPANCY_CLASSES, cells_y, cells_x)
    logits = model.task.logits(predictions, output, batch)
    assert logits.shape == (1, OCCUPANCY_CLASSES, cells_x * columns.k, cells_y * columns.k, columns.depth)
    assert logits.shape[2:] == shape


def test_a_grid_not_aligned_with_the_bev_map_is_an_error_naming_the_task():
    with pytest.raises(ValueError, match=r"the occupancy task: the occupancy grid .* does not align with the BEV"):
        _tiny_model(occupancy={"range": [0.0, 0.0, -1.0, 9.0, 4.0, 1.0], "voxel_size": [0.5, 0.5, 0.5]})
    with pytest.raises(ValueError, match=r"finetune.occupancy.protocol: 'occ4d' is not one of"):
        _tiny_model(protocol="occ4d")


def test_the_loss_by_hand():
    """A car voxel whose car logit is ln 12 (p = 1/2), an empty voxel at uniform logits (p = 1/13), the rest
    below the ground: weighted CE (2 ln 2 + 1 ln 13) / 3 at the default weights (car 2, empty 1), plus
    lovasz_weight times the Lovasz-softmax of the two voxels. Each present class has one true voxel, its
    error sorted first, so its Lovasz term is that error: car 1 - 1/2, empty 1 - 1/13; mean 37/52."""
    task = _tiny_model().task
    logits = torch.zeros(OCCUPANCY_CLASSES, 16, 8, 4)
    logits[CLASS_ID["car"], 0, 0, 0] = math.log(12)
    batch = _batch(TINY_OCCUPANCY, (16, 8, 4), torch.zeros(1, 3))
    batch.occupancy[:] = IGNORE_INDEX
    batch.occupancy[0, 0, 0, 0], batch.occupancy[0, 1, 0, 0] = CLASS_ID["car"], EMPTY_INDEX
    output = BackboneOutput(None, {}, torch.zeros(1, 4, 4, 8), 4, TINY_GRID)
    predictions = head_output_giving(task.columns, logits)
    cross_entropy = (2 * math.log(2) + math.log(13)) / 3
    lovasz = (1 / 2 + 12 / 13) / 2
    for weight in (0.0, 1.0, 2.5):
        task.settings = {**SETTINGS, "lovasz_weight": weight}
        loss, logs = task.loss(predictions, output, batch, None, torch.Generator())
        assert logs["cross_entropy"] == pytest.approx(cross_entropy, rel=1e-6)
        assert loss.item() == pytest.approx(cross_entropy + weight * lovasz, rel=1e-6)


@pytest.mark.slow
def test_overfitting_two_frames_lifts_occupancy_miou():
    """Two default frames cropped to 48 m x 48 m (their occupancy sliced to the crop), 40 AdamW steps at the
    default lr (CPU, seed 0), scored by the task's evaluator (OpenOccupancy) on the same frames:
    loss 3.54 -> 0.97, mIoU 0.012 -> 0.383, geometric IoU 0.44 -> 0.75 (measured)."""
    params, batch = two_default_frames(frozenset({"occupancy"}))
    params["voxelization"]["point_cloud_range"] = [-24.0, -24.0, -4.0, 24.0, 24.0, 8.0]
    # Default grid: 0.5 m voxels from -50 m, so the crop is columns 52 to 147 along x and y.
    batch.occupancy = batch.occupancy[:, 52:148, 52:148].contiguous()
    batch.occupancy_grid = {"range": [-24.0, -24.0, -5.0, 24.0, 24.0, 3.0], "voxel_size": [0.5, 0.5, 0.5]}
    settings = params["finetune"]["occupancy"]
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(params, "small")
    model = FinetuneModel(backbone, OccupancyTask(backbone, settings, occupancy=batch.occupancy_grid))
    before = _model_miou(model, batch)
    losses = overfit(model, batch, settings["optimizer"]["lr"], 40)
    after = _model_miou(model, batch)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert before < 0.05 and after > 0.25


def _model_miou(model: FinetuneModel, batch: Batch) -> float:
    model.eval()
    evaluator = model.task.evaluator()
    with torch.no_grad():
        evaluator.update(*model.run(batch)[:2], batch, None)
    model.train()
    return evaluator.result()["miou"]


def _finetune(source, seed, *extra):
    return finetune("occupancy", source, seed, *extra)


def _read(source, seed, name):
    return read_run("occupancy", source, seed, name)


@pytest.mark.slow
def test_smoke_fine_tuning_from_scratch_and_from_a_pretrained_checkpoint(workdir):
    assert _finetune("scratch", 0) == 0
    assert _finetune("also-synthetic-pt_1", 0) == 0
    for source in ("scratch", "also-synthetic-pt_1"):
        metrics, meta = _read(source, 0, "metrics.json"), _read(source, 0, "run_meta.json")
        assert 0 <= metrics["miou"] <= 1 and 0 <= metrics["geometric_iou"] <= 1
        assert set(metrics["iou"]) == set(CLASSES)
        assert meta["main_metric"] == "miou" and meta["run"]["task"] == "occupancy"
        assert {"cross_entropy", "lovasz"} <= set(meta["history"][-1])
    assert _read("scratch", 0, "run_meta.json")["pretrained"] is None
    pretrained = _read("also-synthetic-pt_1", 0, "run_meta.json")["pretrained"]
    assert pretrained["loaded_fraction"] == 1.0
    assert _read("scratch", 0, "metrics.json") != _read("also-synthetic-pt_1", 0, "metrics.json")


@pytest.mark.slow
def test_the_occ3d_protocol_scores_fewer_voxels_of_the_same_model(workdir):
    """Same seed, same training (the protocol only changes the evaluation): Occ3D counts only the voxels
    the LiDAR observed, a strict subset of OpenOccupancy's labelled voxels."""
    with open("occ3d.yaml", "w") as handle:
        yaml.safe_dump({"finetune": {"occupancy": {"protocol": "occ3d"}}}, handle)
    assert _finetune("scratch", 1) == 0
    openoccupancy = _read("scratch", 1, "metrics.json")
    os.remove(run_dir("occupancy", "scratch", 1) / "metrics.json")
    assert _finetune("scratch", 1, "--params", "occ3d.yaml") == 0
    occ3d = _read("scratch", 1, "metrics.json")
    assert 0 < occ3d["counted_voxels"] < openoccupancy["counted_voxels"]
    assert occ3d["miou"] != openoccupancy["miou"]
