"""Frames of a split as a torch DataLoader: reading, augmentation and subsampling in worker processes.

Every random draw of a training sample comes from a generator seeded by
(seed, epoch, position in the epoch), never from a worker's or a rank's own
stream, so the batches are the same with 0 or 8 workers, on 1 or 4 ranks, and
after a resume in the middle of an epoch.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from occbench.data.augment import GlobalAugmentation
from occbench.data.batch import collate, subsample
from occbench.data.dataset import FrameIndex
from occbench.data.frame import Frame
from occbench.data.sampling import class_balanced_order, frame_class_sets
from occbench.data.splits import read_split
from occbench.preemption import PREEMPT_SIGNALS
from occbench.workflow.grid import index_path, split_path

FrameTransform = Callable[[Frame, np.random.Generator], Frame]


def epoch_order(items: Sequence[str], seed: int, epoch: int) -> list[str]:
    """Frame order of one epoch: a function of (seed, epoch) alone, so resuming keeps it."""
    order = np.random.default_rng([seed, epoch]).permutation(len(items))
    return [items[i] for i in order]


@dataclass(frozen=True)
class LoaderOptions:
    """What a training run may add to the loader: transforms after the augmentation (e.g. beam
    re-sampling) and class-balanced epochs (``occbench.data.sampling``). A pre-training method
    declares its own (``PretrainMethod.loader_options``); the loader knows no method."""

    transforms: tuple[FrameTransform, ...] = ()
    class_balanced: bool = False


class FrameDataset(Dataset):
    """The frames of one split. Items are keyed (epoch, position) so that a key fixes the sample.

    Training (``shuffle``): position p of epoch e is frame ``order(e)[p]`` (``epoch_order``
    of the ids, or with ``class_balanced`` the ids repeated by their class-balanced factors,
    whose number changes from epoch to epoch), augmented, passed through ``transforms``
    (e.g. beam re-sampling) and subsampled to ``max_points`` with a generator seeded by
    (seed, e, p). Evaluation: frames in their order, untouched.
    """

    def __init__(self, index: FrameIndex, frame_ids: Sequence[str], seed: int, *, shuffle: bool,
                 augmentation: GlobalAugmentation | None = None, max_points: int | None = None,
                 transforms: Sequence[FrameTransform] = (), class_balanced: bool = False):
        if not frame_ids:
            raise ValueError(f"{index.path}: no frames to load")
        if class_balanced and not shuffle:
            raise ValueError(f"{index.path}: class-balanced sampling is for training (shuffle) only")
        self.index, self.frame_ids, self.seed, self.shuffle = index, list(frame_ids), seed, shuffle
        self.augmentation, self.max_points, self.transforms = augmentation, max_points, tuple(transforms)
        self.frame_classes = frame_class_sets(index) if class_balanced else None
        self._orders: dict[int, list[str]] = {}

    def __len__(self) -> int:
        return len(self.frame_ids)

    def epoch_length(self, epoch: int) -> int:
        """Samples in epoch ``epoch``: the number of frames, unless class-balanced."""
        return len(self.order(epoch))

    def order(self, epoch: int) -> list[str]:
        if not self.shuffle:
            return self.frame_ids
        if epoch not in self._orders:
            order = epoch_order(self.frame_ids, self.seed, epoch) if self.frame_classes is None else \
                class_balanced_order(self.frame_ids, self.frame_classes, self.seed, epoch)
            self._orders = {epoch: order}
        return self._orders[epoch]

    def __getitem__(self, key: tuple[int, int]) -> tuple[str, Frame]:
        epoch, position = key
        frame_id = self.order(epoch)[position]
        frame = self.index.load(frame_id)
        if self.shuffle:
            rng = np.random.default_rng([self.seed, epoch, position])
            if self.augmentation is not None:
                frame = self.augmentation(frame, rng)
            for transform in self.transforms:
                frame = transform(frame, rng)
            if self.max_points is not None:
                frame = subsample(frame, self.max_points, rng)
        return frame_id, frame


class StepSampler(Sampler):
    """Keys (epoch, position) of each step from ``start_step`` on; a rank takes every world-th frame.

    Step s holds positions [s * batch_size, (s + 1) * batch_size) of the epoch; rank r
    of W takes the positions r, r + W, ... of it, so the ranks together see exactly the
    global batch one process would.
    """

    def __init__(self, num_frames: int, batch_size: int, epoch: int, start_step: int = 0,
                 rank: int = 0, world_size: int = 1):
        self.num_frames, self.batch_size, self.epoch = num_frames, batch_size, epoch
        self.start_step, self.rank, self.world_size = start_step, rank, world_size

    @staticmethod
    def steps(num_frames: int, batch_size: int, world_size: int = 1) -> int:
        """Steps per epoch; with several ranks a last step too small to give each rank a frame is dropped."""
        steps, rest = divmod(num_frames, batch_size)
        return steps + (1 if rest >= world_size else 0)

    def __len__(self) -> int:
        return self.steps(self.num_frames, self.batch_size, self.world_size) - self.start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step in range(self.start_step, self.start_step + len(self)):
            positions = range(step * self.batch_size, min((step + 1) * self.batch_size, self.num_frames))
            yield [(self.epoch, p) for p in positions[self.rank::self.world_size]]


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # workers read and augment; the main process owns the cores for the model
    # SLURM signals every process of a job step (time-limit warning, requeue, preemption). The main
    # process saves at the end of its step and then stops the workers; a worker killed by the signal
    # would instead make it raise mid-step (DataLoader's SIGCHLD check) and exit without saving.
    for sig in PREEMPT_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def frame_loader(dataset: FrameDataset, sampler: Sampler, needs: frozenset[str], workers: int,
                 pin_memory: bool = False) -> DataLoader:
    """A DataLoader over ``sampler``'s steps, collating the fields in ``needs``."""
    return DataLoader(dataset, batch_sampler=sampler, num_workers=workers, pin_memory=pin_memory,
                      collate_fn=partial(collate, needs=needs, source=dataset.index.path),
                      worker_init_fn=_worker_init if workers else None)


@dataclass(frozen=True)
class RunFrames:
    """What a training run reads of its dataset: the index, its split file and frames, the held-out frames."""

    index: FrameIndex
    split_file: Path
    train_ids: list[str]
    val_ids: list[str]

    @classmethod
    def read(cls, dataset: str, subset: str, fraction: float, split_seed: int | None = None) -> "RunFrames":
        index = FrameIndex(index_path(dataset))
        split_file = split_path(dataset, subset, fraction, split_seed)
        val_ids = index.ids("val")
        if not val_ids:
            raise ValueError(f"{index.path}: the dataset has no 'val' frames to evaluate on")
        return cls(index, split_file, read_split(split_file, set(index.frames)), val_ids)

    def training_set(self, params: dict, seed: int, options: LoaderOptions = LoaderOptions()) -> FrameDataset:
        """The split's frames under params.yaml's augmentation and the run's ``options``,
        subsampled to voxelization.max_points."""
        return FrameDataset(self.index, self.train_ids, seed, shuffle=True,
                            augmentation=GlobalAugmentation.from_dict(params["augmentation"]),
                            max_points=params["voxelization"]["max_points"],
                            transforms=options.transforms, class_balanced=options.class_balanced)


def evaluation_loader(index: FrameIndex, frame_ids: Sequence[str], batch_size: int, needs: frozenset[str],
                      workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """Held-out frames in order, whole and unaugmented."""
    dataset = FrameDataset(index, frame_ids, seed=0, shuffle=False)
    sampler = StepSampler(len(dataset), batch_size, epoch=0)
    return frame_loader(dataset, sampler, needs, workers, pin_memory)
