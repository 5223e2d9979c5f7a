"""Fixtures for model tests: the smoke params and a small batch of synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest

from occbench.data.dataset import to_batch
from occbench.data.synthetic import SceneConfig, SensorProfile, generate_frame
from occbench.models.backbone import SparseBackbone
from occbench.models.voxelize import voxelize
from smoke import smoke_params


@pytest.fixture(scope="session")
def smoke() -> dict:
    return smoke_params()


@pytest.fixture
def tiny_backbone_batch(smoke):
    """(backbone, batch, voxels) for two smoke-sized synthetic frames."""
    import torch

    settings = smoke["datasets"]["synthetic"]
    sensor, scene = SensorProfile.from_dict(settings["sensor"]), SceneConfig.from_dict(settings["scene"])
    frames = [generate_frame(0, i, sensor, scene) for i in range(2)]
    batch = to_batch(frames, 3000, np.random.default_rng(0))
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(smoke, "small")
    return backbone, batch, voxelize(batch.points, batch.intensity, backbone.grid)
