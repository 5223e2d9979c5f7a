import importlib.util

import pytest

from occbench.cli import main
from occbench.pretrain import METHODS
from smoke import SMOKE_ARGS


def test_validate_counts_the_smoke_grid(capsys):
    assert main([*SMOKE_ARGS, "validate"]) == 0
    # 6 sources (scratch and 5 methods) x (segmentation: 2 seeds x (2 label splits at 50 %, 1 at 100 %);
    # occupancy and detection: 1 run each, grid.task_overrides)
    assert "5 pre-training and 48 fine-tuning runs" in capsys.readouterr().out


def test_bad_params_exit_2_naming_file_and_key(tmp_path, capsys):
    overlay = tmp_path / "bad.yaml"
    overlay.write_text("grid:\n  methods: [scratch, byol]\n")
    assert main([*SMOKE_ARGS, "--params", str(overlay), "validate"]) == 2
    err = capsys.readouterr().err
    known = ["scratch", *METHODS]  # the schema's enum, in the registry's order (test_config ties them)
    assert "bad.yaml" in err and f"grid.methods[1]: 'byol' is not one of {known}" in err


@pytest.mark.parametrize("mode", ["bogus", "probe"])  # not a mode; a mode the smoke grid does not run
def test_finetune_refuses_a_mode_outside_the_grid_naming_the_key(mode, capsys):
    assert main([*SMOKE_ARGS, "finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
                 "--source", "scratch", "--label-fraction", "1", "--seed", "0", "--mode", mode]) == 2
    err = capsys.readouterr().err
    assert f"--mode {mode!r} is not one of grid.finetune_modes ['full'] of {SMOKE_ARGS[1]} + {SMOKE_ARGS[3]}" in err


def test_bad_probe_settings_are_named(tmp_path, capsys):
    """A probe never trains the backbone, so it takes no backbone_lr_scale; its epochs must cover the grid."""
    overlay = tmp_path / "probe.yaml"
    overlay.write_text("grid:\n  finetune_modes: [full, probe]\nfinetune:\n  segmentation:\n    probe:\n"
                       "      backbone_lr_scale: 0.5\n      epochs: [{up_to_label_fraction: 0.5, epochs: 3}]\n")
    assert main([*SMOKE_ARGS, "--params", str(overlay), "validate"]) == 2
    assert "probe.yaml: finetune.segmentation.probe: Additional properties are not allowed ('backbone_lr_scale' was " \
           "unexpected)" in capsys.readouterr().err
    overlay.write_text(overlay.read_text().replace("      backbone_lr_scale: 0.5\n", ""))
    assert main([*SMOKE_ARGS, "--params", str(overlay), "validate"]) == 2
    assert "probe.yaml: finetune.segmentation.probe.epochs: no entry covers the largest label fraction 1.0" in \
        capsys.readouterr().err


def test_missing_dataset_index_is_named(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SMOKE_ARGS, "split", "--dataset", "synthetic", "--subset", "labels", "--fraction", "0.5",
                 "--split-seed", "1"]) == 2
    assert "results/data/synthetic/index.json" in capsys.readouterr().err


@pytest.mark.parametrize(("subset", "seed", "problem"), [("labels", [], "a 'labels' split needs a label-split seed"),
                                                         ("pretrain", ["--split-seed", "1"],
                                                          "a 'pretrain' split takes no label-split seed")])
def test_split_seed_is_for_label_splits_only(subset, seed, problem, capsys):
    assert main([*SMOKE_ARGS, "split", "--dataset", "synthetic", "--subset", subset, "--fraction", "1", *seed]) == 2
    assert problem in capsys.readouterr().err


def test_unknown_verb_is_an_argparse_error():
    with pytest.raises(SystemExit):
        main(["frobnicate"])


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="tensorflow is installed here")
def test_converting_waymo_outside_its_environment_says_how_to_get_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main([*SMOKE_ARGS, "convert", "--dataset", "waymo"]) == 2
    assert ".venv-waymo" in capsys.readouterr().err
