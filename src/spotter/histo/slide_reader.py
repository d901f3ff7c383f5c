"""Reading a slide for `histo slide`: blocks of the patch grid, read and resampled in background workers,
and the seconds each stage of reading and scoring took (`slide.json`'s `stages`).

Each worker opens the slide itself and times its own work (decoding the level's tiles, resampling), which
travels back with the block; the main process times the rest (waiting for a block, copying patches into
batches and probabilities into the grid, the model), so a user sees which stage bounds a slide's speed.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import wsi

PATCH = 96  # model input, in model pixels
BLOCK = 2048  # model pixels a side read at once


@dataclass(frozen=True)
class Block:
    """Patches [i0, i1) x [j0, j1) and the model-pixel region (y, x, height, width) that holds them."""

    i0: int
    i1: int
    j0: int
    j1: int
    y: int
    x: int
    height: int
    width: int


def make_blocks(stride: int, offset: int, patch_rows: int, patch_cols: int, scored: np.ndarray) -> list[Block]:
    """Blocks of about BLOCK model pixels a side that hold at least one patch to score."""
    n = max(1, BLOCK // stride)
    blocks = []
    for i0 in range(0, patch_rows, n):
        for j0 in range(0, patch_cols, n):
            i1, j1 = min(i0 + n, patch_rows), min(j0 + n, patch_cols)
            if scored[i0:i1, j0:j1].any():
                blocks.append(Block(i0, i1, j0, j1, i0 * stride + offset, j0 * stride + offset,
                                    (i1 - i0 - 1) * stride + PATCH, (j1 - j0 - 1) * stride + PATCH))
    return blocks


@dataclass
class Stages:
    """Seconds per stage of reading and scoring a slide. `decode` and `resample` are the reading workers'
    own seconds, summed over workers (with workers they overlap the main process's time; with `--workers 0`
    they are part of it); `copy`, `infer` and `waiting` are the main process's, and add up to its time."""

    decode: float = 0.0  # reading the level's tiles, their decompression (JPEG, deflate) included
    resample: float = 0.0  # Pillow resizing a region to the model's resolution (0 when a level matches)
    copy: float = 0.0  # cutting patches into batches, adding their probabilities to the grid
    infer: float = 0.0  # the model: preprocessing, forward pass, probabilities
    waiting: float = 0.0  # the main process waiting for the reader's next block

    def record(self) -> dict[str, float]:
        return {f.name: round(getattr(self, f.name), 3) for f in fields(self)}


class RegionReader(torch.utils.data.Dataset):
    """Block k -> (k, its region as uint8 (H, W, 3) at the model's resolution, error or "", (decode s,
    resample s)).

    Each worker process opens the slide itself on first use. A region is read from `level` over the
    exact span of level pixels it covers and resampled with Pillow (box filter when shrinking, which
    averages every source pixel once; bilinear when enlarging), with fractional source edges, so
    every block lands exactly where the grid says.
    """

    def __init__(self, path: Path, mpp: float | None, level: int, level_per_model: float, blocks: list[Block]):
        self.path, self.mpp, self.level, self.q, self.blocks = path, mpp, level, level_per_model, blocks
        self._slide: wsi.Slide | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, k: int):
        try:
            region, seconds = self.read(self.blocks[k])
            return k, region, "", seconds
        except wsi.SlideError as err:
            return k, np.zeros((0, 0, 3), np.uint8), str(err), (0.0, 0.0)

    def read(self, b: Block) -> tuple[np.ndarray, tuple[float, float]]:
        """The block's region and the seconds spent (decoding, resampling) on it."""
        start = time.perf_counter()
        if self._slide is None:
            self._slide = wsi.open_slide(self.path, self.mpp)
        q = self.q
        if abs(q - 1) < 1e-9:
            region = self._slide.read(self.level, b.x, b.y, b.width, b.height)
            return region, (time.perf_counter() - start, 0.0)
        x0, y0, x1, y1 = b.x * q, b.y * q, (b.x + b.width) * q, (b.y + b.height) * q
        left, top = int(np.floor(x0)), int(np.floor(y0))
        right, bottom = int(np.ceil(x1)), int(np.ceil(y1))
        pixels = self._slide.read(self.level, left, top, right - left, bottom - top)
        decoded = time.perf_counter()
        image = Image.fromarray(pixels).resize((b.width, b.height), Image.BOX if q >= 1 else Image.BILINEAR,
                                               box=(x0 - left, y0 - top, x1 - left, y1 - top))
        region = np.array(image)  # writable, as torch wants it
        return region, (decoded - start, time.perf_counter() - decoded)
