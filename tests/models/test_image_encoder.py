"""The image teacher: its stride, masked image modelling learning on a few images, the frozen checkpoint."""

from __future__ import annotations

import pytest
import torch

from occbench.models.image_encoder import ImageEncoder, MaskedImageModel, load_frozen_image_encoder, pixels, \
    save_image_encoder


def test_one_feature_per_8_by_8_patch_and_pixels_centred():
    encoder = ImageEncoder((4, 8, 6))
    assert encoder(torch.zeros(2, 3, 40, 64)).shape == (2, 6, 5, 8)
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)  # (1, 1, 1, 3)
    torch.testing.assert_close(pixels(images)[0, :, 0, 0], torch.tensor([-0.5, 0.5, -0.3]))


def test_images_that_are_not_whole_patches_are_refused():
    model = MaskedImageModel(ImageEncoder((4, 4, 4)), 0.5)
    with pytest.raises(ValueError, match="images of 60 x 40 pixels are not whole 8 x 8 patches"):
        model.reconstruction_error(torch.zeros(1, 40, 60, 3, dtype=torch.uint8), torch.Generator())


def test_only_masked_pixels_count():
    # Half the patches masked; the decoder's output is its bias alone (zero weights) = 0.5, images all 0
    # (-0.5 centred): every pixel is off by 1, so the mean over masked pixels is 1 whatever the mask.
    model = MaskedImageModel(ImageEncoder((4, 4, 4)), 0.5)
    torch.nn.init.zeros_(model.decoder.weight)
    torch.nn.init.constant_(model.decoder.bias, 0.5)
    error = model.reconstruction_error(torch.zeros(2, 16, 16, 3, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert error.item() == pytest.approx(1.0)


def test_masked_image_modelling_learns_to_fill_in_a_few_images():
    torch.manual_seed(0)
    images = torch.zeros(2, 32, 48, 3, dtype=torch.uint8)
    images[:, :16] = torch.tensor([180, 205, 240], dtype=torch.uint8)  # sky over road, a red car on it
    images[:, 16:] = torch.tensor([90, 90, 90], dtype=torch.uint8)
    images[0, 12:24, 8:32] = torch.tensor([200, 40, 45], dtype=torch.uint8)
    images[1, 14:26, 20:44] = torch.tensor([200, 40, 45], dtype=torch.uint8)
    model = MaskedImageModel(ImageEncoder((8, 16, 16)), 0.5)
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=3e-3)
    model.eval()
    before = model.reconstruction_error(images, torch.Generator().manual_seed(99)).item()
    model.train()
    for step in range(60):
        loss = model.reconstruction_error(images, torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    after = model.reconstruction_error(images, torch.Generator().manual_seed(99)).item()
    assert after < 0.5 * before  # 0.101 -> 0.034


def test_a_saved_encoder_loads_frozen_with_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    encoder = ImageEncoder((4, 8, 8)).eval()
    save_image_encoder(tmp_path / "encoder.pt", encoder, {"note": "test"})
    loaded = load_frozen_image_encoder(tmp_path / "encoder.pt")
    images = torch.rand(1, 3, 16, 24)
    assert torch.equal(loaded(images), encoder(images))
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_a_truncated_or_missing_encoder_is_refused_naming_the_file(tmp_path):
    """A teacher the DAG trained is not hash-pinned: reading it is what catches a broken file."""
    path = tmp_path / "encoder.pt"
    save_image_encoder(path, ImageEncoder((4, 8)), {})
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ValueError, match=f"^{path}: cannot read as an image-encoder checkpoint \\("):
        load_frozen_image_encoder(path)
    path.unlink()
    with pytest.raises(FileNotFoundError, match=f"^{path}: no such file \\(an image-encoder checkpoint is expected"):
        load_frozen_image_encoder(path)
