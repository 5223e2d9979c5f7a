"""A pre-training job can get several GPUs: the rule asks SLURM for them and runs one rank per GPU."""

import os
import subprocess
import sys
from pathlib import Path

import yaml


def test_pretrain_gpus_become_the_gpu_resource_and_the_process_count(project_copy):
    (project_copy / "gpus.yaml").write_text(yaml.safe_dump({"execution": {"pretrain_gpus": 2}}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    dry = subprocess.run(["snakemake", "-n", "-p", "--configfile", "gpus.yaml", "--",
                          "results/pretrain/small/synthetic/also/pt_1/checkpoint.pt"],
                         cwd=project_copy, env=env, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0, dry.stderr[-3000:]
    job = dry.stdout[dry.stdout.index("rule pretrain:"):]
    assert "gpu=2" in job.split("Shell command:")[0]  # the SLURM plugin turns it into sbatch --gpus=2
    assert "--fraction 1 --processes 2 >" in job
