"""``occbench aggregate`` and ``occbench report``: from the grid's runs to reports/.

Only runs of the current grid are read (results/ may hold runs of older
grids), so a table never mixes in a run nobody asked for.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from occbench.io import write_json, write_text
from occbench.report.aggregate import collect_runs, dvc_metrics, read_summary, summarise
from occbench.report.curves import collect_curves
from occbench.report.methods import write_methods_table
from occbench.report.plots import plot_label_efficiency, plot_pretrain_scaling
from occbench.report.pretraining import collect_pretraining, write_pretraining_table
from occbench.report.tables import write_tables
from occbench.tasks import TASKS
from occbench.workflow.grid import Grid

MAIN_METRICS = {name: task.main_metric for name, task in TASKS.items()}
MORE_METRICS = {name: task.more_metrics for name, task in TASKS.items() if task.more_metrics}


def aggregate(grid: Grid, out_dir: Path) -> None:
    missing = [str(run.metrics) for run in grid.finetune_runs if not run.metrics.exists()]
    if missing:
        raise ValueError(f"{len(missing)} run(s) of the grid have no metrics yet, e.g. {missing[0]}")
    runs = collect_runs(run.directory for run in grid.finetune_runs)
    summary = summarise(runs)
    write_text(out_dir / "runs.csv", runs.to_csv(index=False))
    write_text(out_dir / "summary.csv", summary.to_csv(index=False))
    write_json(out_dir / "metrics.json", dvc_metrics(summary, MAIN_METRICS))
    write_text(out_dir / "pretraining.csv", collect_pretraining(grid.pretrain_runs).to_csv(index=False))
    collect_curves(grid, out_dir)


def report(grid: Grid, out_dir: Path) -> None:
    summary = read_summary(out_dir / "summary.csv")
    methods = grid.params["grid"]["methods"]
    write_tables(summary, MAIN_METRICS, out_dir / "tables", method_order=methods, more_metrics=MORE_METRICS)
    plot_label_efficiency(summary, MAIN_METRICS, out_dir / "figures", method_order=methods)
    plot_pretrain_scaling(summary, MAIN_METRICS, out_dir / "figures", method_order=methods)
    write_pretraining_table(pd.read_csv(out_dir / "pretraining.csv"), out_dir / "tables")
    write_methods_table(grid.pretrain_runs, out_dir / "tables")
