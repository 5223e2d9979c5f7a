"""Killed and resumed training ends exactly where an uninterrupted run ends (CPU, same seed).

Why: cluster jobs are killed (SIGKILL after a time limit, node failures) and preempted
(SIGTERM); a benchmark whose resumed runs drift cannot compare methods. Each test
runs the real `occbench pretrain` / `finetune` as a subprocess, with a resume state
written every step, and compares weights bit for bit with an uninterrupted run.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from smoke import SMOKE_ARGS, make_dataset

# Long enough to be interrupted mid-epoch: the smoke grid's 4 training frames, one a step, 3 epochs.
OVERLAY = {
    "execution": {"state_every_steps": 1, "loader_workers": 1},
    "pretrain": {"epochs": 3, "batch_size": 1},
    "finetune": {"segmentation": {"batch_size": 1, "epochs": [{"up_to_label_fraction": 1.0, "epochs": 3}]}},
}
# Seen 7 rows of the step curve (steps 0-6), the saved state is after step 6 or 7 of 12:
# in the middle of the second epoch either way.
KILL_AFTER_ROWS = 6
PRETRAIN = ["pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", "also", "--fraction", "1"]
FINETUNE = ["finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
            "--source", "also-synthetic-pt_1", "--label-fraction", "1", "--seed", "0"]
RUN_DIRS = {"pretrain": Path("results/pretrain/small/synthetic/also/pt_1"),
            "finetune": Path("results/finetune/segmentation/synthetic/small/also-synthetic-pt_1/labels_1/split_0/"
                             "seed_0")}


def _command(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "occbench", *SMOKE_ARGS, "--params", str(workdir / "overlay.yaml")]


def _run(workdir: Path, verb: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(_command(workdir) + verb, cwd=workdir, capture_output=True, text=True, timeout=600)


def _interrupt(workdir: Path, verb: list[str], after_rows: int, how: signal.Signals) -> subprocess.CompletedProcess:
    """Start the job, send ``how`` once its step curve has ``after_rows`` rows, return the finished process."""
    curve = workdir / RUN_DIRS[verb[0]] / "curves" / "steps.tsv"
    proc = subprocess.Popen(_command(workdir) + verb, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if curve.exists() and len(curve.read_text().splitlines()) > after_rows + 1:  # header + rows
            break
        time.sleep(0.02)
    assert proc.poll() is None, f"the job ended before it could be interrupted:\n{proc.communicate(timeout=60)[1][-3000:]}"
    proc.send_signal(how)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The smoke dataset, pre-trained and fine-tuned without interruption."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    make_dataset(workdir)
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    for verb in (PRETRAIN, FINETUNE):
        done = _run(workdir, verb)
        assert done.returncode == 0, done.stderr[-3000:]
    return workdir


def _copy_inputs(reference: Path, workdir: Path, with_checkpoint: bool) -> None:
    shutil.copytree(reference / "results" / "data", workdir / "results" / "data")
    shutil.copy(reference / "overlay.yaml", workdir / "overlay.yaml")
    if with_checkpoint:
        target = workdir / RUN_DIRS["pretrain"]
        target.mkdir(parents=True)
        shutil.copy(reference / RUN_DIRS["pretrain"] / "checkpoint.pt", target / "checkpoint.pt")


def _weights(path: Path, key: str) -> dict[str, torch.Tensor]:
    state = torch.load(path, weights_only=True)
    return state[key] if key else state


def _assert_same_run(reference: Path, workdir: Path, verb: str) -> None:
    weights, key = ("checkpoint.pt", "backbone") if verb == "pretrain" else ("model.pt", "")
    expected = _weights(reference / RUN_DIRS[verb] / weights, key)
    got = _weights(workdir / RUN_DIRS[verb] / weights, key)
    assert expected.keys() == got.keys()
    different = [name for name in expected if not torch.equal(expected[name], got[name])]
    assert not different, f"{len(different)} tensors differ after resuming, e.g. {different[:3]}"
    meta = [json.loads((d / RUN_DIRS[verb] / "run_meta.json").read_text()) for d in (reference, workdir)]
    assert meta[0]["history"] == meta[1]["history"]
    if verb == "finetune":
        assert (json.loads((reference / RUN_DIRS[verb] / "metrics.json").read_text())
                == json.loads((workdir / RUN_DIRS[verb] / "metrics.json").read_text()))
    # The curve of the resumed run is the uninterrupted one: no step twice, none missing.
    curves = [(d / RUN_DIRS[verb] / "curves" / "steps.tsv").read_text().splitlines() for d in (reference, workdir)]
    assert [line.split("\t")[:3] for line in curves[0]] == [line.split("\t")[:3] for line in curves[1]]


@pytest.mark.parametrize("verb", ["pretrain", "finetune"])
def test_sigkill_mid_epoch_then_rerun_gives_the_uninterrupted_weights(reference, tmp_path, verb):
    _copy_inputs(reference, tmp_path, with_checkpoint=verb == "finetune")
    command = PRETRAIN if verb == "pretrain" else FINETUNE
    killed = _interrupt(tmp_path, command, after_rows=KILL_AFTER_ROWS, how=signal.SIGKILL)
    assert killed.returncode == -signal.SIGKILL
    state = torch.load(tmp_path / RUN_DIRS[verb] / "train_state.pt", weights_only=True)
    assert state["progress"]["epoch"] == 1 and state["progress"]["step"] in (2, 3), state["progress"]
    resumed = _run(tmp_path, command)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at epoch {state['progress']['epoch']} step {state['progress']['step']}" in resumed.stderr
    assert not (tmp_path / RUN_DIRS[verb] / "train_state.pt").exists()
    _assert_same_run(reference, tmp_path, verb)


def test_sigterm_saves_the_current_step_and_exits_for_requeue(reference, tmp_path):
    _copy_inputs(reference, tmp_path, with_checkpoint=False)
    stopped = _interrupt(tmp_path, PRETRAIN, after_rows=2, how=signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM, stopped.stderr[-3000:]
    assert "SIGTERM received at epoch" in stopped.stderr
    assert not (tmp_path / RUN_DIRS["pretrain"] / "checkpoint.pt").exists()
    state = torch.load(tmp_path / RUN_DIRS["pretrain"] / "train_state.pt", weights_only=True)
    saved = state["progress"]
    assert f"epoch {saved['epoch']} step {saved['step']}; resume state saved" in stopped.stderr
    resumed = _run(tmp_path, PRETRAIN)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming {RUN_DIRS['pretrain'] / 'train_state.pt'} at epoch {saved['epoch']} step {saved['step']}" \
        in resumed.stderr
    _assert_same_run(reference, tmp_path, "pretrain")


def test_state_written_for_other_inputs_is_not_resumed(reference, tmp_path):
    _copy_inputs(reference, tmp_path, with_checkpoint=False)
    _interrupt(tmp_path, PRETRAIN, after_rows=2, how=signal.SIGKILL)
    overlay = {**OVERLAY, "pretrain": {**OVERLAY["pretrain"], "optimizer": {"name": "adamw", "lr": 0.002,
                                                                            "weight_decay": 0.01}}}
    (tmp_path / "overlay.yaml").write_text(yaml.safe_dump(overlay))
    rerun = _run(tmp_path, PRETRAIN)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "ignoring" in rerun.stderr and "resuming" not in rerun.stderr
    meta = json.loads((tmp_path / RUN_DIRS["pretrain"] / "run_meta.json").read_text())
    assert meta["resumed_from"] is None
