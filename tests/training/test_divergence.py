"""A diverged loss stops the run with the step named, keeps the last good state and writes no metrics."""

import os

import torch
import yaml

from smoke import make_dataset, occbench

RUN_DIR = "results/finetune/segmentation/synthetic/small/scratch/labels_1/split_0/seed_0"


def test_nan_loss_names_the_step_and_leaves_no_metrics(tmp_path, capsys):
    make_dataset(tmp_path)
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        # lr 1e30: the first update throws the weights to ~1e30, so the second step's loss is NaN
        (tmp_path / "diverge.yaml").write_text(yaml.safe_dump({
            "execution": {"state_every_steps": 1},
            "finetune": {"segmentation": {"optimizer": {"name": "adamw", "lr": 1.0e30, "weight_decay": 0.0},
                                          "schedule": {"name": "constant", "warmup_fraction": 0.0}}}}))
        code = occbench("--params", "diverge.yaml", "finetune", "--task", "segmentation", "--backbone", "small",
                        "--dataset", "synthetic", "--source", "scratch", "--label-fraction", "1", "--seed", "0")
        err = capsys.readouterr().err
        assert code == 2
        assert f"{RUN_DIR}: non-finite loss (nan) at epoch 0 step 1; training stopped and wrote no result, the " \
               f"last good resume state (epoch 0 step 1) is kept at {RUN_DIR}/train_state.pt" in err
        assert not os.path.exists(f"{RUN_DIR}/metrics.json")
        state = torch.load(f"{RUN_DIR}/train_state.pt", weights_only=True)
        assert state["progress"]["step"] == 1  # after the one good step
        assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    finally:
        os.chdir(cwd)
