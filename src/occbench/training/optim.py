"""Optimizers and learning-rate schedules named in params.yaml, sized from the real number of steps."""

from __future__ import annotations

from typing import Iterable

import torch

OPTIMIZERS = {
    "adamw": torch.optim.AdamW,
    "adam": torch.optim.Adam,
    "sgd": lambda parameters, **kwargs: torch.optim.SGD(parameters, momentum=0.9, **kwargs),  # MinkUNet's
}
SCHEDULES = ("onecycle", "cosine", "constant")


def build_optimizer(groups: Iterable[dict], settings: dict) -> torch.optim.Optimizer:
    """settings: {name, lr, weight_decay}; sgd has Nesterov-free momentum 0.9.

    groups: [{"params": [...], "lr_scale": s}]: a group trains at lr x s (e.g. a
    pre-trained backbone slower than a new head).
    """
    lr = settings["lr"]
    return OPTIMIZERS[settings["name"]]([{"params": g["params"], "lr": lr * g.get("lr_scale", 1.0)} for g in groups],
                                        lr=lr, weight_decay=settings["weight_decay"])


def build_schedule(optimizer: torch.optim.Optimizer, settings: dict,
                   total_steps: int) -> torch.optim.lr_scheduler.LRScheduler:
    """settings: {name, warmup_fraction}; stepped once per optimizer step, ``total_steps`` in all.

    onecycle: warm-up to lr over warmup_fraction of the steps, then cosine annealing to
    lr / 1e4 (OneCycleLR, its pct_start). cosine and constant: a linear warm-up from
    lr / 10 over warmup_fraction of the steps (none at 0), then cosine to 0 or flat.
    """
    name, warmup = settings["name"], settings["warmup_fraction"]
    if name == "onecycle":
        if total_steps == 1:  # no cycle fits in one step: it trains at the peak lr
            return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
        peaks = [group["lr"] for group in optimizer.param_groups]
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, peaks, total_steps=total_steps,
                                                   pct_start=_onecycle_share(warmup, total_steps))
    warmup_steps = int(round(warmup * total_steps))
    rest = max(total_steps - warmup_steps, 1)
    if name == "cosine":
        main = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=rest)
    elif name == "constant":
        main = torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)
    else:
        raise ValueError(f"unknown schedule {name!r}; known: {list(SCHEDULES)}")
    if warmup_steps == 0:
        return main
    ramp = torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=warmup_steps)
    return torch.optim.lr_scheduler.SequentialLR(optimizer, [ramp, main], milestones=[warmup_steps])


def _onecycle_share(warmup: float, total_steps: int) -> float:
    """OneCycleLR's pct_start: its warm-up ends at step pct_start * total - 1 and divides by that
    phase's length, so the end must lie strictly after step 0 and before the last step. A share
    that puts it on step 0 or on the last (warm-up 0 or up to 1 / total; 1) moves half a step in;
    every other share is torch's."""
    if warmup * total_steps <= 1:
        return 1.5 / total_steps
    return 1 - 0.5 / total_steps if warmup >= 1 else warmup
