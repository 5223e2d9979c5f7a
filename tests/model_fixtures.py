"""Fixtures for model tests: the smoke params, a small batch of synthetic frames, hand-made head outputs,
and the check that a step trains a student but not its frozen teacher."""

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


def head_output_giving(columns, logits):
    """The BEV-to-columns head output (1, channels, y, x) that ``columns.logits`` unfolds into ``logits``
    (classes, X, Y, Z): logit (c, x, y, z) is channel ((c Z + z) k + y % k) k + x % k of cell (x // k, y // k)."""
    import torch

    k, depth = columns.k, columns.depth
    c, x, y, z = torch.meshgrid(*(torch.arange(n) for n in logits.shape), indexing="ij")
    output = torch.zeros(1, logits.shape[0] * depth * k * k, logits.shape[2] // k, logits.shape[1] // k)
    output[0, ((c * depth + z) * k + y % k) * k + x % k, y // k, x // k] = logits
    return output


def step_leaves_the_teacher_unchanged(model, batch) -> dict:
    """One AdamW step of a PretrainModel whose method holds a frozen ``teacher``: asserts that the teacher
    stays in eval mode, is not among the trained parameters and is unchanged, and that the student
    changes; returns the step's logs."""
    import torch

    teacher = model.method.teacher
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = model.backbone.stem[0].weight.clone()
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-2)
    model.train()
    assert not teacher.training  # BatchNorm keeps the teacher's running statistics
    loss, logs = model(batch, torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    assert all(torch.equal(teacher_before[k], v) for k, v in teacher.state_dict().items())
    assert not torch.equal(student_before, model.backbone.stem[0].weight)
    trainable = {id(p) for group in model.parameter_groups() for p in group["params"]}
    assert not any(id(p) in trainable for p in teacher.parameters())
    return logs


TINY_DINOV2 = {"embed_dim": 128, "depth": 2, "ffn_hidden": 256, "patch_size": 14, "grid": 4}  # 2 heads of 64


def save_tiny_dinov2(path, registers: int = 0, ffn: str = "mlp"):
    """A tiny randomly initialised DINOv2 backbone saved as Meta publishes one (a plain state dict of
    its parameters), for the loading code to read as a pinned teacher; returns the model."""
    import torch

    from occbench.models.dinov2 import DinoV2, DinoV2Architecture

    torch.manual_seed(registers)
    model = DinoV2(DinoV2Architecture(**TINY_DINOV2, ffn=ffn, registers=registers)).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0.0, 0.2)
    torch.save(model.state_dict(), path)
    return model
