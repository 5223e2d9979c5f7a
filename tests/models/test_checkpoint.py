import pytest
import torch
from torch import nn

from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import (
    CheckpointMismatchError,
    load_backbone,
    read_checkpoint,
    save_checkpoint,
)

BEV = ("to_bev", "bev_neck")


class Tiny(nn.Module):
    """Small enough to count by hand: 24 parameter values, 4 BatchNorm statistics (+ 1 counter)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(3, 2)  # weight 6 + bias 2
        self.norm = nn.BatchNorm1d(2)  # weight 2 + bias 2; running_mean 2 + running_var 2; num_batches_tracked
        self.neck = nn.Linear(2, 4)  # weight 8 + bias 4


def parameter_names(module):
    return {name for name, _ in module.named_parameters()}


def test_full_checkpoint_loads_everything(smoke, tmp_path):
    torch.manual_seed(0)
    source = SparseBackbone.from_params(smoke, "small")
    save_checkpoint(tmp_path / "ckpt.pt", source, {"method": "also"}, parameter_names(source))
    torch.manual_seed(1)
    target = SparseBackbone.from_params(smoke, "small")
    checkpoint = read_checkpoint(tmp_path / "ckpt.pt")
    assert checkpoint["trained_parameters"] == sorted(parameter_names(source))
    report = load_backbone(target, checkpoint["backbone"], checkpoint["trained_parameters"], 0.99, "ckpt.pt")
    assert report.loaded_fraction == 1.0 and report.pretrained_fraction == 1.0
    assert not report.missing and not report.shape_mismatch and not report.untrained_modules
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_fractions_by_hand():
    """neck.bias missing, neck never trained: loaded (28 - 4) / 28, pre-trained (6 + 2 + 2 + 2) / 24."""
    tiny = Tiny()
    state = {k: v for k, v in tiny.state_dict().items() if k != "neck.bias"}
    trained = {"stem.weight", "stem.bias", "norm.weight", "norm.bias"}
    report = load_backbone(tiny, state, trained, 0.0, "tiny.pt")
    assert report.loaded_fraction == pytest.approx(24 / 28)
    assert report.pretrained_fraction == pytest.approx(12 / 24)
    assert report.untrained_modules == ["neck"]
    assert report.untrained_parameters == ["neck.weight"]
    assert report.missing == ["neck.bias"]
    assert report.as_dict()["untrained_modules"] == ["neck"]
    assert report.as_dict()["pretrained_fraction"] == pytest.approx(0.5)


def test_partly_trained_module_is_not_listed_as_untrained():
    """stem.bias untrained but stem.weight trained: the module is pre-trained, the share says the rest."""
    tiny = Tiny()
    trained = parameter_names(tiny) - {"stem.bias"}
    report = load_backbone(tiny, tiny.state_dict(), trained, 0.0, "tiny.pt")
    assert report.untrained_modules == [] and report.untrained_parameters == ["stem.bias"]
    assert report.pretrained_fraction == pytest.approx(22 / 24)


def test_batchnorm_statistics_count_and_the_batch_counter_does_not():
    tiny = Tiny()
    full = tiny.state_dict()
    no_statistics = {k: v for k, v in full.items() if "running_" not in k}
    report = load_backbone(tiny, no_statistics, parameter_names(tiny), 0.0, "tiny.pt")
    assert report.loaded_fraction == pytest.approx(24 / 28)
    assert report.missing == ["norm.running_mean", "norm.running_var"]
    no_counter = {k: v for k, v in full.items() if k != "norm.num_batches_tracked"}
    report = load_backbone(tiny, no_counter, parameter_names(tiny), 0.0, "tiny.pt")
    assert report.loaded_fraction == 1.0 and report.missing == ["norm.num_batches_tracked"]


def test_backbone_without_batchnorm_statistics_is_not_fully_loaded(smoke):
    target = SparseBackbone.from_params(smoke, "small")
    state = target.state_dict()
    statistics = sum(v.numel() for k, v in state.items() if "running_" in k)
    parameters = sum(p.numel() for p in target.parameters())
    partial = {k: v for k, v in state.items() if "running_" not in k}
    report = load_backbone(target, partial, parameter_names(target), 0.0, "no_bn.pt")
    assert report.loaded_fraction == pytest.approx(parameters / (parameters + statistics))
    assert report.loaded_fraction < 1.0 and report.pretrained_fraction == 1.0


@pytest.mark.parametrize(("threshold", "loads"), [(0.93, False), (0.92, True)])
def test_threshold_on_loaded_fraction(threshold, loads):
    """norm.running_mean missing: 26 / 28 = 92.9 % loaded, just below 93 % and just above 92 %."""
    source, target = Tiny(), Tiny()
    state = {k: v for k, v in source.state_dict().items() if k != "norm.running_mean"}
    before = {k: v.clone() for k, v in target.state_dict().items()}
    if loads:
        report = load_backbone(target, state, parameter_names(source), threshold, "partial.pt")
        assert report.loaded_fraction == pytest.approx(26 / 28)
        assert torch.equal(target.stem.weight, source.stem.weight)
    else:
        with pytest.raises(CheckpointMismatchError, match=r"partial\.pt: only 92\.9% .*threshold 93%"):
            load_backbone(target, state, parameter_names(source), threshold, "partial.pt")
        assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())  # untouched


def test_also_like_pretraining_reports_the_untrained_bev_neck(smoke):
    target = SparseBackbone.from_params(smoke, "small")
    trained = {name for name in parameter_names(target) if name.split(".")[0] not in BEV}
    report = load_backbone(target, target.state_dict(), trained, 0.99, "also.pt")
    bev = sum(p.numel() for name, p in target.named_parameters() if name.split(".")[0] in BEV)
    assert report.loaded_fraction == 1.0
    assert report.untrained_modules == ["to_bev", "bev_neck"]
    assert report.pretrained_fraction == pytest.approx(1 - bev / sum(p.numel() for p in target.parameters()))


def test_mismatched_backbone_fails_loudly_instead_of_training_from_scratch(smoke):
    """The peers' strict=False trap: a checkpoint of another variant must not load silently."""
    base = SparseBackbone.from_params(smoke, "base")
    small = SparseBackbone.from_params(smoke, "small")
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"base\.pt: only 0\.\d% of the backbone's parameters"):
        load_backbone(small, base.state_dict(), parameter_names(base), 0.99, "base.pt")
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # untouched


def test_save_refuses_names_that_are_not_backbone_parameters(tmp_path):
    tiny = Tiny()
    with pytest.raises(ValueError, match="'backbone.stem.weight'"):
        save_checkpoint(tmp_path / "c.pt", tiny, {}, {"backbone.stem.weight"})
    with pytest.raises(ValueError, match="no backbone parameter is recorded as trained"):
        save_checkpoint(tmp_path / "c.pt", tiny, {}, set())
    assert not (tmp_path / "c.pt").exists()


def test_checkpoint_without_trained_record_is_refused(tmp_path):
    old = tmp_path / "old.pt"
    torch.save({"version": 1, "backbone": Tiny().state_dict(), "meta": {}}, old)
    with pytest.raises(CheckpointMismatchError, match=r"old\.pt: checkpoint version 1 .*re-run pre-training"):
        read_checkpoint(old)


def test_unreadable_checkpoint_is_named(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="broken.pt: cannot read as a checkpoint"):
        read_checkpoint(bad)
