"""dvc repro regenerates the tables; a parameter change shows up in dvc metrics diff."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.slow


def _run(cwd: Path, *command: str) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


def test_repro_then_param_change_shows_changed_cells(project_copy):
    _run(project_copy, "dvc", "repro")
    tables = sorted(p.name for p in (project_copy / "reports" / "tables").iterdir())
    assert tables == ["methods.md", "methods.tex", "pretraining.csv", "pretraining.md", "pretraining.tex",
                      "segmentation_synthetic_small.csv", "segmentation_synthetic_small.md",
                      "segmentation_synthetic_small.tex"]
    pretraining = (project_copy / "reports" / "tables" / "pretraining.md").read_text()
    assert "| picture+also (synthetic, 100 %) | feature_cosine |" in pretraining
    assert (project_copy / "reports" / "figures" / "label_efficiency_segmentation_synthetic_small.png").exists()
    # dvc plots show renders the loss curve of the pre-training and of every fine-tuning run
    plots = json.loads(_run(project_copy, "dvc", "plots", "show", "--json"))["data"]
    step_curves = {Path(name).name for name in plots if "reports/curves/steps/" in name}
    assert "pretrain-small-synthetic-also-pt_1.tsv" in step_curves
    assert "finetune-segmentation-synthetic-small-scratch-labels_0.5-split_1-seed_0.tsv" in step_curves
    assert "pretrain-small-synthetic-picture+also-pt_1.tsv" in step_curves
    # 5 pre-trainings (ALSO, OccFeat, Occupancy-MAE, PICTURE, SPOT; not OccFeat's image teacher);
    # 6 sources x 2 seeds x (2 label splits at 50 %, 1 at 100 %)
    assert len(step_curves) == 5 + 6 * 2 * (2 + 1)
    rendered = plots["reports/curves/epochs/pretrain-small-synthetic-also-pt_1.tsv"][0]["content"]
    assert rendered["encoding"]["x"]["field"] == "epoch" and rendered["data"]["values"][0]["loss"]
    _run(project_copy, "git", "add", "-A")
    _run(project_copy, "git", "commit", "-qm", "first results")
    assert "Data and pipelines are up to date" in _run(project_copy, "dvc", "repro")

    params_file = project_copy / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["finetune"]["segmentation"]["optimizer"]["lr"] *= 4
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    _run(project_copy, "dvc", "repro")

    changed = json.loads(_run(project_copy, "dvc", "params", "diff", "--json"))
    assert list(changed["params.yaml"]) == ["finetune.segmentation.optimizer.lr"]
    diff = json.loads(_run(project_copy, "dvc", "metrics", "diff", "--json"))["reports/metrics.json"]
    cells = {key.rsplit(".", 1)[0] for key, change in diff.items()
             if key.endswith(".mean") and change["diff"] not in (0, None)}
    prefix = "segmentation.synthetic.small"
    assert cells == {f"{prefix}.{row}.{labels}"
                     for row in ("scratch", "also@synthetic_pt_100pct", "occfeat+selfsup_image@synthetic_pt_100pct",
                                 "occupancy_mae@synthetic_pt_100pct",
                                 "picture+also@synthetic_pt_100pct", "spot@synthetic_pt_100pct")
                     for labels in ("labels_50pct", "labels_100pct")}
    # the pre-training did not depend on the fine-tuning lr: Snakemake kept its checkpoint
    log = (project_copy / ".snakemake" / "log")
    assert any("rule pretrain" in p.read_text() for p in log.iterdir())  # ran in the first repro only
    assert sum("rule pretrain" in p.read_text() for p in log.iterdir()) == 1
