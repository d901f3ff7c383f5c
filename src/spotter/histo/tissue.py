"""Tissue detection on a slide thumbnail: where patches are worth scoring.

It errs towards tissue: a tumour patch left unscored is a silent miss, while a glass patch scored only costs
time. A thumbnail pixel is tissue when it is stained (HSV saturation above Otsu's threshold, clamped to
20..30 of 255: a slide of pure background must not split its noise in two, nor a biopsy filling the field
its tissue) or clearly darker than the slide's glass (cell-dense tissue stained grey or blue is not very
saturated, but it is never as bright as glass). Then a light median blur against dust and noise, a closing
that joins tissue across gaps up to about a fat cell's width (fat is tissue, and tumour grows into it), and
objects and holes below a size in µm² removed or filled. Sizes are physical, so the mask does not depend on
the thumbnail's scale.

The numbers (blur, closing, sizes, darkness) were chosen on mosaics of the 6,832 shared labelled Kaggle
patches: with them no tumour patch goes unscored (docs/slides.md has the measurements).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_SATURATION = 20  # of 255: below this nothing is stained, whatever Otsu says
MAX_SATURATION = 30  # above this everything is stained: Otsu on a field full of tissue would split the tissue
DARKER_THAN_GLASS = 20  # grey levels (of 255) below the glass's brightness that make a pixel tissue
BLACK = 25  # grey level under which a pixel is scanner fill or pen, not tissue
GLASS_PERCENTILE = 99  # the glass's brightness: this percentile of the thumbnail's grey levels
BLUR_UM = 4.0  # median filter width: removes noise, keeps fat's thin membranes
CLOSING_UM = 40.0  # joins tissue across gaps narrower than this (fat cells, tears)
MIN_OBJECT_UM2 = 500.0  # about a 22 µm square, a few cells: smaller specks are dust or noise
MAX_HOLE_UM2 = 40_000.0  # holes smaller than this (about 200 µm across: a patch is 93 µm) are filled
MASK_UM = 4.0  # finest pixel the mask is computed at: finer buys nothing and slows the median filter


def saturation(rgb: np.ndarray) -> np.ndarray:
    """HSV saturation scaled to 0..255 (uint8)."""
    rgb = rgb.astype(np.int32)  # (max - min) * 255 overflows int16
    top, bottom = rgb.max(axis=-1), rgb.min(axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sat = np.where(top > 0, (top - bottom) * 255 // np.maximum(top, 1), 0)
    return sat.astype(np.uint8)


def otsu(values: np.ndarray) -> int:
    """Otsu's threshold of uint8 values: the cut maximising the between-class variance."""
    hist = np.bincount(values.ravel(), minlength=256).astype(np.float64)
    weight = np.cumsum(hist)
    mean = np.cumsum(hist * np.arange(256))
    total, total_mean = weight[-1], mean[-1]
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (total_mean * weight - mean * total) ** 2 / (weight * (total - weight))
    return int(np.nanargmax(np.nan_to_num(between[:-1], nan=-1)))


def tissue_mask(rgb: np.ndarray, um_per_px: float) -> np.ndarray:
    """Boolean tissue mask of a thumbnail whose pixels are `um_per_px` µm wide."""
    factor = int(MASK_UM // um_per_px)
    if factor >= 2:  # compute on block means at about MASK_UM, then give each pixel its block's answer
        h, w = -(-rgb.shape[0] // factor) * factor, -(-rgb.shape[1] // factor) * factor
        padded = np.pad(rgb, ((0, h - rgb.shape[0]), (0, w - rgb.shape[1]), (0, 0)), mode="edge")
        small = padded.reshape(h // factor, factor, w // factor, factor, 3).mean(axis=(1, 3)).astype(np.uint8)
        coarse = tissue_mask(small, um_per_px * factor)
        return coarse.repeat(factor, axis=0).repeat(factor, axis=1)[:rgb.shape[0], :rgb.shape[1]]
    blur = max(1, int(round(BLUR_UM / um_per_px)) | 1)
    sat = ndimage.median_filter(saturation(rgb), size=blur)
    grey = ndimage.median_filter(rgb.mean(axis=-1).astype(np.uint8), size=blur)
    glass = np.percentile(grey, GLASS_PERCENTILE)
    stained = sat > min(max(otsu(sat), MIN_SATURATION), MAX_SATURATION)
    mask = (stained | (grey < glass - DARKER_THAN_GLASS)) & (grey >= BLACK)
    radius = int(round(CLOSING_UM / um_per_px / 2))
    if radius >= 1:
        disk = _disk(radius)
        # pad so the closing does not erode tissue that touches the thumbnail's edge
        mask = ndimage.binary_closing(np.pad(mask, radius), structure=disk)[radius:-radius, radius:-radius]
    px_area = um_per_px ** 2
    mask = _drop_small(mask, MIN_OBJECT_UM2 / px_area)
    holes = ndimage.binary_fill_holes(mask) & ~mask
    return mask | (holes & ~_drop_small(holes, MAX_HOLE_UM2 / px_area))


def _disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius:radius + 1, -radius:radius + 1]
    return x * x + y * y <= radius * radius


def _drop_small(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    """`mask` without its 8-connected components smaller than `min_pixels`."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3), bool))
    if n == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    keep = sizes >= min_pixels
    keep[0] = False
    return keep[labels]
