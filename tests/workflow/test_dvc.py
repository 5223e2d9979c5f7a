"""dvc repro regenerates the tables; a parameter change shows up in dvc metrics diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _run(cwd: Path, *command: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


# The smoke grid's sources: scratch and each method of grid.methods, by their row ids in the DVC metrics
# and their first cell in the tables.
ROWS = {"scratch": "scratch", "also@synthetic_pt_100pct": "also (synthetic, 100 %)",
        "occfeat+selfsup_image@synthetic_pt_100pct": "occfeat+selfsup_image (synthetic, 100 %)",
        "occupancy_mae@synthetic_pt_100pct": "occupancy_mae (synthetic, 100 %)",
        "picture+also@synthetic_pt_100pct": "picture+also (synthetic, 100 %)",
        "spot@synthetic_pt_100pct": "spot (synthetic, 100 %)"}
# Each task's tables (its main metric's, then one per further headline metric), label fractions, and
# the keys of each run's metrics.json that hold a fraction in [0, 1].
TASK_TABLES = {"segmentation": ["segmentation_synthetic_small"],
               "occupancy": ["occupancy_synthetic_small", "occupancy_synthetic_small_geometric_iou"],
               "detection": ["detection_synthetic_small", "detection_synthetic_small_nds"]}
TASK_LABELS = {"segmentation": ("labels_50pct", "labels_100pct"), "occupancy": ("labels_100pct",),
               "detection": ("labels_100pct",)}
RUN_METRICS = {"segmentation": ("miou",), "occupancy": ("miou", "geometric_iou"), "detection": ("mAP", "NDS")}


def check_task_results(project: Path) -> None:
    """Every source fine-tuned on every task through the DAG: each run's metrics, a table row per source and
    label fraction, and the DVC metrics cell of each."""
    from occbench.config import load_params
    from occbench.workflow.grid import Grid

    grid = Grid(load_params(project / "params.yaml"))
    assert {(run.task, run.method) for run in grid.finetune_runs} == {
        (task, method) for task in TASK_TABLES
        for method in ("scratch", "also", "occfeat+selfsup_image", "occupancy_mae", "picture+also", "spot")}
    for run in grid.finetune_runs:
        metrics = json.loads((project / run.metrics).read_text())
        assert all(0 <= metrics[key] <= 1 for key in RUN_METRICS[run.task]), (run.metrics, metrics)
    dvc = json.loads((project / "reports" / "metrics.json").read_text())
    assert set(dvc) == set(TASK_TABLES)
    for task, stems in TASK_TABLES.items():
        cells = dvc[task]["synthetic"]["small"]
        assert set(cells) == set(ROWS), task
        for row in cells.values():
            assert set(row) == set(TASK_LABELS[task]) and all(0 <= cell["mean"] <= 100 for cell in row.values())
        assert all(cells[row][labels]["delta_scratch"] is not None
                   for row in ROWS if row != "scratch" for labels in TASK_LABELS[task])
        for stem in stems:
            lines = (project / "reports" / "tables" / f"{stem}.md").read_text().splitlines()
            rows = [line.split(" | ")[0].removeprefix("| ").rstrip(" †") for line in lines if line.startswith("| ")]
            assert rows == ["Method", *ROWS.values()], (stem, rows)
            header = next(line for line in lines if line.startswith("| Method"))
            assert header.count("%") == len(TASK_LABELS[task]), (stem, header)


def test_repro_then_param_change_shows_changed_cells(project_copy):
    _run(project_copy, "dvc", "repro")
    tables = sorted(p.name for p in (project_copy / "reports" / "tables").iterdir())
    assert tables == sorted(["methods.md", "methods.tex", "pretraining.csv", "pretraining.md", "pretraining.tex",
                             *(f"{stem}.{ext}" for stems in TASK_TABLES.values() for stem in stems
                               for ext in ("csv", "md", "tex"))])
    check_task_results(project_copy)
    pretraining = (project_copy / "reports" / "tables" / "pretraining.md").read_text()
    assert "| picture+also (synthetic, 100 %) | feature_cosine |" in pretraining
    assert (project_copy / "reports" / "figures" / "label_efficiency_segmentation_synthetic_small.png").exists()
    # dvc plots show renders the loss curve of the pre-training and of every fine-tuning run
    plots = json.loads(_run(project_copy, "dvc", "plots", "show", "--json"))["data"]
    step_curves = {Path(name).name for name in plots if "reports/curves/steps/" in name}
    assert "pretrain-small-synthetic-also-pt_1.tsv" in step_curves
    assert "finetune-segmentation-synthetic-small-scratch-labels_0.5-split_1-seed_0.tsv" in step_curves
    assert "finetune-detection-synthetic-small-spot-synthetic-pt_1-labels_1-split_0-seed_0.tsv" in step_curves
    assert "pretrain-small-synthetic-picture+also-pt_1.tsv" in step_curves
    # 5 pre-trainings (ALSO, OccFeat, Occupancy-MAE, PICTURE, SPOT; not OccFeat's image teacher);
    # segmentation: 6 sources x 2 seeds x (2 label splits at 50 %, 1 at 100 %); occupancy and detection:
    # 6 sources x 1 run (seed 0 at 100 %)
    assert len(step_curves) == 5 + 6 * 2 * (2 + 1) + 2 * 6
    rendered = plots["reports/curves/epochs/pretrain-small-synthetic-also-pt_1.tsv"][0]["content"]
    assert rendered["encoding"]["x"]["field"] == "epoch" and rendered["data"]["values"][0]["loss"]
    _run(project_copy, "git", "add", "-A")
    _run(project_copy, "git", "commit", "-qm", "first results")
    assert "Data and pipelines are up to date" in _run(project_copy, "dvc", "repro")

    params_file = project_copy / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["finetune"]["segmentation"]["optimizer"]["lr"] *= 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    _run(project_copy, "dvc", "repro")

    changed = json.loads(_run(project_copy, "dvc", "params", "diff", "--json"))
    assert list(changed["params.yaml"]) == ["finetune.segmentation.optimizer.lr"]
    diff = json.loads(_run(project_copy, "dvc", "metrics", "diff", "--json"))["reports/metrics.json"]
    cells = {key.rsplit(".", 1)[0] for key, change in diff.items()
             if key.endswith(".mean") and change["diff"] not in (0, None)}
    prefix = "segmentation.synthetic.small"
    assert cells == {f"{prefix}.{row}.{labels}"
                     for row in ("scratch", "also@synthetic_pt_100pct", "occfeat+selfsup_image@synthetic_pt_100pct",
                                 "occupancy_mae@synthetic_pt_100pct",
                                 "picture+also@synthetic_pt_100pct", "spot@synthetic_pt_100pct")
                     for labels in ("labels_50pct", "labels_100pct")}
    # the pre-training did not depend on the fine-tuning lr: Snakemake kept its checkpoint
    log = (project_copy / ".snakemake" / "log")
    assert any("rule pretrain" in p.read_text() for p in log.iterdir())  # ran in the first repro only
    assert sum("rule pretrain" in p.read_text() for p in log.iterdir()) == 1
