"""The experiment overlays under experiments/: each validates, and reuses the default grid's runs it says it does."""

from __future__ import annotations

import pytest

from occbench.config import load_params
from occbench.workflow.grid import Grid, finetune_digest, pretrain_digest
from smoke import ROOT


def test_method_gains_adds_every_method_and_reuses_the_default_scratch_and_also_runs():
    default = load_params(ROOT / "params.yaml")
    gains = load_params(ROOT / "params.yaml", ROOT / "experiments" / "method_gains.yaml")
    default_grid, gains_grid = Grid(default), Grid(gains)
    assert {run.method for run in gains_grid.pretrain_runs} == {"also", "occupancy_mae", "picture", "spot", "occfeat"}
    shared = [run for run in default_grid.finetune_runs if run.label_fraction == 0.05]
    assert len(shared) == 18  # scratch and ALSO at 25 % and 100 %, 6 pairs each
    by_metrics = {run.metrics: run for run in gains_grid.finetune_runs}
    reused = [run for run in shared if run.metrics in by_metrics]
    assert {run.source for run in reused} == {"scratch", "also-synthetic-pt_1"}
    # The same inputs, hence the same digests: Snakemake re-runs none of them.
    for run in reused:
        assert finetune_digest(gains, by_metrics[run.metrics]) == finetune_digest(default, run)
    also = next(run for run in default_grid.pretrain_runs if run.method == "also" and run.fraction == 1.0)
    assert pretrain_digest(gains, also) == pretrain_digest(default, also)
    assert len(gains_grid.finetune_runs) == 36  # 6 sources x 6 pairs


@pytest.mark.parametrize("overlay, changed", [
    ("occupancy_mae_longer.yaml", lambda params: params["pretrain"]["epochs"] == 24),
    ("occupancy_mae_published_masks.yaml",
     lambda params: params["pretrain"]["methods"]["occupancy_mae"]["mask_ratios"] == [0.5, 0.3, 0.3]),
])
def test_an_occupancy_mae_variant_pretrains_once_and_reuses_the_default_scratch_runs(overlay, changed):
    default = load_params(ROOT / "params.yaml")
    variant = load_params(ROOT / "params.yaml", ROOT / "experiments" / overlay)
    assert changed(variant) and not changed(default)
    grid = Grid(variant)
    assert [run.method for run in grid.pretrain_runs] == ["occupancy_mae"]
    scratch = {run.metrics: run for run in Grid(default).finetune_runs if run.source == "scratch"}
    paired = [run for run in grid.finetune_runs if run.source == "scratch"]
    assert len(paired) == 6 and all(run.metrics in scratch for run in paired)
    for run in paired:
        assert finetune_digest(variant, run) == finetune_digest(default, scratch[run.metrics])


def test_task_gains_fine_tunes_detection_and_occupancy_from_the_default_also_checkpoint():
    default = load_params(ROOT / "params.yaml")
    tasks = load_params(ROOT / "params.yaml", ROOT / "experiments" / "task_gains.yaml")
    default_also = next(run for run in Grid(default).pretrain_runs if run.method == "also" and run.fraction == 1.0)
    grid = Grid(tasks)
    assert grid.pretrain_runs == [default_also]
    assert pretrain_digest(tasks, default_also) == pretrain_digest(default, default_also)
    runs = grid.finetune_runs
    assert {run.task for run in runs} == {"detection", "occupancy"}
    assert {run.source for run in runs} == {"scratch", "also-synthetic-pt_1"}
    assert {run.label_fraction for run in runs} == {0.05}
    assert len(runs) == 24  # 2 tasks x 2 sources x 6 pairs (seeds 0, 1 x label splits 0, 1, 2)
