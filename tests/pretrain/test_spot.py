"""SPOT: class ids and weights, the grid alignment, loader options, learning (its loss: tests/models/test_losses.py)."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from occbench.config import load_params
from occbench.data.batch import Batch, collate
from occbench.data.beams import BeamResampler
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.dataset import FrameIndex, write_index
from occbench.data.loader import LoaderOptions, RunFrames, StepSampler, epoch_order
from occbench.data.sampling import class_balanced_order, frame_class_sets
from occbench.data.taxonomy import CLASS_ID, EMPTY_INDEX, IGNORE_INDEX, NUM_CLASSES
from occbench.models.backbone import BackboneOutput, SparseBackbone
from occbench.models.losses import lovasz_softmax
from occbench.models.occupancy_head import OCCUPANCY_CLASSES, BevLayout
from occbench.models.voxelize import VoxelGrid
from occbench.pretrain.base import PretrainModel
from occbench.pretrain.spot import SPOT, class_weights
from model_fixtures import head_output_giving
from nuscenes_fixture import SWEEP, build_nuscenes, needs_devkit, needs_real
from smoke import ROOT, SMOKE_ARGS, make_dataset, occbench, smoke_params

SETTINGS = load_params(ROOT / "params.yaml")["pretrain"]["methods"]["spot"]
# A small non-square grid: 8 m x 4 m, 0.25 m voxels, so 8 x 4 BEV cells of 1 m at stride 4.
TINY_GRID = VoxelGrid((0.0, 0.0, -1.0, 8.0, 4.0, 1.0), (0.25, 0.25, 0.25))
TINY_OCCUPANCY = {"range": [0.0, 0.0, -1.0, 8.0, 4.0, 1.0], "voxel_size": [0.5, 0.5, 0.5]}


def _tiny_spot(occupancy=TINY_OCCUPANCY, **settings) -> SPOT:
    torch.manual_seed(0)
    backbone = SparseBackbone(TINY_GRID, (4, 4, 4), 4)
    return SPOT(backbone, {**SETTINGS, **settings}, occupancy=occupancy)


def test_class_ids_and_weights():
    """SPOT's 2.0 / 1.0 / 0.01: road users (car, pedestrian, cyclist) / the rest, trucks included / empty."""
    weights = class_weights(SETTINGS)
    assert weights.shape == (NUM_CLASSES + 1,) and EMPTY_INDEX == NUM_CLASSES == 12
    assert [CLASS_ID[name] for name in ("car", "pedestrian", "cyclist")] == [8, 10, 11]
    expected = [1.0] * 8 + [2.0, 1.0, 2.0, 2.0] + [0.01]
    assert weights.tolist() == pytest.approx(expected)
    custom = class_weights({**SETTINGS, "foreground_classes": ["truck"],
                            "class_weights": {"foreground": 3.0, "other": 0.5, "empty": 0.0}})
    assert custom[CLASS_ID["truck"]] == 3.0 and custom[CLASS_ID["car"]] == 0.5 and custom[EMPTY_INDEX] == 0.0
    with pytest.raises(ValueError, match=r"pretrain.methods.spot.foreground_classes: \['bicycle'\]"):
        class_weights({**SETTINGS, "foreground_classes": ["car", "bicycle"]})


def test_cross_entropy_weights_voxels_by_class_and_skips_ignored_ones():
    """Three voxels: a car (weight 2), an empty one (0.01) and one below the ground (ignored)."""
    spot = _tiny_spot()
    logits = torch.randn(1, OCCUPANCY_CLASSES, 3, 1, 1, generator=torch.Generator().manual_seed(1))
    target = torch.tensor([CLASS_ID["car"], EMPTY_INDEX, IGNORE_INDEX]).reshape(1, 3, 1, 1)
    cross_entropy, lovasz = spot.terms(logits, target, None)
    log_p = logits[0, :, :, 0, 0].log_softmax(0)
    by_hand = (2.0 * -log_p[CLASS_ID["car"], 0] + 0.01 * -log_p[EMPTY_INDEX, 1]) / 2.01
    assert cross_entropy.item() == pytest.approx(by_hand.item(), rel=1e-5)
    probabilities = logits[0, :, :2, 0, 0].T.softmax(1)
    assert lovasz.item() == pytest.approx(lovasz_softmax(probabilities, target[0, :2, 0, 0]).item(), rel=1e-6)


def test_the_bev_layout_comes_from_the_backbone_output():
    spot = _tiny_spot()
    layout = BevLayout.of_backbone(SparseBackbone(TINY_GRID, (4, 4, 4), 4))
    assert (layout.origin, layout.cell, layout.cells) == ((0.0, 0.0), (1.0, 1.0), (8, 4))
    assert spot.columns.k == 2 and spot.columns.depth == 4
    assert _tiny_spot({"range": TINY_OCCUPANCY["range"], "voxel_size": [1.0, 1.0, 0.5]}).columns.k == 1


@pytest.mark.parametrize("occupancy, problem", [
    ({"range": [0.0, 0.0, -1.0, 9.0, 4.0, 1.0], "voxel_size": [0.5, 0.5, 0.5]},
     r"x spans \[0.0, 9.0\] in the occupancy grid but \[0.0, 8.0\] in the BEV map"),
    ({"range": [-0.5, 0.0, -1.0, 7.5, 4.0, 1.0], "voxel_size": [0.5, 0.5, 0.5]},
     r"x spans \[-0.5, 7.5\]"),
    ({"range": [0.0, 0.0, -1.0, 8.0, 4.0, 1.0], "voxel_size": [0.4, 0.4, 0.5]},
     r"not the same whole number of occupancy voxels"),
])
def test_a_grid_not_aligned_with_the_bev_map_is_an_error_naming_both(occupancy, problem):
    with pytest.raises(ValueError) as error:
        _tiny_spot(occupancy)
    message = str(error.value)
    assert f"occupancy grid (range {occupancy['range']}, voxel size {occupancy['voxel_size']})" in message
    assert ("the BEV map (voxelization range [0.0, 0.0, -1.0, 8.0, 4.0, 1.0], voxel size [0.25, 0.25, 0.25], "
            "BEV stride 4: 8 x 4 cells of 1.0 x 1.0 m)") in message
    assert re.search(problem, message)


def test_each_voxel_reads_the_bev_cell_above_it():
    """Logit (class c, voxel x, y, z) is channel ((c Z + z) k + y % k) k + x % k of BEV cell (x // k, y // k)."""
    spot = _tiny_spot()
    k, depth = spot.columns.k, spot.columns.depth
    channels = OCCUPANCY_CLASSES * depth * k * k
    code = (torch.arange(channels)[:, None, None] * 10000 + torch.arange(4)[None, :, None] * 100
            + torch.arange(8)[None, None, :]).float()[None]  # (1, channels, y, x)
    spot.head = torch.nn.Identity()  # the BEV map below is then the head's output
    output = BackboneOutput(None, {}, code, 4, TINY_GRID)
    batch = Batch(["a"], [], [], [], [], occupancy=torch.zeros(1, 16, 8, 4, dtype=torch.uint8),
                  occupancy_grid=TINY_OCCUPANCY)
    logits = spot.logits(output, batch)
    assert logits.shape == (1, OCCUPANCY_CLASSES, 16, 8, 4)
    c, x, y, z = torch.meshgrid(*(torch.arange(n) for n in logits.shape[1:]), indexing="ij")
    expected = (((c * depth + z) * k + y % k) * k + x % k) * 10000 + (y // k) * 100 + x // k
    assert torch.equal(logits[0], expected.float())


def test_a_heads_values_at_chosen_voxels_are_those_of_its_unfolded_volume():
    """What OccFeat computes at occupied voxels only equals the dense head's volume read at them."""
    columns = _tiny_spot().columns
    torch.manual_seed(1)
    conv = columns.column_values(5, 3)
    features = torch.randn(2, 5, 4, 8)  # (B, C, y, x): 8 x 4 BEV cells
    volume = columns.unfold(conv(features), 3)  # (2, 3, 16, 8, 4)
    index = torch.nonzero(torch.rand(2, 16, 8, 4) < 0.2)
    assert len(index) > 50
    expected = volume[index[:, 0], :, index[:, 1], index[:, 2], index[:, 3]]
    assert torch.allclose(columns.values_at(conv, features, index), expected, atol=1e-6)


def test_pretext_metrics_by_hand():
    """Cars at x < 4 (z = 0), predicted at x < 2 and, less surely than empty once unweighted, at 4 <= x < 6:
    car IoU 16 / 48 from the argmax, 16 / 32 unweighted; z = 3 is below the ground (ignored)."""
    spot = _tiny_spot()
    spot.head = torch.nn.Identity()
    target = torch.full((16, 8, 4), EMPTY_INDEX)
    target[:4, :, 0] = CLASS_ID["car"]
    target[:, :, 3] = IGNORE_INDEX
    logits = torch.zeros(OCCUPANCY_CLASSES, 16, 8, 4)
    logits[EMPTY_INDEX] = 10.0
    logits[EMPTY_INDEX, :2, :, 0] = 0.0
    logits[CLASS_ID["car"], :2, :, 0] = 10.0
    logits[EMPTY_INDEX, 4:6, :, 0] = 7.0  # 7 - log 0.01 = 11.6 beats 10 - log 2 once unweighted
    logits[CLASS_ID["car"], 4:6, :, 0] = 10.0
    batch = Batch(["a"], [], [], [], [], occupancy=target[None].to(torch.uint8), occupancy_grid=TINY_OCCUPANCY)
    output = BackboneOutput(None, {}, head_output_giving(spot.columns, logits), 4, TINY_GRID)
    metrics = spot.pretext_metrics(output, batch, None, torch.Generator())
    assert metrics["miou"] == metrics["geometric_iou"] == metrics["iou_car"] == pytest.approx(16 / 48)
    assert metrics["miou_unweighted"] == metrics["geometric_iou_unweighted"] == pytest.approx(16 / 32)
    assert metrics["occupied_share"] == pytest.approx(32 / (16 * 8 * 3))
    assert metrics["iou_empty"] == pytest.approx((16 * 8 * 3 - 48) / (16 * 8 * 3 - 16))
    assert math.isnan(metrics["iou_road"])
    probabilities = logits.movedim(0, -1)[:, :, :3].reshape(-1, OCCUPANCY_CLASSES).softmax(1)
    assert metrics["lovasz"] == pytest.approx(
        lovasz_softmax(probabilities, target[:, :, :3].reshape(-1)).item(), rel=1e-6)


def test_frames_on_another_grid_than_the_method_was_built_for_are_an_error():
    spot = _tiny_spot()
    other = {"range": TINY_OCCUPANCY["range"], "voxel_size": [1.0, 1.0, 0.5]}
    batch = Batch(["a"], [], [], [], [], occupancy=torch.zeros(1, 8, 4, 4, dtype=torch.uint8), occupancy_grid=other)
    with pytest.raises(ValueError, match=r"built for the occupancy grid .*but frames \['a'\] have"):
        spot.logits(BackboneOutput(None, {}, torch.zeros(1, 4, 4, 8), 4, TINY_GRID), batch)


@pytest.fixture(scope="module")
def smoke_dataset(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("spot")
    make_dataset(workdir)
    return workdir


def test_settings_switch_beam_resampling_and_class_balanced_sampling_in_the_loader(smoke_dataset):
    index = FrameIndex(smoke_dataset / "results" / "data" / "synthetic" / "index.json")
    params = smoke_params()
    frames = RunFrames(index, Path("unused"), index.ids("train"), index.ids("val"))
    occupancy = TINY_OCCUPANCY  # the loader options do not depend on the grid
    on = _tiny_spot(occupancy, beam_resampling={"enabled": True, "p": 1.0, "down_factor": 2, "up_factor": 2})
    off = _tiny_spot(occupancy, beam_resampling={**SETTINGS["beam_resampling"], "enabled": False},
                     class_balanced_sampling=False)
    assert on.loader_options() == LoaderOptions((BeamResampler(1.0, 2, 2),), class_balanced=True)
    assert off.loader_options() == LoaderOptions()

    resampled, plain = frames.training_set(params, 0, on.loader_options()), frames.training_set(params, 0)
    assert resampled.order(1) == class_balanced_order(frames.train_ids, frame_class_sets(index), 0, 1)
    assert plain.order(1) == epoch_order(frames.train_ids, 0, 1)
    beams = params["datasets"]["synthetic"]["sensor"]["beams"]
    rings = {int(resampled[(1, p)][1].ring.max()) + 1 for p in range(resampled.epoch_length(1))}
    assert rings == {beams // 2, 2 * beams - 1}  # p = 1: every frame thinned or densified, both happen
    assert {int(plain[(1, p)][1].ring.max()) + 1 for p in range(plain.epoch_length(1))} == {beams}


def test_class_balanced_epochs_repeat_the_frames_of_rare_classes(tmp_path):
    """Three frames with cars, one with a pedestrian: s_ped = sqrt((1/2) / (1/4)), so that frame
    comes twice in about 41 % of the epochs and the others once (the loop sizes each epoch)."""
    write_index(tmp_path / "index.json", "hand", [
        {"id": name, "path": f"{name}.npz", "split": "train", "scene": name, "box_classes": classes}
        for name, classes in (("a", [8]), ("b", [8]), ("c", [8]), ("d", [10]))])
    frames = RunFrames(FrameIndex(tmp_path / "index.json"), Path("unused"), ["a", "b", "c", "d"], [])
    dataset = frames.training_set(smoke_params(), 0, LoaderOptions(class_balanced=True))
    orders = [sorted(dataset.order(epoch)) for epoch in range(200)]
    assert all(order in (["a", "b", "c", "d"], ["a", "b", "c", "d", "d"]) for order in orders)
    assert np.mean([len(order) == 5 for order in orders]) == pytest.approx(math.sqrt(2) - 1, abs=0.07)
    assert [dataset.epoch_length(epoch) for epoch in range(200)] == [len(order) for order in orders]


@pytest.mark.slow
def test_overfitting_two_frames_lowers_the_loss_and_lifts_occupancy_miou():
    """Two default frames cropped to 48 m x 48 m (a quarter of the BEV map, to keep the test short),
    40 AdamW steps at the default lr (CPU, seed 0): loss 3.59 -> 1.27, occupancy mIoU 0.012 -> 0.212 (measured)."""
    params = load_params(ROOT / "params.yaml")
    params["voxelization"]["point_cloud_range"] = [-24.0, -24.0, -4.0, 24.0, 24.0, 8.0]
    params["datasets"]["synthetic"]["occupancy"]["range"] = [-24.0, -24.0, -5.0, 24.0, 24.0, 3.0]
    converter = SyntheticConverter(params["datasets"]["synthetic"])
    batch = collate([(str(i), converter.load(source)) for i, source in enumerate(converter.sources()[:2])],
                    needs=frozenset({"occupancy"}))
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(params, "small")
    model = PretrainModel(backbone, SPOT(backbone, SETTINGS, occupancy=batch.occupancy_grid))
    optimizer = torch.optim.AdamW(model.parameters(), lr=params["pretrain"]["optimizer"]["lr"])

    def metrics() -> dict[str, float]:
        model.eval()
        values = model.pretext_metrics(batch, torch.Generator())
        model.train()
        return values

    before, losses = metrics(), []
    for step in range(40):
        loss, _ = model(batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    after = metrics()
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert before["miou"] < 0.03 and after["miou"] > 0.15


@pytest.mark.slow
def test_smoke_pretraining_through_the_cli_writes_rising_pretext_metrics_and_fine_tunes(smoke_dataset, monkeypatch):
    monkeypatch.chdir(smoke_dataset)
    overlay = smoke_dataset / "spot.yaml"
    overlay.write_text(yaml.safe_dump({"grid": {"methods": ["scratch", "spot"]}, "pretrain": {"epochs": 2}}))
    extra = ["--params", str(overlay)]
    assert occbench(*extra, "pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", "spot",
                    "--fraction", "1") == 0
    meta = json.loads((smoke_dataset / "results/pretrain/small/synthetic/spot/pt_1/run_meta.json").read_text())
    index = FrameIndex(smoke_dataset / "results" / "data" / "synthetic" / "index.json")
    params = load_params(*[Path(a) for a in SMOKE_ARGS[1::2]], overlay)
    dataset = RunFrames(index, Path("unused"), index.ids("train"), index.ids("val")).training_set(
        params, params["pretrain"]["seed"], LoaderOptions(class_balanced=True))
    batch_size = params["pretrain"]["batch_size"]
    assert meta["steps"] == sum(StepSampler.steps(dataset.epoch_length(e), batch_size) for e in range(2))
    pretext = meta["pretext"]
    assert set(pretext["init"]) == set(pretext["final"]) >= {"miou", "geometric_iou", "cross_entropy", "lovasz"}
    assert pretext["final"]["cross_entropy"] < pretext["init"]["cross_entropy"]
    assert occbench(*extra, "finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
                    "--source", "spot-synthetic-pt_1", "--label-fraction", "1", "--seed", "0") == 0


@needs_real
@needs_devkit
def test_spot_pretrains_and_occupancy_fine_tunes_on_nuscenes_frames_whose_occupancy_was_aggregated(
        tmp_path, monkeypatch):
    """Real data end to end: the nuScenes fixture (the real sweep) converted with its occupancy built
    from the scenes' lidarseg points, SPOT pre-trained on it (8 steps on scene-0061's two keyframes),
    measured on scene-0103's: cross-entropy 2.574 -> 2.445, occupancy mIoU 0.008 -> 0.030; then the
    occupancy task fine-tuned from it on the same targets."""
    fixture = build_nuscenes(tmp_path / "nuscenes", SWEEP)
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "nuscenes.yaml"
    overlay.write_text(yaml.safe_dump({
        "grid": {"methods": ["scratch", "spot"], "transfers": [{"pretrain": "nuscenes", "finetune": "nuscenes"}],
                 "tasks": ["occupancy"]},
        "pretrain": {"epochs": 8},
        "datasets": {"nuscenes": {"root": str(fixture.root), "cameras": []}}}))
    extra = ["--params", str(overlay)]
    assert occbench(*extra, "convert", "--dataset", "nuscenes") == 0
    assert occbench(*extra, "split", "--dataset", "nuscenes", "--subset", "pretrain", "--fraction", "1") == 0
    assert occbench(*extra, "pretrain", "--backbone", "small", "--dataset", "nuscenes", "--method", "spot",
                    "--fraction", "1") == 0
    meta = json.loads((tmp_path / "results/pretrain/small/nuscenes/spot/pt_1/run_meta.json").read_text())
    pretext = meta["pretext"]
    assert pretext["final"]["cross_entropy"] < pretext["init"]["cross_entropy"]
    assert pretext["final"]["miou"] > 2 * pretext["init"]["miou"]
    # The occupancy task fine-tunes from it on the same targets, scored on the held-out scene.
    assert occbench(*extra, "split", "--dataset", "nuscenes", "--subset", "labels", "--fraction", "1",
                    "--split-seed", "0") == 0
    assert occbench(*extra, "finetune", "--task", "occupancy", "--backbone", "small", "--dataset", "nuscenes",
                    "--source", "spot-nuscenes-pt_1", "--label-fraction", "1", "--seed", "0") == 0
    run = tmp_path / "results/finetune/occupancy/nuscenes/small/spot-nuscenes-pt_1/labels_1/split_0/seed_0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0 < metrics["miou"] <= 1 and 0 < metrics["geometric_iou"] <= 1
