"""DINOv2 (Oquab et al., TMLR 2024) as OccFeat's image teacher on real data: Meta's backbone weights read
from a local file, frozen.

Meta publishes each backbone as a plain state dict (``dinov2_vits14_pretrain.pth``, vitb14, vitl14,
vitg14, and the ``_reg4`` variants with 4 register tokens). ``DinoV2`` is a plain-PyTorch ViT whose
parameter names are exactly those, so a file loads as published, with no renaming, no hub and no
download. The variant (width, depth, MLP width, patch size, position grid, registers) is read from the
state dict's shapes; what the shapes do not say is fixed as Meta's hub builds every one of them: heads
of 64 channels (6 / 12 / 16 / 24 for S / B / L / g), LayerNorm eps 1e-6, layer scale, a GELU MLP or,
where the file holds ``mlp.w12`` / ``mlp.w3`` (vitg14), SwiGLU.

Position embeddings are learnt on a 37 x 37 grid (518 px) and interpolated bicubically for other
image sizes, as DINOv2 does it: without registers by the scale factor (side + 0.1) / 37 and no
antialiasing (a work-around kept for the published weights), with registers to the side itself,
antialiased. The dense output is the patch tokens after the final norm, one per 14 x 14 pixels.
``image_features`` takes uint8 camera images, normalises them by ImageNet's mean and std (DINOv2's
training input) and resizes each side to the nearest multiple of 14, so that the feature map covers
the whole image, as OccFeat samples it.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from occbench.models.image_encoder import resized, rows_kept_aspect, unit_pixels
from occbench.training import load_torch

DINOV2_KIND = "dinov2"  # pretrain.methods.occfeat.teacher.kind of a pinned DINOv2 backbone
HEAD_CHANNELS = 64  # every published DINOv2 backbone's attention heads
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATION_OFFSET = 0.1  # added to each side's patch count when interpolating without registers
LAYER_NORM_EPS = 1e-6
STEM_KEYS = ("cls_token", "pos_embed", "mask_token", "patch_embed.proj.weight", "patch_embed.proj.bias",
             "norm.weight", "norm.bias")
BLOCK_KEYS = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
              "attn.proj.bias", "ls1.gamma", "norm2.weight", "norm2.bias", "ls2.gamma")
FFN_KEYS = {"mlp": ("mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"),
            "swiglu": ("mlp.w12.weight", "mlp.w12.bias", "mlp.w3.weight", "mlp.w3.bias")}
LISTED_KEYS = 8  # how many missing or unexpected keys an error names


@dataclass(frozen=True)
class DinoV2Architecture:
    """What a DINOv2 backbone's state dict determines; ``ffn_hidden``: the MLP's (or SwiGLU's) hidden width."""

    embed_dim: int
    depth: int
    ffn_hidden: int
    ffn: str = "mlp"
    patch_size: int = 14
    grid: int = 37
    registers: int = 0

    def __post_init__(self):
        if self.embed_dim % HEAD_CHANNELS:
            raise ValueError(f"DINOv2: width {self.embed_dim} is not a whole number of {HEAD_CHANNELS}-channel heads")
        if self.ffn not in FFN_KEYS:
            raise ValueError(f"DINOv2: feed-forward {self.ffn!r} is not one of {tuple(FFN_KEYS)}")

    @property
    def heads(self) -> int:
        return self.embed_dim // HEAD_CHANNELS

    @classmethod
    def from_state_dict(cls, state: object, path: str | os.PathLike) -> "DinoV2Architecture":
        """The architecture of a DINOv2 backbone state dict; anything else is refused naming ``path``
        and the keys that are missing or unexpected."""
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise ValueError(f"{path}: not a DINOv2 backbone state dict (not a mapping of names to tensors)")
        depth = 1 + max((int(m.group(1)) for key in state if (m := re.match(r"blocks\.(\d+)\.", key))), default=0)
        ffn = "swiglu" if "blocks.0.mlp.w12.weight" in state else "mlp"
        expected = {*STEM_KEYS, *(f"blocks.{i}.{key}" for i in range(depth) for key in BLOCK_KEYS + FFN_KEYS[ffn])}
        if "register_tokens" in state:
            expected.add("register_tokens")
        missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
        if missing or unexpected:
            raise ValueError(f"{path}: not a DINOv2 backbone state dict (missing keys: {_listed(missing)}; "
                             f"unexpected keys: {_listed(unexpected)})")
        patch = state["patch_embed.proj.weight"].shape
        positions = state["pos_embed"].shape[1] - 1
        grid = math.isqrt(positions)
        if grid * grid != positions:
            raise ValueError(f"{path}: DINOv2 pos_embed holds {positions} patch positions, not a square grid")
        hidden = state["blocks.0.mlp.w12.weight" if ffn == "swiglu" else "blocks.0.mlp.fc1.weight"].shape[0]
        registers = state["register_tokens"].shape[1] if "register_tokens" in state else 0
        try:
            return cls(embed_dim=patch[0], depth=depth, ffn_hidden=hidden // 2 if ffn == "swiglu" else hidden,
                       ffn=ffn, patch_size=patch[-1], grid=grid, registers=registers)
        except ValueError as err:
            raise ValueError(f"{path}: {err}") from None


def _listed(keys: list[str]) -> str:
    if not keys:
        return "none"
    more = f", and {len(keys) - LISTED_KEYS} more" if len(keys) > LISTED_KEYS else ""
    return ", ".join(keys[:LISTED_KEYS]) + more


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, embed_dim, patch_size, stride=patch_size)


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """vitg14's feed-forward: w12 gives both halves, silu(first) * second, then w3."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w12, self.w3 = nn.Linear(dim, 2 * hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, value = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(gate) * value)


class Block(nn.Module):
    def __init__(self, architecture: DinoV2Architecture):
        super().__init__()
        dim = architecture.embed_dim
        self.norm1 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.attn = Attention(dim, architecture.heads)
        self.ls1 = LayerScale(dim)
        self.norm2 = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.mlp = (SwiGLU if architecture.ffn == "swiglu" else Mlp)(dim, architecture.ffn_hidden)
        self.ls2 = LayerScale(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


def imagenet_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) as DINOv2's input (B, 3, H, W): in [0, 1], less ImageNet's mean, over its std."""
    x = unit_pixels(images)
    return (x - x.new_tensor(IMAGENET_MEAN)[:, None, None]) / x.new_tensor(IMAGENET_STD)[:, None, None]


def input_size(height: int, width: int, patch_size: int) -> tuple[int, int]:
    """Each side rounded to the nearest multiple of the patch size (at least one patch)."""
    return tuple(max(1, math.floor(side / patch_size + 0.5)) * patch_size for side in (height, width))


class DinoV2(nn.Module):
    """Images (B, 3, H, W), ImageNet-normalised, sides multiples of the patch size -> patch features
    (B, embed_dim, H / patch, W / patch) after the final norm."""

    def __init__(self, architecture: DinoV2Architecture):
        super().__init__()
        self.architecture = architecture
        dim = architecture.embed_dim
        self.patch_embed = PatchEmbed(architecture.patch_size, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + architecture.grid ** 2, dim))
        if architecture.registers:
            self.register_tokens = nn.Parameter(torch.zeros(1, architecture.registers, dim))
        self.mask_token = nn.Parameter(torch.zeros(1, dim))  # DINOv2's masked training only; in every file
        self.blocks = nn.ModuleList(Block(architecture) for _ in range(architecture.depth))
        self.norm = nn.LayerNorm(dim, eps=LAYER_NORM_EPS)
        self.stride = architecture.patch_size
        self.out_channels = dim

    def position_embedding(self, rows: int, cols: int) -> torch.Tensor:
        """The class token's position embedding then the patches' (1, 1 + rows * cols, D), interpolated
        from the learnt grid as DINOv2 interpolates it (module docstring)."""
        grid = self.architecture.grid
        if rows == cols == grid:
            return self.pos_embed
        learnt = self.pos_embed.float()
        patches = learnt[:, 1:].reshape(1, grid, grid, -1).permute(0, 3, 1, 2)
        if self.architecture.registers:
            patches = F.interpolate(patches, size=(rows, cols), mode="bicubic", antialias=True)
        else:
            scale = ((rows + INTERPOLATION_OFFSET) / grid, (cols + INTERPOLATION_OFFSET) / grid)
            patches = F.interpolate(patches, scale_factor=scale, mode="bicubic", antialias=False)
        patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, -1)
        return torch.cat([learnt[:, :1], patches], dim=1).to(self.pos_embed.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        b, _, height, width = images.shape
        patch = self.architecture.patch_size
        if height % patch or width % patch:
            raise ValueError(f"DINOv2: images of {width} x {height} pixels are not whole {patch} x {patch} patches")
        rows, cols = height // patch, width // patch
        tokens = self.patch_embed.proj(images).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1) + self.position_embedding(rows, cols)
        if self.architecture.registers:  # after the position embedding: registers have none
            tokens = torch.cat([tokens[:, :1], self.register_tokens.expand(b, -1, -1), tokens[:, 1:]], dim=1)
        for block in self.blocks:
            tokens = block(tokens)
        patches = self.norm(tokens)[:, 1 + self.architecture.registers:]
        return patches.transpose(1, 2).reshape(b, self.out_channels, rows, cols)

    def image_features(self, images: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """uint8 images (B, H, W, 3) -> the feature map covering each whole image: ImageNet-normalised and
        resized once, to ``rows`` rows keeping the aspect ratio (None: their own size), each side then
        rounded to a multiple of the patch size (``input_size``)."""
        x = imagenet_pixels(images)
        size = input_size(*rows_kept_aspect(*x.shape[2:], rows), self.architecture.patch_size)
        return self(resized(x, size))


def load_frozen_dinov2(path: str | os.PathLike) -> DinoV2:
    """The DINOv2 backbone a published state dict holds, frozen and in eval mode; any other file is
    refused naming it. Built on the meta device, then given the file's tensors: no second copy of the
    weights (vitg14's are 4.5 GB)."""
    state = load_torch(path, "a DINOv2 backbone state dict")
    architecture = DinoV2Architecture.from_state_dict(state, path)
    with torch.device("meta"):
        model = DinoV2(architecture)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as err:  # a tensor of another shape than the others imply
        reason = " ".join(str(err).splitlines()[1:]).strip()  # torch's first line names no tensor
        raise ValueError(f"{path}: not a DINOv2 backbone state dict ({reason})") from err
    return model.float().requires_grad_(False).eval()
