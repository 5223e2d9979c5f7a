"""What Snakemake re-runs on a finished grid when params, overlays or code change.

The finished grid is made once per module: every output of the smoke grid is a
stand-in file, and `snakemake --touch` marks the jobs finished. Touching goes
through the same bookkeeping as a real job (Snakemake's persistence.finished
records each output's params, inputs, shell command and input checksums), so
each test then costs one dry run (`snakemake -n`) on a copy of that project.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import copy_project
from occbench.config import load_params
from occbench.workflow.grid import Grid, index_path, pretrain_digest, split_path

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


def _run(cwd: Path, *command: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def planned(project: Path, *args: str) -> dict[str, set[str]]:
    """The jobs a dry run would run: rule name -> their outputs (empty for `all`, `runs`)."""
    out = _run(project, str(BIN / "snakemake"), "-n", "--cores", "1", *args)
    jobs: dict[str, set[str]] = {}
    rule = None
    for line in out.splitlines():
        if match := re.fullmatch(r"(?:local)?rule (\w+):", line):
            rule = match.group(1)
            jobs.setdefault(rule, set())
        elif rule and line.startswith("    output: "):
            jobs[rule].update(line.removeprefix("    output: ").split(", "))
        elif not line.startswith("    "):
            rule = None
    assert jobs or "Nothing to be done" in out, out[-3000:]
    return jobs


def overlay(project: Path, name: str, values: dict) -> str:
    (project / name).write_text(yaml.safe_dump(values))
    return name


@pytest.fixture(scope="module")
def finished_grid(tmp_path_factory) -> Path:
    project = copy_project(tmp_path_factory.mktemp("finished_grid"))
    grid = Grid(yaml.safe_load((project / "params.yaml").read_text()))
    outputs = [index_path(name) for name in grid.datasets]
    outputs += [split_path(*spec) for spec in grid.splits]
    outputs += [run.checkpoint for run in grid.image_teacher_runs]
    outputs += [run.checkpoint for run in grid.pretrain_runs] + [run.metrics for run in grid.finetune_runs]
    outputs += [Path("reports") / name for name in ("metrics.json", "summary.csv", "runs.csv", "pretraining.csv")]
    for path in outputs:
        (project / path).parent.mkdir(parents=True, exist_ok=True)
        (project / path).write_text(f"stand-in for {path}\n")
    for folder in ("tables", "figures"):
        (project / "reports" / folder).mkdir()
    _run(project, str(BIN / "snakemake"), "--touch", "--forceall", "--cores", "1")
    assert planned(project) == {}
    return project


@pytest.fixture
def project(finished_grid, tmp_path) -> Path:
    """A copy of the finished grid, Snakemake's metadata and the files' times included."""
    return Path(shutil.copytree(finished_grid, tmp_path / "project", symlinks=True))


def grid_of(project: Path) -> Grid:
    return Grid(yaml.safe_load((project / "params.yaml").read_text()))


def test_touch_recorded_each_jobs_digest_as_the_job_computes_it(project):
    """The stand-ins carry the metadata a real run leaves (params digest, shell command),
    and the digest Snakemake computed from its config is the one a job computes from
    the params files it reads (occbench's loader, not Snakemake's)."""
    params = load_params(project / "params.yaml")
    run = grid_of(project).pretrain_runs[0]
    key = base64.b64encode(str(run.checkpoint).encode()).decode()
    record = json.loads((project / ".snakemake" / "metadata" / key).read_text())
    assert record["rule"] == "pretrain"
    assert record["params"] == [repr(pretrain_digest(params, run)), repr(run.method)]  # hparams, method
    assert "params.yaml" not in record["shellcmd"]


def test_overlays_that_change_no_value_rerun_nothing(project):
    params = yaml.safe_load((project / "params.yaml").read_text())
    same = overlay(project, "same.yaml", {"pretrain": {"optimizer": params["pretrain"]["optimizer"]},
                                          "grid": {"seeds": params["grid"]["seeds"]}})
    empty = overlay(project, "empty.yaml", {"finetune": {}})
    assert planned(project, "--configfile", same, empty) == {}


def test_execution_settings_rerun_nothing(project):
    where = overlay(project, "where.yaml", {"execution": {"threads": 2, "profile": "workflow/profiles/slurm"}})
    assert planned(project, "--configfile", where) == {}


def test_editing_one_methods_settings_reruns_that_method_its_students_and_their_finetunes_only(project):
    """ALSO's settings re-run ALSO and PICTURE, which ALSO teaches, and their fine-tunes; not scratch."""
    grid = grid_of(project)
    also = overlay(project, "also.yaml", {"pretrain": {"methods": {"also": {"hidden_dim": 32}}}})
    jobs = planned(project, "--configfile", also)
    assert set(jobs) == {"pretrain", "finetune", "aggregate", "report", "all"}
    taught = {"also", "picture+also"}
    assert jobs["pretrain"] == {str(run.checkpoint) for run in grid.pretrain_runs if run.variant in taught}
    assert jobs["finetune"] == {str(run.metrics) for run in grid.finetune_runs if run.method in taught}
    picture = overlay(project, "picture.yaml", {"pretrain": {"methods": {"picture": {"hidden_dim": 32}}}})
    jobs = planned(project, "--configfile", picture)
    assert jobs["pretrain"] == {"results/pretrain/small/synthetic/picture+also/pt_1/checkpoint.pt"}
    assert jobs["finetune"] == {str(run.metrics) for run in grid.finetune_runs if run.method == "picture+also"}


def test_editing_the_image_teacher_reruns_it_occfeat_and_its_finetunes_only(project):
    grid = grid_of(project)
    teacher = overlay(project, "teacher.yaml", {"pretrain": {"methods": {"occfeat": {"teacher": {
        "self_supervised": {"mask_ratio": 0.75}}}}}})
    jobs = planned(project, "--configfile", teacher)
    assert set(jobs) == {"image_teacher", "pretrain", "finetune", "aggregate", "report", "all"}
    assert jobs["image_teacher"] == {"results/image_teacher/synthetic/occfeat/pt_1/encoder.pt"}
    assert jobs["pretrain"] == {"results/pretrain/small/synthetic/occfeat+selfsup_image/pt_1/checkpoint.pt"}
    assert jobs["finetune"] == {str(run.metrics) for run in grid.finetune_runs
                                if run.method == "occfeat+selfsup_image"}


def test_label_sampling_reruns_label_splits_and_finetunes_not_pretraining(project):
    grid = grid_of(project)
    sampling = overlay(project, "sampling.yaml", {"splits": {"label_sampling": "scenes"}})
    jobs = planned(project, "--configfile", sampling)
    assert set(jobs) == {"label_split", "finetune", "aggregate", "report", "all"}
    assert jobs["label_split"] == {str(split_path(*spec)) for spec in grid.splits if spec[1] == "labels"}
    assert jobs["finetune"] == {str(run.metrics) for run in grid.finetune_runs}


def test_adding_the_probe_mode_runs_the_probes_and_reruns_no_full_run(project):
    """6 sources x (segmentation: 2 seeds x (2 label splits at 50 %, 1 at 100 %); occupancy and detection:
    1 run each) probes, each into its probe/ folder."""
    probe = overlay(project, "probe.yaml", {"grid": {"finetune_modes": ["full", "probe"]}})
    jobs = planned(project, "--configfile", probe)
    assert set(jobs) == {"finetune", "aggregate", "report", "all"}
    assert len(jobs["finetune"]) == 6 * (2 * 3 + 2) and all("/probe/labels_" in path for path in jobs["finetune"])
    assert jobs["finetune"].isdisjoint(str(run.metrics) for run in grid_of(project).finetune_runs)


def test_code_changes_rerun_nothing_and_forcerun_reruns_a_rule_and_its_dependents(project):
    """The README's policy: code changes never re-run finished runs (they record the git sha);
    `--forcerun RULE` re-runs that rule's jobs and what depends on them."""
    for module in ("pretrain/also.py", "tasks/segmentation.py", "models/backbone.py"):
        with open(project / "src" / "occbench" / module, "a") as source:
            source.write("\n# changed\n")
    rule_file = project / "workflow" / "rules" / "finetune.smk"
    rule_file.write_text(rule_file.read_text().replace(" > {log} 2>&1", " >{log} 2>&1"))  # the `code` trigger's text
    assert planned(project) == {}
    grid = grid_of(project)
    # The policy is the workflow profile's: Snakemake's default triggers see the rule's text.
    assert planned(project, "--workflow-profile", "none")["finetune"] == {str(run.metrics) for run in grid.finetune_runs}
    jobs = planned(project, "runs", "--forcerun", "pretrain")  # as the README says
    assert set(jobs) == {"pretrain", "finetune", "runs"}
    assert jobs["pretrain"] == {str(run.checkpoint) for run in grid.pretrain_runs}
    assert jobs["finetune"] == {str(run.metrics) for run in grid.finetune_runs if run.pretrained}


def test_dvc_runs_stage_ignores_code_outside_the_workflow_package(project):
    """DVC's `runs` stage depends on what can change a digest or the DAG, as Snakemake does."""
    _run(project, "dvc", "commit", "--force", "runs")
    with open(project / "src" / "occbench" / "pretrain" / "also.py", "a") as source:
        source.write("\n# changed\n")
    assert "up to date" in _run(project, "dvc", "status", "runs")
    with open(project / "src" / "occbench" / "workflow" / "grid.py", "a") as source:
        source.write("\n# changed\n")
    assert "modified:" in _run(project, "dvc", "status", "runs")


def test_jobs_read_the_overlays_snakemake_merged(project):
    """The overlay list reaches the job through $OCCBENCH_PARAMS: a real conversion
    with an overlay writes the overlay's frames, and its command names no file."""
    small = overlay(project, "small.yaml", {"datasets": {"synthetic": {
        "num_scenes": 2, "frames_per_scene": 1, "val_fraction": 0.5, "occupancy": None, "cameras": []}}})
    index = index_path("synthetic")
    (project / index).unlink()
    _run(project, str(BIN / "snakemake"), str(index), "--cores", "1", "--configfile", small)
    assert len(json.loads((project / index).read_text())["frames"]) == 2
    metadata = project / ".snakemake" / "metadata"
    record = next(json.loads(p.read_text()) for p in metadata.iterdir() if json.loads(p.read_text())["rule"] == "convert")
    assert "small.yaml" not in record["shellcmd"]
