"""Tissue detection on a slide thumbnail: where patches are worth scoring.

The recipe WSInfer and slideflow converge on: H&E-stained tissue is saturated, glass and background are
not. Saturation, a median blur against dust and noise, Otsu's threshold (clamped to 20..30 of 255: a
slide of pure background must not split its noise in two, nor a biopsy filling the field its tissue), a closing to join tissue across thin gaps, then
objects and holes below a size in µm² removed. Sizes are physical, so the mask does not depend on the
thumbnail's scale.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

MIN_SATURATION = 20  # of 255: below this nothing is stained, whatever Otsu says
MAX_SATURATION = 30  # above this everything is stained: Otsu on a field full of tissue would split the tissue
BLUR_UM = 15.0  # median filter width
CLOSING_UM = 20.0  # joins tissue across gaps narrower than this
MIN_OBJECT_UM2 = 20_000.0  # about a 140 µm square: smaller specks are dust or debris
MAX_HOLE_UM2 = 10_000.0  # holes smaller than this (about 100 µm across) are filled
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
    sat = saturation(rgb)
    blur = max(1, int(round(BLUR_UM / um_per_px)) | 1)
    sat = ndimage.median_filter(sat, size=blur)
    mask = sat > min(max(otsu(sat), MIN_SATURATION), MAX_SATURATION)
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
