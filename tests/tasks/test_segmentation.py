import json
import os

import pytest

from occbench.tasks.job import compute_matched_epochs, epochs_for
from occbench.workflow.grid import FinetuneRun, MatchedPretraining
from smoke import occbench, smoke_params


def test_fewer_labels_get_more_epochs():
    schedule = [{"up_to_label_fraction": 1.0, "epochs": 30}, {"up_to_label_fraction": 0.01, "epochs": 500},
                {"up_to_label_fraction": 0.1, "epochs": 100}]
    assert [epochs_for(schedule, f) for f in (0.001, 0.01, 0.05, 0.1, 0.5, 1.0)] == [500, 500, 100, 100, 30, 30]


def test_compute_matched_epochs_by_hand():
    """Pre-training 5 epochs of ceil(7 / 2) = 4 steps: P = 20. Fine-tuning at 10 % labels takes 40 epochs
    (the default schedule) of ceil(9 / 4) = 3 steps: F = 120. Compute-matched: 40 + ceil(20 / 3) = 47
    epochs, 141 steps, one more than P + F = 140 because 3 does not divide 20."""
    params = smoke_params()
    params["pretrain"].update(epochs=5, batch_size=2)
    params["finetune"]["segmentation"].update(batch_size=4, epochs=[{"up_to_label_fraction": 0.1, "epochs": 40},
                                                                   {"up_to_label_fraction": 1.0, "epochs": 20}])
    run = FinetuneRun("segmentation", "small", "synthetic", 0.1, 0, 0, None, MatchedPretraining("synthetic", 1.0))
    assert compute_matched_epochs(params, run, label_frames=9, pretrain_frames=7) == 47
    params["pretrain"]["epochs"] = 6  # P = 24, divisible by 3: exactly P + F = 144 steps
    assert compute_matched_epochs(params, run, label_frames=9, pretrain_frames=7) == 48


def _finetune(source, seed, *extra, split_seed=0, mode="full"):
    return occbench(*extra, "finetune", "--task", "segmentation", "--backbone", "small", "--dataset", "synthetic",
                    "--source", source, "--label-fraction", "0.5", "--seed", str(seed),
                    "--label-split-seed", str(split_seed), "--mode", mode)


def _run_dir(source, seed, split_seed=0):
    return f"results/finetune/segmentation/synthetic/small/{source}/labels_0.5/split_{split_seed}/seed_{seed}"


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
                           "finetune_dataset": "synthetic", "label_fraction": 0.5, "seed": 0,
                           "label_split_seed": 0, "mode": "full"}
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


def _probe(source, seed):
    """A probe run (grid.finetune_modes gains probe) and its model.pt, rebuilt backbone and head at init."""
    import torch
    import yaml

    from occbench.models.backbone import SparseBackbone
    from occbench.tasks.segmentation import SegmentationTask

    with open("probe.yaml", "w") as handle:
        yaml.safe_dump({"grid": {"finetune_modes": ["full", "probe"]}}, handle)
    assert _finetune(source, seed, "--params", "probe.yaml", mode="probe") == 0
    run_dir = _run_dir(source, seed).replace(f"/{source}/", f"/{source}/probe/")
    tuned = torch.load(f"{run_dir}/model.pt", weights_only=True)
    torch.manual_seed(seed)  # the run's seeded init of backbone and head, rebuilt
    backbone = SparseBackbone.from_params(smoke_params(), "small")
    head = SegmentationTask(backbone, {}).head.weight
    return json.loads(open(f"{run_dir}/run_meta.json").read()), tuned, backbone.state_dict(), head


def test_a_probe_keeps_the_pretrained_backbone_and_its_batchnorm_statistics(workdir):
    """--mode probe: only the head trains; every backbone value, BatchNorm running statistics included, is the
    checkpoint's bit for bit."""
    import torch

    meta, tuned, _, initial_head = _probe("also-synthetic-pt_1", 4)
    source = torch.load("results/pretrain/small/synthetic/also/pt_1/checkpoint.pt", weights_only=True)["backbone"]
    backbone = {name.removeprefix("backbone."): value for name, value in tuned.items() if name.startswith("backbone.")}
    assert backbone.keys() == source.keys()
    assert sum("running_mean" in name or "running_var" in name for name in source) == 2 * 11  # 11 BatchNorm layers
    assert [name for name, value in source.items() if not torch.equal(backbone[name], value)] == []
    assert not torch.equal(tuned["task.head.weight"], initial_head)
    assert meta["run"]["mode"] == "probe" and meta["pretrained"]["loaded_fraction"] == 1.0


def test_a_scratch_probe_keeps_the_random_backbone_it_started_from(workdir):
    """The random-backbone baseline: the backbone stays its seeded init (BatchNorm statistics 0 and 1)."""
    import torch

    meta, tuned, initial, initial_head = _probe("scratch", 5)
    assert [name for name, value in initial.items() if not torch.equal(tuned[f"backbone.{name}"], value)] == []
    assert all(torch.equal(value, torch.zeros_like(value)) for name, value in initial.items() if "running_mean" in name)
    assert not torch.equal(tuned["task.head.weight"], initial_head)
    assert meta["run"]["method"] == "scratch" and meta["pretrained"] is None


def test_label_split_seeds_fine_tune_on_their_own_frames(workdir):
    """The smoke grid's two label splits at 50 % are two different pairs of its 4 training frames
    (label_sampling: frames)."""
    splits = [f"results/data/synthetic/splits/labels_0.5_split_{split_seed}.txt" for split_seed in (0, 1)]
    first, second = (set(open(split).read().split()) for split in splits)
    assert len(first) == len(second) == 2 and first != second
    assert _finetune("scratch", 0, split_seed=1) == 0
    meta = json.loads(open(f"{_run_dir('scratch', 0, 1)}/run_meta.json").read())
    assert meta["splits"]["labels"]["file"] == splits[1] and meta["run"]["label_split_seed"] == 1


def test_compute_matched_scratch_trains_the_steps_of_pretraining_plus_finetuning(workdir):
    """Smoke: pre-training 1 epoch of 4 frames at batch 2 (2 steps), fine-tuning at 50 % labels 2 epochs of
    2 frames at batch 1 (4 steps): the compute-matched run trains 2 + ceil(2 / 2) = 3 epochs, 6 steps."""
    import yaml

    with open("matched.yaml", "w") as handle:
        yaml.safe_dump({"grid": {"compute_matched_scratch": True}}, handle)
    source = "scratch_matched-synthetic-pt_1"
    assert _finetune(source, 0, "--params", "matched.yaml") == 0
    meta = json.loads(open(f"{_run_dir(source, 0)}/run_meta.json").read())
    assert (meta["epochs"], meta["steps"]) == (3, 6)
    assert meta["splits"]["matched_pretrain"]["frames"] == 4
    assert meta["splits"]["matched_pretrain"]["file"] == "results/data/synthetic/splits/pretrain_1.txt"
    assert meta["run"]["method"] == "scratch_matched" and meta["run"]["pretrain_fraction"] == 1.0
    assert meta["pretrained"] is None
    assert _finetune("scratch", 0, "--params", "matched.yaml") == 0  # the plain scratch run beside it
    scratch = json.loads(open(f"{_run_dir('scratch', 0)}/run_meta.json").read())
    assert (scratch["epochs"], scratch["steps"]) == (2, 4)
