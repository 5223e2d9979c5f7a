"""Stopping a job cleanly when the cluster asks (no torch here: the CLI imports it for every verb)."""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

# What SLURM sends before a time limit (sbatch --signal) or a preemption.
PREEMPT_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """The job was asked to stop and saved its resume state; the CLI exits 128 + signum, a rerun resumes."""

    def __init__(self, signum: int, state_path: Path):
        self.signum, self.state_path = signum, state_path
        super().__init__(f"{signal.Signals(signum).name} received; resume state saved to {state_path}")


@contextmanager
def preemption_flag() -> Iterator[list[int]]:
    """A list that receives the numbers of the preemption signals that arrive; handlers restored afterwards."""
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, _frame: received.append(signum)) for sig in PREEMPT_SIGNALS}
    try:
        yield received
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
