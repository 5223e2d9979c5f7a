"""``fit``: the one training loop of pre-training and fine-tuning.

The model is any ``nn.Module`` whose ``forward(batch, generator)`` returns
``(loss, logs)``; the engine owns everything else: the device (CUDA when
present), mixed precision on CUDA, the optimizer and schedule named in
params.yaml, gradient clipping, the loader workers, data parallelism over
torchrun's ranks, curves, and surviving a cluster:

- Every random draw of step s of epoch e comes from streams seeded by
  (seed, e, s) (the loader's per-sample generators, the ``generator`` handed to
  the model, torch's global RNG), so nothing random has to be saved.
- A resume state (model, optimizer, schedule, scaler, partial epoch sums,
  curves up to that step) is written atomically every ``state_every_steps``
  steps and at each epoch end. A run killed anywhere and started again with
  the same inputs ends with the same weights as an uninterrupted one.
- SIGTERM and SIGUSR1 (what SLURM sends before a time limit or preemption)
  save the state at the end of the current step and raise ``Preempted``; the
  CLI then exits with 128 + the signal number, and a requeued job resumes.
- A non-finite loss (or, in float32, gradient norm) stops the run before that
  step's update with a ``FloatingPointError`` naming the step: the resume state
  on disk is the last good one, and the job writes no result.
"""

from __future__ import annotations

import os
import resource
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from occbench.data.loader import FrameDataset, StepSampler, frame_loader
from occbench.io import atomic_path
from occbench.preemption import Preempted, preemption_flag
from occbench.progress import progress
from occbench.training.curves import CurveFile
from occbench.training.distributed import all_mean, any_rank, barrier, init_distributed
from occbench.training.optim import build_optimizer, build_schedule

STATE_FILE = "train_state.pt"


class _WriteErrors:
    """A binary file for torch.save that keeps the OSError of a failed write: torch reports a failed write
    only as a RuntimeError ('unexpected pos ...'), which says neither that the disk is full nor where."""

    def __init__(self, handle):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except OSError as err:
            self.error = self.error or err
            raise

    def flush(self) -> None:
        self.handle.flush()


def save_torch(obj: Any, path: str | os.PathLike) -> None:
    """torch.save ``obj`` atomically; a full disk is raised as occbench.io.DiskFull naming ``path``."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        writer = _WriteErrors(handle)
        try:
            torch.save(obj, writer)
        except RuntimeError:
            if writer.error is not None:
                raise writer.error from None
            raise


def load_torch(path: str | os.PathLike, what: str) -> Any:
    """``what`` (a checkpoint, ...) read without running pickled code; a missing or unreadable file is refused
    naming it (torch's own errors name neither the file nor the kind of file)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file ({what} is expected there)") from None
    except Exception as err:
        raise ValueError(f"{path}: cannot read as {what} ({err})") from err


def seed_everything(seed: int, threads: int) -> None:
    """Fix the global RNGs before a model is built (its init draws from them)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    torch.set_num_threads(threads)


def step_seed(seed: int, epoch: int, step: int) -> int:
    """The seed of every random stream of one step (a 63-bit integer from numpy's SeedSequence)."""
    return int(np.random.SeedSequence([seed, epoch, step]).generate_state(1, np.uint64)[0] >> 1)


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """``auto``: this rank's GPU when CUDA is present, else the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"execution.device is {name!r} but CUDA is not available on {os.uname().nodename}")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


@dataclass(frozen=True)
class TrainConfig:
    """What a job trains for: from its params.yaml section (pretrain, finetune.<task>)."""

    epochs: int
    batch_size: int
    seed: int
    optimizer: dict  # {name, lr, weight_decay}
    schedule: dict  # {name, warmup_fraction}
    grad_clip: float | None  # max gradient norm, None: no clipping

    @classmethod
    def from_settings(cls, settings: dict, seed: int, epochs: int) -> "TrainConfig":
        """From a params.yaml training section (pretrain, finetune.<task>)."""
        return cls(epochs=epochs, batch_size=settings["batch_size"], seed=seed, optimizer=settings["optimizer"],
                   schedule=settings["schedule"], grad_clip=settings["grad_clip"])


@dataclass
class FitResult:
    history: list[dict]  # per epoch: the mean of each logged value
    trained_parameters: set[str]  # parameters that received a non-zero gradient at least once
    steps: int
    resumed_from: dict | None  # {"epoch", "step"} when the run continued a saved state
    step_seconds: dict[str, float] = field(default_factory=dict)  # mean data / forward / backward / step


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


class _Clock:
    """Wall time of the phases of a step; waits for CUDA so a phase is not billed to the next."""

    def __init__(self, device: torch.device):
        self.device = device
        self.last = time.perf_counter()

    def lap(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def fit(model: nn.Module, dataset: FrameDataset, needs: frozenset[str], config: TrainConfig, execution: dict,
        run_dir: Path, digest: str, desc: str) -> FitResult:
    """Train ``model`` on ``dataset`` for ``config.epochs``; resume from ``run_dir``'s state when its digest matches.

    ``model.parameter_groups()`` names what trains and at which share of the lr; a model
    with ``set_progress(epoch, epochs)`` is told at each epoch's start where training stands.
    ``execution``: params.yaml's section (device, amp, loader_workers, state_every_steps).
    The model is moved to the device and trained in place.
    """
    ddp = init_distributed(execution["device"])
    device = resolve_device(execution["device"], ddp.local_rank)
    model.to(device)
    trainable = DistributedDataParallel(model, find_unused_parameters=True) if ddp.enabled else model
    amp = bool(execution["amp"]) and device.type == "cuda"
    # Epochs may differ in length (class-balanced sampling repeats frames anew each epoch).
    epoch_steps = [StepSampler.steps(dataset.epoch_length(e), config.batch_size, ddp.world_size)
                   for e in range(config.epochs)]
    if min(epoch_steps) == 0:
        epoch = epoch_steps.index(0)
        raise ValueError(f"{run_dir}: epoch {epoch}'s {dataset.epoch_length(epoch)} frames give no step of batch "
                         f"{config.batch_size} on {ddp.world_size} ranks")
    first_step = np.cumsum([0, *epoch_steps]).tolist()  # global step at which each epoch starts
    total_steps = first_step[-1]
    optimizer = build_optimizer(model.parameter_groups(), config.optimizer)
    scheduler = build_schedule(optimizer, config.schedule, total_steps)
    scaler = torch.amp.GradScaler(device.type, enabled=amp)
    state_path = run_dir / STATE_FILE
    steps_curve = CurveFile(run_dir / "curves" / "steps.tsv", "step")
    epochs_curve = CurveFile(run_dir / "curves" / "epochs.tsv", "epoch")

    progress_state = {"epoch": 0, "step": 0, "sums": {}, "history": [], "trained": set()}
    resumed_from = None
    if state_path.exists():
        state = torch.load(state_path, map_location=device, weights_only=True)  # no pickled code runs
        if state["digest"] == digest:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            scaler.load_state_dict(state["scaler"])
            progress_state = state["progress"]
            resumed_from = {"epoch": progress_state["epoch"], "step": progress_state["step"]}
            print(f"occbench: resuming {state_path} at epoch {resumed_from['epoch']} step {resumed_from['step']}",
                  file=sys.stderr)
        else:
            print(f"occbench: ignoring {state_path}: written for other inputs (digest {state['digest']}, "
                  f"this run {digest})", file=sys.stderr)
    if ddp.is_main:
        steps_curve.truncate(first_step[progress_state["epoch"]] + progress_state["step"])
        epochs_curve.truncate(progress_state["epoch"])

    saved = resumed_from  # where the resume state on disk of these inputs stands, None: there is none

    def save_state() -> None:
        nonlocal saved
        if ddp.is_main:
            save_torch({"digest": digest, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                        "progress": progress_state}, state_path)
        saved = {"epoch": progress_state["epoch"], "step": progress_state["step"]}
        barrier(ddp)

    def diverged(what: str, epoch: int, step: int) -> FloatingPointError:
        """The error of a non-finite step: before its update, so the state on disk predates it."""
        kept = (f"the last good resume state (epoch {saved['epoch']} step {saved['step']}) is kept at {state_path}"
                if saved else "no resume state was saved before it")
        return FloatingPointError(f"{run_dir}: non-finite {what} at epoch {epoch} step {step}; training stopped "
                                  f"and wrote no result, {kept} (lower the learning rate or check the inputs)")

    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    timing = {"data": 0.0, "forward": 0.0, "backward": 0.0}
    timed_steps = 0
    every = execution["state_every_steps"]
    with preemption_flag() as received:
        for epoch in range(progress_state["epoch"], config.epochs):
            trainable.train()
            if hasattr(model, "set_progress"):  # an objective that changes over epochs (pretrain/base.py)
                model.set_progress(epoch, config.epochs)
            start = progress_state["step"]
            steps_per_epoch = epoch_steps[epoch]
            sampler = StepSampler(dataset.epoch_length(epoch), config.batch_size, epoch, start, ddp.rank,
                                  ddp.world_size)
            loader = frame_loader(dataset, sampler, needs, execution["loader_workers"], device.type == "cuda")
            bar = progress(loader, total=steps_per_epoch, initial=start, disable=not ddp.is_main,
                           desc=f"{desc} epoch {epoch + 1}/{config.epochs}")
            clock = _Clock(device)
            for step, batch in enumerate(bar, start=start):
                seed = step_seed(config.seed, epoch, step)
                torch.manual_seed(seed)
                generator = torch.Generator().manual_seed(seed)
                batch = batch.to(device, non_blocking=True)
                data_seconds = clock.lap()
                with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                    loss, logs = trainable(batch, generator)
                if any_rank(not torch.isfinite(loss).item(), ddp, device):  # every rank stops at this step
                    raise diverged(f"loss ({loss.item()})", epoch, step)
                forward_seconds = clock.lap()
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if config.grad_clip is not None:
                    scaler.unscale_(optimizer)
                    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
                elif not amp:
                    norm = torch.nn.utils.get_total_norm([p.grad for p in model.parameters() if p.grad is not None])
                # AMP's scaler skips a step of non-finite gradients; in float32 the step would poison the weights.
                if not amp and not torch.isfinite(norm):
                    raise diverged(f"gradient norm ({norm.item()})", epoch, step)
                with_grad = [(name, p.grad) for name, p in named if p.grad is not None]
                if with_grad:
                    nonzero = torch.stack([g.detach().abs().amax().float() for _, g in with_grad]) > 0
                    progress_state["trained"] |= {name for (name, _), hit in zip(with_grad, nonzero.tolist()) if hit}
                scaler.step(optimizer)
                scaler.update()
                lr = optimizer.param_groups[0]["lr"]
                scheduler.step()
                backward_seconds = clock.lap()

                values = {"loss": loss.detach().float(), **{k: torch.tensor(float(v)) for k, v in logs.items()}}
                keys = list(values)
                reduced = all_mean(torch.stack([values[k].to(device) for k in keys]).float(), ddp).tolist()
                sums = progress_state["sums"]
                for key, value in zip(keys, reduced):
                    sums[key] = sums.get(key, 0.0) + value
                progress_state["step"] = step + 1
                global_step = first_step[epoch] + step
                if ddp.is_main:
                    steps_curve.append({"step": global_step, "epoch": epoch, **dict(zip(keys, reduced)), "lr": lr,
                                        "data_s": data_seconds, "forward_s": forward_seconds,
                                        "backward_s": backward_seconds, "peak_memory_mb": _peak_memory_mb(device)})
                bar.set_postfix(loss=f"{reduced[0]:.4f}", refresh=False)
                timing["data"] += data_seconds
                timing["forward"] += forward_seconds
                timing["backward"] += backward_seconds
                timed_steps += 1

                clock.lap()  # logging and state saves are not the next step's data time
                stop = any_rank(bool(received), ddp, device)
                last_of_epoch = step + 1 == steps_per_epoch
                if last_of_epoch:
                    mean = {key: value / steps_per_epoch for key, value in sums.items()}
                    progress_state["history"].append({"epoch": epoch, **mean})
                    if ddp.is_main:
                        epochs_curve.append({"epoch": epoch, **mean})
                    progress_state.update(epoch=epoch + 1, step=0, sums={})
                if last_of_epoch or stop or (global_step + 1) % every == 0:
                    save_state()
                if stop:
                    signum = received[0] if received else signal.SIGTERM
                    print(f"occbench: {signal.Signals(signum).name} received at epoch {progress_state['epoch']} "
                          f"step {progress_state['step']}; resume state saved to {state_path}", file=sys.stderr)
                    raise Preempted(signum, state_path)
    step_seconds = {key: value / timed_steps for key, value in timing.items()} if timed_steps else {}
    if step_seconds:
        step_seconds["step"] = sum(step_seconds.values())
        step_seconds["peak_memory_mb"] = _peak_memory_mb(device)
    return FitResult(progress_state["history"], set(progress_state["trained"]), total_steps, resumed_from,
                     step_seconds)

