import pytest
import torch

from occbench.training import epoch_order, run_epochs


class Interrupted(Exception):
    pass


def test_interrupted_training_resumes_after_last_finished_epoch(tmp_path):
    state = tmp_path / "train_state.pt"
    model = torch.nn.Linear(2, 1)
    generator = torch.Generator().manual_seed(0)
    seen = []

    def epoch_that_dies_at_2(epoch):
        if epoch == 2:
            raise Interrupted
        seen.append(epoch)
        with torch.no_grad():
            model.weight += 1
        return {"draw": torch.rand(1, generator=generator).item()}

    with pytest.raises(Interrupted):
        run_epochs(state, "digest-a", 4, {"model": model}, generator, epoch_that_dies_at_2)
    weight_after_two = model.weight.detach().clone()

    resumed_model = torch.nn.Linear(2, 1)
    resumed_generator = torch.Generator().manual_seed(123)  # state comes from the file

    def epoch(epoch):
        seen.append(epoch)
        return {"draw": torch.rand(1, generator=resumed_generator).item()}

    history = run_epochs(state, "digest-a", 4, {"model": resumed_model}, resumed_generator, epoch)
    assert seen == [0, 1, 2, 3]
    assert [h["epoch"] for h in history] == [0, 1, 2, 3]
    assert torch.equal(resumed_model.weight, weight_after_two)
    # the generator continued where the first run stopped: same draws as an uninterrupted run
    uninterrupted = torch.Generator().manual_seed(0)
    assert [h["draw"] for h in history] == [torch.rand(1, generator=uninterrupted).item() for _ in range(4)]


def test_state_of_other_hyperparameters_is_not_resumed(tmp_path):
    state = tmp_path / "train_state.pt"
    run_epochs(state, "digest-a", 1, {}, torch.Generator(), lambda e: {})
    seen = []
    run_epochs(state, "digest-b", 2, {}, torch.Generator(), lambda e: seen.append(e) or {})
    assert seen == [0, 1]


def test_epoch_order_depends_on_seed_and_epoch_only():
    frames = [f"{i:06d}" for i in range(20)]
    assert epoch_order(frames, 0, 3) == epoch_order(frames, 0, 3)
    assert epoch_order(frames, 0, 3) != epoch_order(frames, 0, 4)
    assert sorted(epoch_order(frames, 1, 0)) == frames
