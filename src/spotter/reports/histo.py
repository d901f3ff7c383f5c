"""Histology reports: `explore` looks at a pack of patches, `errors` at a run's mistakes on labelled patches.

Both read the memory-mapped pack (never the TIFFs) in one pass of 1,024-patch chunks, so the 220k Kaggle
patches take about a minute. Each returns a `Report` (numbers, PNG pictures, HTML page).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn import metrics as skm
from tqdm import tqdm

from ..histo.data import PackedSet
from ..histo.preprocess import MEAN, STD
from . import figures
from .figures import CLASS_COLOURS, plt, png
from .html import Page, write_report

CLASS_NAMES = ("normal (0)", "tumour (1)")
CHUNK = 1024
# The background test of slideflow's tile filter (WSInfer and the whole-slide pipeline threshold saturation
# too, with Otsu on a slide thumbnail; a patch set holds too little glass for Otsu, which would then split
# pale from dark stain): a pixel is background when its HSV saturation is under 0.05, and a patch is
# mostly background when under half of its pixels are tissue.
TISSUE_SATURATION = 0.05
BACKGROUND_CUT = 0.5
HED_SAMPLE = 2000  # patches per class whose pixels go into the stain histograms

# Ruifrok & Johnston's stain vectors (as in scikit-image's rgb2hed): haematoxylin, eosin, DAB.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

# An explainer for `errors`: uint8 patches (N, 96, 96, 3) -> heat maps (N, 96, 96) in [0, 1]. The serving
# issue's Grad-CAM will plug in here; without one the grids show the plain patches.
Explainer = Callable[[np.ndarray], np.ndarray]


@dataclass
class Report:
    numbers: dict
    pictures: dict[str, bytes]  # file name -> PNG bytes
    page: Page

    def write(self, out_dir: Path) -> Path:
        return write_report(out_dir, self.page, self.pictures, self.numbers)


# ---------------------------------------------------------------- one pass over the pack

@dataclass
class PackScan:
    """Per-patch statistics of some rows of a pack, and pixel histograms per class."""

    rows: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    mean_rgb: np.ndarray  # (N, 3) mean of each channel, 0-255
    tissue: np.ndarray  # (N,) share of pixels with saturation >= TISSUE_SATURATION
    digests: list[bytes]  # hash of each patch's pixels
    channel_hist: np.ndarray  # (2, 3, 256) pixel counts per class and channel
    hed: dict = field(default_factory=dict)  # stain histograms on a sample: edges and (2, 3, bins) counts

    @property
    def brightness(self) -> np.ndarray:
        return self.mean_rgb.mean(1)


def optical_density_hed(pixels: np.ndarray) -> np.ndarray:
    """Colour deconvolution of uint8 RGB pixels (..., 3) into haematoxylin, eosin, DAB (scikit-image's rgb2hed)."""
    lut = np.log(np.maximum(np.arange(256) / 255, 1e-6)) / np.log(1e-6)
    od = lut[pixels.reshape(-1, 3)].astype(np.float32)
    return np.maximum(od @ HED_FROM_RGB.astype(np.float32), 0).reshape(pixels.shape)


def scan(pack: PackedSet, rows: np.ndarray | None = None, *, hed: bool = True, seed: int = 0,
         progress: bool = True) -> PackScan:
    """One pass over `rows` of the pack (all by default), in sorted order."""
    rows = np.arange(len(pack)) if rows is None else np.sort(np.asarray(rows))
    labels = pack.labels[rows].astype(int)
    n = len(rows)
    mean_rgb = np.empty((n, 3), np.float32)
    tissue = np.empty(n, np.float32)
    digests: list[bytes] = []
    channel_hist = np.zeros((2, 3, 256), np.int64)
    rng = np.random.default_rng(seed)
    hed_pick = np.zeros(n, bool)
    for k in (0, 1):
        members = np.flatnonzero(labels == k)
        hed_pick[rng.choice(members, min(HED_SAMPLE, len(members)), replace=False)] = True
    hed_pixels: list[list[np.ndarray]] = [[], []]
    for start in tqdm(range(0, n, CHUNK), desc="scan patches", unit="chunk", disable=None if progress else True):
        stop = min(start + CHUNK, n)
        chunk = pack.read(rows[start:stop])
        m = stop - start
        mean_rgb[start:stop] = chunk.reshape(m, -1, 3).sum(1, dtype=np.uint32) / (chunk[0].size // 3)
        high, low = chunk.max(-1).astype(np.int32), chunk.min(-1).astype(np.int32)
        # saturation = (max - min) / max, compared without dividing
        tissue[start:stop] = ((high - low) >= TISSUE_SATURATION * high).reshape(m, -1).mean(1)
        digests += [hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in chunk]
        for k in (0, 1):
            of_class = chunk[labels[start:stop] == k]
            for c in range(3):
                channel_hist[k, c] += np.bincount(of_class[..., c].ravel(), minlength=256)
            if hed:
                hed_pixels[k].append(of_class[hed_pick[start:stop][labels[start:stop] == k]])
    result = PackScan(rows, pack.ids[rows], labels, mean_rgb, tissue, digests, channel_hist)
    if hed:
        stains = [optical_density_hed(np.concatenate(p)) if p else np.zeros((0, 96, 96, 3)) for p in hed_pixels]
        values = np.concatenate([s.reshape(-1, 3) for s in stains])
        top = np.quantile(values, 0.995, axis=0) if len(values) else np.ones(3)
        edges = [np.linspace(0, t, 61) for t in top]
        counts = np.array([[np.histogram(s[..., c], edges[c])[0] for c in range(3)] for s in stains])
        result.hed = {"edges": edges, "counts": counts, "patches": [int(hed_pick[labels == k].sum()) for k in (0, 1)]}
    return result


def duplicate_groups(s: PackScan) -> list[np.ndarray]:
    """Positions (into the scan) of patches with identical pixels, one array per group of two or more."""
    by_digest: dict[bytes, list[int]] = {}
    for i, d in enumerate(s.digests):
        by_digest.setdefault(d, []).append(i)
    return [np.array(g) for g in by_digest.values() if len(g) > 1]


# ---------------------------------------------------------------- explore

def explore(pack: PackedSet, *, name: str = "", seed: int = 0, progress: bool = True) -> Report:
    """Counts and balance, sample patches, colour and stain per class, background share, exact duplicates and
    the normalisation statistics of a labelled pack."""
    if not pack.labelled:
        raise ValueError(f"{pack.path}: explore needs labelled patches (train/ with train_labels.csv)")
    s = scan(pack, seed=seed, progress=progress)
    counts = [int((s.labels == k).sum()) for k in (0, 1)]
    pixels_per_class = s.channel_hist.sum(2)[:, 0]
    values = np.arange(256)
    hist = s.channel_hist.sum(0)  # (3, 256) over both classes
    total = hist.sum(1)
    mean = (hist * values).sum(1) / total
    std = np.sqrt((hist * values ** 2).sum(1) / total - mean ** 2)
    tissue = s.tissue
    background = tissue < BACKGROUND_CUT
    groups = duplicate_groups(s)
    conflicting = [g for g in groups if len(set(s.labels[g])) > 1]
    numbers = {
        "patches": len(s.ids), "count": {"0": counts[0], "1": counts[1]}, "positive_share": counts[1] / len(s.ids),
        "normalisation": {"mean": (mean / 255).tolist(), "std": (std / 255).tolist(),
                          "training_constants": {"mean": list(MEAN), "std": list(STD)}},
        "mean_rgb": {str(k): (s.channel_hist[k] * values).sum(1).__truediv__(max(pixels_per_class[k], 1)).tolist()
                     for k in (0, 1)},
        "tissue_saturation_threshold": TISSUE_SATURATION,
        "mostly_background": {str(k): int(background[s.labels == k].sum()) for k in (0, 1)},
        "mostly_background_share": {str(k): float(background[s.labels == k].mean()) if counts[k] else float("nan")
                                    for k in (0, 1)},
        "duplicate_groups": len(groups), "duplicate_patches": int(sum(len(g) for g in groups)),
        "conflicting_groups": [{"ids": s.ids[g].tolist(), "labels": s.labels[g].tolist()} for g in conflicting],
        "stain_sample_patches": s.hed.get("patches"),
    }
    rng = np.random.default_rng(seed)
    pictures = {}
    for k, file in ((0, "samples_normal.png"), (1, "samples_tumour.png")):
        pick = np.sort(rng.choice(np.flatnonzero(s.labels == k), min(16, counts[k]), replace=False))
        pictures[file] = figures.patch_grid(pack.read(s.rows[pick]), [str(i)[:10] for i in s.ids[pick]],
                                            f"random {CLASS_NAMES[k]} patches (box: the labelled centre 32x32)")
    pictures["colour.png"] = _colour_figure(s, numbers["mean_rgb"])
    pictures["stain.png"] = _stain_figure(s.hed)
    pictures["tissue.png"] = _tissue_figure(tissue, s.brightness, s.labels)
    if groups:
        shown = (conflicting + [g for g in groups if len(set(s.labels[g])) == 1])[:8]
        firsts = np.array([g[0] for g in shown])
        pictures["duplicates.png"] = figures.patch_grid(
            pack.read(s.rows[firsts]), [f"x{len(g)}, labels {'/'.join(map(str, sorted(set(s.labels[g]))))}"
                                        for g in shown], "duplicated patches (one copy shown)")

    page = Page(f"Histology data: {name or pack.path.name}",
                f"{len(s.ids):,} labelled patches from the pack {pack.path}")
    sec = page.section("Counts and balance")
    sec.facts({"patches": len(s.ids), CLASS_NAMES[0]: counts[0], CLASS_NAMES[1]: counts[1],
               "tumour share": f"{numbers['positive_share']:.1%}"})
    sec = page.section("Random patches per class")
    sec.text("Label 1 means at least one tumour pixel lies in the centre 32x32 (outlined); the rest is context.")
    sec.image(pictures["samples_normal.png"], "random normal patches")
    sec.image(pictures["samples_tumour.png"], "random tumour patches")
    sec = page.section("Colour per class")
    sec.image(pictures["colour.png"], "RGB histograms per class")
    sec.text(f"Stain (colour deconvolution into haematoxylin, eosin and DAB, Ruifrok & Johnston) on "
             f"{HED_SAMPLE:,} random patches per class at most.")
    sec.image(pictures["stain.png"], "stain histograms per class")
    sec = page.section("Background")
    sec.text(f"A pixel is tissue when its HSV saturation is at least {TISSUE_SATURATION} (glass is bright and "
             f"grey, stain is coloured); a patch is mostly background when under {BACKGROUND_CUT:.0%} of it is tissue.")
    sec.facts({f"{CLASS_NAMES[k]} mostly background": f"{numbers['mostly_background'][str(k)]:,} "
               f"({numbers['mostly_background_share'][str(k)]:.1%})" for k in (0, 1)})
    sec.image(pictures["tissue.png"], "tissue share and brightness per class")
    sec = page.section("Exact duplicates (identical pixels)")
    sec.facts({"duplicate groups": len(groups), "patches in them": numbers["duplicate_patches"],
               "groups with both labels": len(conflicting)})
    sec.table(pd.DataFrame([{"ids": ", ".join(s.ids[g]), "labels": ", ".join(map(str, s.labels[g]))}
                            for g in (conflicting + groups)[:20]]), empty="No two patches have identical pixels.")
    if "duplicates.png" in pictures:
        sec.image(pictures["duplicates.png"], "duplicated patches")
    sec = page.section("Normalisation statistics")
    sec.text("Per-channel mean and standard deviation of all pixels in [0, 1], beside the constants training uses.")
    sec.table(pd.DataFrame({"channel": ["red", "green", "blue"], "mean": numbers["normalisation"]["mean"],
                            "std": numbers["normalisation"]["std"], "training mean": list(MEAN),
                            "training std": list(STD)}))
    return Report(numbers, pictures, page)


def _class_lines(ax, x, counts_by_class, **style):
    for k in (0, 1):
        density = counts_by_class[k] / max(counts_by_class[k].sum(), 1)
        ax.plot(x, density, color=CLASS_COLOURS[k], label=CLASS_NAMES[k], **style)


def _colour_figure(s: PackScan, mean_rgb: dict) -> bytes:
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), width_ratios=[3, 3, 3, 1.3])
    for c, (ax, channel) in enumerate(zip(axes, ("red", "green", "blue"))):
        _class_lines(ax, np.arange(256), s.channel_hist[:, c], lw=1.3)
        # Saturated white (255) can be a tall spike; the axis is scaled to the rest so the curves stay readable.
        shares = s.channel_hist[:, c] / np.maximum(s.channel_hist[:, c].sum(1, keepdims=True), 1)
        ax.set(title=f"{channel} channel", xlabel="pixel value", xlim=(0, 255), ylim=(0, 1.1 * shares[:, :255].max()))
        ax.set_yticks([])
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of pixels")
    axes[0].legend(loc="upper left")
    swatch = axes[3]
    for k in (0, 1):
        colour = np.clip(np.array(mean_rgb[str(k)]) / 255, 0, 1)
        swatch.add_patch(plt.Rectangle((0, 1 - k), 1, 0.9, color=colour))
        swatch.text(0.5, 1.45 - k, CLASS_NAMES[k], ha="center", va="center", fontsize=9)
    swatch.set(xlim=(0, 1), ylim=(-0.05, 2), title="mean colour")
    swatch.axis("off")
    fig.tight_layout()
    return png(fig)


def _stain_figure(hed: dict) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for c, (ax, stain) in enumerate(zip(axes, ("haematoxylin (nuclei)", "eosin (cytoplasm, stroma)", "DAB"))):
        edges = hed["edges"][c]
        _class_lines(ax, (edges[:-1] + edges[1:]) / 2, hed["counts"][:, c], lw=1.3)
        ax.set(title=stain, xlabel="optical density", yscale="log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("share of pixels (log scale)")
    axes[0].legend()
    fig.tight_layout()
    return png(fig)


def _tissue_figure(tissue: np.ndarray, brightness: np.ndarray, labels: np.ndarray) -> bytes:
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 3.4))
    for ax, values, edges, title, xlabel in (
            (a, tissue, np.linspace(0, 1, 26), "tissue share per patch", "share of pixels that are tissue"),
            (b, brightness, np.linspace(0, 255, 52), "brightness per patch", "mean pixel value (0-255)")):
        for k in (0, 1):
            ax.hist(values[labels == k], edges, color=CLASS_COLOURS[k], alpha=0.55, label=CLASS_NAMES[k],
                    weights=np.full((labels == k).sum(), 1 / max((labels == k).sum(), 1)))
        ax.set(title=title, xlabel=xlabel, ylabel="share of the class's patches")
        ax.grid(alpha=0.3)
    a.axvline(BACKGROUND_CUT, color="k", ls="--", lw=1)
    a.text(BACKGROUND_CUT - 0.02, a.get_ylim()[1] * 0.5, "mostly\nbackground", ha="right", va="center", fontsize=9)
    a.legend(loc="upper left")
    fig.tight_layout()
    return png(fig)
