"""Shared fixtures: a local SLURM cluster and throw-away copies of the project."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import slurm_cluster as local_slurm  # tests/ is on sys.path through pytest's `pythonpath`
import yaml

ROOT = Path(__file__).resolve().parents[1]

pytest_plugins = ["model_fixtures"]

# What Snakemake (rules' conda: directives included) and DVC read in a copy.
PROJECT_FILES = ("Snakefile", "workflow", "profiles", "src", "environment.yml", "dvc.yaml", ".dvc/config", ".dvcignore",
                 ".gitignore")


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[local_slurm.Cluster]:
    """The one-node cluster of tests/slurm_cluster.py; stopped at the end if started here."""
    missing = [tool for tool in ("munged", "slurmctld", "slurmd", "sbatch") if not shutil.which(tool)]
    if missing:
        why = f"SLURM tests need {', '.join(missing)} on PATH: apt-get install slurm-wlm munge"
    elif os.geteuid() != 0:
        why = "SLURM tests start slurmctld, slurmd and munged, which needs root"
    else:
        why = None
    if why and os.environ.get("CI") == "true":
        pytest.fail(why)  # CI installs SLURM: a skip there would hide that these tests never ran
    if why:
        pytest.skip(why)
    cluster = local_slurm.start()
    yield cluster
    if not cluster.reused:
        local_slurm.stop()


def copy_project(dest: Path) -> Path:
    """Copy the workflow to ``dest`` with the smoke grid as its params.yaml, committed to git for DVC."""
    from occbench.config import load_params  # here, so a broken package only fails these tests

    for name in PROJECT_FILES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        elif path.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest / name)
        else:
            pytest.fail(f"project file missing: {path}")
    # .test/params.yaml is an overlay on params.yaml; the copy gets the merged grid.
    smoke = load_params(ROOT / "params.yaml", ROOT / ".test" / "params.yaml")
    (dest / "params.yaml").write_text(yaml.safe_dump(smoke, sort_keys=False))
    git = ["git", "-C", str(dest)]
    for args in (
        ["init", "-q"],
        ["config", "user.name", "occbench tests"],
        ["config", "user.email", "tests@occbench.invalid"],
        ["add", "-A"],
        ["commit", "-q", "-m", "project copy for tests"],
    ):
        subprocess.run(git + args, check=True, timeout=120)
    return dest


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """A fresh copy of the workflow whose params.yaml is the smoke grid, committed to git for DVC."""
    return copy_project(tmp_path)
