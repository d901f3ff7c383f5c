"""Histopathology CNNs, by name. Each takes a normalised NCHW float batch and returns one logit per image."""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .preprocess import MEAN, STD


class SeedCNN(nn.Module):
    """The original write-up's Keras CNN (37,569 parameters), kept as the baseline to beat.

    Conv(8)/Conv(32)/Conv(64), each 3x3 stride 2 with 'valid' padding, max-pools after the first two,
    then Dense(64) and Dense(1): 96 -> 47 -> 23 -> 11 -> 5 -> 2, so 2*2*64 = 256 features.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 32, 3, stride=2), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, stride=2), nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(256, 64), nn.ReLU(), nn.Linear(64, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x)).squeeze(1)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        # Zero-init the last BN so each block starts as identity: trains faster from scratch.
        nn.init.zeros_(self.bn2.weight)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(nn.Module):
    """A small ResNet for 96x96 patches: a strided stem, one BasicBlock stage per width, global pooling."""

    def __init__(self, widths: tuple[int, ...] = (32, 64, 128, 256), depths: tuple[int, ...] = (1, 1, 1, 1),
                 stem_stride: int = 2, stem_pool: bool = False, dropout: float = 0.0):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(), *([nn.MaxPool2d(2)] if stem_pool else []))
        layers, c_in = [], widths[0]
        for i, (width, depth) in enumerate(zip(widths, depths)):
            for j in range(depth):
                layers.append(BasicBlock(c_in, width, stride=2 if (i > 0 and j == 0) else 1))
                c_in = width
        self.stages = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(c_in, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x))).squeeze(1)


# ---------------------------------------------------------------- EfficientNet-Lite0/1/2, pretrained on ImageNet

# (repeats, kernel, stride, expansion, output channels) of each stage, as the packaged weights have them.
# Lite1 and Lite2 are Lite0 made deeper (and Lite2 wider); all keep the 32-channel stem and 1280-channel head.
LITE_STAGES = {
    "lite0": ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
              (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "lite1": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 40), (4, 3, 2, 6, 80),
              (4, 5, 1, 6, 112), (5, 5, 2, 6, 192), (1, 3, 1, 6, 320)),
    "lite2": ((1, 3, 1, 1, 16), (3, 3, 2, 6, 24), (3, 5, 2, 6, 48), (4, 3, 2, 6, 88),
              (4, 5, 1, 6, 120), (5, 5, 2, 6, 208), (1, 3, 1, 6, 352)),
}


class SameConv(nn.Conv2d):
    """Bias-free convolution with TensorFlow's 'same' padding, which the weights were trained with:
    a strided convolution pads more on the bottom and right than on the top and left."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__(c_in, c_out, kernel, stride, padding=kernel // 2 if stride == 1 else 0, groups=groups,
                         bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride[0] > 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):
                total = max((math.ceil(size / self.stride[0]) - 1) * self.stride[0] + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            x = F.pad(x, pads)
        return super().forward(x)


def _bn(channels: int) -> nn.BatchNorm2d:
    # TF's epsilon, as pretrained; PyTorch's momentum (0.1) so the statistics adapt to H&E within an epoch.
    return nn.BatchNorm2d(channels, eps=1e-3)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expansion, depthwise conv, 1x1 projection; ReLU6 and no squeeze-excite (Lite)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expansion: int, drop_path: float):
        super().__init__()
        mid = c_in * expansion
        if expansion != 1:
            self._expand_conv = SameConv(c_in, mid, 1)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv(mid, c_out, 1)
        self._bn2 = _bn(c_out)
        self.residual = stride == 1 and c_in == c_out
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if hasattr(self, "_expand_conv"):
            out = F.relu6(self._bn0(self._expand_conv(out)))
        out = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(out)))))
        if not self.residual:
            return out
        if self.training and self.drop_path > 0:  # stochastic depth, per image
            keep = torch.rand(x.shape[0], 1, 1, 1, device=x.device) >= self.drop_path
            out = out * keep / (1 - self.drop_path)
        return out + x


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite with the parameter names of `efficientnet_pytorch`, so the packaged ImageNet
    weights load with strict checking. Inputs are normalised to [-1, 1] (`NORMALISATION` below).

    With `input_size` the model first resizes its input to that many pixels a side (bilinear): the ImageNet
    weights learnt their filters on 224-px images, and at 96 px the last stage sees a 3x3 map."""

    def __init__(self, variant: str = "lite0", classes: int = 1, dropout: float = 0.2, drop_path: float = 0.2,
                 input_size: int | None = None):
        super().__init__()
        self.input_size = input_size
        self._conv_stem = SameConv(3, 32, 3, 2)
        self._bn0 = _bn(32)
        stages = LITE_STAGES[variant]
        total = sum(stage[0] for stage in stages)
        blocks, c_in = [], 32
        for repeats, kernel, stride, expansion, c_out in stages:
            for i in range(repeats):
                blocks.append(MBConv(c_in, c_out, kernel, stride if i == 0 else 1, expansion,
                                     drop_path * len(blocks) / total))
                c_in = c_out
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv(c_in, 1280, 1)
        self._bn1 = _bn(1280)
        self._features = nn.ReLU6()  # a module, so Grad-CAM can hook the features the head pools
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(1280, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_size is not None:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = self._features(self._bn1(self._conv_head(x))).mean((2, 3))
        out = self._fc(self._dropout(x))
        return out.squeeze(1) if out.shape[1] == 1 else out

    def lr_scales(self) -> dict[str, float]:
        """Discriminative learning rates: the new head learns 10x faster than the pretrained body."""
        return {"_fc.": 10.0}


def efficientnet_lite(variant: str, pretrained: bool = True, input_size: int | None = None) -> EfficientNetLite:
    model = EfficientNetLite(variant, input_size=input_size)
    if pretrained:
        from ..pretrained import efficientnet_lite_file

        imagenet = EfficientNetLite(variant, classes=1000)
        state = torch.load(efficientnet_lite_file(variant), map_location="cpu", weights_only=True)
        imagenet.load_state_dict(state, strict=True)  # every key and shape must match
        model.load_state_dict({k: v for k, v in imagenet.state_dict().items() if not k.startswith("_fc.")},
                              strict=False)
    return model


MODELS: dict[str, Callable[[bool], nn.Module]] = {
    "seed": lambda pretrained: SeedCNN(),
    # The from-scratch default (histo.task.SCRATCH_DEFAULT): stride-2 stem, no max-pool, so stage 1 runs at 48x48.
    "resnet-plain": lambda pretrained: ResNet(stem_pool=False),
    # The default before: a max-pool after the stem does a quarter of the work per image, and needs the epochs
    # that buys (README "Histology recipes"); two blocks per stage (2x the work) scored lower in 6 minutes.
    "resnet": lambda pretrained: ResNet(stem_pool=True),
    "resnet-deep": lambda pretrained: ResNet(stem_pool=True, depths=(2, 2, 2, 2)),
    "effnet-lite0": lambda pretrained: efficientnet_lite("lite0", pretrained),
    "effnet-lite1": lambda pretrained: efficientnet_lite("lite1", pretrained),
    "effnet-lite2": lambda pretrained: efficientnet_lite("lite2", pretrained),
    # Lite0 on patches enlarged to 128 px: 1.8x the pixels, 2.3x the training time, lower in 15 minutes (README)
    "effnet-lite0-128": lambda pretrained: efficientnet_lite("lite0", pretrained, 128),
}
PRETRAINED = ("effnet-lite0", "effnet-lite1", "effnet-lite2", "effnet-lite0-128")

# Input normalisation (mean, std per channel, on [0, 1] pixels): the data's own for models trained here,
# the pretraining's for pretrained ones. EfficientNet-Lite was trained on (x - 127) / 128: with it the stem's
# activations on real patches match its BatchNorm's running statistics (tests/test_pretrained.py).
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    name: ((127 / 255,) * 3, (128 / 255,) * 3) for name in PRETRAINED}


def create_model(name: str, pretrained: bool = True) -> nn.Module:
    """A fresh model; `pretrained=False` skips loading ImageNet weights (a checkpoint will replace them)."""
    if name not in MODELS:
        raise ValueError(f"unknown histology model {name!r}; choose one of: {', '.join(MODELS)}")
    return MODELS[name](pretrained)


def normalisation(name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    return NORMALISATION.get(name, (MEAN, STD))


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
