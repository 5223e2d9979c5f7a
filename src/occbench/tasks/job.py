"""One fine-tuning run of any task: pre-trained (or random) backbone + task head, trained through ``fit``."""

from __future__ import annotations

import math
import time

import torch

from occbench.data.batch import check_needs
from occbench.data.dataset import FrameIndex
from occbench.data.loader import RunFrames, StepSampler, evaluation_loader
from occbench.data.splits import read_split
from occbench.io import sha256_file, sha256_json, write_json
from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import check_same_model, load_backbone, read_checkpoint
from occbench.progress import progress
from occbench.provenance import environment
from occbench.tasks import TASKS
from occbench.tasks.base import FinetuneModel, TaskContext
from occbench.training import TrainConfig, fit, save_torch, seed_everything
from occbench.training.distributed import init_distributed
from occbench.training.loop import STATE_FILE, resolve_device
from occbench.workflow.grid import FinetuneRun, digest, finetune_digest, task_settings


def epochs_for(schedule: list[dict], label_fraction: float) -> int:
    """Fewer labels, more epochs: the first schedule entry covering the fraction."""
    for entry in sorted(schedule, key=lambda e: e["up_to_label_fraction"]):
        if label_fraction <= entry["up_to_label_fraction"]:
            return entry["epochs"]
    raise ValueError(f"no epoch schedule entry covers label fraction {label_fraction}")


def compute_matched_epochs(params: dict, run: FinetuneRun, label_frames: int, pretrain_frames: int) -> int:
    """Epochs of a compute-matched scratch run over its labelled frames: the fewest whole epochs whose
    optimizer steps reach those of a pre-trained run it is compared with, pre-training plus fine-tuning.

    With steps(n, b) = ceil(n / b) the steps of an epoch over n frames at batch b (as one process
    takes them), pre-training takes P = pretrain.epochs * steps(pre-training frames of its fraction,
    pretrain.batch_size), fine-tuning F = E * S with E the label fraction's epochs and S =
    steps(labelled frames, the task's batch_size); the run trains ceil((P + F) / S) = E + ceil(P / S)
    epochs, so it takes P + F steps, or up to S - 1 more where S does not divide P.
    """
    settings, pretrain = params["finetune"][run.task], params["pretrain"]
    epoch_steps = StepSampler.steps(label_frames, settings["batch_size"])
    pretrain_steps = pretrain["epochs"] * StepSampler.steps(pretrain_frames, pretrain["batch_size"])
    return epochs_for(settings["epochs"], run.label_fraction) + math.ceil(pretrain_steps / epoch_steps)


def load_pretrained(backbone: SparseBackbone, run: FinetuneRun, params: dict) -> dict | None:
    """The pre-trained weights of the run's source, with the model and loaded-parameter checks; None for scratch."""
    if run.pretrained is None:
        return None
    path = run.pretrained.checkpoint
    checkpoint = read_checkpoint(path)
    check_same_model(checkpoint, path, "the fine-tuning run", backbone.grid, params["backbones"][run.backbone])
    report = load_backbone(backbone, checkpoint["backbone"], checkpoint["trained_parameters"],
                           params["finetune"]["min_loaded_fraction"], str(path))
    print(f"loaded {report.loaded_fraction:.1%} of the backbone from {path}, {report.pretrained_fraction:.1%} "
          f"pre-trained; never trained: {', '.join(report.untrained_modules) or 'none'}")
    return {"checkpoint": str(path), "sha256": sha256_file(path), **report.as_dict()}


@torch.no_grad()
def evaluate(model: FinetuneModel, index: FrameIndex, frame_ids: list[str], batch_size: int,
             device: torch.device, workers: int = 0) -> dict:
    """The task's metrics over every held-out frame."""
    model.eval()
    evaluator = model.task.evaluator()
    loader = evaluation_loader(index, frame_ids, batch_size, model.task.needs, workers)
    for batch in progress(loader, desc="evaluate"):
        batch = batch.to(device)
        output, predictions, voxels = model.run(batch)
        evaluator.update(output, predictions, batch, voxels)
    return evaluator.result()


def finetune(params: dict, run: FinetuneRun) -> dict:
    """Train and evaluate one run; a probe (run.mode) trains the head on a frozen backbone."""
    settings, execution = task_settings(params, run), params["execution"]
    seed_everything(run.seed, execution["threads"])
    frames = RunFrames.read(run.finetune_dataset, "labels", run.label_fraction, run.label_split_seed)
    index, split_file, train_ids, val_ids = frames.index, frames.split_file, frames.train_ids, frames.val_ids
    backbone = SparseBackbone.from_params(params, run.backbone)
    task = TASKS[run.task](backbone, settings, TaskContext(index, tuple(train_ids)))
    model = FinetuneModel(backbone, task, settings["backbone_lr_scale"])
    load_report = load_pretrained(backbone, run, params)
    needs = check_needs(task.needs, f"task {run.task}")

    dataset = frames.training_set(params, run.seed)
    epochs, matched_split = epochs_for(settings["epochs"], run.label_fraction), None
    if run.compute_matched is not None:
        pretrain_file = run.compute_matched.split
        matched_split = {"file": str(pretrain_file), "sha256": sha256_file(pretrain_file),
                         "frames": len(read_split(pretrain_file))}
        epochs = compute_matched_epochs(params, run, len(train_ids), matched_split["frames"])
    config = TrainConfig.from_settings(settings, run.seed, epochs)
    params_digest = finetune_digest(params, run)
    # The resume key: every input the run reads, the files' contents included.
    split_sha256 = sha256_file(split_file)
    resume_key = digest({"params": params_digest, "split": split_sha256,
                         "checkpoint": load_report and load_report["sha256"],
                         "matched_split": matched_split and matched_split["sha256"]})

    started = time.perf_counter()
    result = fit(model, dataset, needs, config, execution, run.directory, resume_key, desc=run.task)
    ddp = init_distributed(execution["device"])  # the group fit() trained in; rank 0 evaluates and writes
    if not ddp.is_main:
        return {}
    train_seconds = time.perf_counter() - started
    device = resolve_device(execution["device"], ddp.local_rank)
    metrics = evaluate(model, index, val_ids, config.batch_size, device, execution["loader_workers"])
    save_torch({name: value.cpu() for name, value in model.state_dict().items()}, run.directory / "model.pt")
    write_json(run.directory / "run_meta.json", {
        "run": run.coordinates(),
        "seed": run.seed,
        "epochs": config.epochs,
        "main_metric": task.main_metric,
        "hparams_digest": params_digest,
        "resume_key": resume_key,
        "params_sha256": sha256_json(params),
        "splits": {
            "labels": {"file": str(split_file), "sha256": split_sha256, "frames": len(train_ids)},
            "val": {"sha256": sha256_json(val_ids), "frames": len(val_ids)},
            "matched_pretrain": matched_split,
        },
        "pretrained": load_report,
        "history": result.history,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "step_seconds": result.step_seconds,
        "train_seconds": train_seconds,
        "eval_seconds": time.perf_counter() - started - train_seconds,
        **environment(),
    })
    write_json(run.metrics, metrics)
    (run.directory / STATE_FILE).unlink(missing_ok=True)
    return metrics
