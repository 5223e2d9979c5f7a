"""The smoke grid (params.yaml + .test/params.yaml) and a tiny converted dataset for tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

from occbench.cli import main
from occbench.config import load_params
from occbench.workflow.grid import Grid, fraction_tag

ROOT = Path(__file__).resolve().parents[1]
SMOKE_FILES = (ROOT / "params.yaml", ROOT / ".test" / "params.yaml")
SMOKE_ARGS = [arg for path in SMOKE_FILES for arg in ("--params", str(path))]


def smoke_params() -> dict:
    return load_params(*SMOKE_FILES)


def occbench(*args: str) -> int:
    """Run an occbench verb on the smoke grid, as a rule would."""
    return main([*SMOKE_ARGS, *args])


def finetune(task: str, source: str, seed: int, *extra: str) -> int:
    """`occbench finetune` of ``task`` on the smoke dataset at 50 % labels; ``extra``: options before the verb."""
    return occbench(*extra, "finetune", "--task", task, "--backbone", "small", "--dataset", "synthetic",
                    "--source", source, "--label-fraction", "0.5", "--seed", str(seed))


def run_dir(task: str, source: str, seed: int) -> Path:
    """The folder of a ``finetune`` run (relative to the working folder)."""
    return Path(f"results/finetune/{task}/synthetic/small/{source}/labels_0.5/split_0/seed_{seed}")


def read_run(task: str, source: str, seed: int, name: str):
    """A JSON file (metrics.json, run_meta.json) of a ``finetune`` run."""
    return json.loads((run_dir(task, source, seed) / name).read_text())


def make_dataset(workdir: Path) -> None:
    """Convert the smoke grid's datasets and write its split files under ``workdir``/results."""
    cwd = os.getcwd()
    os.chdir(workdir)
    try:
        grid = Grid(smoke_params())
        for name in grid.datasets:
            assert occbench("convert", "--dataset", name) == 0
        for dataset, subset, fraction, split_seed in grid.splits:
            seed = [] if split_seed is None else ["--split-seed", str(split_seed)]
            assert occbench("split", "--dataset", dataset, "--subset", subset,
                            "--fraction", fraction_tag(fraction), *seed) == 0
    finally:
        os.chdir(cwd)
