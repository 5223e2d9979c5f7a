"""The harness of the tests that each method learns: over-fit two frames of the default world."""

from __future__ import annotations

import torch

from occbench.config import load_params
from occbench.data.batch import Batch, collate
from occbench.data.converters.synthetic import SyntheticConverter
from occbench.models.backbone import SparseBackbone
from occbench.pretrain import METHODS
from occbench.pretrain.base import PretrainModel
from smoke import ROOT


def two_default_frames(needs: frozenset[str] = frozenset()) -> tuple[dict, Batch]:
    """params.yaml and a batch of its synthetic world's first two frames, with the optional fields ``needs``."""
    params = load_params(ROOT / "params.yaml")
    converter = SyntheticConverter(params["datasets"]["synthetic"])
    frames = [(str(i), converter.load(source)) for i, source in enumerate(converter.sources()[:2])]
    return params, collate(frames, needs)


def default_model(params: dict, method: str) -> PretrainModel:
    """The small backbone (seed 0) with ``method`` at its params.yaml settings."""
    torch.manual_seed(0)
    backbone = SparseBackbone.from_params(params, "small")
    return PretrainModel(backbone, METHODS[method](backbone, params["pretrain"]["methods"][method]))


def pretext(model: PretrainModel, batch: Batch) -> dict[str, float]:
    """The pretext metrics in eval mode, for one fixed random stream (queries, masks)."""
    model.eval()
    metrics = model.pretext_metrics(batch, torch.Generator().manual_seed(123))
    model.train()
    return metrics


def overfit(model: PretrainModel, batch: Batch, lr: float, steps: int) -> list[float]:
    """``steps`` AdamW steps on ``batch`` (step s draws from seed s); the loss of each."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for step in range(steps):
        loss, _ = model(batch, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
