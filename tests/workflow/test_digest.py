"""Each run's digest covers exactly the params values it reads.

The digest is the `params.hparams` re-run trigger of a rule and the training
jobs' resume key: a value the run reads must change it (or a changed setting is
silently ignored, by Snakemake and by a resumed run); a value it does not read
must not (or unrelated edits re-run finished work).
"""

from __future__ import annotations

import copy
import os
from dataclasses import replace
from pathlib import Path

import pytest

from occbench.cli import main
from occbench.workflow.grid import (
    PARAMS_ENV,
    Grid,
    PretrainRun,
    canonical,
    dataset_digest,
    digest,
    finetune_digest,
    finetune_inputs,
    params_files_from_env,
    pretrain_digest,
    split_digest,
)
from smoke import SMOKE_FILES, smoke_params

PRE, FT_PRE, FT_SCRATCH = "pretrain", "finetune of a pre-trained source", "scratch finetune"
FT_MATCHED = "compute-matched scratch finetune"
ALL = {PRE, FT_PRE, FT_SCRATCH, FT_MATCHED}
FINETUNES = {FT_PRE, FT_SCRATCH, FT_MATCHED}
# What fixes the pre-training's step count: a compute-matched run reads it too.
PRE_STEPS = {PRE, FT_PRE, FT_MATCHED}
NONE: set[str] = set()


def runs(params: dict) -> dict[str, object]:
    """One run of each kind, all on label split 0, from the grid with compute-matched scratch on."""
    grid = Grid(edited(params, "grid.compute_matched_scratch", True))
    pretrained = next(r for r in grid.finetune_runs if r.pretrained)
    scratch = next(r for r in grid.finetune_runs if r.method == "scratch")
    matched = next(r for r in grid.finetune_runs if r.compute_matched)
    assert {r.label_split_seed for r in (pretrained, scratch, matched)} == {0}
    return {PRE: pretrained.pretrained, FT_PRE: pretrained, FT_SCRATCH: scratch, FT_MATCHED: matched}


def digests(params: dict, runs_: dict) -> dict[str, str]:
    return {name: (pretrain_digest if isinstance(run, PretrainRun) else finetune_digest)(params, run)
            for name, run in runs_.items()}


def edited(params: dict, key: str, value) -> dict:
    """A deep copy of params with the dotted ``key`` set (created if missing)."""
    params = copy.deepcopy(params)
    *parents, last = key.split(".")
    node = params
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return params


# (key, new value, the runs whose digest must change); every other run's must not.
CASES = [
    ("pretrain.optimizer.lr", 0.002, {PRE, FT_PRE}),
    ("pretrain.schedule.name", "cosine", {PRE, FT_PRE}),
    ("pretrain.grad_clip", None, {PRE, FT_PRE}),
    ("pretrain.epochs", 7, PRE_STEPS),
    ("pretrain.batch_size", 1, PRE_STEPS),
    ("pretrain.seed", 1, {PRE, FT_PRE}),
    ("pretrain.methods.also.hidden_dim", 32, {PRE, FT_PRE}),
    ("pretrain.methods.also.queries_per_frame", 999, {PRE, FT_PRE}),
    ("pretrain.methods.spot", {"beams": 32}, NONE),  # another method's block
    ("pretrain.methods.picture.hidden_dim", 32, NONE),  # a method taught by these runs' method
    ("splits.seed", 1, PRE_STEPS),  # label splits take their own seeds
    ("splits.pretrain_sampling", "frames", PRE_STEPS),
    ("splits.label_sampling", "scenes", FINETUNES),
    ("datasets.synthetic.seed", 5, ALL),
    ("datasets.synthetic.sensor", {"profile": "kitti64"}, ALL),
    ("datasets.synthetic_waymo64.seed", 5, NONE),  # a dataset these runs do not use
    ("augmentation.rotation_deg", 180.0, ALL),
    ("augmentation.flip_x", True, ALL),
    ("voxelization.voxel_size", [0.5, 0.5, 0.5], ALL),
    ("voxelization.max_points", 1000, ALL),
    ("backbones.small.bev_channels", 32, ALL),  # the runs' backbone
    ("backbones.base.channels", [8, 16, 32], NONE),  # a different backbone's spec
    ("finetune.segmentation.optimizer.lr", 0.01, FINETUNES),
    ("finetune.segmentation.epochs", [{"up_to_label_fraction": 1.0, "epochs": 3}], FINETUNES),
    ("finetune.min_loaded_fraction", 0.5, {FT_PRE}),  # scratch loads nothing
    ("finetune.detection", {"lr": 0.1}, NONE),  # another task's block
    ("execution.amp", False, ALL),
    ("execution.threads", 8, NONE),
    ("execution.profile", "workflow/profiles/slurm", NONE),
    ("execution.device", "cuda:1", NONE),
    ("execution.loader_workers", 4, NONE),
    ("execution.state_every_steps", 100, NONE),
    ("grid.seeds", [0, 1, 2, 3], NONE),
    ("grid.label_fractions", [0.25, 0.5, 1.0], NONE),
    ("grid.label_split_seeds", [0, 1, 5], NONE),  # a run reads its own split seed, not the list
    ("grid.compute_matched_scratch", True, NONE),  # adds runs; changes none
    ("grid.finetune_modes", ["full", "probe"], NONE),  # adds the probes; full runs keep their digests
    ("finetune.segmentation.probe", {"optimizer": {"name": "adamw", "lr": 0.05, "weight_decay": 0.0}}, NONE),
]


@pytest.mark.parametrize("key, value, changed", CASES, ids=[case[0] for case in CASES])
def test_a_run_digest_changes_exactly_with_what_the_run_reads(key, value, changed):
    params = smoke_params()
    the_runs = runs(params)
    before = digests(params, the_runs)
    after = digests(edited(params, key, value), the_runs)
    assert {name for name in the_runs if before[name] != after[name]} == changed


def test_a_probe_digest_covers_its_mode_and_its_own_settings():
    """A probe reads what its full twin reads, but its mode and the probe settings in place of its task's,
    with the backbone frozen whatever backbone_lr_scale says."""
    params = edited(smoke_params(), "grid.finetune_modes", ["full", "probe"])
    grid = Grid(params)
    full = next(run for run in grid.finetune_runs if run.pretrained and run.mode == "full")
    probe = replace(full, mode="probe")
    assert probe in grid.finetune_runs and finetune_digest(params, probe) != finetune_digest(params, full)
    inputs, twin = finetune_inputs(params, probe), finetune_inputs(params, full)
    assert inputs["run"].pop("mode") == "probe" and "mode" not in twin["run"]
    assert (inputs["task"].pop("backbone_lr_scale"), twin["task"].pop("backbone_lr_scale")) == (0, 1)
    assert inputs == twin
    lr = {"name": "adamw", "lr": 0.05, "weight_decay": 0.0}
    own = edited(params, "finetune.segmentation.probe", {"optimizer": lr})
    assert finetune_inputs(own, probe)["task"]["optimizer"] == lr

    def moves(base, key, value):
        return finetune_digest(edited(base, key, value), probe) != finetune_digest(base, probe)

    assert moves(params, "finetune.segmentation.probe", {"optimizer": lr})
    assert moves(params, "finetune.segmentation.optimizer.lr", 0.01)  # no probe optimizer: the task's
    assert not moves(own, "finetune.segmentation.optimizer.lr", 0.01)  # the probe's replaces it
    assert not moves(params, "finetune.segmentation.backbone_lr_scale", 0.1)  # a probe is frozen anyway


def test_digests_of_distinct_runs_differ_and_do_not_depend_on_key_order_or_int_vs_float():
    params = smoke_params()
    values = set(digests(params, runs(params)).values())
    assert len(values) == 4
    reordered = {key: params[key] for key in reversed(list(params))}
    reordered["augmentation"] = edited(params, "augmentation.rotation_deg", 0)["augmentation"]  # 0 for 0.0
    assert set(digests(reordered, runs(params)).values()) == values
    assert canonical({"a": 1.0, "b": [2.5, True, (3.0,)]}) == {"a": 1, "b": [2.5, True, [3]]}
    assert digest({"x": 1}) != digest({"x": True})


def test_data_digests_cover_their_own_dataset_and_subset_only():
    params = smoke_params()
    assert dataset_digest(edited(params, "datasets.synthetic_waymo64.seed", 9), "synthetic") == \
        dataset_digest(params, "synthetic")
    assert dataset_digest(edited(params, "datasets.synthetic.seed", 9), "synthetic") != \
        dataset_digest(params, "synthetic")
    labels_sampling = edited(params, "splits.label_sampling", "scenes")
    assert split_digest(labels_sampling, "pretrain") == split_digest(params, "pretrain")
    assert split_digest(labels_sampling, "labels", 0) != split_digest(params, "labels", 0)
    assert split_digest(edited(params, "splits.seed", 3), "pretrain") != split_digest(params, "pretrain")
    assert split_digest(edited(params, "splits.seed", 3), "labels", 0) == split_digest(params, "labels", 0)
    assert split_digest(params, "labels", 1) != split_digest(params, "labels", 0)


def test_a_label_split_seed_enters_the_digest_of_its_own_runs_only():
    """A run on label split 1 reads what its split-0 twin reads, but for its own split's seed (the seed
    enters only through the split)."""
    params = smoke_params()
    grid = Grid(params)
    assert params["grid"]["label_split_seeds"] == [0, 1]
    twins = {}
    for run in grid.finetune_runs:
        twins.setdefault((run.task, run.source, run.label_fraction, run.seed), {})[run.label_split_seed] = run
    pairs = [(by_split[0], by_split[1]) for by_split in twins.values() if len(by_split) == 2]
    sources = len(params["grid"]["methods"])  # scratch and one run per method (one pre-training fraction)
    assert len(pairs) == sources * 2  # sources x training seeds, at label fraction 0.5 (1 has one split)
    for first, second in pairs:
        assert finetune_digest(params, first) != finetune_digest(params, second)
        inputs, own = finetune_inputs(params, second), finetune_inputs(params, first)
        assert (inputs["split"].pop("seed"), own["split"].pop("seed")) == (1, 0)
        assert inputs == own


def test_cli_reads_the_params_files_from_the_environment(monkeypatch, capsys):
    monkeypatch.setenv(PARAMS_ENV, os.pathsep.join(map(str, SMOKE_FILES)))
    assert params_files_from_env() == list(SMOKE_FILES)
    assert main(["validate"]) == 0
    assert f"{SMOKE_FILES[0]} + {SMOKE_FILES[1]}: valid" in capsys.readouterr().out
    monkeypatch.setenv(PARAMS_ENV, "")
    assert params_files_from_env() == []
    assert params_files_from_env({PARAMS_ENV: f"a.yaml{os.pathsep}{os.pathsep}b.yaml"}) == [Path("a.yaml"), Path("b.yaml")]
