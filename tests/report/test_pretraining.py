"""The pre-training table: each run's held-out pretext metrics at init and after, from its run_meta.json."""

from __future__ import annotations

import json

import pytest

from occbench.report.pretraining import collect_pretraining, write_pretraining_table
from occbench.workflow.grid import PretrainRun

ALSO = PretrainRun("small", "synthetic", "also", 1.0)
PICTURE = PretrainRun("small", "synthetic", "picture", 0.5, ALSO)


def write_meta(run: PretrainRun, pretext: dict, teacher: dict | None = None) -> None:
    run.directory.mkdir(parents=True)
    (run.directory / "run_meta.json").write_text(json.dumps({
        "pretext": {"val_frames": 12, **pretext}, "teacher": teacher, "split": {"frames": 36}, "steps": 432,
        "wall_seconds": 150.4, "step_seconds": {"peak_memory_mb": 581.2},
    }))


def test_one_row_per_run_and_metric_with_its_teacher(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_meta(ALSO, {"init": {"query_accuracy": 0.42, "pair_bce": 0.71, "queries": 1200},
                      "final": {"query_accuracy": 0.87, "pair_bce": 0.37, "queries": 1200}})
    write_meta(PICTURE, {"init": {"chamfer": 0.315, "feature_cosine": -0.04},
                         "final": {"chamfer": 0.287, "feature_cosine": 0.93}}, {"name": "also_pt1"})
    table = collect_pretraining([ALSO, PICTURE])
    assert table[["method", "metric", "init", "final"]].values.tolist() == [
        ["also", "pair_bce", 0.71, 0.37], ["also", "queries", 1200, 1200], ["also", "query_accuracy", 0.42, 0.87],
        ["picture+also_pt1", "chamfer", 0.315, 0.287], ["picture+also_pt1", "feature_cosine", -0.04, 0.93]]
    assert table["teacher"].fillna("none").tolist() == ["none"] * 3 + ["also_pt1"] * 2
    (markdown, *_) = write_pretraining_table(table, tmp_path / "tables")
    lines = markdown.read_text().splitlines()
    assert "| also (synthetic, 100 %) | query_accuracy | 0.420 | 0.870 | 36 | 432 | 150 | 581 |" in lines
    assert not any("| queries |" in line for line in lines)  # a count, not a headline metric: in the CSV only
    assert "| picture+also_pt1 (synthetic, 50 %) | chamfer | 0.315 | 0.287 | 36 | 432 | 150 | 581 |" in lines


def test_a_run_meta_without_pretext_is_named(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    ALSO.directory.mkdir(parents=True)
    (ALSO.directory / "run_meta.json").write_text("{}")
    with pytest.raises(ValueError, match="also/pt_1/run_meta.json: no 'pretext'"):
        collect_pretraining([ALSO])


def test_a_headline_metric_the_run_did_not_measure_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_meta(ALSO, {"init": {"queries": 1200}, "final": {"queries": 1200}})
    with pytest.raises(ValueError, match=r"pre-training also: headline metric\(s\) \['pair_bce', 'query_accuracy'\]"):
        write_pretraining_table(collect_pretraining([ALSO]), tmp_path / "tables")
