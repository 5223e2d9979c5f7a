"""How long Snakemake takes to plan a paper-sized grid (`snakemake -n`).

The paper grid is 6 methods x 3 pre-training fractions x 3 tasks x 5 label
fractions x 3 seeds; with the methods and tasks implemented so far the same
job count is reached with more seeds and two backbones. Prints the job count
and the wall time of the dry run; asserts nothing about speed.

    python benchmarks/plan_dag.py [--seeds 25]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=25)
    args = parser.parse_args()
    overlay = {"grid": {
        "backbones": ["small", "base"],
        "methods": ["scratch", "also"],
        "pretrain_fractions": [0.01, 0.1, 1.0],
        "label_fractions": [0.001, 0.01, 0.1, 0.5, 1.0],
        "seeds": list(range(args.seeds)),
    }}
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("Snakefile", "params.yaml", "workflow"):
            (shutil.copytree if (ROOT / name).is_dir() else shutil.copy)(ROOT / name, Path(tmp) / name)
        (Path(tmp) / "paper.yaml").write_text(yaml.safe_dump(overlay))
        snakemake = Path(sys.executable).parent / "snakemake"
        started = time.perf_counter()
        out = subprocess.run([str(snakemake), "-n", "--cores", "1", "--configfile", "paper.yaml"],
                             cwd=tmp, capture_output=True, text=True, check=True)
        seconds = time.perf_counter() - started
    stats = re.search(r"^Job stats:\n(.*?)^total\s+(\d+)", out.stdout, re.MULTILINE | re.DOTALL)
    print(f"Job stats:\n{stats.group(1)}total {stats.group(2)}")
    print(f"snakemake -n planned {stats.group(2)} jobs in {seconds:.1f} s (wall, including start-up)")


if __name__ == "__main__":
    main()
