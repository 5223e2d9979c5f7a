from pathlib import Path

from occbench.workflow.grid import SCRATCH, Grid, fraction_tag
from smoke import smoke_params


def paper_like_params():
    params = smoke_params()
    params["grid"].update(
        backbones=["small", "base"],
        pretrain_fractions=[0.01, 0.1, 1.0],
        label_fractions=[0.001, 0.01, 0.1, 0.5, 1.0],
        seeds=[0, 1, 2],
    )
    return params


def test_scratch_has_no_pretraining_and_is_not_repeated_per_pretrain_fraction():
    grid = Grid(paper_like_params())
    assert all(run.method != SCRATCH for run in grid.pretrain_runs)
    assert len(grid.pretrain_runs) == 2 * 1 * 3  # backbones x methods (also) x fractions
    # per backbone x label fraction x seed: one scratch run + one run per pre-training fraction
    assert len(grid.finetune_runs) == 2 * 5 * 3 * (1 + 3)
    scratch = [run for run in grid.finetune_runs if run.pretrained is None]
    assert len(scratch) == 2 * 5 * 3


def test_paths_round_trip_through_source_tags():
    grid = Grid(paper_like_params())
    for run in grid.finetune_runs:
        again = grid.finetune_run(run.task, run.backbone, run.finetune_dataset, run.source,
                                  float(fraction_tag(run.label_fraction)), run.seed)
        assert again == run
        assert run.metrics == again.metrics
    run = next(r for r in grid.finetune_runs if r.pretrained and r.pretrained.fraction == 0.01)
    assert run.metrics == Path(
        f"results/finetune/segmentation/synthetic/{run.backbone}/also-synthetic-pt_0.01/"
        f"labels_{fraction_tag(run.label_fraction)}/seed_{run.seed}/metrics.json"
    )
    assert run.pretrained.checkpoint == Path(f"results/pretrain/{run.backbone}/synthetic/also/pt_0.01/checkpoint.pt")


def test_every_split_file_is_listed_once():
    grid = Grid(paper_like_params())
    assert sorted(grid.splits) == sorted(
        [("synthetic", "pretrain", f) for f in (0.01, 0.1, 1.0)]
        + [("synthetic", "labels", f) for f in (0.001, 0.01, 0.1, 0.5, 1.0)]
    )


def test_results_readme_shows_every_path_of_the_layout():
    """A fresh clone has results/ with a README of its layout; it names each pattern exactly."""
    from occbench.workflow.grid import PATTERNS

    readme = (Path(__file__).resolve().parents[2] / "results" / "README.md").read_text()
    missing = [pattern for pattern in PATTERNS.values() if pattern not in readme]
    assert not missing, f"results/README.md does not show {missing}"
