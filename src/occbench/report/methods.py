"""The methods table: which paper each pre-training of the grid follows and what occbench does differently.

Every method here is an occbench re-implementation on the shared backbone (two
of them have no public code), so a table of results says nothing about the
published code: this one says what each run is. Each method class states its
paper and, in one line, what differs (``PretrainMethod.paper``, ``.differs``);
its docstring says it in full.
"""

from __future__ import annotations

from pathlib import Path

from occbench.io import write_text
from occbench.pretrain import METHODS
from occbench.report.tables import latex_table, markdown_table
from occbench.workflow.grid import IMAGE_TEACHER, ImageTeacherRun, PinnedTeacher, PretrainRun

CAPTION = ("Pre-training methods of the grid: every one an occbench re-implementation on the shared backbone; "
           "the paper it follows and what differs (in full in the method's docstring).")
HEADER = ["Method", "Implementation", "Teacher", "Paper", "What differs"]


def _teacher(run: PretrainRun) -> str:
    if run.teacher is None:
        return "–"
    if isinstance(run.teacher, PinnedTeacher):
        kind = f"kind {run.teacher.kind}, " if run.teacher.kind else ""
        return f"{run.teacher.name} ({kind}file {run.teacher.weights}, sha256 {run.teacher.sha256[:12]}…)"
    if isinstance(run.teacher, ImageTeacherRun):
        return f"{IMAGE_TEACHER} (image encoder trained self-supervised on the camera images, a job of the grid)"
    return f"{run.teacher.variant} (run of the grid)"


def write_methods_table(runs: list[PretrainRun], out_dir: str | Path) -> list[Path]:
    """methods.{md,tex}: one row per method variant of the grid's pre-training runs."""
    variants = {run.variant: run for run in runs}
    body = [[variant, "re-implementation", _teacher(run), METHODS[run.method].paper, METHODS[run.method].differs]
            for variant, run in variants.items()]
    written = []
    for suffix, text in (("md", markdown_table(CAPTION, HEADER, body)),
                         ("tex", latex_table(CAPTION, "methods", HEADER, body))):
        path = Path(out_dir) / f"methods.{suffix}"
        write_text(path, text)
        written.append(path)
    return written
