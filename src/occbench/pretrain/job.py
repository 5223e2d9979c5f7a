"""One pre-training run: a method's loss on the shared backbone, over a pre-training fraction, through ``fit``."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch

from occbench.data.batch import check_needs
from occbench.data.dataset import FrameIndex
from occbench.data.loader import RunFrames, evaluation_loader
from occbench.io import sha256_file, write_json
from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import save_checkpoint
from occbench.pretrain import METHODS
from occbench.pretrain.base import PretrainModel, RunContext
from occbench.provenance import environment
from occbench.training import FitResult, TrainConfig, fit, seed_everything
from occbench.training.distributed import init_distributed
from occbench.training.loop import STATE_FILE, resolve_device, step_seed
from occbench.workflow.grid import PinnedTeacher, PretrainRun, digest, pretrain_digest, teacher_name

PRETEXT_STREAM = 2**32 - 1  # the random stream of held-out pretext metrics, apart from every epoch's


@torch.no_grad()
def pretext_metrics(model: torch.nn.Module, needs: frozenset[str], index: FrameIndex, frame_ids: list[str],
                    seed: int, device: torch.device, workers: int) -> dict[str, float]:
    """A model's pretext metrics (``model.pretext_metrics(batch, generator)``, reading the batch fields
    ``needs``) on held-out frames: each the mean over frames of its value on one frame (a frame at a
    time), with random streams fixed by (seed, frame position)."""
    model.eval()
    per_frame: dict[str, list[float]] = {}
    loader = evaluation_loader(index, frame_ids, 1, needs, workers)
    for position, batch in enumerate(loader):
        generator = torch.Generator().manual_seed(step_seed(seed, PRETEXT_STREAM, position))
        for key, value in model.pretext_metrics(batch.to(device), generator).items():
            per_frame.setdefault(key, []).append(value)
    # A frame without a value (NaN: e.g. no query of a kind) does not count for that metric.
    return {key: float(np.mean(kept)) if (kept := [v for v in values if not math.isnan(v)]) else math.nan
            for key, values in per_frame.items()}


def fit_between_pretext_measures(model: torch.nn.Module, frames: RunFrames, dataset, needs: frozenset[str],
                                  config: TrainConfig, execution: dict, run_dir: Path, resume_key: str,
                                  desc: str) -> tuple[FitResult, dict]:
    """``fit`` with the held-out pretext metrics measured before and after, for every job that trains an
    unlabelled objective (pre-training, an image teacher); returns fit's result and the run_meta fields
    they all record (none on a rank other than 0, which measures and writes nothing). The metrics' random
    streams follow ``config.seed``; the device is the one ``fit`` trains on."""
    started = time.perf_counter()
    ddp = init_distributed(execution["device"])
    device = resolve_device(execution["device"], ddp.local_rank)
    held_out = (frames.index, frames.val_ids, config.seed, device, execution["loader_workers"])
    pretext_init = pretext_metrics(model.to(device), needs, *held_out) if ddp.is_main else {}
    result = fit(model, dataset, needs, config, execution, run_dir, resume_key, desc=desc)
    if not ddp.is_main:
        return result, {}
    return result, {
        "pretext": {"val_frames": len(frames.val_ids), "init": pretext_init,
                    "final": pretext_metrics(model, needs, *held_out)},
        "history": result.history,
        "steps": result.steps,
        "resumed_from": result.resumed_from,
        "step_seconds": result.step_seconds,
        "wall_seconds": time.perf_counter() - started,
        **environment(),
    }


def finish_run(run_dir: Path, meta: dict) -> None:
    """Write the run's run_meta.json after its checkpoint, then drop its resume state: the run is done."""
    write_json(run_dir / "run_meta.json", meta)
    (run_dir / STATE_FILE).unlink(missing_ok=True)


def teacher_record(run: PretrainRun) -> dict | None:
    """The teacher checkpoint's name, path and SHA-256; a pinned file whose hash is not the pinned
    one is refused (it is not the teacher the params name)."""
    if run.teacher is None:
        return None
    path = run.teacher_file
    if not path.is_file():
        raise FileNotFoundError(f"{path}: teacher checkpoint of {run.variant} not found")
    sha256 = sha256_file(path)
    if isinstance(run.teacher, PinnedTeacher) and sha256 != run.teacher.sha256:
        raise ValueError(f"{path}: SHA-256 is {sha256} (of {path.stat().st_size} bytes), but pretrain.methods."
                         f"{run.method}.teacher pins {run.teacher.sha256}: not the pinned teacher (truncated, "
                         "or another file)")
    return {"name": teacher_name(run.teacher, run.fraction), "file": str(path), "sha256": sha256}


def pretrain(params: dict, run: PretrainRun) -> None:
    settings, execution = params["pretrain"], params["execution"]
    seed_everything(settings["seed"], execution["threads"])
    frames = RunFrames.read(run.dataset, "pretrain", run.fraction)
    index, split_file, frame_ids = frames.index, frames.split_file, frames.train_ids

    backbone = SparseBackbone.from_params(params, run.backbone)
    teacher = teacher_record(run)
    context = RunContext(index, tuple(frame_ids), run.directory, run.teacher_file)
    method = METHODS[run.method](backbone, settings["methods"][run.method], context)
    needs = check_needs(method.needs, f"method {run.method}")
    model = PretrainModel(backbone, method)
    dataset = frames.training_set(params, settings["seed"], method.loader_options())
    config = TrainConfig.from_settings(settings, settings["seed"], settings["epochs"])
    params_digest = pretrain_digest(params, run)
    split_sha256 = sha256_file(split_file)
    # every input it reads: params, split and teacher checkpoint
    resume_key = digest({"params": params_digest, "split": split_sha256, "teacher": teacher})
    result, measured = fit_between_pretext_measures(model, frames, dataset, needs, config, execution,
                                                    run.directory, resume_key, run.method)
    if not init_distributed(execution["device"]).is_main:  # the group fit() trained in: rank 0 writes
        return
    trained = sorted(name.removeprefix("backbone.") for name in result.trained_parameters
                     if name.startswith("backbone."))
    meta = {
        "run": {"backbone": run.backbone, "dataset": run.dataset, "method": run.method, "fraction": run.fraction,
                "variant": run.variant},
        "backbone_spec": params["backbones"][run.backbone],
        "voxelization": params["voxelization"],
        "hparams_digest": params_digest,
        "resume_key": resume_key,
        "split": {"file": str(split_file), "sha256": split_sha256, "frames": len(frame_ids)},
        "teacher": teacher,
        **measured,
    }
    save_checkpoint(run.checkpoint, backbone.cpu(), meta, trained)
    finish_run(run.directory, meta)
