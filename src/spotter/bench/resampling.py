"""How far a histo run's probability moves when the same tissue is read from a finer level and resampled.

Real slides are scanned at 0.25-0.5 µm/px and read at the model's µm/px (0.972 for Kaggle/PCam), so
every reader resamples. Here N real labelled patches the run never trained on (its validation rows) stand
for tissue at the model's µm/px; each is enlarged `scale` times (bicubic: a stand-in for a finer scan,
optionally blurred by a Gaussian of `blur` model pixels to mimic a scanner's optics) and brought back to
96 px in each way a reader does it:

- `bilinear-aa`: PIL's BILINEAR (antialiased: its filter widens with the reduction), which is what
  WSInfer's torchvision `Resize` does to a PIL image;
- `area`: the mean of each scale x scale block, what a scanner's pyramid levels hold and what `histo slide`
  reads when a level matches the model's µm/px (wsi.py's pyramid writer); integer scales only;
- `histo-slide`: `histo slide`'s own reader (slide_reader.RegionReader: Pillow's BOX over the exact source span)
  on a slide whose only level is the finer one, as when no level matches (an Aperio 40x scan at 0.252 µm/px
  has levels 4x apart; 0.972 / 0.252 = 3.857). At integer scales it equals `area` up to rounding.

For each run and way: how far the 96-px input moved (mean |Δ| of its 0-255 values against the original
patch's), the mean, median and 95th percentile of |Δp| against the original patch's probability, and the ROC
AUC on the same patches with a bootstrap 95 % interval, beside the original's; ΔAUC has a paired bootstrap
interval (the same resampled rows for both). scripts/resampling_check.py is its command line.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from .. import runs
from ..histo.slide_reader import PATCH, Block, RegionReader
from ..histo.predictor import HistoPredictor, load_run
from ..histo.settings import KAGGLE_MPP
from ..metrics import bootstrap_interval, intervals, roc_auc
from ..mosaic import read_patches

WAYS = ("bilinear-aa", "area", "histo-slide")
STRIP = 64  # patches per temporary slide the histo-slide way reads


# ---------------------------------------------------------------- finer levels and the ways back

def fine_side(scale: float) -> int:
    """Side in pixels of a patch enlarged `scale` times (rounded: 3.857 -> 370)."""
    return int(round(PATCH * scale))


def upsample(patches: np.ndarray, scale: float, blur: float = 0.0) -> np.ndarray:
    """(N, 96, 96, 3) uint8 -> (N, S, S, 3), S = fine_side(scale): bicubic, then a Gaussian of `blur` model
    pixels (that many times `scale` fine pixels) when `blur` > 0."""
    side = fine_side(scale)
    out = np.empty((len(patches), side, side, 3), np.uint8)
    for k, patch in enumerate(patches):
        image = Image.fromarray(patch).resize((side, side), Image.BICUBIC)
        if blur > 0:
            image = image.filter(ImageFilter.GaussianBlur(blur * side / PATCH))
        out[k] = np.asarray(image)
    return out


def bilinear_aa(fine: np.ndarray) -> np.ndarray:
    """WSInfer's way: torchvision Resize(96) on a PIL image, i.e. PIL's antialiased BILINEAR."""
    return np.stack([np.asarray(Image.fromarray(p).resize((PATCH, PATCH), Image.BILINEAR)) for p in fine])


def area(fine: np.ndarray) -> np.ndarray:
    """Block means, rounded to uint8, as a pyramid level holds them; the scale must be an integer."""
    n, side = len(fine), fine.shape[1]
    if side % PATCH:
        raise ValueError(f"area needs an integer scale; {side} px is not a multiple of {PATCH}")
    f = side // PATCH
    blocks = fine.reshape(n, PATCH, f, PATCH, f, 3).mean(axis=(2, 4))
    return np.round(blocks).astype(np.uint8)


def histo_slide(fine: np.ndarray, model_mpp: float = KAGGLE_MPP) -> np.ndarray:
    """`histo slide`'s reader on one-level slides holding the fine patches side by side (PNG strips)."""
    side = fine.shape[1]
    q = side / PATCH  # level pixels per model pixel
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for start in range(0, len(fine), STRIP):
            part = fine[start:start + STRIP]
            path = Path(tmp) / f"strip{start}.png"
            Image.fromarray(np.concatenate(list(part), axis=1)).save(path, compress_level=1)
            blocks = [Block(0, 1, k, k + 1, 0, k * PATCH, PATCH, PATCH) for k in range(len(part))]
            reader = RegionReader(path, model_mpp / q, 0, q, blocks)
            out += [reader.read(b)[0] for b in blocks]  # (region, seconds)
    return np.stack(out)


def way_functions(model_mpp: float) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    return {"bilinear-aa": bilinear_aa, "area": area, "histo-slide": lambda fine: histo_slide(fine, model_mpp)}


# ---------------------------------------------------------------- patches and scores

def held_out_patches(run: runs.Run, data: Path, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, labels, patches) of `n` of the run's validation rows (all when fewer), read from `data`."""
    ids = np.sort(run.validation_ids())
    labels = pd.read_csv(Path(data) / "train_labels.csv", dtype={"id": str}).set_index("id")["label"]
    missing = ids[~np.isin(ids, labels.index)]
    if len(missing):
        raise runs.RunError(f"{run.path}: its validation ids (e.g. {missing[0]}) are not in {data}; "
                            "pass the --data it was trained on")
    picked = np.random.default_rng(seed).choice(ids, min(n, len(ids)), replace=False)
    return picked, labels.loc[picked].to_numpy().astype(int), read_patches(Path(data) / "train", list(picked))


def score(labels: np.ndarray, probs: np.ndarray, original: np.ndarray | None = None) -> dict:
    """AUC with its interval; against `original`, |Δp| and the paired ΔAUC interval."""
    row = {"auc": roc_auc(labels, probs), "auc_ci95": intervals(labels, probs)["auc_ci95"]}
    if original is not None:
        delta = np.abs(probs - original)
        row.update(mean_abs_dp=float(delta.mean()), median_abs_dp=float(np.median(delta)),
                   p95_abs_dp=float(np.percentile(delta, 95)), max_abs_dp=float(delta.max()),
                   d_auc=row["auc"] - roc_auc(labels, original),
                   d_auc_ci95=bootstrap_interval(
                       lambda r: roc_auc(labels[r], probs[r]) - roc_auc(labels[r], original[r]), len(labels)))
    return row


def measure_run(predictor: HistoPredictor, labels: np.ndarray, patches: np.ndarray, *, scales=(2, 4),
                blurs=(0.0,), ways=WAYS, log=print) -> dict:
    """The original's scores and one row per (scale, blur, way); `area` is left out at fractional scales."""
    original = predictor.predict_proba(patches)
    rows = []
    functions = way_functions(predictor.mpp)
    for scale in scales:
        for blur in blurs:
            fine = upsample(patches, scale, blur)
            for way in ways:
                if way == "area" and fine.shape[1] % PATCH:
                    continue
                back = functions[way](fine)
                pixels = float(np.abs(back.astype(np.int16) - patches).mean())  # how much the input moved
                rows.append({"scale": scale, "blur": blur, "way": way, "mean_abs_dpixel": pixels,
                             **score(labels, predictor.predict_proba(back), original)})
                log(format_row(predictor.name, rows[-1]))
    return {"model": predictor.name, "model_mpp": predictor.mpp, "n": len(labels),
            "tumour": int(labels.sum()), "original": score(labels, original), "rows": rows}


def measure(run_paths: list[Path], data: Path, *, n: int = 768, scales=(2, 4), blurs=(0.0,), ways=WAYS,
            device: str = "cpu", precision: str = "fp32", seed: int = 0, log=print) -> list[dict]:
    """`measure_run` for each run, on `n` of its own validation patches."""
    results = []
    for path in run_paths:
        run = runs.open_run(Path(path), "histo")
        ids, labels, patches = held_out_patches(run, data, n, seed)
        predictor = load_run(run, device, precision)
        log(f"{path}: {predictor.name}, {len(ids)} held-out patches ({int(labels.sum())} tumour)")
        results.append({"run": str(path), **measure_run(predictor, labels, patches, scales=scales, blurs=blurs,
                                                        ways=ways, log=log)})
    return results


# ---------------------------------------------------------------- the table

HEADER = ("| model | read from | way | mean abs Δpixel | mean abs Δp | median | p95 | AUC [95 % CI] "
          "| ΔAUC [95 % CI] |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def _ci(bounds: list[float], sign: bool = False) -> str:
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"[{f.format(bounds[0])}, {f.format(bounds[1])}]"


def format_row(model: str, row: dict) -> str:
    source = f"{row['scale']:g}x finer" + (f", blur {row['blur']:g}" if row["blur"] else "")
    return (f"| {model} | {source} | {row['way']} | {row['mean_abs_dpixel']:.2f} | {row['mean_abs_dp']:.3f} | "
            f"{row['median_abs_dp']:.3f} | {row['p95_abs_dp']:.3f} | {row['auc']:.4f} {_ci(row['auc_ci95'])} | "
            f"{row['d_auc']:+.4f} {_ci(row['d_auc_ci95'], True)} |")


def format_table(results: list[dict]) -> str:
    """A Markdown table: each run's original row, then its resampled rows."""
    lines = [HEADER]
    for result in results:
        o = result["original"]
        auc = f"{o['auc']:.4f} {_ci(o['auc_ci95'])}"
        lines.append(f"| {result['model']} | model's µm/px | none | 0 | 0 | 0 | 0 | {auc} | |")
        lines += [format_row(result["model"], row) for row in result["rows"]]
    return "\n".join(lines)
