"""Every training run's curves gathered under reports/curves/, where `dvc plots show` renders them.

dvc.yaml declares two plot folders, ``steps`` (x: step) and ``epochs`` (x: epoch);
each run of the grid contributes one TSV to each, named after its results folder.
Curves of runs no longer in the grid are removed, as the tables drop their runs.
"""

from __future__ import annotations

from pathlib import Path

from occbench.io import write_text
from occbench.workflow.grid import RESULTS, Grid

CURVES = ("steps", "epochs")


def curve_name(run_dir: Path) -> str:
    """results/pretrain/small/synthetic/also/pt_1 -> pretrain-small-synthetic-also-pt_1.tsv"""
    return "-".join(run_dir.relative_to(RESULTS).parts) + ".tsv"


def collect_curves(grid: Grid, out_dir: Path) -> None:
    run_dirs = [run.directory for run in grid.pretrain_runs] + [run.directory for run in grid.finetune_runs]
    for curve in CURVES:
        target = out_dir / "curves" / curve
        target.mkdir(parents=True, exist_ok=True)
        wanted = {}
        for run_dir in run_dirs:
            source = run_dir / "curves" / f"{curve}.tsv"
            if not source.exists():
                raise ValueError(f"{source}: missing; the run finished without its {curve} curve")
            wanted[curve_name(run_dir)] = source
        for stale in set(p.name for p in target.iterdir()) - set(wanted):
            (target / stale).unlink()
        for name, source in wanted.items():
            write_text(target / name, source.read_text())
