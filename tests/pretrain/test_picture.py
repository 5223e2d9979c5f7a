"""PICTURE: I2Mask's groups and ratios, the Chamfer and point targets, the frozen teacher, and that it learns."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import CheckpointMismatchError, save_checkpoint
from occbench.models.voxelize import VoxelGrid, voxelize
from occbench.pretrain.base import PretrainModel, RunContext
from occbench.pretrain.picture import (
    PICTURE,
    PictureSettings,
    chamfer,
    cluster_groups,
    cluster_mask_ratios,
    i2mask,
    sparse_lookup,
    voxel_point_targets,
)
from model_fixtures import step_leaves_the_teacher_unchanged


def unit(degrees: float) -> list[float]:
    return [np.cos(np.radians(degrees)), np.sin(np.radians(degrees))]


def test_groups_take_the_clusters_farthest_apart_first():
    # 0, 120 and 240 degrees are pairwise farthest (cosine distance 1.5); of the rest,
    # 60, 180 and 300 degrees; the two near 0 degrees are left for the last group.
    centres = np.array([unit(a) for a in (0, 5, 60, 120, 180, 240, 300, 355)])
    assert cluster_groups(centres, [3, 3, 2]).tolist() == [0, 2, 1, 0, 1, 0, 1, 2]


def test_a_cluster_ratio_is_its_group_ratio_scaled_by_its_consistency():
    # spread: the share of members beyond 0.6 from the centre. Cluster 0: both 0.5 from it
    # (spread 0); cluster 1: both 1.0 (spread 1, the largest); cluster 2: 0.8, 0.8, 0.1, 0.1 (0.5)
    features = np.array([[0.5, 0], [-0.5, 0], [10, 1], [10, -1], [20, 0.8], [20, -0.8], [20.1, 0], [19.9, 0]])
    labels = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    ratios = cluster_mask_ratios(features, labels, np.array([0, 1, 0]), [0.9, 0.45], 0.6)
    np.testing.assert_allclose(ratios, [0.9 * 1.0, 0.45 * 0.0, 0.9 * 0.5])


def settings(**overrides) -> PictureSettings:
    values = dict(teacher={"method": "also"}, points_per_voxel=4, max_target_points=8, clusters=4,
                  group_sizes=[2, 2], group_mask_ratios=[0.9, 0.45], spread_threshold=0.6,
                  chamfer_weight_start=1.0, chamfer_weight_end=0.5, feature_weight=1.0,
                  loss_voxels_per_frame=64, hidden_dim=16)
    return PictureSettings(**{**values, **overrides})


def test_i2mask_masks_each_cluster_by_its_ratio():
    # Four tight clusters on the unit circle, 0/90 and 180/270 degrees apart in pairs;
    # every cluster is under the spread threshold, so the ratios are the group ratios.
    rng = np.random.default_rng(0)
    centres = np.array([unit(a) for a in (0, 90, 180, 270)])
    sizes = [40, 30, 20, 10]
    features = np.concatenate([c + 0.01 * rng.standard_normal((n, 2)) for c, n in zip(centres, sizes)])
    masked = i2mask(torch.tensor(features, dtype=torch.float32), settings(), torch.Generator().manual_seed(0))
    # first group: the most distant pair (0 and 180, or 90 and 270: both 2.0 apart); the
    # greedy search keeps the first, clusters 0 and 2 (90 % masked); 1 and 3 get 45 %
    counts = [int(part.sum()) for part in masked.split(sizes)]
    assert counts == [int(40 * 0.9), int(30 * 0.45), int(20 * 0.9), int(10 * 0.45)]


def test_chamfer_against_a_hand_computed_value_ignoring_padding():
    predicted = torch.tensor([[[0.0, 0, 0], [1, 0, 0]]])
    target = torch.tensor([[[0.0, 0, 0], [0, 2, 0], [9, 9, 9]]])
    valid = torch.tensor([[True, True, False]])
    # predicted -> target: 0 and 1 (squared), mean 0.5; target -> predicted: 0 and 4, mean 2
    assert chamfer(predicted, target, valid).tolist() == [2.5]


def test_point_targets_are_offsets_in_voxel_units_capped_per_voxel():
    grid = VoxelGrid((0.0, 0.0, 0.0, 4.0, 4.0, 4.0), (1.0, 1.0, 2.0))
    points = torch.tensor([[0.5, 0.5, 1.0], [0.75, 0.5, 1.5], [0.25, 0.5, 0.5], [2.5, 2.5, 1.0]])
    voxels = voxelize([points], [torch.zeros(4)], grid)
    rows = torch.tensor([0])  # the voxel at the origin holds three points; keep at most two
    targets, valid = voxel_point_targets([points], voxels, rows, 2, grid, torch.Generator().manual_seed(0))
    assert valid.tolist() == [[True, True]]
    expected = {(0.0, 0.0, 0.0), (0.25, 0.0, 0.25), (-0.25, 0.0, -0.25)}
    got = {tuple(round(v, 4) for v in row) for row in targets[0].tolist()}
    assert len(got) == 2 and got <= expected


def test_sparse_lookup_finds_active_sites_and_zeros_the_rest(tiny_backbone_batch):
    backbone, _, voxels = tiny_backbone_batch
    level = backbone(voxels).levels[4]
    wanted = torch.cat([level.indices[:3], torch.tensor([[0, 0, 0, 0]], dtype=level.indices.dtype)])
    features, found = sparse_lookup(level, wanted)
    assert found.tolist() == [True, True, True, bool((level.indices == 0).all(dim=1).any())]
    assert torch.equal(features[:3], level.features[:3])


@pytest.fixture
def teacher_file(smoke, tmp_path) -> Path:
    torch.manual_seed(1)
    teacher = SparseBackbone.from_params(smoke, "small")
    path = tmp_path / "teacher.pt"
    save_checkpoint(path, teacher, {"voxelization": smoke["voxelization"], "backbone_spec": smoke["backbones"]["small"]},
                    [name for name, _ in teacher.named_parameters()])
    return path


def picture_model(smoke, teacher_file, **overrides) -> PretrainModel:
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(smoke, "small")
    method_settings = {**smoke["pretrain"]["methods"]["picture"], **overrides}
    return PretrainModel(backbone, PICTURE(backbone, method_settings, RunContext(None, (), Path("."), teacher_file)))


def test_the_teacher_is_frozen_and_only_the_visible_voxels_reach_the_student(smoke, teacher_file,
                                                                            tiny_backbone_batch):
    _, batch, voxels = tiny_backbone_batch
    model = picture_model(smoke, teacher_file)
    model.train()
    output, seen = model.run(batch, torch.Generator().manual_seed(0))
    assert 0 < seen.features.shape[0] < voxels.features.shape[0]
    assert output.voxel_features.features.shape[0] == seen.features.shape[0]
    step_leaves_the_teacher_unchanged(model, batch)


def test_the_chamfer_weight_decays_linearly_over_the_epochs(smoke, teacher_file):
    method = picture_model(smoke, teacher_file, chamfer_weight_start=0.9, chamfer_weight_end=0.3).method
    weights = []
    for epoch in range(4):
        method.set_progress(epoch, 4)
        weights.append(method.chamfer_weight)
    np.testing.assert_allclose(weights, [0.9, 0.7, 0.5, 0.3])


def test_a_teacher_on_another_voxel_grid_is_refused(smoke, teacher_file):
    smoke = {**smoke, "voxelization": {**smoke["voxelization"], "voxel_size": [0.5, 0.5, 0.5]}}
    with pytest.raises(CheckpointMismatchError, match="teacher.pt: checkpoint.s voxel grid .* is not the student.s"):
        picture_model(smoke, teacher_file)


def test_picture_learns_both_targets_when_over_fitting_two_frames(smoke, teacher_file, tiny_backbone_batch):
    _, batch, _ = tiny_backbone_batch
    model = picture_model(smoke, teacher_file, chamfer_weight_start=0.5, chamfer_weight_end=0.5,
                          feature_weight=10.0)
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=3e-3)
    before = model.pretext_metrics(batch, torch.Generator().manual_seed(0))
    for step in range(40):
        model.train()
        loss, _ = model(batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = model.pretext_metrics(batch, torch.Generator().manual_seed(0))
    assert after["chamfer"] < 0.9 * before["chamfer"]
    assert after["feature_cosine"] > before["feature_cosine"] + 0.3


def test_a_pinned_teacher_whose_hash_differs_is_refused(tmp_path):
    from occbench.pretrain.job import teacher_record
    from occbench.workflow.grid import PinnedTeacher, PretrainRun

    weights = tmp_path / "seal.pt"
    weights.write_bytes(b"not the pinned file")
    pinned = PretrainRun("small", "synthetic", "picture", 1.0, PinnedTeacher("seal", weights, "0" * 64))
    with pytest.raises(ValueError, match=f"{weights}: SHA-256 is {hashlib.sha256(weights.read_bytes()).hexdigest()}"
                                         r" \(of 19 bytes\), but pretrain.methods.picture.teacher pins 0000"):
        teacher_record(pinned)


def test_picture_pretrains_through_the_cli_from_alsos_checkpoint_and_fine_tunes(tmp_path, monkeypatch):
    """The smoke grid with PICTURE: its job reads the ALSO run's checkpoint, records it, and its
    own checkpoint passes fine-tuning's loaded-parameter check."""
    import json

    import yaml

    from occbench.io import sha256_file
    from smoke import make_dataset, occbench

    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    taught = tmp_path / "taught.yaml"
    taught.write_text(yaml.safe_dump({"grid": {"methods": ["scratch", "picture"]}}))
    extra = ("--params", str(taught))
    assert occbench(*extra, "pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", "picture",
                    "--fraction", "1") != 0  # ALSO's checkpoint is not there yet
    for method in ("also", "picture"):
        assert occbench(*extra, "pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", method,
                        "--fraction", "1") == 0
    run_dir = Path("results/pretrain/small/synthetic/picture+also/pt_1")
    meta = json.loads((run_dir / "run_meta.json").read_text())
    teacher = "results/pretrain/small/synthetic/also/pt_1/checkpoint.pt"
    assert meta["teacher"] == {"name": "also", "file": teacher, "sha256": sha256_file(teacher)}
    assert meta["run"]["variant"] == "picture+also"
    assert set(meta["pretext"]["final"]) == {"chamfer", "feature_cosine"}
    assert occbench(*extra, "finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
                    "--source", "picture+also-synthetic-pt_1", "--label-fraction", "1", "--seed", "0") == 0
    (finetuned_meta,) = Path("results/finetune/segmentation/synthetic/small/picture+also-synthetic-pt_1/labels_1"
                             ).rglob("run_meta.json")
    finetuned = json.loads(finetuned_meta.read_text())
    assert finetuned["run"]["method"] == "picture+also"
    assert finetuned["pretrained"]["loaded_fraction"] == 1.0


def test_a_cloud_too_small_to_cluster_is_not_masked_and_costs_nothing(smoke, teacher_file):
    from occbench.data.batch import collate, subsample
    from occbench.data.converters.synthetic import SyntheticConverter

    converter = SyntheticConverter(smoke["datasets"]["synthetic"])
    frame = converter.load(converter.sources()[0])
    batch = collate([("0", subsample(frame, 5, np.random.default_rng(0)))])  # 5 voxels at most, 8 clusters
    model = picture_model(smoke, teacher_file)
    loss, logs = model(batch, torch.Generator().manual_seed(0))
    assert loss.item() == 0.0 and logs["mask_ratio"] == 0.0
    loss.backward()  # a step on it is a no-op, not an error
