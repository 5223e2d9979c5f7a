"""Curves of the grid's runs are gathered for `dvc plots show`; curves of runs left out of the grid go."""

import pytest

from occbench.report.curves import collect_curves, curve_name
from occbench.workflow.grid import Grid
from smoke import smoke_params


def test_each_run_contributes_its_curves_and_stale_ones_are_removed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    grid = Grid(smoke_params())
    runs = [run.directory for run in grid.pretrain_runs] + [run.directory for run in grid.finetune_runs]
    for number, run_dir in enumerate(runs):
        (run_dir / "curves").mkdir(parents=True)
        (run_dir / "curves" / "steps.tsv").write_text(f"step\tloss\n0\t{number}\n")
        (run_dir / "curves" / "epochs.tsv").write_text(f"epoch\tloss\n0\t{number}\n")
    stale = tmp_path / "reports" / "curves" / "steps" / "finetune-old-run.tsv"
    stale.parent.mkdir(parents=True)
    stale.write_text("step\tloss\n")
    collect_curves(grid, tmp_path / "reports")
    steps = sorted(p.name for p in (tmp_path / "reports" / "curves" / "steps").iterdir())
    assert steps == sorted(curve_name(run_dir) for run_dir in runs)
    assert "pretrain-small-synthetic-also-pt_1.tsv" in steps
    last = tmp_path / "reports" / "curves" / "epochs" / curve_name(runs[-1])
    assert last.read_text() == f"epoch\tloss\n0\t{len(runs) - 1}\n"


def test_a_run_without_curves_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="pt_1/curves/steps.tsv: missing"):
        collect_curves(Grid(smoke_params()), tmp_path / "reports")
