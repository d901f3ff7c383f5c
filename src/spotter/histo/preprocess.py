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
    """uint8 (N, H, W, 3) -> normalised float (N, 3, crop, crop), channels_last.

    Geometry is done on the uint8 pixels (a quarter of the bytes of floats); scaling to [0, 1], stain
    jitter and normalisation are then one per-image, per-channel affine map applied in a single pass.
    """
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
    mean = torch.tensor(MEAN, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=pixels.device).view(1, 3, 1, 1)
    scale, shift = 1 / 255, torch.zeros(1, 3, 1, 1, device=pixels.device)
    if augment is not None:
        pixels = augment.dihedral(pixels, generator)
        gain, offset = augment.stain(n, generator, pixels.device)
        scale, shift = gain / 255, offset
    # NHWC permuted is NCHW in channels_last layout; .float() keeps that layout.
    x = pixels.permute(0, 3, 1, 2).float()
    return x.mul_(scale / std).add_((shift - mean) / std)


class Augment:
    """Histology augmentation on whole batches: the 8 dihedral symmetries (tissue has no up or left),
    small crop shifts (when cropping), and mild stain variation: per-image brightness and contrast and
    per-channel gain, around the data's mean colour."""

    def __init__(self, crop_jitter: int = 8, colour: float = 0.1):
        self.crop_jitter = crop_jitter
        self.colour = colour

    @staticmethod
    def _uniform(generator: torch.Generator | None, device: torch.device, *shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=generator, device=generator.device if generator else None).to(device)

    def dihedral(self, pixels: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """A random one of the 8 symmetries per image, on uint8 NHWC pixels."""
        flips = self._uniform(generator, pixels.device, 3, pixels.shape[0]) < 0.5
        pixels = pixels.clone()
        for mask, transform in zip(flips, (lambda p: p.flip(1), lambda p: p.flip(2), lambda p: p.transpose(1, 2))):
            if mask.any():
                pixels[mask] = transform(pixels[mask])
        return pixels

    def stain(self, n: int, generator: torch.Generator | None, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image, per-channel (gain, offset) so that x' = gain * x + offset with x in [0, 1]."""
        c = self.colour
        rand = self._uniform(generator, device, n, 5, 1, 1) * 2 - 1
        channel_gain, contrast, brightness = 1 + c * rand[:, :3], 1 + c * rand[:, 3:4], c / 2 * rand[:, 4:5]
        centre = torch.tensor(MEAN, device=device).view(1, 3, 1, 1)
        # contrast around the mean colour: (g*x - m) * k + m + b
        return channel_gain * contrast, centre * (1 - contrast) + brightness


def dihedral_views(x: torch.Tensor) -> list[torch.Tensor]:
    """The 8 rotations and reflections of a square batch, for test-time augmentation."""
    views = []
    for t in (x, x.transpose(2, 3)):
        for k in range(4):
            views.append(torch.rot90(t, k, dims=(2, 3)).contiguous(memory_format=torch.channels_last))
    return views
