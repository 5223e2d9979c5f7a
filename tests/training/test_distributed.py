"""Data parallel fine-tuning with 2 gloo processes (`--processes 2`) against 1 process, same global batch.

Tolerance, and why it is not exact: each rank normalises its BatchNorm over its own
frame (1 of the global 2) and its cross-entropy over its own points, while one process
uses both frames for both; DDP then averages the two ranks' gradients. With SGD (an
update proportional to the gradient, unlike Adam's per-element sign-like first steps)
the weight updates of 4 steps agree to a cosine of 0.98 and a relative difference of 0.19
(measured); the test allows 0.95 and 0.35. A run whose ranks did not average gradients,
or that trained on one rank's frames only, misses both.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from occbench.models.backbone import SparseBackbone
from occbench.tasks.base import FinetuneModel
from occbench.tasks.segmentation import SegmentationTask
from smoke import SMOKE_ARGS, make_dataset, smoke_params

OVERLAY = {
    "execution": {"loader_workers": 0},
    "finetune": {"segmentation": {
        "batch_size": 2, "optimizer": {"name": "sgd", "lr": 0.02, "weight_decay": 0.0},
        "schedule": {"name": "constant", "warmup_fraction": 0.0},
        "epochs": [{"up_to_label_fraction": 1.0, "epochs": 2}]}},
}
FINETUNE = ["finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic", "--source",
            "scratch", "--label-fraction", "1", "--seed", "0"]
RUN_DIR = Path("results/finetune/segmentation/synthetic/small/scratch/labels_1/split_0/seed_0")


def _finetune(workdir: Path, processes: int) -> Path:
    (workdir / "overlay.yaml").write_text(yaml.safe_dump(OVERLAY))
    done = subprocess.run([sys.executable, "-m", "occbench", *SMOKE_ARGS, "--params", "overlay.yaml", *FINETUNE,
                           "--processes", str(processes)],
                          cwd=workdir, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return workdir / RUN_DIR


def _update(state: dict, init: dict) -> torch.Tensor:
    return torch.cat([(state[k] - init[k]).flatten() for k in init
                      if init[k].dtype.is_floating_point and "running" not in k])


def test_two_gloo_ranks_match_one_process_with_the_same_global_batch(tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "ddp"
    for workdir in (single, parallel):
        workdir.mkdir()
        make_dataset(workdir)
    one = _finetune(single, 1)
    two = _finetune(parallel, 2)  # `--processes 2`: the CLI launches 2 ranks through torchrun
    torch.manual_seed(0)  # the run's seeded init, rebuilt
    backbone = SparseBackbone.from_params(smoke_params(), "small")
    init = FinetuneModel(backbone, SegmentationTask(backbone, {})).state_dict()
    a = _update(torch.load(one / "model.pt", weights_only=True), init)
    b = _update(torch.load(two / "model.pt", weights_only=True), init)
    assert torch.nn.functional.cosine_similarity(a, b, dim=0) > 0.95
    assert (a - b).norm() / a.norm() < 0.35
    # Only rank 0 wrote, and its record holds the mean loss of both ranks at every step.
    meta = [json.loads((d / "run_meta.json").read_text()) for d in (one, two)]
    assert meta[1]["steps"] == meta[0]["steps"] == 4
    assert meta[1]["history"][0]["loss"] == pytest.approx(meta[0]["history"][0]["loss"], rel=0.05)
    assert sorted(p.name for p in two.iterdir()) == ["curves", "metrics.json", "model.pt", "run_meta.json"]
