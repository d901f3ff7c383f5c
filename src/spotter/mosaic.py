"""Slides with known answers, for tests and the benchmark: real Kaggle patches laid out as a mosaic on a
white background and written as a tiled pyramidal TIFF (level 0 at half the patches' µm/px, then
halvings), and a large synthetic slide generated tile by tile so it never sits in memory.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .histo import slide, wsi
from .histo.settings import KAGGLE_MPP as PATCH_MPP
from .histo.tiff import PATCH_SIZE, read_patch


def read_patches(folder: Path, ids: list[str]) -> np.ndarray:
    return np.stack([read_patch(Path(folder) / f"{i}.tif") for i in ids])


def mosaic_image(patches: np.ndarray, rows: int, cols: int, margin: int) -> np.ndarray:
    """The patches (row-major) on a white canvas at their own resolution, `margin` pixels of white around."""
    p = PATCH_SIZE
    canvas = np.full((rows * p + 2 * margin, cols * p + 2 * margin, 3), wsi.WHITE, np.uint8)
    for k, patch in enumerate(patches[:rows * cols]):
        r, c = divmod(k, cols)
        canvas[margin + r * p:margin + (r + 1) * p, margin + c * p:margin + (c + 1) * p] = patch
    return canvas


def write_mosaic(path: Path, image: np.ndarray, *, upsample: int = 2, mpp: float | None = PATCH_MPP / 2,
                 compression: str = "deflate") -> None:
    """Write `image` (at the patches' 0.972 µm/px) as a pyramid whose level 0 is `upsample` times finer
    (pixel repetition), so level log2(upsample) holds the patches' exact pixels. `mpp=None` writes no
    resolution (the file then does not say its µm/px)."""
    source_at_patch_res = wsi.array_source(image)

    def source(scale: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        if scale >= upsample:
            return source_at_patch_res(scale // upsample, x, y, w, h)
        k = upsample // scale  # level pixels per patch pixel
        coarse = source_at_patch_res(1, x // k, y // k, w // k + 2, h // k + 2)
        fine = coarse.repeat(k, axis=0).repeat(k, axis=1)
        return fine[y % k:y % k + h, x % k:x % k + w]

    height, width = image.shape[0] * upsample, image.shape[1] * upsample
    wsi.write_pyramid(path, width, height, source, mpp or 1.0, compression=compression,
                      resolution=mpp is not None)


def synthetic_slide(path: Path, patches: np.ndarray, side: int, mpp: float = 0.25, *, tissue: float = 0.3,
                    compression: str = "jpeg") -> None:
    """A `side` x `side` slide at `mpp` µm/px (40x by default) whose tissue, a disc covering about `tissue`
    of it, is real patches tiled over it (resampled to `mpp`); the rest white. Written tile by tile."""
    scale_to_slide = PATCH_MPP / mpp  # slide pixels per patch pixel
    tile_pixels = len(patches) * PATCH_SIZE
    strip = np.concatenate(list(patches), axis=1)  # (96, n*96, 3): textures to repeat
    radius = side * np.sqrt(tissue / np.pi)

    def source(scale: int, x: int, y: int, w: int, h: int) -> np.ndarray:
        ys = (np.arange(y, y + h) + 0.5) * scale
        xs = (np.arange(x, x + w) + 0.5) * scale
        inside = (ys[:, None] - side / 2) ** 2 + (xs[None, :] - side / 2) ** 2 <= radius ** 2
        out = np.full((h, w, 3), wsi.WHITE, np.uint8)
        if inside.any():
            py = (ys / scale_to_slide).astype(np.int64) % PATCH_SIZE
            px = ((xs / scale_to_slide).astype(np.int64) + (ys[:, None] // (scale_to_slide * PATCH_SIZE)).astype(
                np.int64) * 7 * PATCH_SIZE) % tile_pixels
            texture = strip[py[:, None], px]
            out[inside] = texture[inside]
        return out

    wsi.write_pyramid(path, side, side, source, mpp, compression=compression, tile=512)


def scored_patches(patches: np.ndarray, cols: int, stride: int, *, margin: int = 2 * PATCH_SIZE,
                   tissue_threshold: float = 0.0, tissue_mask: bool = True) -> np.ndarray:
    """Which patches of a mosaic (row-major, `cols` a row, `margin` pixels of white around) `histo slide`
    would score as themselves at `stride`: the patch it cuts for the cell of their labelled centre is
    exactly theirs. The mosaic is a slide at the patches' own µm/px held in memory; the thumbnail, mask and
    patch choice are `histo slide`'s own."""
    rows = -(-len(patches) // cols)
    source = wsi.from_array(mosaic_image(patches, rows, cols, margin), PATCH_MPP)
    grid = slide.make_grid(source, PATCH_MPP, stride)
    first = (margin - grid.offset) / stride  # patch index of the mosaic's first patch
    step = PATCH_SIZE / stride
    if first != int(first) or step != int(step):
        raise ValueError(f"margin {margin} and stride {stride}: the mosaic's patches are not on the grid")
    *_, scored = slide.find_tissue(source, grid, threshold=tissue_threshold, use_mask=tissue_mask)
    k = np.arange(len(patches))
    return scored[int(first) + k // cols * int(step), int(first) + k % cols * int(step)]
