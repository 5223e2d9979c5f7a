"""The workflow through a real SLURM cluster, with the repo's SLURM profile.

Why: a profile is only proven by jobs that really pass through sbatch. Each
test checks that every non-local job snakemake ran was one sbatch submission
(slurmctld's log) and, from `scontrol show job`, that the GPU rules ran in
partition `gpu` with a GPU and all other rules in `cpu`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "workflow/profiles/slurm"
GPU_RULES = {"pretrain", "finetune"}
# Test-only: the local cluster has no slurmdbd (so no sacct); 5 s keeps it quick.
TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "5", "--jobs", "4"]

# Rules named like the real GPU rules; each records where SLURM ran it.
THROWAWAY_SNAKEFILE = """
localrules: all

rule all:
    input: "out/a.txt", "out/pretrain.txt", "out/finetune.txt"

for name, gpus in [("a", 0), ("pretrain", 1), ("finetune", 1)]:
    rule:
        name: name
        output: f"out/{name}.txt"
        threads: 1
        resources: gpu=gpus
        shell: "echo $SLURM_JOB_PARTITION ${{CUDA_VISIBLE_DEVICES:-none}} > {output}"
"""


def run_through_slurm(workdir: Path, cluster, timeout: float, *args: str) -> list[dict]:
    """Run snakemake with the profile (and ``args``); check its jobs against what SLURM saw; return those jobs."""
    offset = cluster.slurmctld_log.stat().st_size
    bin_dir = Path(sys.executable).parent  # jobs must find this venv's snakemake and occbench
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    proc = subprocess.run(
        [bin_dir / "snakemake", "--profile", PROFILE, *TEST_FLAGS, *args],
        cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=timeout,
    )
    assert proc.returncode == 0, proc.stdout[-8000:]
    with cluster.slurmctld_log.open() as log:
        log.seek(offset)
        job_ids = re.findall(r"_slurm_rpc_submit_batch_job: JobId=(\d+)", log.read())
    jobs = [slurm_job(job_id) for job_id in job_ids]
    # Local jobs print "localrule NAME:", the others "rule NAME:" (or "checkpoint NAME:").
    ran_remotely = Counter(re.findall(r"^(?:rule|checkpoint) (\S+):$", proc.stdout, re.MULTILINE))
    assert ran_remotely, proc.stdout[-8000:]
    assert Counter(job["rule"] for job in jobs) == ran_remotely
    for job in jobs:
        assert job["state"] == "COMPLETED", job
        gpu_rule = job["rule"] in GPU_RULES
        assert job["partition"] == ("gpu" if gpu_rule else "cpu"), job
        assert job["gpu"] == gpu_rule, job
    return jobs


def slurm_job(job_id: str) -> dict:
    """Rule (from the plugin's --comment), partition, GPU request and state of a SLURM job."""
    out = subprocess.run(
        ["scontrol", "show", "job", "--oneliner", job_id], capture_output=True, text=True, check=True
    ).stdout
    field = dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", out))
    return {
        "id": job_id,
        "rule": re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", field["Comment"]).group(1),
        "partition": field["Partition"],
        "gpu": any(key.startswith("TresPer") and "gres:gpu" in value for key, value in field.items()),
        "state": field["JobState"],
    }


def test_profile_schedules_gpu_rules_on_gpu_partition(slurm_cluster, tmp_path):
    shutil.copytree(ROOT / PROFILE, tmp_path / PROFILE)
    (tmp_path / "Snakefile").write_text(THROWAWAY_SNAKEFILE)
    jobs = run_through_slurm(tmp_path, slurm_cluster, timeout=300)
    assert sorted(job["rule"] for job in jobs) == ["a", "finetune", "pretrain"]
    # What the jobs themselves saw: SLURM's partition and a GPU only where asked.
    seen = {name: (tmp_path / f"out/{name}.txt").read_text().split() for name in ("a", "pretrain", "finetune")}
    assert seen["a"] == ["cpu", "none"]
    for name in GPU_RULES:
        assert seen[name][0] == "gpu" and seen[name][1].isdigit(), seen


def test_smoke_grid_through_slurm(slurm_cluster, project_copy):
    jobs = run_through_slurm(project_copy, slurm_cluster, timeout=1800)
    assert GPU_RULES <= {job["rule"] for job in jobs}
    reports = project_copy / "reports"
    assert json.loads((reports / "metrics.json").read_text())
    assert any((reports / "tables").iterdir()), "no tables under reports/tables"


def test_jobs_on_slurm_nodes_read_the_overlays(slurm_cluster, project_copy):
    """On a node the job's own snakemake gets the --configfiles and hands them to the job
    through $OCCBENCH_PARAMS (no file name on the command line): the overlay is honoured."""
    (project_copy / "small.yaml").write_text(
        "datasets: {synthetic: {num_scenes: 2, frames_per_scene: 1, val_fraction: 0.5, occupancy: null, cameras: []}}\n"
    )
    index = "results/data/synthetic/index.json"
    jobs = run_through_slurm(project_copy, slurm_cluster, 300, index, "--configfile", "small.yaml")
    assert [job["rule"] for job in jobs] == ["convert"]
    assert len(json.loads((project_copy / index).read_text())["frames"]) == 2
