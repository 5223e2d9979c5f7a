"""The README's default-experiment claims are the committed reports' and params.yaml's, not a copy that can drift."""

from pathlib import Path

import pandas as pd

from occbench.config import load_params
from occbench.workflow.grid import Grid

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def table_rows(markdown: str) -> list[str]:
    return [line for line in markdown.splitlines() if line.startswith("| ")]


def test_readme_shows_the_committed_default_tables():
    """Every row of the default's fine-tuning and pre-training tables, as `make run` wrote them to reports/."""
    for table in ("segmentation_synthetic_small.md", "pretraining.md"):
        rows = table_rows((ROOT / "reports" / "tables" / table).read_text())
        assert rows, f"reports/tables/{table} has no table"
        missing = [row for row in rows if row not in README]
        assert not missing, f"README.md does not show these rows of reports/tables/{table}: {missing}"


def test_readme_states_the_default_grid_size():
    grid = Grid(load_params(ROOT / "params.yaml"))
    claim = f"{len(grid.pretrain_runs)} pre-training and {len(grid.finetune_runs)} fine-tuning runs"
    assert claim in " ".join(README.split()), f"README.md should say the default grid has {claim}"


def test_committed_reports_come_from_the_default_grid():
    """reports/runs.csv holds each fine-tuning run of params.yaml's grid once: the tables above came from it."""
    grid = Grid(load_params(ROOT / "params.yaml"))
    runs = pd.read_csv(ROOT / "reports" / "runs.csv")
    run_keys = ["task", "method", "pretrain_fraction", "label_fraction", "seed", "label_split_seed"]
    assert len(runs.drop_duplicates(run_keys)) == len(grid.finetune_runs), \
        "reports/ was not regenerated from params.yaml's grid (make run)"


def test_readme_shows_the_task_gains_tables():
    """The "Every task against scratch" rows are the ones experiments/task_gains.yaml's report wrote."""
    results = ROOT / "experiments" / "results" / "task_gains"
    for table, task, metric in [("detection_synthetic_small.md", "detection", "mAP"),
                                ("detection_synthetic_small_nds.md", "detection", "NDS"),
                                ("occupancy_synthetic_small.md", "occupancy", "mIoU"),
                                ("occupancy_synthetic_small_geometric_iou.md", "occupancy", "geometric IoU")]:
        rows = {row.split(" | ")[0].removeprefix("| "): row.split(" | ")[1].removesuffix(" |")
                for row in table_rows((results / table).read_text())}
        scratch = rows["scratch"]
        also, gain = rows["also (synthetic, 100 %) †"].removesuffix(")").split(" (")
        claim = f"| {task} | {metric} | {scratch} | {also} | {gain} |"
        assert claim in README, f"README.md should show {claim} from {results / table}"
