"""What a run records about where it came from (run_meta.json).

Strings live here, never in metrics.json: DVC lists every changed string in
`dvc metrics diff`, so a git sha or host name there would drown the numbers.
"""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from typing import Any

from occbench.config import PROJECT_ROOT

PACKAGES = ("occbench", "torch", "spconv", "numpy", "snakemake", "dvc")


def git_sha() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment() -> dict[str, Any]:
    import torch

    return {
        "git_sha": git_sha(),
        "versions": versions(),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }
