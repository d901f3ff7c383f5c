"""The one preprocessing path for histology, used by train, evaluate and predict alike.

Pixels travel as uint8 NHWC (as packed) to the device; there they are cropped, scaled to [0, 1],
augmented (training only) and normalised. NHWC permuted to NCHW is already channels_last in memory, so
the convolutions get their fast layout for free.
"""
from __future__ import annotations

import torch

# Channel statistics of Kaggle's training patches (H&E is pink-purple, far from ImageNet's means).
MEAN = (0.702, 0.546, 0.696)
STD = (0.239, 0.282, 0.216)


def crop_offsets(batch: int, size: int, crop: int, jitter: int, generator: torch.Generator | None,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners of a centre crop, moved by up to `jitter` pixels each way (training only)."""
    centre = (size - crop) // 2
    if jitter == 0 or generator is None:
        zero = torch.full((batch,), centre, dtype=torch.long, device=device)
        return zero, zero
    jitter = min(jitter, centre)
    dy = torch.randint(-jitter, jitter + 1, (batch,), generator=generator, device=generator.device)
    dx = torch.randint(-jitter, jitter + 1, (batch,), generator=generator, device=generator.device)
    return (centre + dy).to(device), (centre + dx).to(device)


def preprocess(pixels: torch.Tensor, crop: int, *, augment: "Augment | None" = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> normalised float (N, 3, crop, crop), channels_last."""
    n, size = pixels.shape[0], pixels.shape[1]
    if crop < size:
        jitter = augment.crop_jitter if augment else 0
        top, left = crop_offsets(n, size, crop, jitter, generator, pixels.device)
        if jitter == 0 or generator is None:
            pixels = pixels[:, top[0]:top[0] + crop, left[0]:left[0] + crop]
        else:
            steps = torch.arange(crop, device=pixels.device)
            rows = (top[:, None] + steps)[:, :, None]
            cols = (left[:, None] + steps)[:, None, :]
            pixels = pixels[torch.arange(n, device=pixels.device)[:, None, None], rows, cols]
    x = pixels.permute(0, 3, 1, 2).float().div_(255)
    if augment is not None:
        x = augment(x, generator)
    mean = torch.tensor(MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


class Augment:
    """Histology augmentation on whole batches: the 8 dihedral symmetries (tissue has no up or left),
    small crop shifts, and mild stain variation (per-image brightness, contrast and per-channel gain)."""

    def __init__(self, crop_jitter: int = 8, colour: float = 0.1):
        self.crop_jitter = crop_jitter
        self.colour = colour

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        n = x.shape[0]

        def uniform(*shape: int) -> torch.Tensor:
            return torch.rand(*shape, generator=generator, device=generator.device if generator else None).to(x.device)

        flips = uniform(3, n, 1, 1, 1) < 0.5
        x = torch.where(flips[0], x.flip(2), x)
        x = torch.where(flips[1], x.flip(3), x)
        x = torch.where(flips[2], x.transpose(2, 3), x)
        if self.colour:
            c = self.colour
            gain = 1 + c * (2 * uniform(n, 3, 1, 1) - 1)  # stain strength per channel
            contrast = 1 + c * (2 * uniform(n, 1, 1, 1) - 1)
            brightness = c / 2 * (2 * uniform(n, 1, 1, 1) - 1)
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = ((x * gain - mean) * contrast + mean + brightness).clamp_(0, 1)
        return x


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations and reflections of a square batch, for test-time augmentation."""
    views = []
    for t in (x, x.transpose(2, 3)):
        for k in range(4):
            views.append(torch.rot90(t, k, dims=(2, 3)).contiguous(memory_format=torch.channels_last))
    return views
