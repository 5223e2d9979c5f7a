import pytest
import torch

from occbench.models.backbone import SparseBackbone
from occbench.models.checkpoint import CheckpointMismatchError, load_backbone, read_checkpoint, save_checkpoint


def test_full_checkpoint_loads_everything(smoke, tmp_path):
    torch.manual_seed(0)
    source = SparseBackbone.from_params(smoke, "small")
    save_checkpoint(tmp_path / "ckpt.pt", source, {"method": "also"}, [])
    torch.manual_seed(1)
    target = SparseBackbone.from_params(smoke, "small")
    report = load_backbone(target, read_checkpoint(tmp_path / "ckpt.pt")["backbone"], 0.99, "ckpt.pt")
    assert report.loaded_fraction == 1.0 and not report.missing and not report.shape_mismatch
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))


def test_loaded_fraction_counts_parameter_values(smoke):
    target = SparseBackbone.from_params(smoke, "small")
    state = target.state_dict()
    dropped = "bev_neck.0.weight"
    partial = {k: v for k, v in state.items() if k != dropped}
    total = sum(p.numel() for p in target.parameters())
    report = load_backbone(target, partial, 0.0, "partial.pt")
    assert report.missing == [dropped]
    assert report.loaded_fraction == pytest.approx(1 - state[dropped].numel() / total)


def test_mismatched_backbone_fails_loudly_instead_of_training_from_scratch(smoke):
    """The peers' strict=False trap: a checkpoint of another variant must not load silently."""
    base_state = SparseBackbone.from_params(smoke, "base").state_dict()
    small = SparseBackbone.from_params(smoke, "small")
    before = {k: v.clone() for k, v in small.state_dict().items()}
    with pytest.raises(CheckpointMismatchError, match=r"base\.pt: only 0\.\d% of the backbone's parameters"):
        load_backbone(small, base_state, 0.99, "base.pt")
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # untouched


def test_unreadable_checkpoint_is_named(tmp_path):
    bad = tmp_path / "broken.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointMismatchError, match="broken.pt: cannot read as a checkpoint"):
        read_checkpoint(bad)
