"""What every training job shares: seeding, epoch order, resumable epochs."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from occbench.io import atomic_path


def seed_everything(seed: int, threads: int) -> torch.Generator:
    """Fix every RNG a run touches; return the generator the run draws from."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    return torch.Generator().manual_seed(seed)


def epoch_order(items: list[str], seed: int, epoch: int) -> list[str]:
    """Frame order of one epoch: a function of (seed, epoch) alone, so resuming keeps it."""
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    return [items[i] for i in order]


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def run_epochs(state_path: Path, digest: str, epochs: int, modules: dict[str, Any],
               generator: torch.Generator, run_epoch: Callable[[int], dict[str, float]]) -> list[dict]:
    """Run ``run_epoch`` for each epoch, saving a resume state after each one.

    ``modules`` maps names to objects with state_dict/load_state_dict (models,
    optimizer, scheduler). A state written by a run with another ``digest``
    (other hyperparameters) is ignored rather than resumed.
    """
    history: list[dict] = []
    start = 0
    if state_path.exists():
        state = torch.load(state_path, weights_only=False)
        if state["digest"] == digest:
            for name, module in modules.items():
                module.load_state_dict(state["modules"][name])
            generator.set_state(state["generator"])
            history, start = state["history"], state["epoch"] + 1
            print(f"resuming {state_path.parent} after epoch {start}", file=sys.stderr)
    for epoch in range(start, epochs):
        history.append({"epoch": epoch, **run_epoch(epoch)})
        save_torch({
            "digest": digest,
            "epoch": epoch,
            "modules": {name: module.state_dict() for name, module in modules.items()},
            "generator": generator.get_state(),
            "history": history,
        }, state_path)
    return history
