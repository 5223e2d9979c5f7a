"""Fixtures for model tests: the smoke params and a small batch of synthetic frames."""

from __future__ import annotations

import numpy as np
import pytest

from occbench.data.batch import collate, subsample
from occbench.data.converters.synthetic import SyntheticConverter
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

    converter = SyntheticConverter(smoke["datasets"]["synthetic"])
    frames = [converter.load(source) for source in converter.sources()[:2]]
    rng = np.random.default_rng(0)
    batch = collate([(str(i), subsample(frame, 3000, rng)) for i, frame in enumerate(frames)])
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(smoke, "small")
    return backbone, batch, voxelize(batch.points, batch.intensity, backbone.grid)
