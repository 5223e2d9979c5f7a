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

# One job per rule of the smoke grid (on top of .test/params.yaml in params.yaml).
ONE_JOB_PER_RULE = """\
grid:
  methods: [also]
  label_fractions: [1.0]
  seeds: [0]
"""

# Test scaffolding until the engine's resume lands: a "pretrain" that keeps the
# contract of `occbench pretrain` (on SIGTERM/SIGUSR1 save the resume state,
# say so on stderr, exit 128+signum; when started again, say where it resumes).
# It also appends what happened to events.jsonl, which no rerun truncates.
FAKE_TRAINER = r'''
import json, os, signal, sys, time
from pathlib import Path

state, output, events = Path("out/train_state.json"), Path(sys.argv[1]), Path("out/events.jsonl")
steps, step_s, save_s = int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])

def event(**fields):
    with events.open("a") as f:
        f.write(json.dumps({"pid": os.getpid(), "ppid": os.getppid(), "job": os.environ.get("SLURM_JOB_ID"), **fields}) + "\n")

step = json.loads(state.read_text())["step"] if state.exists() else 0
if step:
    print(f"occbench: resuming {state} at epoch 0 step {step}", file=sys.stderr, flush=True)
event(what="start", step=step)

def save_and_exit(signum, frame):
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)  # SLURM may send it twice; one save is enough
    event(what="signal", signal=signal.Signals(signum).name, step=step)
    time.sleep(save_s)  # a slow save: nothing may kill this process meanwhile
    state.with_suffix(".tmp").write_text(json.dumps({"step": step}))
    os.replace(state.with_suffix(".tmp"), state)
    event(what="saved", step=step)
    print(f"occbench: {signal.Signals(signum).name} received at epoch 0 step {step}; "
          f"resume state saved to {state}", file=sys.stderr, flush=True)
    sys.exit(128 + signum)

signal.signal(signal.SIGTERM, save_and_exit)
signal.signal(signal.SIGUSR1, save_and_exit)
while step < steps:
    time.sleep(step_s)
    step += 1
    print(f"step {step}", file=sys.stderr, flush=True)
output.write_text(f"{step} steps\n")
event(what="done", step=step)
'''

# `exec`: the trainer replaces the job's shell, so Snakemake waits for it (see the profile).
PREEMPT_SNAKEFILE = """
localrules: all

rule all:
    input: "out/checkpoint.pt"

rule pretrain:
    output: "out/checkpoint.pt"
    log: "out/pretrain.log"
    threads: 1
    resources: gpu=1
    shell: "exec python train.py {output} 40 0.25 1 > {log} 2>&1"
"""


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


def last_step(log: Path) -> int:
    with contextlib.suppress(OSError):
        if steps := re.findall(r"^step (\d+)$", log.read_text(), re.MULTILINE):
            return int(steps[-1])
    return 0


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
    assert GPU_RULES <= set(rules) and rules["pretrain"] == rules["finetune"] == 1, rules
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
def test_interrupted_pretrain_resumes_from_saved_step(slurm_cluster, tmp_path):
    """SIGTERM to the job steps (what the profile's --signal=TERM@300 sends before the time
    limit), then `scontrol requeue` (what preemption does); the run completes, resumed twice."""
    link_profile(tmp_path)
    (tmp_path / "Snakefile").write_text(PREEMPT_SNAKEFILE)
    (tmp_path / "train.py").write_text(FAKE_TRAINER)
    log, out = tmp_path / "out/pretrain.log", tmp_path / "snakemake.out"
    job_ids: list[str] = []
    # --verbose: snakemake prints each sbatch call
    with out.open("w") as stdout:
        proc = snakemake(tmp_path, "--verbose", stdout=stdout)
    try:

        def running_job(after: int = 0, other_than: str | None = None) -> str | None:
            """The newest job's id, once it runs and the trainer has passed step `after` + 3."""
            ids = submitted_job_ids(out.read_text())
            if not ids or ids[-1] == other_than:
                return None
            if ids[-1] not in job_ids:
                job_ids.append(ids[-1])
            return ids[-1] if slurm_job(ids[-1])["state"] == "RUNNING" and last_step(log) >= after + 3 else None

        # 1. The time-limit warning: SIGTERM to the job's steps, not its batch shell.
        first = wait_for("running pretrain job", running_job, proc, out)
        slurm("scancel", "--signal=TERM", first)
        # The job ends after the save (FAILED); snakemake's retry submits a new job, which resumes.
        second = wait_for(
            "resubmitted pretrain job", lambda: running_job(after=saved_step(tmp_path), other_than=first), proc, out
        )
        # 2. Preemption: SLURM stops the whole job and requeues it under the same id.
        slurm("scontrol", "requeue", second)
        # SLURM holds a requeued job ~2 min (BeginTime); release it at once.
        wait_for("requeued job pending", lambda: slurm_job(second)["state"] == "PENDING", proc, out)
        slurm("scontrol", "update", f"JobId={second}", "StartTime=now")
        proc.wait(timeout=300)
    finally:
        stop(proc, job_ids)
    output = out.read_text()
    assert proc.returncode == 0, output[-8000:]

    events = [json.loads(line) for line in (tmp_path / "out/events.jsonl").read_text().splitlines()]
    starts = [e for e in events if e["what"] == "start"]
    saves = [e for e in events if e["what"] == "saved"]
    assert [e["job"] for e in starts] == [first, second, second], events
    assert len(saves) == 2 and 0 < saves[0]["step"] < saves[1]["step"], events
    # Each run started where the one before saved: not from zero.
    assert [e["step"] for e in starts] == [0, saves[0]["step"], saves[1]["step"]], events
    # The save finished while the job's Snakemake still waited for the trainer (same parent):
    # with a shell in between, Snakemake would have ended the step mid-save.
    for start, save in zip(starts, saves):
        assert (save["pid"], save["ppid"]) == (start["pid"], start["ppid"]), events
    assert events[-1]["what"] == "done", events
    # The contract's line, in the log of the run that completed.
    assert f"occbench: resuming out/train_state.json at epoch 0 step {saves[1]['step']}" in log.read_text()

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


def saved_step(workdir: Path) -> int:
    with contextlib.suppress(OSError, ValueError, KeyError):
        return json.loads((workdir / "out/train_state.json").read_text())["step"]
    return 0
