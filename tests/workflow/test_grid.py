import re
from pathlib import Path

import pytest

from occbench.config import load_params
from occbench.workflow.grid import (
    COMPUTE_MATCHED,
    MODE_DIRS,
    SCRATCH,
    Grid,
    MatchedPretraining,
    fraction_tag,
    split_path,
)
from smoke import SMOKE_FILES, smoke_params


def paper_like_params(label_split_seeds=(0,), compute_matched_scratch=False):
    params = smoke_params()
    params["grid"].update(
        backbones=["small", "base"],
        methods=["scratch", "also"],
        pretrain_fractions=[0.01, 0.1, 1.0],
        label_fractions=[0.001, 0.01, 0.1, 0.5, 1.0],
        seeds=[0, 1, 2],
        label_split_seeds=list(label_split_seeds),
        compute_matched_scratch=compute_matched_scratch,
        tasks=["segmentation"],
        task_overrides={},
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


def test_the_default_grid_pairs_2_seeds_by_3_label_splits_below_full_labels():
    grid = Grid(load_params(SMOKE_FILES[0]))
    sources = 1 + 2  # scratch, ALSO at pre-training fractions 0.25 and 1
    assert (len(grid.pretrain_runs), len(grid.finetune_runs)) == (2, sources * (2 * 3 + 2))
    assert {(r.seed, r.label_split_seed) for r in grid.finetune_runs if r.label_fraction == 0.05} == \
        {(seed, split) for seed in (0, 1) for split in (0, 1, 2)}
    assert [spec for spec in grid.splits if spec[1] == "labels"] == [
        ("synthetic", "labels", 0.05, 0), ("synthetic", "labels", 0.05, 1), ("synthetic", "labels", 0.05, 2),
        ("synthetic", "labels", 1.0, 0)]


def test_label_split_seeds_are_a_second_axis_below_full_labels():
    """3 training seeds x 3 label splits at each fraction below 1; at 1 every split is all frames, so one."""
    grid = Grid(paper_like_params(label_split_seeds=[0, 4, 7]))
    cells_per_source = 2 * 3 * (4 * 3 + 1)  # backbones x seeds x (label fractions < 1 x splits + fraction 1)
    assert len(grid.finetune_runs) == cells_per_source * (1 + 3)
    below = {(r.seed, r.label_split_seed) for r in grid.finetune_runs if r.label_fraction == 0.5}
    assert below == {(seed, split) for seed in (0, 1, 2) for split in (0, 4, 7)}
    assert {r.label_split_seed for r in grid.finetune_runs if r.label_fraction == 1.0} == {0}

def test_every_split_file_is_listed_once():
    """Pre-training splits take no label-split seed; label splits one file per (fraction, split seed)."""
    grid = Grid(paper_like_params(label_split_seeds=[0, 4, 7]))
    assert sorted(grid.splits, key=str) == sorted(
        [("synthetic", "pretrain", f, None) for f in (0.01, 0.1, 1.0)]
        + [("synthetic", "labels", f, s) for f in (0.001, 0.01, 0.1, 0.5) for s in (0, 4, 7)]
        + [("synthetic", "labels", 1.0, 0)], key=str
    )


def test_compute_matched_scratch_is_one_source_per_pretrain_fraction():
    grid = Grid(paper_like_params(compute_matched_scratch=True))
    matched = [run for run in grid.finetune_runs if run.method == COMPUTE_MATCHED]
    assert len(matched) == 2 * 5 * 3 * 3  # backbones x label fractions x seeds x pre-training fractions
    assert {run.compute_matched for run in matched} == {MatchedPretraining("synthetic", f) for f in (0.01, 0.1, 1.0)}
    assert all(run.pretrained is None for run in matched)
    assert len(grid.pretrain_runs) == 2 * 3  # it adds no pre-training
    with pytest.raises(ValueError, match="grid.compute_matched_scratch is off"):
        Grid(paper_like_params()).finetune_run("segmentation", "small", "synthetic", matched[0].source, 0.1, 0, 0)


def test_paths_round_trip_through_source_tags():
    grid = Grid(paper_like_params(label_split_seeds=[0, 3], compute_matched_scratch=True))
    for run in grid.finetune_runs:
        again = grid.finetune_run(run.task, run.backbone, run.finetune_dataset, run.source,
                                  float(fraction_tag(run.label_fraction)), run.seed, run.label_split_seed)
        assert again == run
        assert run.metrics == again.metrics
    run = next(r for r in grid.finetune_runs if r.pretrained and r.pretrained.fraction == 0.01
               and r.label_split_seed == 3)
    assert run.metrics == Path(
        f"results/finetune/segmentation/synthetic/{run.backbone}/also-synthetic-pt_0.01/"
        f"labels_{fraction_tag(run.label_fraction)}/split_3/seed_{run.seed}/metrics.json"
    )
    assert split_path("synthetic", "labels", run.label_fraction, 3) == Path(
        f"results/data/synthetic/splits/labels_{fraction_tag(run.label_fraction)}_split_3.txt")
    assert run.pretrained.checkpoint == Path(f"results/pretrain/{run.backbone}/synthetic/also/pt_0.01/checkpoint.pt")
    matched = next(r for r in grid.finetune_runs if r.compute_matched and r.compute_matched.fraction == 0.1)
    assert matched.source == "scratch_matched-synthetic-pt_0.1"
    assert matched.compute_matched.split == Path("results/data/synthetic/splits/pretrain_0.1.txt")
    assert matched.coordinates()["pretrain_fraction"] == 0.1 and matched.coordinates()["method"] == COMPUTE_MATCHED


def test_finetune_modes_are_an_axis_and_full_runs_keep_their_paths():
    """Probes of scratch (the random backbone) and of each pre-training, never of compute-matched scratch
    (it exists to train the backbone longer); full runs are those of the full-only grid, in its order."""
    full_only = paper_like_params(compute_matched_scratch=True)
    both = paper_like_params(compute_matched_scratch=True)
    both["grid"]["finetune_modes"] = ["full", "probe"]
    grid = Grid(both)
    cells = 2 * 5 * 3  # backbones x label fractions x seeds (one label split)
    full = [run for run in grid.finetune_runs if run.mode == "full"]
    probes = [run for run in grid.finetune_runs if run.mode == "probe"]
    assert (len(full), len(probes)) == (cells * (1 + 3 + 3), cells * (1 + 3))  # + also, + compute-matched at 3
    assert grid.finetune_runs == full + probes
    assert [run.metrics for run in full] == [run.metrics for run in Grid(full_only).finetune_runs]
    assert sum(run.method == SCRATCH for run in probes) == cells and not any(run.compute_matched for run in probes)
    assert len(grid.pretrain_runs) == 2 * 3  # a probe reads the same checkpoints
    probe = next(r for r in probes if r.pretrained and r.pretrained.fraction == 0.01 and r.label_fraction == 0.1
                 and r.backbone == "small" and r.seed == 2)
    assert probe.metrics == Path("results/finetune/segmentation/synthetic/small/also-synthetic-pt_0.01/probe/"
                                 "labels_0.1/split_0/seed_2/metrics.json")
    assert probe.coordinates()["mode"] == "probe"
    for run in grid.finetune_runs:
        assert grid.finetune_run(run.task, run.backbone, run.finetune_dataset, run.source, run.label_fraction,
                                 run.seed, run.label_split_seed, Grid.mode_at(MODE_DIRS[run.mode])) == run
    with pytest.raises(ValueError, match="a probe trains no backbone"):
        grid.finetune_run("segmentation", "small", "synthetic", "scratch_matched-synthetic-pt_0.1", 0.1, 0, 0, "probe")


def test_results_readme_shows_every_path_of_the_layout():
    """A fresh clone has results/ with a README of its layout; it names each pattern exactly."""
    from occbench.workflow.grid import PATTERNS

    readme = (Path(__file__).resolve().parents[2] / "results" / "README.md").read_text()
    missing = [pattern for pattern in PATTERNS.values() if pattern not in readme]
    assert not missing, f"results/README.md does not show {missing}"


def taught_params(methods=("scratch", "picture"), fractions=(1.0,), teacher=None):
    """The smoke grid with PICTURE taught by ALSO (or by ``teacher``)."""
    params = smoke_params()
    params["grid"].update(methods=list(methods), pretrain_fractions=list(fractions))
    if teacher is not None:
        params["pretrain"]["methods"]["picture"]["teacher"] = teacher
    return params


def test_a_teacher_run_comes_before_its_student_and_names_its_path_and_tag():
    grid = Grid(taught_params())
    teacher, student = grid.pretrain_runs  # ALSO is not in grid.methods, yet its run is a job: PICTURE needs it
    assert (teacher.method, teacher.teacher, student.method, student.teacher) == ("also", None, "picture", teacher)
    assert student.checkpoint == Path("results/pretrain/small/synthetic/picture+also/pt_1/checkpoint.pt")
    assert student.teacher_file == teacher.checkpoint
    assert {run.source for run in grid.finetune_runs} == {"scratch", "picture+also-synthetic-pt_1"}
    assert grid.pretrain_run_at("small", "synthetic", "picture+also", 1.0) == student
    with pytest.raises(ValueError, match="picture/pt_1/checkpoint.pt: no pre-training run"):
        grid.pretrain_run_at("small", "synthetic", "picture", 1.0)


def test_a_teacher_of_another_fraction_is_named_with_it_and_run_once():
    grid = Grid(taught_params(fractions=(0.5, 1.0), teacher={"method": "also", "fraction": 1.0}))
    assert [run.variant for run in grid.pretrain_runs] == ["also", "picture+also_pt1", "picture+also"]
    assert [run.fraction for run in grid.pretrain_runs] == [1.0, 0.5, 1.0]


def test_a_pinned_teacher_is_named_by_its_name(tmp_path):
    weights = tmp_path / "seal.pt"
    weights.write_bytes(b"weights")
    pinned = {"name": "seal", "weights": str(weights), "sha256": "ab" * 32}
    (student,) = Grid(taught_params(teacher=pinned)).pretrain_runs
    assert student.variant == "picture+seal" and student.teacher_file == weights


@pytest.mark.parametrize("teacher, named", [
    ({"method": "picture"}, "pretrain.methods.picture.teacher: teachers form a cycle: picture -> picture"),
    ({"method": "also", "fraction": 0.25}, "pretrain.methods.picture.teacher.fraction: 0.25 is not one of"),
    ({"name": "seal", "weights": "no/such.pt", "sha256": "ab" * 32},
     "pretrain.methods.picture.teacher.weights: no/such.pt: no such file"),
])
def test_validate_refuses_a_missing_or_cyclic_teacher(teacher, named):
    from occbench.config import ParamsError, validate_params

    with pytest.raises(ParamsError, match=re.escape(named)):
        validate_params(taught_params(teacher=teacher))


def test_a_teacher_not_defined_under_pretrain_methods_is_refused():
    from occbench.config import ParamsError, check_consistency

    params = taught_params()
    del params["pretrain"]["methods"]["also"]
    with pytest.raises(ParamsError, match="pretrain.methods.picture.teacher.method: 'also' is not defined"):
        check_consistency(params)


def test_a_student_digest_follows_its_teacher_and_not_the_reverse():
    from occbench.workflow.grid import pretrain_digest

    params = taught_params()
    teacher, student = Grid(params).pretrain_runs
    before = {run.variant: pretrain_digest(params, run) for run in (teacher, student)}
    params["pretrain"]["methods"]["also"]["hidden_dim"] = 32
    after = {run.variant: pretrain_digest(params, run) for run in (teacher, student)}
    assert before["also"] != after["also"] and before["picture+also"] != after["picture+also"]
    params["pretrain"]["methods"]["picture"]["clusters"] = 6
    params["pretrain"]["methods"]["picture"]["group_sizes"] = [2, 2, 2]
    assert pretrain_digest(params, teacher) == after["also"]
    assert pretrain_digest(params, student) != after["picture+also"]


def dry_run_jobs(tmp_path, methods: list[str]) -> list[tuple[str, dict[str, str]]]:
    """(rule, its fields) of the image_teacher and pretrain jobs of a literal `snakemake -n` on the smoke
    grid with grid.methods = ``methods``, in the order planned."""
    import subprocess
    import sys

    import yaml

    from conftest import copy_project

    project = copy_project(tmp_path / "project")
    (project / "methods.yaml").write_text(yaml.safe_dump({"grid": {"methods": methods}}))
    bin_dir = Path(sys.executable).parent
    result = subprocess.run([str(bin_dir / "snakemake"), "-n", "--cores", "1", "--configfile", "methods.yaml"],
                            cwd=project, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    jobs = re.findall(r"^rule (image_teacher|pretrain):\n((?:    .*\n)+)", result.stdout, flags=re.M)
    return [(rule, dict(re.findall(r"^    (\w+): (.*)$", job, flags=re.M))) for rule, job in jobs]


@pytest.mark.slow
def test_snakemake_runs_a_teacher_before_its_student(tmp_path):
    """The literal dry run: PICTURE's job reads ALSO's checkpoint, so ALSO's job is planned first."""
    fields = [job for _, job in dry_run_jobs(tmp_path, ["scratch", "picture"])]
    teacher = "results/pretrain/small/synthetic/also/pt_1/checkpoint.pt"
    assert [job["output"] for job in fields] == [
        teacher, "results/pretrain/small/synthetic/picture+also/pt_1/checkpoint.pt"]
    assert teacher in fields[1]["input"].split(", ")


def test_a_fraction_read_back_from_its_path_samples_as_the_fraction():
    """A rule passes the fraction to its job as the path's text: 1/6 must come back as 1/6."""
    from occbench.data.splits import sampling_stride, subset_size

    assert [fraction_tag(f) for f in (1.0, 0.1, 0.01, 0.5)] == ["1", "0.1", "0.01", "0.5"]
    back = float(fraction_tag(1 / 6))
    assert sampling_stride(back) == 6 and subset_size(back, 18) == 3


def occfeat_params(fractions=(1.0,)):
    """The smoke grid with OccFeat, whose image teacher the DAG trains."""
    params = smoke_params()
    params["grid"].update(methods=["scratch", "occfeat"], pretrain_fractions=list(fractions), backbones=["small", "base"])
    return params


def test_occfeat_reads_the_image_teacher_of_its_dataset_and_fraction_whatever_the_backbone():
    from occbench.workflow.grid import ImageTeacherRun

    grid = Grid(occfeat_params(fractions=(0.5, 1.0)))
    assert grid.image_teacher_runs == [ImageTeacherRun("synthetic", "occfeat", 0.5),
                                       ImageTeacherRun("synthetic", "occfeat", 1.0)]
    student = grid.pretrain_run_at("base", "synthetic", "occfeat+selfsup_image", 1.0)
    assert student.teacher_file == Path("results/image_teacher/synthetic/occfeat/pt_1/encoder.pt")
    assert student.checkpoint == Path("results/pretrain/base/synthetic/occfeat+selfsup_image/pt_1/checkpoint.pt")
    assert grid.image_teacher_run_at("synthetic", "occfeat", 0.5) == grid.image_teacher_runs[0]
    with pytest.raises(ValueError, match="occfeat/pt_0.25/encoder.pt: no image-teacher run of the grid"):
        grid.image_teacher_run_at("synthetic", "occfeat", 0.25)


def test_an_occfeat_digest_follows_its_image_teacher_settings_and_not_the_reverse():
    from occbench.workflow.grid import image_teacher_digest, pretrain_digest

    params = occfeat_params()
    grid = Grid(params)
    (teacher,), student = grid.image_teacher_runs, grid.pretrain_runs[0]
    before = (image_teacher_digest(params, teacher), pretrain_digest(params, student))
    params["pretrain"]["methods"]["occfeat"]["teacher"]["self_supervised"]["mask_ratio"] = 0.75
    after = (image_teacher_digest(params, teacher), pretrain_digest(params, student))
    assert before[0] != after[0] and before[1] != after[1]
    params["pretrain"]["methods"]["occfeat"]["feature_weight"] = 2.0
    assert image_teacher_digest(params, teacher) == after[0]
    assert pretrain_digest(params, student) != after[1]


@pytest.mark.slow
def test_snakemake_trains_the_image_teacher_before_occfeat(tmp_path):
    """The literal dry run: OccFeat's job reads the image teacher's encoder, planned first."""
    fields = dry_run_jobs(tmp_path, ["scratch", "occfeat"])
    encoder = "results/image_teacher/synthetic/occfeat/pt_1/encoder.pt"
    assert [(rule, job["output"]) for rule, job in fields] == [
        ("image_teacher", encoder), ("pretrain", "results/pretrain/small/synthetic/occfeat+selfsup_image/pt_1/checkpoint.pt")]
    assert encoder in fields[1][1]["input"].split(", ")


def test_a_task_override_gives_that_task_its_own_label_fractions_and_seeds():
    """grid.task_overrides: occupancy on one label fraction and seed, segmentation on the grid's own lists;
    the label splits are the union, and segmentation's runs are those of the grid without the override."""
    from occbench.workflow.grid import finetune_digest

    params = paper_like_params(label_split_seeds=[0, 4])
    params["grid"]["tasks"] = ["segmentation", "occupancy"]
    params["grid"]["task_overrides"] = {"occupancy": {"label_fractions": [0.5], "seeds": [2]}}
    grid = Grid(params)
    by_task = {task: [run for run in grid.finetune_runs if run.task == task] for task in ("segmentation", "occupancy")}
    assert len(by_task["occupancy"]) == 2 * 1 * 2 * (1 + 3)  # backbones x seeds x label splits x sources
    assert {(r.label_fraction, r.seed, r.label_split_seed) for r in by_task["occupancy"]} == {(0.5, 2, 0), (0.5, 2, 4)}
    alone = paper_like_params(label_split_seeds=[0, 4])
    assert [run.metrics for run in by_task["segmentation"]] == [run.metrics for run in Grid(alone).finetune_runs]
    # the override is in no run's digest: adding it re-runs nothing of the other tasks
    assert [finetune_digest(params, run) for run in by_task["segmentation"]] == \
        [finetune_digest(alone, run) for run in Grid(alone).finetune_runs]
    assert grid.finetune_runs == by_task["segmentation"] + by_task["occupancy"]
    # an override of a label fraction the grid has not: its split file joins the grid's
    params["grid"]["task_overrides"] = {"occupancy": {"label_fractions": [0.2, 1.0], "label_split_seeds": [7]}}
    splits = Grid(params).splits
    assert ("synthetic", "labels", 0.2, 7) in splits and ("synthetic", "labels", 0.2, 0) not in splits
    assert ("synthetic", "labels", 1.0, 7) in splits and ("synthetic", "labels", 0.5, 4) in splits


def test_a_task_override_is_checked_like_the_grid():
    """Its fractions must nest with every other task's (they share the label split files) and its task's
    epoch schedule must cover them; a key other than the three axes is refused by the schema."""
    from occbench.config import ParamsError, check_consistency, validate_params

    def with_detection(**axes):
        params = smoke_params()
        params["grid"].update(tasks=["segmentation", "detection"], label_fractions=[0.5, 1.0],
                              task_overrides={"detection": axes})
        return params

    params = with_detection(label_fractions=[1 / 3])
    params["splits"]["label_sampling"] = "interval"
    with pytest.raises(ParamsError, match=r"splits.label_sampling: interval sampling with strides 2 and 3"):
        check_consistency(params)
    params = with_detection(label_fractions=[0.5])
    params["finetune"]["detection"]["epochs"] = [{"up_to_label_fraction": 0.5, "epochs": 2}]
    check_consistency(params)  # detection's own fractions are covered, whatever the grid's
    params["grid"]["task_overrides"]["detection"] = {"label_fractions": [1.0]}
    with pytest.raises(ParamsError, match="finetune.detection.epochs: no entry covers the largest label fraction 1.0"):
        check_consistency(params)
    params = with_detection(methods=["scratch"])
    with pytest.raises(ParamsError, match=re.escape("grid.task_overrides.detection: Additional properties are not "
                                                    "allowed ('methods' was unexpected)")):
        validate_params(params)


def test_the_smoke_grid_fine_tunes_every_source_on_every_task():
    """The smoke grid runs each of its sources on all three tasks: segmentation on the full grid, occupancy
    and detection once each (grid.task_overrides), so every table of the report has a row per source."""
    from collections import Counter

    grid = Grid(smoke_params())
    sources = {run.source for run in grid.finetune_runs}
    assert len(sources) == len(smoke_params()["grid"]["methods"])
    per_task = Counter((run.task, run.source) for run in grid.finetune_runs)
    assert per_task == {**{("segmentation", s): 2 * (2 + 1) for s in sources},
                        **{(task, s): 1 for task in ("occupancy", "detection") for s in sources}}
