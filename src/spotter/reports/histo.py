"""Histology reports: `explore` looks at a pack of patches, `errors` at a run's mistakes on labelled patches.

Both read the memory-mapped pack (never the TIFFs) in one pass of 1,024-patch chunks, so the 220k Kaggle
patches take about a minute. Each returns a `Report` (numbers, PNG pictures, HTML page).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from matplotlib.ticker import NullFormatter
from sklearn import metrics as skm
from tqdm import tqdm

from ..errors import BadInput
from ..explain import CAM_SCALE
from ..histo.data import PackedSet, pack_folder
from ..histo.predictor import load_run
from ..histo.preprocess import MEAN, STD
from ..histo.task import validation_rows
from . import figures
from .common import Report, confident_mistakes
from .figures import CLASS_COLOURS, plt, png
from .html import Page

CLASS_NAMES = ("normal (0)", "tumour (1)")
CHUNK = 1024
# The background test of slideflow's tile filter (WSInfer and the whole-slide pipeline threshold saturation
# too, with Otsu on a slide thumbnail; a patch set holds too little glass for Otsu, which would then split
# pale from dark stain): a pixel is background when its HSV saturation is under 0.05, and a patch is
# mostly background when under half of its pixels are tissue.
TISSUE_SATURATION = 0.05
BACKGROUND_CUT = 0.5
SAMPLE = 2000  # patches per class whose pixels go into the colour and stain histograms
PATCH_PIXELS = 96 * 96

# Ruifrok & Johnston's stain vectors (as in scikit-image's rgb2hed): haematoxylin, eosin, DAB.
RGB_FROM_HED = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

# An explainer for `errors`: uint8 patches (N, 96, 96, 3) -> heat maps (N, 96, 96) in [0, 1]. The serving
# issue's Grad-CAM will plug in here; without one the grids show the plain patches.
Explainer = Callable[[np.ndarray], np.ndarray]


# ---------------------------------------------------------------- one pass over the pack

@dataclass
class PackScan:
    """Per-patch statistics of some rows of a pack, exact pixel sums, and pixel histograms per class on a sample."""

    rows: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    mean_rgb: np.ndarray  # (N, 3) mean of each channel, 0-255
    tissue: np.ndarray  # (N,) share of pixels with saturation >= TISSUE_SATURATION
    digests: list[bytes]  # hash of each patch's pixels
    pixel_sum: np.ndarray  # (3,) sum of every pixel value per channel, exact
    pixel_square_sum: np.ndarray  # (3,) sum of squares, exact
    sample: dict = field(default_factory=dict)  # histograms on up to SAMPLE patches per class

    @property
    def brightness(self) -> np.ndarray:
        return self.mean_rgb.mean(1)


def optical_density_hed(pixels: np.ndarray) -> np.ndarray:
    """Colour deconvolution of uint8 RGB pixels (..., 3) into haematoxylin, eosin, DAB (scikit-image's rgb2hed)."""
    lut = np.log(np.maximum(np.arange(256) / 255, 1e-6)) / np.log(1e-6)
    od = lut[pixels.reshape(-1, 3)].astype(np.float32)
    return np.maximum(od @ HED_FROM_RGB.astype(np.float32), 0).reshape(pixels.shape)


def scan(pack: PackedSet, rows: np.ndarray | None = None, *, histograms: bool = True, seed: int = 0,
         progress: bool = True) -> PackScan:
    """One pass over `rows` of the pack (all by default), in sorted order.

    Per patch: mean colour, tissue share, a pixel hash. Over all patches: exact per-channel sums and sums of
    squares. With `histograms`, RGB and stain histograms per class on up to SAMPLE random patches per class
    (enough for a smooth curve; the whole pass stays about a minute for 220k patches).
    """
    rows = np.arange(len(pack)) if rows is None else np.sort(np.asarray(rows))
    labels = pack.labels[rows].astype(int)
    n = len(rows)
    mean_rgb = np.empty((n, 3), np.float32)
    tissue = np.empty(n, np.float32)
    digests: list[bytes] = []
    pixel_sum, square_sum = np.zeros(3), np.zeros(3)
    picked = np.zeros(n, bool)
    rng = np.random.default_rng(seed)
    for k in (0, 1):
        members = np.flatnonzero(labels == k)
        picked[rng.choice(members, min(SAMPLE, len(members)), replace=False)] = True
    sampled: list[list[np.ndarray]] = [[], []]
    channel_of = np.tile(np.eye(3, dtype=np.float32), (PATCH_PIXELS, 1))  # (96*96*3, 3): picks each channel
    for start in tqdm(range(0, n, CHUNK), desc="scan patches", unit="chunk", disable=None if progress else True):
        stop = min(start + CHUNK, n)
        chunk = pack.read(rows[start:stop])
        flat = chunk.reshape(len(chunk), -1).astype(np.float32)
        # Exact in float32: every partial sum is an integer below 2^24 (96*96 values of at most 255 per patch;
        # squares of at most 255^2 summed over blocks of 256 patches), then accumulated in float64.
        sums = flat @ channel_of
        mean_rgb[start:stop] = sums / PATCH_PIXELS
        pixel_sum += sums.sum(0, dtype=np.float64)
        squares = flat * flat
        for block in range(0, len(squares), 256):
            square_sum += squares[block:block + 256].sum(0).reshape(-1, 3).sum(0, dtype=np.float64)
        r, g, b = chunk[..., 0], chunk[..., 1], chunk[..., 2]
        high = np.maximum(np.maximum(r, g), b)
        spread = high - np.minimum(np.minimum(r, g), b)
        # HSV saturation (max - min) / max >= 1/20, in integers
        is_tissue = spread.astype(np.uint16) * round(1 / TISSUE_SATURATION) >= high
        tissue[start:stop] = is_tissue.reshape(len(chunk), -1).mean(1)
        digests += [hashlib.blake2b(p.tobytes(), digest_size=16).digest() for p in chunk]
        if histograms:
            for k in (0, 1):
                sampled[k].append(chunk[picked[start:stop] & (labels[start:stop] == k)])
    result = PackScan(rows, pack.ids[rows], labels, mean_rgb, tissue, digests, pixel_sum, square_sum)
    if histograms:
        result.sample = _sample_histograms([np.concatenate(p) if p else np.zeros((0, 96, 96, 3), np.uint8)
                                            for p in sampled])
    return result


def _sample_histograms(patches: list[np.ndarray]) -> dict:
    """RGB histograms (2, 3, 256) and stain histograms (every 3rd pixel each way) per class."""
    rgb = np.array([[np.bincount(p[..., c].ravel(), minlength=256) for c in range(3)] for p in patches])
    stains = [optical_density_hed(p[:, ::3, ::3]).reshape(-1, 3) for p in patches]
    values = np.concatenate(stains)
    top = np.quantile(values, 0.995, axis=0) if len(values) else np.ones(3)
    edges = [np.linspace(0, t, 61) for t in top]
    hed = np.array([[np.histogram(s[:, c], edges[c])[0] for c in range(3)] for s in stains])
    return {"patches": [len(p) for p in patches], "rgb": rgb, "hed_edges": edges, "hed": hed}


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
        raise BadInput(f"{pack.path}: explore needs labelled patches (train/ with train_labels.csv)")
    start = time.perf_counter()
    s = scan(pack, seed=seed, progress=progress)
    scan_seconds = time.perf_counter() - start
    counts = [int((s.labels == k).sum()) for k in (0, 1)]
    total = len(s.ids) * PATCH_PIXELS
    mean = s.pixel_sum / total
    std = np.sqrt(s.pixel_square_sum / total - mean ** 2)
    tissue = s.tissue
    background = tissue < BACKGROUND_CUT
    groups = duplicate_groups(s)
    conflicting = [g for g in groups if len(set(s.labels[g])) > 1]
    agreeing = [g for g in groups if len(set(s.labels[g])) == 1]
    numbers = {
        "patches": len(s.ids), "count": {"0": counts[0], "1": counts[1]}, "positive_share": counts[1] / len(s.ids),
        "normalisation": {"mean": (mean / 255).tolist(), "std": (std / 255).tolist(),
                          "training_constants": {"mean": list(MEAN), "std": list(STD)}},
        "mean_rgb": {str(k): s.mean_rgb[s.labels == k].mean(0).tolist() if counts[k] else [np.nan] * 3
                     for k in (0, 1)},
        "tissue_saturation_threshold": TISSUE_SATURATION,
        "mostly_background": {str(k): int(background[s.labels == k].sum()) for k in (0, 1)},
        "mostly_background_share": {str(k): float(background[s.labels == k].mean()) if counts[k] else float("nan")
                                    for k in (0, 1)},
        "duplicate_groups": len(groups), "duplicate_patches": int(sum(len(g) for g in groups)),
        "conflicting_groups": [{"ids": s.ids[g].tolist(), "labels": s.labels[g].tolist()} for g in conflicting],
        "histogram_sample_patches": s.sample["patches"],
        "seconds": {"scan": scan_seconds},
    }
    rng = np.random.default_rng(seed)
    pictures = {}
    for k, file in ((0, "samples_normal.png"), (1, "samples_tumour.png")):
        pick = np.sort(rng.choice(np.flatnonzero(s.labels == k), min(16, counts[k]), replace=False))
        pictures[file] = figures.patch_grid(pack.read(s.rows[pick]), [_short_id(i) for i in s.ids[pick]],
                                            f"random {CLASS_NAMES[k]} patches (box: the labelled centre 32x32)")
    pictures["colour.png"] = _colour_figure(s.sample["rgb"], numbers["mean_rgb"])
    pictures["stain.png"] = _stain_figure(s.sample)
    pictures["tissue.png"] = _tissue_figure(tissue, s.brightness, s.labels)
    if groups:
        shown = (conflicting + agreeing)[:8]
        firsts = np.array([g[0] for g in shown])
        pictures["duplicates.png"] = figures.patch_grid(
            pack.read(s.rows[firsts]), [_copies_caption(s.labels[g]) for g in shown], "duplicated patches (one copy shown)")

    page = _explore_page(f"Histology data: {name or pack.path.name}", pack.path, s, numbers, pictures,
                         conflicting + agreeing)
    numbers["seconds"]["total"] = time.perf_counter() - start
    return Report(numbers, pictures, page)


def _explore_page(title: str, pack_path: Path, s: PackScan, numbers: dict, pictures: dict,
                  groups: list[np.ndarray]) -> Page:
    """The explore report's page; `groups` are the duplicate groups, those with both labels first."""
    page = Page(title, f"{len(s.ids):,} labelled patches from the pack {pack_path}")
    counts = [numbers["count"]["0"], numbers["count"]["1"]]
    sec = page.section("Counts and balance")
    sec.facts({"patches": len(s.ids), CLASS_NAMES[0]: counts[0], CLASS_NAMES[1]: counts[1],
               "tumour share": f"{numbers['positive_share']:.1%}"})
    sec = page.section("Random patches per class")
    sec.text("Label 1 means at least one tumour pixel lies in the centre 32x32 (outlined); the rest is context.")
    sec.image(pictures["samples_normal.png"], "random normal patches")
    sec.image(pictures["samples_tumour.png"], "random tumour patches")
    sec = page.section("Colour per class")
    sample = " and ".join(f"{n:,}" for n in s.sample["patches"])
    sec.text(f"Pixel values per channel on {sample} random patches of each class; the swatches are each class's "
             "mean colour over all its patches.")
    sec.image(pictures["colour.png"], "RGB histograms per class")
    sec.text("Stain: colour deconvolution into haematoxylin, eosin and DAB (Ruifrok & Johnston, as scikit-image's "
             "rgb2hed) of the same patches.")
    sec.image(pictures["stain.png"], "stain histograms per class")
    sec = page.section("Background")
    sec.text(f"A pixel is tissue when its HSV saturation is at least {TISSUE_SATURATION} (glass is bright and "
             f"grey, stain is coloured); a patch is mostly background when under {BACKGROUND_CUT:.0%} of it is tissue.")
    sec.facts({f"{CLASS_NAMES[k]} mostly background": f"{numbers['mostly_background'][str(k)]:,} "
               f"({numbers['mostly_background_share'][str(k)]:.1%})" for k in (0, 1)})
    sec.image(pictures["tissue.png"], "tissue share and brightness per class")
    sec = page.section("Exact duplicates (identical pixels)")
    sec.facts({"duplicate groups": len(groups), "patches in them": numbers["duplicate_patches"],
               "groups with both labels": len(numbers["conflicting_groups"])})
    sec.table(pd.DataFrame([{"ids": ", ".join(s.ids[g]), "labels": ", ".join(map(str, s.labels[g]))}
                            for g in groups[:20]]), empty="No two patches have identical pixels.")
    if len(groups) > 20:
        sec.note(f"... and {len(groups) - 20} more groups (all listed in report.json when they carry both labels).")
    if "duplicates.png" in pictures:
        sec.image(pictures["duplicates.png"], "duplicated patches")
    sec = page.section("Normalisation statistics")
    sec.text("Per-channel mean and standard deviation of all pixels in [0, 1], beside the constants training uses.")
    sec.table(pd.DataFrame({"channel": ["red", "green", "blue"], "mean": numbers["normalisation"]["mean"],
                            "std": numbers["normalisation"]["std"], "training mean": list(MEAN),
                            "training std": list(STD)}))
    return page


def _short_id(patch_id: str) -> str:
    """Kaggle ids are 40-character hashes: the start and end are enough to find one."""
    patch_id = str(patch_id)
    return patch_id if len(patch_id) <= 14 else f"{patch_id[:6]}…{patch_id[-6:]}"


def _copies_caption(labels: np.ndarray) -> str:
    found = sorted(set(labels.tolist()))
    return f"{len(labels)} copies, " + ("labels 0 and 1" if len(found) == 2 else f"label {found[0]}")


def _class_lines(ax, x, counts_by_class, **style):
    for k in (0, 1):
        density = counts_by_class[k] / max(counts_by_class[k].sum(), 1)
        ax.plot(x, density, color=CLASS_COLOURS[k], label=CLASS_NAMES[k], **style)


def _colour_figure(rgb: np.ndarray, mean_rgb: dict) -> bytes:
    fig, axes = plt.subplots(1, 4, figsize=(15, 3.4), width_ratios=[3, 3, 3, 1.3])
    for c, (ax, channel) in enumerate(zip(axes, ("red", "green", "blue"))):
        _class_lines(ax, np.arange(256), rgb[:, c], lw=1.3)
        # Saturated white (255) can be a tall spike; the axis is scaled to the rest so the curves stay readable.
        shares = rgb[:, c] / np.maximum(rgb[:, c].sum(1, keepdims=True), 1)
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


def _stain_figure(sample: dict) -> bytes:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    for c, (ax, stain) in enumerate(zip(axes, ("haematoxylin (nuclei)", "eosin (cytoplasm, stroma)", "DAB"))):
        edges = sample["hed_edges"][c]
        _class_lines(ax, (edges[:-1] + edges[1:]) / 2, sample["hed"][:, c], lw=1.3)
        ax.set(title=stain, xlabel="optical density", yscale="log")
        ax.yaxis.set_minor_formatter(NullFormatter())
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


# ---------------------------------------------------------------- errors

def auc_by_strata(labels: np.ndarray, probs: np.ndarray, tissue: np.ndarray, brightness: np.ndarray) -> pd.DataFrame:
    """ROC AUC within simple strata: how much of the patch is tissue, and how bright it is (thirds)."""
    cuts = np.quantile(brightness, [1 / 3, 2 / 3]) if len(brightness) else np.zeros(2)
    strata = [
        ("tissue", f"mostly background (< {BACKGROUND_CUT:.0%})", tissue < BACKGROUND_CUT),
        ("tissue", f"{BACKGROUND_CUT:.0%} to 90%", (tissue >= BACKGROUND_CUT) & (tissue < 0.9)),
        ("tissue", "90% or more", tissue >= 0.9),
        ("brightness", f"dark third (< {cuts[0]:.0f})", brightness < cuts[0]),
        ("brightness", "middle third", (brightness >= cuts[0]) & (brightness < cuts[1])),
        ("brightness", f"bright third (>= {cuts[1]:.0f})", brightness >= cuts[1]),
    ]
    rows = []
    for by, name, inside in strata:
        y, p = labels[inside], probs[inside]
        auc = skm.roc_auc_score(y, p) if len(np.unique(y)) == 2 else float("nan")
        rows.append({"by": by, "stratum": name, "patches": int(inside.sum()), "tumour": int(y.sum()),
                     "AUC": float(auc)})
    return pd.DataFrame(rows)


def errors(run_dir: Path, data_dir: Path | None = None, *, tta: bool = False, threshold: float = 0.5,
           top: int = 16, device: str = "auto", explain: Explainer | None = None, grad_cam: bool = True,
           progress: bool = True) -> Report:
    """The most confident mistakes of a run (or ensemble) as patch grids, its ROC with the operating point,
    a reliability diagram and AUC by strata; on the run's validation split, or on labelled `data_dir`.

    Each mistake gets a heat map: `explain`'s, or by default the run's Grad-CAM on its one fixed scale
    (explain.CAM_SCALE logits = full colour, the same for every patch); `grad_cam=False` draws none.
    """
    run_dir = Path(run_dir)
    predictor = load_run(run_dir, device)
    settings = predictor.settings
    if explain is None and grad_cam:
        def explain(pixels: np.ndarray) -> np.ndarray:
            return np.clip(predictor.grad_cam(pixels) / CAM_SCALE, 0, 1)
    if data_dir is None:
        data, rows = validation_rows(predictor.run, settings)
        where = f"the run's validation split of {settings.data}"
    else:
        packed = pack_folder(Path(data_dir), pack_root=Path(settings.pack_root) if settings.pack_root else None)
        if "train" not in packed or not packed["train"].labelled:
            raise BadInput(f"{data_dir}: needs labelled patches (train/ and train_labels.csv)")
        data = packed["train"]
        rows, where = np.arange(len(data)), str(data_dir)
    rows = np.sort(rows)
    probs = predictor.predict_pack(data, rows, tta)
    s = scan(data, rows, histograms=False, progress=progress)
    labels = s.labels
    ids = s.ids
    fp, fn = confident_mistakes(ids, labels, probs, threshold, top)
    called = probs >= threshold
    roc = skm.roc_curve(labels, probs)
    calibration = figures.reliability(labels, probs)
    strata = auc_by_strata(labels, probs, s.tissue, s.brightness)
    numbers = {
        "run": str(run_dir), "data": where, "patches": len(ids), "tta": tta, "threshold": threshold,
        "auc": float(skm.roc_auc_score(labels, probs)), "accuracy": float((called == labels).mean()),
        "false_positives": int((called & (labels == 0)).sum()), "false_negatives": int((~called & (labels == 1)).sum()),
        "top_false_positives": [{"id": str(ids[i]), "prob": float(probs[i])} for i in fp],
        "top_false_negatives": [{"id": str(ids[i]), "prob": float(probs[i])} for i in fn],
        "ece": calibration["ece"], "calibration": calibration, "auc_by_stratum": strata.to_dict("records"),
    }
    pictures = {}
    for kind, picked, file in (("false positives", fp, "false_positives.png"), ("false negatives", fn, "false_negatives.png")):
        pixels = data.read(s.rows[picked]) if len(picked) else np.zeros((0, 96, 96, 3), np.uint8)
        heat = explain(pixels) if explain is not None and len(picked) else None
        pictures[file] = figures.patch_grid(pixels, [f"p={probs[i]:.3f}" for i in picked],
                                            f"most confident {kind} (p = predicted probability of tumour)", heat=heat)
    pictures["roc.png"] = _roc_figure(roc, labels, called, threshold, numbers["auc"])
    pictures["calibration.png"] = figures.reliability_figure(calibration, f"calibration on {len(ids):,} patches")
    pictures["strata.png"] = _strata_figure(strata)

    page = _errors_page(run_dir, numbers, pictures, strata, explained=explain is not None)
    return Report(numbers, pictures, page)


def _errors_page(run_dir: Path, numbers: dict, pictures: dict, strata: pd.DataFrame, *, explained: bool) -> Page:
    """The errors report's page."""
    threshold = numbers["threshold"]
    page = Page(f"Histology errors: {run_dir.name}",
                f"{run_dir} on {numbers['data']}{' with 8x TTA' if numbers['tta'] else ''}")
    sec = page.section("Summary")
    sec.facts({"patches": numbers["patches"], "ROC AUC": f"{numbers['auc']:.4f}",
               f"accuracy at {threshold:.3g}": f"{numbers['accuracy']:.4f}",
               "false positives": numbers["false_positives"], "false negatives": numbers["false_negatives"],
               "calibration error": f"{numbers['ece']:.3f}"})
    sec = page.section("The most confident mistakes")
    sec.text("False positives: normal patches the model calls tumour with the highest probability; false "
             "negatives: tumour patches it scores lowest. The box is the labelled centre 32x32.")
    if explained:
        sec.note("Overlays: where the evidence for tumour lies (Grad-CAM, one fixed scale for every patch).")
    sec.image(pictures["false_positives.png"], "most confident false positives")
    sec.image(pictures["false_negatives.png"], "most confident false negatives")
    sec.table(pd.DataFrame([{"kind": kind, "rank": r + 1, "id": d["id"], "probability": d["prob"]}
                            for kind, key in (("false positive", "top_false_positives"),
                                              ("false negative", "top_false_negatives"))
                            for r, d in enumerate(numbers[key])]), empty="No mistakes at this threshold.")
    sec = page.section("ROC and calibration")
    sec.images((pictures["roc.png"], "ROC curve with the operating point"),
               (pictures["calibration.png"], "reliability diagram"))
    sec = page.section("Where the model is weak: AUC by stratum")
    sec.image(pictures["strata.png"], "AUC by stratum")
    sec.table(strata)
    return page


def _roc_figure(roc, labels: np.ndarray, called: np.ndarray, threshold: float, auc: float) -> bytes:
    fpr, tpr, _ = roc
    point_fpr = float((called & (labels == 0)).sum() / max((labels == 0).sum(), 1))
    point_tpr = float((called & (labels == 1)).sum() / max((labels == 1).sum(), 1))
    fig, ax = plt.subplots(figsize=(5.2, 5))
    ax.plot(fpr, tpr, color="C0", label=f"ROC, AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.plot([point_fpr], [point_tpr], "o", color="C3", ms=8,
            label=f"threshold {threshold:.3g}: TPR {point_tpr:.3f}, FPR {point_fpr:.3f}")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC with the operating point",
           xlim=(-0.01, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def _strata_figure(strata: pd.DataFrame) -> bytes:
    fig, ax = plt.subplots(figsize=(9, 3.6))
    colours = ["#7a9cc6" if by == "tissue" else "#c6a27a" for by in strata["by"]]
    y = np.arange(len(strata))[::-1]
    # the axis starts a little below the weakest stratum, at a tenth
    lowest = max(0.0, np.floor(float(np.nanmin(strata["AUC"])) * 10 - 0.5) / 10) if strata["AUC"].notna().any() else 0.0
    auc = strata["AUC"].fillna(lowest).to_numpy()
    ax.barh(y, auc - lowest, left=lowest, color=colours)
    for yi, value, (_, row) in zip(y, auc, strata.iterrows()):
        text = f"{row['AUC']:.3f}" if not np.isnan(row["AUC"]) else "n/a (one class only)"
        ax.text(value + 0.005, yi, f"{text}   n={row['patches']:,}, tumour {row['tumour']:,}", va="center", fontsize=8)
    ax.set_yticks(y, [f"{row['by']}: {row['stratum']}" for _, row in strata.iterrows()])
    ticks = [t for t in np.arange(0, 1.01, 0.1) if t >= lowest - 1e-9]
    ax.set_xticks(ticks, [f"{t:.1f}" for t in ticks])
    ax.set(xlim=(lowest, 1 + (1 - lowest) * 0.45), xlabel="ROC AUC within the stratum", title="AUC by stratum")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return png(fig)
