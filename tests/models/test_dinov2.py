"""DINOv2 as image teacher: a published state dict's layout loads into the same features, frozen; the
feature map's size, the normalisation and the position-embedding interpolation by hand; other files refused."""

from __future__ import annotations

import pytest
import torch

from occbench.models.dinov2 import DinoV2, DinoV2Architecture, imagenet_pixels, input_size, load_frozen_dinov2
from model_fixtures import TINY_DINOV2, save_tiny_dinov2

BLOCK_NAMES = ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
               "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
               "mlp.fc2.weight", "mlp.fc2.bias", "ls2.gamma"]


def test_the_parameter_names_are_dinov2s():
    names = set(DinoV2(DinoV2Architecture(**TINY_DINOV2, registers=4)).state_dict())
    assert names == {"cls_token", "pos_embed", "register_tokens", "mask_token", "patch_embed.proj.weight",
                     "patch_embed.proj.bias", "norm.weight", "norm.bias",
                     *(f"blocks.{i}.{name}" for i in (0, 1) for name in BLOCK_NAMES)}


@pytest.mark.parametrize("registers, ffn", [(0, "mlp"), (4, "mlp"), (0, "swiglu")])
def test_a_saved_backbone_loads_frozen_with_the_same_features(tmp_path, registers, ffn):
    path = tmp_path / "dinov2_tiny_pretrain.pth"
    saved = save_tiny_dinov2(path, registers, ffn)
    loaded = load_frozen_dinov2(path)
    assert loaded.architecture == DinoV2Architecture(**TINY_DINOV2, ffn=ffn, registers=registers)
    assert loaded.architecture.heads == 2
    images = torch.randint(0, 256, (2, 40, 64, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    features = loaded.image_features(images)
    assert torch.equal(features, saved.image_features(images))
    assert features.abs().max() > 0.1  # not a degenerate map
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())


def test_the_feature_map_has_one_cell_per_14_pixels_of_the_rounded_image(tmp_path):
    # 60 / 14 = 4.3 -> 4 patches (56 px), 100 / 14 = 7.1 -> 7 (98 px); 64 / 14 = 4.6 -> 5; never below one
    assert input_size(60, 100, 14) == (56, 98)
    assert input_size(40, 64, 14) == (42, 70)
    assert input_size(6, 14, 14) == (14, 14)
    save_tiny_dinov2(tmp_path / "dinov2.pth")
    features = load_frozen_dinov2(tmp_path / "dinov2.pth").image_features(torch.zeros(3, 60, 100, 3, dtype=torch.uint8))
    assert features.shape == (3, 128, 4, 7)


def test_pixels_are_normalised_by_imagenet_mean_and_std():
    images = torch.tensor([[[[0, 255, 51]]]], dtype=torch.uint8)
    # (0 - 0.485) / 0.229, (1 - 0.456) / 0.224, (0.2 - 0.406) / 0.225
    torch.testing.assert_close(imagenet_pixels(images)[0, :, 0, 0], torch.tensor([-2.117904, 2.428571, -0.915556]))


@pytest.mark.parametrize("registers", [0, 4])
def test_position_embeddings_interpolate_row_by_row_and_keep_the_learnt_grid_at_its_size(registers):
    model = DinoV2(DinoV2Architecture(**TINY_DINOV2, registers=registers))
    grid = TINY_DINOV2["grid"]
    with torch.no_grad():  # each patch position's embedding: its column index, in every channel
        model.pos_embed[0, 0] = -1.0
        model.pos_embed[0, 1:] = torch.arange(grid).repeat(grid).float()[:, None]
    assert model.position_embedding(grid, grid) is model.pos_embed
    wide = model.position_embedding(2, 6)  # an image of 2 x 6 patches
    assert wide.shape == (1, 1 + 12, 128)
    assert torch.equal(wide[0, 0], model.pos_embed[0, 0])  # the class token's is not interpolated
    cells = wide[0, 1:, 0].reshape(2, 6)
    torch.testing.assert_close(cells[0], cells[1])  # rows of the image: the same columns
    assert (cells[0].diff() > 0).all() and cells[0, 0] < 0.5 and cells[0, -1] > grid - 1.5


def test_a_state_dict_that_is_not_a_dinov2_backbone_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "classifier.pth"
    save_tiny_dinov2(path)
    state = torch.load(path)
    del state["blocks.1.mlp.fc1.weight"], state["mask_token"]
    state["head.weight"] = torch.zeros(10, 128)
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"^{path}: not a DINOv2 backbone state dict \\(missing keys: "
                                         "blocks.1.mlp.fc1.weight, mask_token; unexpected keys: head.weight\\)$"):
        load_frozen_dinov2(path)
    torch.save({"kind": "occbench_image_encoder", "encoder": {}}, path)
    with pytest.raises(ValueError, match=f"^{path}: not a DINOv2 backbone state dict \\(not a mapping"):
        load_frozen_dinov2(path)


def test_a_tensor_of_the_wrong_shape_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "dinov2.pth"
    save_tiny_dinov2(path)
    state = torch.load(path)
    state["blocks.0.attn.proj.weight"] = torch.zeros(128, 64)
    torch.save(state, path)
    with pytest.raises(ValueError, match=f"^{path}: not a DINOv2 backbone state dict \\(.*blocks.0.attn.proj.weight"):
        load_frozen_dinov2(path)


def test_attention_splits_qkv_into_query_key_value_then_64_channel_heads():
    from occbench.models.dinov2 import Attention

    torch.manual_seed(0)
    attention, x = Attention(128, 2), torch.randn(1, 5, 128)
    q, k, v = (x @ attention.qkv.weight.T + attention.qkv.bias).split(128, dim=-1)
    heads = [torch.softmax(q[..., h] @ k[..., h].transpose(1, 2) / 8.0, dim=-1) @ v[..., h]
             for h in (slice(0, 64), slice(64, 128))]  # 8 = sqrt(64)
    expected = torch.cat(heads, dim=-1) @ attention.proj.weight.T + attention.proj.bias
    torch.testing.assert_close(attention(x), expected)


@pytest.mark.parametrize("registers", [0, 4])
def test_with_blocks_scaled_to_nothing_a_cell_is_the_normed_embedding_of_its_patch_at_its_position(registers):
    # Layer scales of 0 make every block the identity: the feature of the patch at row r, column c of a
    # 4 x 4-patch image is LayerNorm(proj(patch) + pos_embed[1 + 4 r + c]), registers and class token left out.
    model = DinoV2(DinoV2Architecture(**TINY_DINOV2, registers=registers))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            parameter.copy_(torch.zeros_like(parameter) if name.endswith("gamma") else torch.randn_like(parameter))
    images = torch.randn(1, 3, 56, 56)
    features = model(images)
    proj, norm = model.patch_embed.proj, model.norm
    for r in range(4):
        for c in range(4):
            patch = images[0, :, 14 * r:14 * r + 14, 14 * c:14 * c + 14]
            token = (proj.weight * patch).sum(dim=(1, 2, 3)) + proj.bias + model.pos_embed[0, 1 + 4 * r + c]
            expected = torch.nn.functional.layer_norm(token, (128,), norm.weight, norm.bias, eps=1e-6)
            torch.testing.assert_close(features[0, :, r, c], expected, rtol=1e-5, atol=1e-5)


def test_a_width_that_is_not_whole_64_channel_heads_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "dinov2.pth"
    state = DinoV2(DinoV2Architecture(**TINY_DINOV2)).state_dict()
    torch.save({name: tensor[:96] if name == "patch_embed.proj.weight" else tensor for name, tensor in state.items()},
               path)
    with pytest.raises(ValueError, match=f"^{path}: DINOv2: width 96 is not a whole number of 64-channel heads$"):
        load_frozen_dinov2(path)
