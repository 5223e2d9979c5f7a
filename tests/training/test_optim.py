"""Schedules are sized from the run's real number of steps."""

import pytest
import torch

from occbench.training.optim import build_optimizer, build_schedule


def _lrs(schedule: dict, total: int) -> list[float]:
    optimizer = build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}],
                                {"name": "adamw", "lr": 1.0, "weight_decay": 0.0})
    scheduler = build_schedule(optimizer, schedule, total)
    lrs = []
    for _ in range(total):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_constant_stays_and_cosine_reaches_zero_at_the_last_step():
    assert _lrs({"name": "constant", "warmup_fraction": 0.0}, 5) == [1.0] * 5
    cosine = _lrs({"name": "cosine", "warmup_fraction": 0.0}, 4)
    assert cosine == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_warmup_ramps_linearly_from_a_tenth():
    lrs = _lrs({"name": "constant", "warmup_fraction": 0.4}, 5)  # 2 warm-up steps
    assert lrs == pytest.approx([0.1, 0.55, 1.0, 1.0, 1.0])


def test_onecycle_peaks_after_its_warmup_share_and_ends_near_zero():
    lrs = _lrs({"name": "onecycle", "warmup_fraction": 0.3}, 100)
    assert max(lrs) == pytest.approx(1.0, rel=1e-3) and lrs.index(max(lrs)) in (29, 30)
    assert lrs[-1] < 1e-3


def test_each_group_trains_at_its_share_of_the_lr_through_the_schedule():
    slow, fast = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = build_optimizer([{"params": [slow], "lr_scale": 0.1}, {"params": [fast]}],
                                {"name": "sgd", "lr": 2.0, "weight_decay": 0.0})
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.2, 2.0])
    scheduler = build_schedule(optimizer, {"name": "onecycle", "warmup_fraction": 0.5}, 10)
    for _ in range(4):  # OneCycleLR peaks at step pct_start * total - 1
        optimizer.step()
        scheduler.step()
    assert [group["lr"] for group in optimizer.param_groups] == pytest.approx([0.2, 2.0])


@pytest.mark.parametrize("warmup", [0.0, 0.3, 1.0])
def test_onecycle_runs_at_any_warmup_share_down_to_two_steps(warmup):
    """Two steps: OneCycleLR starts at lr / 25 and ends at lr / 25 / 1e4 whatever the warm-up share
    (torch's own sizing divided by zero at warm-up 0, at a share of 1 / steps and at 1)."""
    assert _lrs({"name": "onecycle", "warmup_fraction": warmup}, 2) == pytest.approx([0.04, 4e-6])
    lrs = _lrs({"name": "onecycle", "warmup_fraction": warmup}, 3)
    assert lrs[0] == pytest.approx(0.04) and lrs[-1] == pytest.approx(4e-6) and max(lrs) > 0.04


def test_onecycle_of_one_step_trains_at_the_peak():
    assert _lrs({"name": "onecycle", "warmup_fraction": 0.3}, 1) == [1.0]
