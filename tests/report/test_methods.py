"""The methods table names, per method of the grid, its paper, its teacher and what differs."""

from __future__ import annotations

from pathlib import Path

from occbench.pretrain import METHODS
from occbench.report.methods import write_methods_table
from occbench.workflow.grid import PinnedTeacher, PretrainRun


def test_every_method_states_its_paper_what_differs_and_its_headline_metrics():
    for name, method in METHODS.items():
        assert method.paper.strip() and method.differs.strip() and method.headline_metrics, name


def test_one_row_per_variant_with_its_teacher(tmp_path):
    also = PretrainRun("small", "synthetic", "also", 1.0)
    taught = PretrainRun("small", "synthetic", "picture", 1.0, also)
    pinned = PretrainRun("small", "synthetic", "picture", 0.5, PinnedTeacher("seal", Path("w/seal.pt"), "ab" * 32))
    markdown, _ = write_methods_table([also, taught, PretrainRun("small", "synthetic", "also", 0.5), pinned],
                                      tmp_path)
    rows = [line for line in markdown.read_text().splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [row.split(" | ")[0:3] for row in rows] == [
        ["| also", "re-implementation", "–"],
        ["| picture+also", "re-implementation", "also (run of the grid)"],
        ["| picture+seal", "re-implementation", "seal (file w/seal.pt, sha256 abababababab…)"],
    ]
    assert METHODS["picture"].paper in rows[1] and METHODS["picture"].differs in rows[1]


def test_a_pinned_dinov2_teacher_is_named_with_its_kind(tmp_path):
    teacher = PinnedTeacher("dinov2_vits14", Path("w/dinov2_vits14_pretrain.pth"), "cd" * 32, "dinov2")
    markdown, _ = write_methods_table([PretrainRun("small", "nuscenes", "occfeat", 1.0, teacher)], tmp_path)
    assert "| occfeat+dinov2_vits14 | re-implementation | dinov2_vits14 (kind dinov2, file " \
           "w/dinov2_vits14_pretrain.pth, sha256 cdcdcdcdcdcd…) |" in markdown.read_text()
