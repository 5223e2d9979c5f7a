"""Where a training step's time goes: data, forward, backward, for pre-training and fine-tuning.

Converts params.yaml's default synthetic dataset into a temporary folder, then
runs one epoch of `occbench pretrain` for each of --methods (default: the grid's
first method but scratch) and one of `occbench finetune` (segmentation, or --task;
scratch, 100 % labels) with each number of DataLoader workers, and prints the mean
seconds per step of each phase, frames per second and the peak memory, from the
engine's own timing (run_meta.json step_seconds). Each verb runs in its own process,
so that each job's peak memory is its own (the DAG runs them so too). A method's
teacher (PICTURE's ALSO, OccFeat's image encoder) is trained first, untimed.
Asserts nothing about speed.

    python benchmarks/train_step.py [--workers 0 2] [--params params.yaml] [--device auto]
                                    [--methods also spot occfeat picture occupancy_mae] [--task segmentation]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from occbench.config import load_params
from occbench.workflow.grid import RESULTS, FinetuneRun, ImageTeacherRun, PretrainRun, fraction_tag, pretrain_run

ROOT = Path(__file__).resolve().parents[1]


def _verb(params_files: list[Path], *args: str) -> None:
    params = [arg for path in params_files for arg in ("--params", str(path))]
    if subprocess.run([sys.executable, "-m", "occbench", *params, *args]).returncode != 0:
        raise SystemExit(f"occbench {' '.join(args)} failed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", nargs="+", help="pre-training methods (default: the grid's first but scratch)")
    parser.add_argument("--task", default="segmentation", help="fine-tuning task")
    args = parser.parse_args()
    params = load_params(args.params)
    dataset = params["grid"]["transfers"][0]["pretrain"]
    methods = args.methods or [next(m for m in params["grid"]["methods"] if m != "scratch")]
    batch_sizes = {**{f"pretrain {method}": params["pretrain"]["batch_size"] for method in methods},
                   f"finetune {args.task}": params["finetune"][args.task]["batch_size"]}
    backbone = params["grid"]["backbones"][0]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        os.chdir(tmp)
        base = [args.params.resolve()]
        _verb(base, "convert", "--dataset", dataset, "--workers", "2")
        _verb(base, "split", "--dataset", dataset, "--subset", "pretrain", "--fraction", "1")
        _verb(base, "split", "--dataset", dataset, "--subset", "labels", "--fraction", "1", "--split-seed", "0")
        runs = {method: pretrain_run(params, backbone, dataset, method, 1.0) for method in methods}
        teachers = {run.teacher.method for run in runs.values() if isinstance(run.teacher, PretrainRun)}
        for workers in args.workers:
            overlay = Path(tmp) / f"workers_{workers}.yaml"
            overlay.write_text(yaml.safe_dump({
                "grid": {"methods": sorted({"scratch", *methods, *teachers})},
                "execution": {"loader_workers": workers, "device": args.device},
                "pretrain": {"epochs": 1},
                "finetune": {args.task: {"epochs": [{"up_to_label_fraction": 1.0, "epochs": 1}]}},
            }))
            files = [*base, overlay]
            timed = []
            for method, pretrain in runs.items():
                teacher = pretrain.teacher
                if isinstance(teacher, PretrainRun) and not teacher.checkpoint.exists():  # untimed: PICTURE's ALSO
                    _verb(files, "pretrain", "--backbone", backbone, "--dataset", dataset, "--method",
                          teacher.method, "--fraction", fraction_tag(teacher.fraction))
                if isinstance(teacher, ImageTeacherRun) and not teacher.checkpoint.exists():  # untimed: OccFeat's
                    _verb(files, "image-teacher", "--dataset", dataset, "--method", method, "--fraction", "1")
                _verb(files, "pretrain", "--backbone", backbone, "--dataset", dataset, "--method", method,
                      "--fraction", "1")
                timed.append((f"pretrain {method}", pretrain.directory))
            finetune = FinetuneRun(args.task, backbone, dataset, 1.0, 0, 0, None)
            _verb(files, "finetune", "--task", args.task, "--backbone", backbone, "--dataset", dataset,
                  "--source", "scratch", "--label-fraction", fraction_tag(1.0), "--seed", "0")
            timed.append((f"finetune {args.task}", finetune.directory))
            for job, run_dir in timed:
                meta = json.loads((run_dir / "run_meta.json").read_text())
                rows.append((job, workers, meta["step_seconds"], meta["steps"], meta["device"]))
            # the next worker count trains the same runs (workers are in no digest): from scratch again
            shutil.rmtree(RESULTS / "pretrain")
            shutil.rmtree(RESULTS / "image_teacher", ignore_errors=True)
            shutil.rmtree(finetune.directory)
    print(f"\n{'job':<30}{'workers':>8}{'steps':>7}{'data s':>9}{'forward s':>11}{'backward s':>12}"
          f"{'step s':>9}{'frames/s':>10}{'peak MiB':>10}  device")
    for job, workers, seconds, steps, device in rows:
        print(f"{job:<30}{workers:>8}{steps:>7}{seconds['data']:>9.3f}{seconds['forward']:>11.3f}"
              f"{seconds['backward']:>12.3f}{seconds['step']:>9.3f}{batch_sizes[job] / seconds['step']:>10.2f}"
              f"{seconds['peak_memory_mb']:>10.0f}  {device}")


if __name__ == "__main__":
    main()
