import json
import os

import pytest

from occbench.tasks.job import epochs_for
from smoke import make_dataset, occbench


def test_fewer_labels_get_more_epochs():
    schedule = [{"up_to_label_fraction": 1.0, "epochs": 30}, {"up_to_label_fraction": 0.01, "epochs": 500},
                {"up_to_label_fraction": 0.1, "epochs": 100}]
    assert [epochs_for(schedule, f) for f in (0.001, 0.01, 0.05, 0.1, 0.5, 1.0)] == [500, 500, 100, 100, 30, 30]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The smoke dataset converted, split and pre-trained once for this module's runs."""
    path = tmp_path_factory.mktemp("finetune")
    make_dataset(path)
    cwd = os.getcwd()
    os.chdir(path)
    assert occbench("pretrain", "--backbone", "small", "--dataset", "synthetic", "--method", "also",
                    "--fraction", "1") == 0
    yield path
    os.chdir(cwd)


def _finetune(source, seed, *extra):
    return occbench(*extra, "finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
                    "--source", source, "--label-fraction", "0.5", "--seed", str(seed))


def _run_dir(source, seed):
    return f"results/finetune/segmentation/synthetic/small/{source}/labels_0.5/seed_{seed}"


def test_same_seed_same_metrics_on_cpu(workdir):
    assert _finetune("also-synthetic-pt_1", 0) == 0
    first = json.loads(open(f"{_run_dir('also-synthetic-pt_1', 0)}/metrics.json").read())
    os.remove(f"{_run_dir('also-synthetic-pt_1', 0)}/metrics.json")
    assert _finetune("also-synthetic-pt_1", 0) == 0
    again = json.loads(open(f"{_run_dir('also-synthetic-pt_1', 0)}/metrics.json").read())
    assert first == again
    assert 0 <= first["miou"] <= 1 and set(first["iou"]) >= {"road", "car"}
    assert _finetune("also-synthetic-pt_1", 1) == 0
    other_seed = json.loads(open(f"{_run_dir('also-synthetic-pt_1', 1)}/metrics.json").read())
    assert other_seed != first


def test_run_meta_records_provenance_and_loaded_fraction(workdir):
    assert _finetune("also-synthetic-pt_1", 0) == 0
    meta = json.loads(open(f"{_run_dir('also-synthetic-pt_1', 0)}/run_meta.json").read())
    assert meta["run"] == {"task": "segmentation", "backbone": "small", "method": "also",
                           "pretrain_dataset": "synthetic", "pretrain_fraction": 1.0,
                           "finetune_dataset": "synthetic", "label_fraction": 0.5, "seed": 0}
    assert meta["pretrained"]["loaded_fraction"] == 1.0
    # ALSO's loss never reaches the BEV neck: to_bev 64·64·3 + 2·64 and bev_neck (64·6)·64·9 + 2·64
    # = 233728 of the small backbone's 581664 parameter values stay at their random init.
    assert meta["pretrained"]["untrained_modules"] == ["to_bev", "bev_neck"]
    assert meta["pretrained"]["pretrained_fraction"] == pytest.approx(1 - 233728 / 581664)
    assert len(meta["splits"]["labels"]["sha256"]) == 64 and meta["splits"]["labels"]["frames"] == 2
    assert meta["versions"]["torch"].startswith("2.13")
    assert {"git_sha", "host", "params_sha256", "seed"} <= set(meta)
    metrics = json.loads(open(f"{_run_dir('also-synthetic-pt_1', 0)}/metrics.json").read())
    assert all(isinstance(v, (int, float)) or v is None for v in [metrics["miou"], *metrics["iou"].values()])


def test_checkpoint_of_another_backbone_is_refused(workdir, capsys):
    """base-sized weights in a small backbone: the run fails naming the checkpoint."""
    import shutil

    import torch

    from occbench.models.backbone import SparseBackbone
    from occbench.models.checkpoint import save_checkpoint
    from smoke import smoke_params

    checkpoint = "results/pretrain/small/synthetic/also/pt_1/checkpoint.pt"
    shutil.copy(checkpoint, "good.pt")
    try:
        base = SparseBackbone.from_params(smoke_params(), "base")
        save_checkpoint(checkpoint, base, {}, {name for name, _ in base.named_parameters()})
        assert _finetune("also-synthetic-pt_1", 3) == 2
        assert f"{checkpoint}: only 0.0% of the backbone's parameters" in capsys.readouterr().err
        assert not os.path.exists(f"{_run_dir('also-synthetic-pt_1', 3)}/metrics.json")
    finally:
        shutil.copy("good.pt", checkpoint)
    assert torch.load(checkpoint, weights_only=True)["backbone"]  # restored for later tests
