"""The typed batch and the loader: same batches whatever the workers and ranks, fields on request."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from occbench.data.augment import GlobalAugmentation
from occbench.data.batch import BOX_PAD, collate
from occbench.data.beams import BeamResampler
from occbench.data.dataset import FrameIndex
from occbench.data.frame import Frame
from occbench.data.loader import FrameDataset, StepSampler, epoch_order, evaluation_loader, frame_loader
from smoke import make_dataset


@pytest.fixture(scope="module")
def index(tmp_path_factory) -> FrameIndex:
    path = tmp_path_factory.mktemp("loader")
    make_dataset(path)
    return FrameIndex(path / "results" / "data" / "synthetic" / "index.json")


def _frame(num_boxes: int) -> Frame:
    n = 5
    return Frame(points=np.arange(3 * n, dtype=np.float32).reshape(n, 3), intensity=np.full(n, 0.5, np.float32),
                 ring=np.zeros(n, np.int16), semantic=np.zeros(n, np.uint8), instance=np.zeros(n, np.int32),
                 boxes=np.ones((num_boxes, 7), np.float32) * (num_boxes + 1),
                 box_labels=np.full(num_boxes, 8, np.int16))


def test_boxes_are_padded_with_their_classes_and_missing_velocity_is_nan():
    batch = collate([("a", _frame(2)), ("b", _frame(0))], needs=frozenset({"boxes", "pose"}))
    assert batch.boxes.shape == (2, 2, 7) and batch.boxes[0, 0, 0] == 3 and batch.boxes[1].abs().sum() == 0
    assert batch.box_labels.tolist() == [[8, 8], [BOX_PAD, BOX_PAD]]
    assert torch.isnan(batch.box_velocity).all()
    assert torch.equal(batch.pose[0], torch.eye(4, dtype=torch.float64))
    assert batch.occupancy is None and batch.cameras == {} and batch.ring is None


def test_a_field_the_frame_lacks_is_an_error_naming_the_frame():
    with pytest.raises(ValueError, match="frame 'b' has no semantic occupancy"):
        collate([("b", _frame(1))], needs=frozenset({"occupancy"}), source="index.json")


def test_occupancy_and_cameras_of_the_synthetic_world(index):
    frame_ids = index.ids("train")[:2]
    batch = collate([(i, index.load(i)) for i in frame_ids], needs=frozenset({"occupancy", "cameras", "ring"}))
    frame = index.load(frame_ids[1])
    assert torch.equal(batch.occupancy[1], torch.from_numpy(frame.extras["occupancy"]))
    assert batch.occupancy_grid["voxel_size"] == [0.5, 0.5, 0.5]
    assert torch.equal(batch.cameras["front"].images[1], torch.from_numpy(frame.extras["image_front"]))
    assert torch.equal(batch.ring[1], torch.from_numpy(frame.ring.astype(np.int64)))


def _batches(index, workers: int, rank: int = 0, world: int = 1, start: int = 0):
    dataset = FrameDataset(index, index.ids("train"), seed=3, shuffle=True,
                           augmentation=GlobalAugmentation(rotation_deg=180, flip_x=True), max_points=500,
                           transforms=[BeamResampler(p=1.0)])
    sampler = StepSampler(len(dataset), 2, epoch=1, start_step=start, rank=rank, world_size=world)
    return list(frame_loader(dataset, sampler, frozenset(), workers))


def test_same_batches_with_and_without_worker_processes(index):
    """Augmentation and beam re-sampling run in the workers, seeded by (seed, epoch, position)."""
    serial, parallel = _batches(index, 0), _batches(index, 2)
    assert [b.frame_ids for b in serial] == [b.frame_ids for b in parallel]
    for a, b in zip(serial, parallel):
        assert all(torch.equal(x, y) for x, y in zip(a.points, b.points))
        assert all(len(x) == 500 for x in a.points)
    assert serial[0].frame_ids == epoch_order(index.ids("train"), 3, 1)[:2]


def test_ranks_split_each_global_batch_and_a_resumed_epoch_continues_it(index):
    whole = _batches(index, 0)
    ranks = [_batches(index, 0, rank=r, world=2) for r in (0, 1)]
    for step, batch in enumerate(whole):
        assert [ranks[0][step].frame_ids[0], ranks[1][step].frame_ids[0]] == batch.frame_ids
        assert torch.equal(ranks[1][step].points[0], batch.points[1])
    resumed = _batches(index, 0, start=1)
    assert [b.frame_ids for b in resumed] == [b.frame_ids for b in whole[1:]]
    assert torch.equal(resumed[0].points[0], whole[1].points[0])


def test_steps_per_epoch_drop_a_last_step_too_small_for_every_rank():
    assert StepSampler.steps(5, 2) == 3
    assert StepSampler.steps(5, 2, world_size=2) == 2  # the fifth frame alone cannot feed 2 ranks
    assert StepSampler.steps(6, 4, world_size=2) == 2


def test_evaluation_frames_are_whole_and_in_order(index):
    frame_ids = index.ids("val")
    batches = list(evaluation_loader(index, frame_ids, 1, frozenset()))
    assert [b.frame_ids[0] for b in batches] == frame_ids
    assert torch.equal(batches[0].points[0], torch.from_numpy(index.load(frame_ids[0]).points))
