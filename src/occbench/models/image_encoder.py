"""An image teacher for OccFeat: a small CNN trained self-supervised on the camera images, then frozen.

OccFeat distils the features of a frozen self-supervised image model (DINOv2
in the paper). The embedded synthetic world has rendered cameras but no such
model, so the DAG trains one on the pre-training frames' images, with no
labels: ``ImageEncoder``, three stages of two 3x3 convolutions (the first of
each of stride 2), gives one feature per 8 x 8 pixel patch.

The objective is masked image modelling (He et al., MAE, CVPR 2022, on a
CNN): ``mask_ratio`` of the 8 x 8 patches are set to the mean grey, and a 1x1
convolution then pixel shuffle from the encoder's features reconstructs every
pixel; the loss is the mean squared error over the masked pixels. Why this
one: a masked patch can only be filled in from its neighbours, so the features
must describe the surfaces around them (class colour under the shading, their
extent), and it needs neither augmentations tuned to the data nor negative
pairs or a predictor against collapse, as SimSiam or BYOL do, which at a few
hundred steps on a few dozen images are the fragile part.

A checkpoint (``save_image_encoder``) holds the encoder's channels and state:
what ``load_frozen_image_encoder`` needs to rebuild it.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from occbench.data.batch import Batch
from occbench.training import load_torch, save_torch

IMAGE_ENCODER_KIND = "occbench_image_encoder"  # a checkpoint's "kind": what load_frozen_image_encoder reads
IMAGE_ENCODER_VERSION = 1


def unit_pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) as float (B, 3, H, W) in [0, 1], what every image teacher normalises from."""
    return images.permute(0, 3, 1, 2).float() / 255.0


def pixels(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (B, H, W, 3) as the encoder's input (B, 3, H, W) in [-0.5, 0.5]."""
    return unit_pixels(images) - 0.5


def rows_kept_aspect(height: int, width: int, rows: int | None) -> tuple[int, int]:
    """The size (rows, width) of a height x width image resized to ``rows`` rows keeping its aspect ratio;
    its own size for None."""
    if rows is None:
        return height, width
    return rows, max(1, round(width * rows / height))


def resized(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Float images (B, C, H, W) at ``size`` (bilinear, antialiased when shrinking), once; unchanged at their own."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class ImageEncoder(nn.Module):
    """Images (B, 3, H, W) -> features (B, channels[-1], H / stride, W / stride), stride 2 per stage."""

    def __init__(self, channels: tuple[int, ...]):
        super().__init__()
        self.channels = tuple(channels)
        stages, previous = [], 3
        for width in self.channels:
            stages += [nn.Conv2d(previous, width, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(width),
                       nn.ReLU(inplace=True), nn.Conv2d(width, width, 3, padding=1, bias=False),
                       nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
            previous = width
        self.stages = nn.Sequential(*stages)
        self.stride = 2 ** len(self.channels)
        self.out_channels = self.channels[-1]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.stages(images)

    def image_features(self, images: torch.Tensor, rows: int | None = None) -> torch.Tensor:
        """uint8 images (B, H, W, 3), seen at ``rows`` rows (aspect kept; None: as they are) -> the feature
        map covering each whole image: what OccFeat asks of every image teacher."""
        x = pixels(images)
        return self(resized(x, rows_kept_aspect(*x.shape[2:], rows)))


class MaskedImageModel(nn.Module):
    """The encoder under masked image modelling, trained by ``fit`` on every camera image of a batch."""

    def __init__(self, encoder: ImageEncoder, mask_ratio: float):
        super().__init__()
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.decoder = nn.Conv2d(encoder.out_channels, 3 * encoder.stride ** 2, 1)

    def parameter_groups(self) -> list[dict]:
        return [{"params": list(self.parameters())}]

    def reconstruction_error(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Mean squared error over the masked pixels of images (B, H, W, 3) uint8, patches drawn from
        ``generator``; image sides must be multiples of the encoder's stride (one patch per feature)."""
        stride = self.encoder.stride
        b, h, w, _ = images.shape
        if h % stride or w % stride:
            raise ValueError(f"image teacher: images of {w} x {h} pixels are not whole {stride} x {stride} patches")
        target = pixels(images)
        masked = torch.rand(b, 1, h // stride, w // stride, generator=generator) < self.mask_ratio
        masked = masked.to(images.device).repeat_interleave(stride, 2).repeat_interleave(stride, 3)
        reconstruction = F.pixel_shuffle(self.decoder(self.encoder(target * ~masked)), stride)
        squared = ((reconstruction - target) ** 2).mean(dim=1, keepdim=True)
        return (squared * masked).sum() / masked.sum().clamp_min(1)

    def forward(self, batch: Batch, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, float]]:
        if not batch.cameras:
            raise ValueError(f"image teacher: frames {batch.frame_ids} have no camera images")
        loss = torch.stack([self.reconstruction_error(camera.images, generator)
                            for camera in batch.cameras.values()]).mean()
        return loss, {}

    @torch.no_grad()
    def pretext_metrics(self, batch: Batch, generator: torch.Generator) -> dict[str, float]:
        return {"masked_mse": self(batch, generator)[0].item()}


def save_image_encoder(path: str | os.PathLike, encoder: ImageEncoder, meta: dict[str, Any]) -> None:
    """Write the encoder (atomically) with what rebuilds it and ``meta``."""
    save_torch({"kind": IMAGE_ENCODER_KIND, "version": IMAGE_ENCODER_VERSION, "channels": list(encoder.channels),
                "encoder": encoder.state_dict(), "meta": meta}, path)


def load_frozen_image_encoder(path: str | os.PathLike) -> ImageEncoder:
    """The encoder an image-encoder checkpoint holds, frozen and in eval mode; any other file is refused."""
    checkpoint = load_torch(path, "an image-encoder checkpoint")
    if not isinstance(checkpoint, dict) or checkpoint.get("kind") != IMAGE_ENCODER_KIND \
            or checkpoint.get("version") != IMAGE_ENCODER_VERSION:
        raise ValueError(f"{path}: not an occbench image-encoder checkpoint (version {IMAGE_ENCODER_VERSION})")
    encoder = ImageEncoder(tuple(checkpoint["channels"]))
    encoder.load_state_dict(checkpoint["encoder"])
    return encoder.requires_grad_(False).eval()
