"""OccFeat: the LiDAR occupancy target, a voxel's projection and its teacher feature, the frozen teacher, learning."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from occbench.data.batch import collate
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.data.synthetic_camera import CameraConfig
from occbench.models.backbone import SparseBackbone
from occbench.models.image_encoder import (ImageEncoder, load_frozen_image_encoder, resized, rows_kept_aspect,
                                           save_image_encoder)
from occbench.models.voxelize import VoxelGrid
from occbench.pretrain.base import PretrainModel, RunContext
from occbench.pretrain.occfeat import OccFeat, distillation_loss, occupied_voxels, project, sample_features
from model_fixtures import save_tiny_dinov2, step_leaves_the_teacher_unchanged
from overfitting import overfit, pretext

SMALL_CAMERA = {"name": "front", "width": 64, "height": 40, "hfov_deg": 90.0, "position": [0.5, 0.0, -0.3],
                "pitch_deg": -5.0}


def test_a_voxel_is_occupied_when_a_point_lies_inside():
    grid = VoxelGrid((0.0, 0.0, -1.0, 2.0, 2.0, 1.0), (1.0, 1.0, 0.5))  # 2 x 2 x 4 voxels
    points = torch.tensor([[0.5, 1.5, -0.9], [0.6, 1.2, -0.8], [1.9, 0.1, 0.99], [2.5, 0.5, 0.0], [0.5, 0.5, 1.2]])
    occupied = occupied_voxels([points], grid)
    # (0, 1, 0) holds two points, (1, 0, 3) one; the last two lie outside the volume
    assert torch.nonzero(occupied).tolist() == [[0, 0, 1, 0], [0, 1, 0, 3]]


def test_a_known_voxel_projects_to_a_known_pixel():
    # Camera at the LiDAR origin looking along x, no roll: camera (x, y, z) = (-y, -z, x) of the LiDAR.
    to_camera = torch.tensor(CameraConfig("c", 320, 192, 90.0).lidar_to_camera(), dtype=torch.float32)
    intrinsics = torch.tensor([[102.5, 0, 160], [0, 102.5, 96], [0, 0, 1]])
    # the centre of voxel (120, 95, 10) of a volume from (-50, -50, -4) in 0.5 m voxels: (10.25, -2.25, 1.25),
    # in camera axes (2.25, -1.25, 10.25): u = 102.5 * 2.25 / 10.25 + 160, v = 102.5 * -1.25 / 10.25 + 96
    lower, size = torch.tensor([-50.0, -50.0, -4.0]), 0.5
    centre = lower + (torch.tensor([120, 95, 10]) + 0.5) * size
    behind, beside = torch.tensor([-10.25, -2.25, 1.25]), torch.tensor([1.0, -5.0, 0.0])  # u = 672.5 > 320
    centres = torch.stack([centre, behind, beside])
    uv, inside = project(centres, intrinsics.expand(3, 3, 3), to_camera.expand(3, 4, 4), 320, 192)
    torch.testing.assert_close(uv[0], torch.tensor([182.5, 83.5]))
    assert inside.tolist() == [True, False, False]


def test_the_teacher_feature_of_a_pixel_is_the_bilinear_sample_of_its_feature_map():
    # A feature map of 40 x 24 cells over a 320 x 192 image (stride 8): channel 0 is the cell's column,
    # channel 1 its row. Cell centres sit at 8 j + 4, so pixel u falls at column u / 8 - 0.5; bilinear
    # sampling of a linear ramp is exact there: (182.5, 83.5) -> (22.3125, 9.9375).
    columns, rows = torch.meshgrid(torch.arange(40.0), torch.arange(24.0), indexing="xy")
    features = torch.stack([columns, rows])[None].repeat(2, 1, 1, 1)
    features[1] *= 2  # the second image's map doubled: each voxel reads its own image
    uv = torch.tensor([[182.5, 83.5], [182.5, 83.5], [4.0, 4.0]])
    sampled = sample_features(features, torch.tensor([0, 1, 0]), uv, 320, 192)
    torch.testing.assert_close(sampled, torch.tensor([[22.3125, 9.9375], [44.625, 19.875], [0.0, 0.0]]))


@pytest.fixture
def teacher_file(tmp_path) -> Path:
    torch.manual_seed(1)
    path = tmp_path / "image_teacher.pt"
    save_image_encoder(path, ImageEncoder((8, 16, 16)), {})
    return path


@pytest.fixture
def camera_batch(smoke):
    """Two smoke frames with a 64 x 40 front camera."""
    settings = {**smoke["datasets"]["synthetic"], "cameras": [SMALL_CAMERA]}
    converter = SyntheticConverter(settings)
    frames = [(str(i), converter.load(source)) for i, source in enumerate(converter.sources()[:2])]
    return collate(frames, frozenset({"cameras"}))


def occfeat_model(smoke, teacher_file, **overrides) -> PretrainModel:
    """OccFeat on a volume of 1 m voxels (one column per BEV cell), 4 high: small enough for seconds a test."""
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(smoke, "small")
    settings = {**smoke["pretrain"]["methods"]["occfeat"],
                "volume": {"z_range": [-2.0, 2.0], "voxel_size": [1.0, 1.0, 1.0]}, **overrides}
    return PretrainModel(backbone, OccFeat(backbone, settings, RunContext(None, (), Path("."), teacher_file)))


def test_the_image_teacher_is_frozen_through_a_step(smoke, teacher_file, camera_batch):
    logs = step_leaves_the_teacher_unchanged(occfeat_model(smoke, teacher_file), camera_batch)
    assert logs["distilled_voxels"] > 0


def test_a_file_that_is_not_an_image_encoder_is_refused_as_teacher(tmp_path):
    path = tmp_path / "backbone.pt"
    torch.save({"backbone": {}}, path)
    with pytest.raises(ValueError, match="backbone.pt: not an occbench image-encoder checkpoint"):
        load_frozen_image_encoder(path)


def test_the_distillation_terms_by_hand():
    predicted = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    taught = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # cosine: 1 - 1 and 1 - 0, mean 0.5; l2: squared distances 1 and 1 + 4, mean 3
    assert distillation_loss(predicted, taught, "cosine").item() == 0.5
    assert distillation_loss(predicted, taught, "l2").item() == 3.0
    nothing = torch.zeros(0, 2, requires_grad=True)
    assert distillation_loss(nothing, torch.zeros(0, 2), "cosine").item() == 0.0


def test_occfeat_learns_occupancy_and_features_when_over_fitting_two_frames(smoke, teacher_file, camera_batch):
    # occupied voxels are 0.4 % of the volume: weighted 20, they are not all called empty at the start
    model = occfeat_model(smoke, teacher_file, pos_weight=20.0)
    before = pretext(model, camera_batch)
    losses = overfit(model, camera_batch, lr=3e-3, steps=30)
    after = pretext(model, camera_batch)
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])
    assert after["occupancy_iou"] > before["occupancy_iou"] + 0.2
    assert after["feature_cosine"] > before["feature_cosine"] + 0.3


def test_occfeat_pretrains_through_the_cli_from_the_image_teacher_the_dag_trains(tmp_path, monkeypatch):
    """image-teacher writes an encoder whose masked-pixel error falls on held-out images; the OccFeat
    job refuses to start without it, then records it by name and SHA-256, with its pretext metrics."""
    import json

    import yaml

    from occbench.io import sha256_file
    from occbench.models.checkpoint import read_checkpoint
    from smoke import make_dataset, occbench, smoke_params

    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    overlay = tmp_path / "occfeat.yaml"
    overlay.write_text(yaml.safe_dump({"grid": {"methods": ["scratch", "occfeat"]}}))
    extra = ("--params", str(overlay))
    run = ("--dataset", "synthetic", "--fraction", "1")
    assert occbench(*extra, "pretrain", "--backbone", "small", "--method", "occfeat", *run) != 0
    assert occbench(*extra, "image-teacher", "--method", "occfeat", *run) == 0
    encoder = "results/image_teacher/synthetic/occfeat/pt_1/encoder.pt"
    teacher_meta = json.loads(Path(encoder).with_name("run_meta.json").read_text())
    assert teacher_meta["sha256"] == sha256_file(encoder)
    pretext = teacher_meta["pretext"]
    assert pretext["final"]["masked_mse"] < pretext["init"]["masked_mse"]
    assert occbench(*extra, "pretrain", "--backbone", "small", "--method", "occfeat", *run) == 0
    run_dir = Path("results/pretrain/small/synthetic/occfeat+selfsup_image/pt_1")
    meta = json.loads((run_dir / "run_meta.json").read_text())
    assert meta["teacher"] == {"name": "selfsup_image", "file": encoder, "sha256": sha256_file(encoder)}
    assert set(meta["pretext"]["final"]) == {"occupancy_iou", "feature_cosine", "bce", "distillation"}
    # the head and the teacher are dropped: the checkpoint holds the backbone's state, all of it
    saved = read_checkpoint(run_dir / "checkpoint.pt")["backbone"]
    assert set(saved) == set(SparseBackbone.from_params(smoke_params(), "small").state_dict())


@pytest.fixture
def dinov2_teacher(tmp_path) -> dict:
    """A tiny DINOv2 backbone with 4 registers saved as Meta publishes one, pinned as OccFeat's teacher."""
    from occbench.io import sha256_file

    path = tmp_path / "dinov2_tiny_reg4_pretrain.pth"
    save_tiny_dinov2(path, registers=4)
    return {"name": "dinov2_tiny", "weights": str(path), "sha256": sha256_file(path), "kind": "dinov2"}


def test_a_pinned_dinov2_teacher_is_distilled_and_frozen_through_a_step(smoke, dinov2_teacher, camera_batch):
    from occbench.models.dinov2 import DinoV2

    path = Path(dinov2_teacher["weights"])
    model = occfeat_model(smoke, path, teacher=dinov2_teacher)
    assert isinstance(model.method.teacher, DinoV2) and model.method.to_feature.out_features == 128
    logs = step_leaves_the_teacher_unchanged(model, camera_batch)
    assert logs["distilled_voxels"] > 0 and logs["distillation"] > 0


def test_images_are_resized_to_the_teachers_rows_keeping_their_aspect_and_colour():
    assert rows_kept_aspect(900, 1600, 448) == (448, 796) and rows_kept_aspect(40, 64, None) == (40, 64)
    images = torch.zeros((2, 3, 40, 64))
    images[0], images[1] = torch.tensor([0.1, 0.7, 0.3])[:, None, None], 1.0
    shrunk = resized(images, (20, 32))
    assert shrunk.shape == (2, 3, 20, 32)
    assert torch.allclose(shrunk[0], images[0, :, :20, :32]) and torch.allclose(shrunk[1], torch.ones(3, 20, 32))
    assert resized(images, (40, 64)) is images


def test_a_pinned_teacher_sees_images_at_its_image_height(smoke, dinov2_teacher, camera_batch):
    model = occfeat_model(smoke, Path(dinov2_teacher["weights"]), teacher={**dinov2_teacher, "image_height": 28})
    teacher = model.method.teacher
    seen = []
    original = teacher.forward
    teacher.forward = lambda pixels: seen.append(tuple(pixels.shape)) or original(pixels)
    logs = step_leaves_the_teacher_unchanged(model, camera_batch)
    # the 64 x 40 camera at 28 rows is 45 columns wide, resized once to 3 x 2 patches of 14 pixels
    assert seen == [(2, 3, 28, 42)] and logs["distilled_voxels"] > 0


def test_a_pinned_dinov2_teacher_of_another_sha256_or_not_dinov2_is_refused(smoke, dinov2_teacher):
    from occbench.pretrain.job import teacher_record
    from occbench.workflow.grid import PinnedTeacher, PretrainRun

    path = Path(dinov2_teacher["weights"])
    pinned = PretrainRun("small", "synthetic", "occfeat", 1.0, PinnedTeacher("dinov2_tiny", path, "0" * 64, "dinov2"))
    with pytest.raises(ValueError, match=f"^{path}: SHA-256 is {dinov2_teacher['sha256']} .* pins 0000"):
        teacher_record(pinned)
    encoder = path.with_name("encoder.pt")
    save_image_encoder(encoder, ImageEncoder((8, 16)), {})
    with pytest.raises(ValueError, match=f"^{encoder}: not a DINOv2 backbone state dict"):
        occfeat_model(smoke, encoder, teacher={**dinov2_teacher, "weights": str(encoder)})


def test_occfeat_pretrains_through_the_cli_from_a_pinned_dinov2_teacher(tmp_path, monkeypatch, dinov2_teacher):
    """One epoch of the smoke world: the pinned file is read from disk, recorded by name and SHA-256."""
    import json

    import yaml

    from occbench.cli import main
    from smoke import make_dataset, smoke_params

    make_dataset(tmp_path)
    monkeypatch.chdir(tmp_path)
    params = smoke_params()
    params["grid"]["methods"] = ["scratch", "occfeat"]
    params["pretrain"]["methods"]["occfeat"]["teacher"] = dinov2_teacher
    params_file = tmp_path / "dinov2.yaml"
    params_file.write_text(yaml.safe_dump(params))
    assert main(["--params", str(params_file), "pretrain", "--backbone", "small", "--method", "occfeat",
                 "--dataset", "synthetic", "--fraction", "1"]) == 0
    meta = json.loads(Path("results/pretrain/small/synthetic/occfeat+dinov2_tiny/pt_1/run_meta.json").read_text())
    assert meta["teacher"] == {"name": "dinov2_tiny", "file": dinov2_teacher["weights"],
                               "sha256": dinov2_teacher["sha256"]}
    assert meta["steps"] > 0 and set(meta["pretext"]["final"]) == {"occupancy_iou", "feature_cosine", "bce",
                                                                    "distillation"}


def test_params_name_a_pinned_teachers_kind_among_those_occfeat_reads(smoke, dinov2_teacher):
    import copy

    from occbench.config import ParamsError, validate_params

    params = copy.deepcopy(smoke)
    params["pretrain"]["methods"]["occfeat"]["teacher"] = dinov2_teacher
    validate_params(params)
    params["pretrain"]["methods"]["occfeat"]["teacher"]["kind"] = "clip"
    with pytest.raises(ParamsError, match="pretrain.methods.occfeat.teacher.kind: 'clip' is not one of "
                                          r"\['occbench_image_encoder', 'dinov2'\]"):
        validate_params(params)
