"""The workflow through a real SLURM cluster, with the repo's SLURM profile.

Why: a profile is only proven by jobs that really pass through sbatch. Every
test runs the command of the README, `snakemake --profile slurm` from the
project root (plus test-only flags), and checks that every non-local job
snakemake ran was one sbatch submission and, from `scontrol show job`, that
the GPU rules ran in partition `gpu` with a GPU and all other rules in `cpu`.
The preemption test interrupts a training job the two ways SLURM does and
checks it resumed from its saved step.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from occbench.workflow.grid import PATTERNS

ROOT = Path(__file__).resolve().parents[2]
PROFILE = "slurm"  # as users type it: the repo root's `slurm` links to workflow/profiles/slurm
PROFILE_DIR = "workflow/profiles/slurm"
GPU_RULES = {"pretrain", "finetune"}
# Test-only: the local cluster has no slurmdbd (so no sacct). The plugin checks 2 s after a job
# finished, then 12 s later, then +10 s each time: most jobs here take 7-12 s, so 2 (vs 5: 20 s) fits.
TEST_FLAGS = ["--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2", "--jobs", "4"]
BIN_DIR = Path(sys.executable).parent  # jobs must find this venv's snakemake and occbench
SLURM_CMD_TIMEOUT = 30  # scontrol, scancel, squeue

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

# One job per rule of the smoke grid (on top of .test/params.yaml in params.yaml), but two
# fine-tuning jobs: scratch's and ALSO's (a grid always holds scratch), on one task.
ONE_JOB_PER_RULE = """\
grid:
  methods: [scratch, also]
  tasks: [segmentation]
  label_fractions: [1.0]
  seeds: [0]
"""

# The smoke grid's pre-training made long enough (30 epochs of 2 steps, ~10 s on a CPU)
# to be interrupted twice, and the files it reads and writes.
LONG_PRETRAIN = "pretrain:\n  epochs: 30\n"
PRETRAIN_RUN = {"backbone": "small", "dataset": "synthetic", "method": "also", "fraction": "1"}
CHECKPOINT = PATTERNS["checkpoint"].format(**PRETRAIN_RUN)
PRETRAIN_SPLIT = PATTERNS["pretrain_split"].format(dataset="synthetic", fraction="1")
PRETRAIN_LOG = "results/logs/pretrain/{backbone}_{dataset}_{method}_{fraction}.log".format(**PRETRAIN_RUN)
# Not anchored: in a log the line follows a progress bar's, which ends in no newline.
SAVED = re.compile(r"occbench: SIGTERM received at epoch (\d+) step (\d+); resume state saved to (\S+)\n")


def link_profile(workdir: Path) -> None:
    """The repo root's profile link and the profile it points to, as a checkout has them."""
    if not (workdir / PROFILE_DIR).is_dir():
        shutil.copytree(ROOT / PROFILE_DIR, workdir / PROFILE_DIR)
    (workdir / PROFILE).symlink_to(os.readlink(ROOT / PROFILE))


def snakemake(workdir: Path, *extra: str, stdout) -> subprocess.Popen:
    """The README's command, with the test-only flags appended."""
    env = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.Popen(
        [BIN_DIR / "snakemake", "--profile", PROFILE, *TEST_FLAGS, *extra],
        cwd=workdir, env=env, stdout=stdout, stderr=subprocess.STDOUT, text=True,
    )


def submitted_job_ids(output: str) -> list[str]:
    return re.findall(r"has been submitted with SLURM jobid (\d+)", output)


def check_jobs(output: str) -> list[dict]:
    """Each job snakemake ran remotely was one sbatch submission, in the right partition; those jobs.

    Job ids come from snakemake's own output, not slurmctld's log: other sessions may share the cluster.
    """
    jobs = [slurm_job(job_id) for job_id in submitted_job_ids(output)]
    # Local jobs print "localrule NAME:", the others "rule NAME:" (or "checkpoint NAME:"), once per try.
    ran_remotely = Counter(re.findall(r"^(?:rule|checkpoint) (\S+):$", output, re.MULTILINE))
    assert ran_remotely, output[-8000:]
    assert Counter(job["rule"] for job in jobs) == ran_remotely
    for job in jobs:
        gpu_rule = job["rule"] in GPU_RULES
        assert job["partition"] == ("gpu" if gpu_rule else "cpu"), job
        assert job["gpu"] == gpu_rule, job
    return jobs


def run_through_slurm(workdir: Path, timeout: float, *extra: str) -> list[dict]:
    """Run the workflow to the end; check its jobs against what SLURM saw; return those jobs."""
    link_profile(workdir)
    proc = snakemake(workdir, *extra, stdout=subprocess.PIPE)
    try:
        output, _ = proc.communicate(timeout=timeout)
    finally:
        stop(proc, [])
    assert proc.returncode == 0, output[-8000:]
    jobs = check_jobs(output)
    for job in jobs:
        assert job["state"] == "COMPLETED", job
    return jobs


def stop(proc: subprocess.Popen, job_ids: list[str]) -> None:
    """After a failed test: stop snakemake (SIGINT: it cancels its jobs) and cancel what is left."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    if job_ids:
        subprocess.run(["scancel", *job_ids], capture_output=True, timeout=SLURM_CMD_TIMEOUT)


def slurm(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=SLURM_CMD_TIMEOUT).stdout


def slurm_job(job_id: str) -> dict:
    """Rule (from the plugin's --comment), partition, GPU request, state and requeue fields of a SLURM job."""
    field = dict(re.findall(r"(?:^|\s)([\w/:]+)=(\S*)", slurm("scontrol", "show", "job", "--oneliner", job_id)))
    return {
        "id": job_id,
        "rule": re.fullmatch(r"rule_(.+?)(?:_wildcards_.*)?", field["Comment"]).group(1),
        "partition": field["Partition"],
        "gpu": any(key.startswith("TresPer") and "gres:gpu" in value for key, value in field.items()),
        "state": field["JobState"],
        "requeue": field["Requeue"] == "1",
        "restarts": int(field["Restarts"]),
    }


def wait_for(what: str, check, proc: subprocess.Popen, out: Path, timeout: float = 120):
    """Poll check() until it returns something true; fail early if snakemake ended."""
    deadline = time.monotonic() + timeout
    while not (result := check()):
        if proc.poll() is not None:
            pytest.fail(f"snakemake ended (exit {proc.returncode}) while waiting for {what}:\n{out.read_text()[-8000:]}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout:.0f} s:\n{out.read_text()[-8000:]}")
        time.sleep(0.5)
    return result


def test_bare_profile_name_finds_repo_profile(monkeypatch):
    """`--profile slurm` from the project root: Snakemake looks in the working directory first."""
    from snakemake.cli import get_profile_dir

    monkeypatch.chdir(ROOT)
    profile_dir, config_file = get_profile_dir(PROFILE)
    assert config_file.resolve() == ROOT / PROFILE_DIR / "config.yaml"


@pytest.mark.slurm
@pytest.mark.slow
def test_profile_schedules_gpu_rules_on_gpu_partition(slurm_cluster, tmp_path):
    (tmp_path / "Snakefile").write_text(THROWAWAY_SNAKEFILE)
    jobs = run_through_slurm(tmp_path, 300)
    assert sorted(job["rule"] for job in jobs) == ["a", "finetune", "pretrain"]
    # What the jobs themselves saw: SLURM's partition and a GPU only where asked.
    seen = {name: (tmp_path / f"out/{name}.txt").read_text().split() for name in ("a", "pretrain", "finetune")}
    assert seen["a"] == ["cpu", "none"]
    for name in GPU_RULES:
        assert seen[name][0] == "gpu" and seen[name][1].isdigit(), seen


@pytest.mark.slurm
@pytest.mark.slow
def test_smoke_grid_through_slurm(slurm_cluster, project_copy):
    (project_copy / "one_job_per_rule.yaml").write_text(ONE_JOB_PER_RULE)
    jobs = run_through_slurm(project_copy, 1200, "--configfile", "one_job_per_rule.yaml")
    rules = Counter(job["rule"] for job in jobs)
    assert GPU_RULES <= set(rules) and rules["pretrain"] == 1 and rules["finetune"] == 2, rules
    reports = project_copy / "reports"
    assert json.loads((reports / "metrics.json").read_text())
    assert any((reports / "tables").iterdir()), "no tables under reports/tables"


@pytest.mark.slurm
@pytest.mark.slow
def test_jobs_on_slurm_nodes_read_the_overlays(slurm_cluster, project_copy):
    """On a node the job's own snakemake gets the --configfiles and hands them to the job
    through $OCCBENCH_PARAMS (no file name on the command line): the overlay is honoured."""
    (project_copy / "small.yaml").write_text(
        "datasets: {synthetic: {num_scenes: 2, frames_per_scene: 1, val_fraction: 0.5, occupancy: null, cameras: []}}\n"
    )
    index = "results/data/synthetic/index.json"
    jobs = run_through_slurm(project_copy, 300, index, "--configfile", "small.yaml")
    assert [job["rule"] for job in jobs] == ["convert"]
    assert len(json.loads((project_copy / index).read_text())["frames"]) == 2


@pytest.mark.slurm
@pytest.mark.slow
def test_interrupted_pretrain_resumes_from_saved_step(slurm_cluster, project_copy):
    """`occbench pretrain` of the smoke grid gets SIGTERM in its job step (what the profile's
    --signal=TERM@300 sends before the time limit), then `scontrol requeue` (what preemption
    does); the workflow completes and each run resumed where the one before saved."""
    link_profile(project_copy)
    (project_copy / "long_pretrain.yaml").write_text(LONG_PRETRAIN)
    overlay = ["--configfile", "long_pretrain.yaml"]
    env = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}"}
    # Conversion and split here, outside SLURM: only pre-training goes through it.
    subprocess.run([BIN_DIR / "snakemake", "--profile", "workflow/profiles/local", "--cores", "1", PRETRAIN_SPLIT,
                    *overlay], cwd=project_copy, env=env, capture_output=True, check=True, timeout=300)
    log, out = project_copy / PRETRAIN_LOG, project_copy / "snakemake.out"
    steps_tsv = (project_copy / CHECKPOINT).parent / "curves" / "steps.tsv"
    job_ids: list[str] = []
    with out.open("w") as stdout:  # --verbose: snakemake prints each sbatch call
        proc = snakemake(project_copy, CHECKPOINT, "--verbose", *overlay, stdout=stdout)
    try:

        def running(after: int = 0, other_than: str | None = None) -> str | None:
            """The newest job's id, once it runs and its training passed global step `after` + 3."""
            ids = submitted_job_ids(out.read_text())
            if not ids or ids[-1] == other_than:
                return None
            if ids[-1] not in job_ids:
                job_ids.append(ids[-1])
            return ids[-1] if slurm_job(ids[-1])["state"] == "RUNNING" and steps_done(steps_tsv) >= after + 3 else None

        def saved() -> tuple[int, int, str] | None:
            """(epoch, step, state path) once the log says the state was saved on SIGTERM."""
            with contextlib.suppress(OSError):
                if m := SAVED.search(log.read_text()):
                    return int(m[1]), int(m[2]), m[3]
            return None

        # 1. The time-limit warning: SIGTERM to the job's steps, not its batch shell.
        first = wait_for("running pretrain job", running, proc, out)
        assert "snakemake" in occbench_parent(first), "the rule must exec occbench (see the profile)"
        slurm("scancel", "--signal=TERM", first)
        epoch1, step1, state = wait_for("first save", saved, proc, out)  # read before the retry truncates the log
        # The job ended after the save (FAILED); snakemake's retry submits a new job, which resumes.
        second = wait_for("resubmitted pretrain job",
                          lambda: running(after=2 * epoch1 + step1, other_than=first), proc, out)
        assert f"occbench: resuming {state} at epoch {epoch1} step {step1}\n" in log.read_text()
        # 2. Preemption: SLURM stops the whole job and requeues it under the same id.
        slurm("scontrol", "requeue", second)
        epoch2, step2, _ = wait_for("second save", saved, proc, out)
        # SLURM holds a requeued job ~2 min (BeginTime); release it at once.
        wait_for("requeued job pending", lambda: slurm_job(second)["state"] == "PENDING", proc, out)
        slurm("scontrol", "update", f"JobId={second}", "StartTime=now")
        proc.wait(timeout=300)
    finally:
        stop(proc, job_ids)
    output = out.read_text()
    assert proc.returncode == 0, output[-8000:]
    assert (epoch1, step1) < (epoch2, step2)
    # The run that completed started where the requeued one saved, not from zero.
    assert f"occbench: resuming {state} at epoch {epoch2} step {step2}\n" in log.read_text()
    assert (project_copy / CHECKPOINT).is_file()

    # What SLURM and snakemake saw: one failed try (retried), one job requeued once.
    jobs = {job["id"]: job for job in check_jobs(output)}
    assert list(jobs) == [first, second]
    assert jobs[first]["state"] == "FAILED" and jobs[second]["state"] == "COMPLETED", jobs
    assert jobs[second]["restarts"] == 1, jobs
    # The cluster's JobRequeue=0: `scontrol requeue` worked because the profile asks for --requeue.
    assert all(job["requeue"] for job in jobs.values()), jobs
    sbatch_calls = re.findall(r"^sbatch call: (sbatch .*)$", output, re.MULTILINE)
    assert len(sbatch_calls) == 2, output[-8000:]
    for call in sbatch_calls:
        assert "--signal=TERM@300" in call and "--requeue" in call, call


def steps_done(steps_tsv: Path) -> int:
    """Training steps a run has logged (one line each under a header)."""
    with contextlib.suppress(OSError):
        return max(len(steps_tsv.read_text().splitlines()) - 1, 0)
    return 0


def occbench_parent(job_id: str) -> str:
    """Command line of the parent of the job's `occbench pretrain` process (not of its loader workers)."""
    def argv(pid: str) -> list[str]:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/cmdline").read_text().split("\0")
        return []

    def is_occbench(pid: str) -> bool:  # python .../bin/occbench pretrain ...
        args = argv(pid)
        return len(args) > 2 and Path(args[1]).name == "occbench" and args[2] == "pretrain"

    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):
            if is_occbench(pid) and f"SLURM_JOB_ID={job_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                stat = Path(f"/proc/{pid}/stat").read_text()
                parent = stat[stat.rindex(")") + 2 :].split()[1]
                if not is_occbench(parent):
                    return " ".join(argv(parent))
    pytest.fail(f"no occbench process of job {job_id}")
