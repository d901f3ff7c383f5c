"""Whole-slide inference: a run's tumour probability over a slide, in bounded memory.

Stages: open the slide (`wsi`) -> tissue mask on a thumbnail (`tissue`) -> the grid of cells -> blocks of
about 2048x2048 model pixels read and resampled by background workers (`slide_reader`; each opens the slide) ->
patches cut from each block in memory and scored in batches of 256 by the run's HistoPredictor ->
probabilities averaged into a preallocated grid -> outputs (`slide_outputs`).

The grid. The model sees 96x96 patches at its training resolution ("model pixels", 0.972 µm for
Kaggle/PCam) and its label is the patch's centre 32x32. With stride s (model pixels), cell (i, j) is the
model-pixel square [j*s, (j+1)*s) x [i*s, (i+1)*s) of the slide, and its level-0 rectangle is that square
scaled by f = model µm/px / slide µm/px, each edge rounded from its own index, so no error accumulates
across the slide. At s >= 32 one patch is centred on each cell and gives it its probability (s = 32: the
cells are exactly the labelled centres). At s < 32 (a divisor of 32) each patch's labelled centre covers
(32/s)^2 cells, and every cell is the mean of the patches that cover it (a sum grid over a count grid).
A patch is scored when any of the 96x96 field the model sees lies on tissue (`tissue_threshold`, a
fraction of that field, raises the bar; `tissue_mask=False` scores every patch).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm import tqdm

from .. import engine, files
from ..errors import BadInput
from . import slide_outputs, tissue, wsi
from .predictor import HistoPredictor, load_run
from .slide_reader import PATCH, RegionReader, Stages, make_blocks

CENTRE = 32  # the labelled centre
THUMBNAIL = 2048

ProgressCallback = Callable[[int, int], None]


# ---------------------------------------------------------------- the grid

@dataclass(frozen=True)
class Grid:
    """Cells of `stride` model pixels over the slide; `scale` = level-0 pixels per model pixel."""

    stride: int
    rows: int
    cols: int
    scale: float

    @property
    def span(self) -> int:
        """Cells per side covered by a patch's labelled centre (1 when the stride is 32 or more)."""
        return max(1, CENTRE // self.stride)

    @property
    def offset(self) -> int:
        """Model-pixel offset of patch (i, j)'s top-left corner from cell (i, j)'s."""
        return (self.span * self.stride - PATCH) // 2

    @property
    def patch_rows(self) -> int:
        return self.rows - self.span + 1

    @property
    def patch_cols(self) -> int:
        return self.cols - self.span + 1

    def edges(self, count: int) -> np.ndarray:
        """Level-0 pixel edges of cells 0..count (count + 1 values), each rounded on its own."""
        return np.round(np.arange(count + 1) * self.stride * self.scale).astype(np.int64)


def make_grid(slide: wsi.Slide, model_mpp: float, stride: int) -> Grid:
    if stride < 1 or (stride < CENTRE and CENTRE % stride):
        raise BadInput(f"--stride {stride}: use 32 or more, or a divisor of 32 (16, 8)")
    scale = model_mpp / slide.mpp
    width, height = (d / scale for d in slide.dimensions[0])  # the slide in model pixels
    if width < PATCH or height < PATCH:
        raise wsi.SlideError(f"{slide.path}: {slide.dimensions[0][0]}x{slide.dimensions[0][1]} pixels at "
                             f"{slide.mpp:g} µm/px is smaller than one {PATCH}-pixel patch at {model_mpp:g} µm/px")
    return Grid(stride, int(np.ceil(height / stride)), int(np.ceil(width / stride)), scale)


def cell_tissue(mask: np.ndarray, thumb_scale: float, grid: Grid) -> np.ndarray:
    """Fraction of each cell on tissue: the mean of the thumbnail pixels whose centres fall in it, or, for
    cells smaller than a thumbnail pixel, the mask at the cell's centre."""
    def cell_index(n_px: int, n_cells: int) -> np.ndarray:
        centres = (np.arange(n_px) + 0.5) * thumb_scale / grid.scale / grid.stride
        return np.minimum(centres.astype(np.int64), n_cells - 1)

    rows, cols = cell_index(mask.shape[0], grid.rows), cell_index(mask.shape[1], grid.cols)
    flat = (rows[:, None] * grid.cols + cols[None, :]).ravel()
    size = grid.rows * grid.cols
    count = np.bincount(flat, minlength=size)
    on = np.bincount(flat, weights=mask.ravel().astype(np.float64), minlength=size)
    fraction = np.divide(on, count, out=np.zeros(size), where=count > 0).reshape(grid.rows, grid.cols)
    empty = count.reshape(grid.rows, grid.cols) == 0
    if empty.any():
        ci, cj = np.nonzero(empty)
        ty = np.minimum(((ci + 0.5) * grid.stride * grid.scale / thumb_scale).astype(np.int64), mask.shape[0] - 1)
        tx = np.minimum(((cj + 0.5) * grid.stride * grid.scale / thumb_scale).astype(np.int64), mask.shape[1] - 1)
        fraction[ci, cj] = mask[ty, tx]
    return fraction


def patches_on_tissue(fraction: np.ndarray, grid: Grid, threshold: float = 0.0) -> np.ndarray:
    """Boolean (patch_rows, patch_cols): some of the patch's 96x96 field is on tissue, and at least
    `threshold` of it (0: any tissue at all; the field is the cells it overlaps, so the fraction is
    approximate at strides that do not divide 96)."""
    s, o = grid.stride, grid.offset
    first, last = o // s, -(-(o + PATCH) // s)  # patch i overlaps cells i + first .. i + last - 1
    pad = (-first, max(0, last - grid.span))
    padded = np.pad(fraction, (pad, pad))  # cells past the slide's edge hold no tissue
    n = last - first
    on = np.lib.stride_tricks.sliding_window_view(padded, (n, n)).mean(axis=(2, 3))
    on = on[:grid.patch_rows, :grid.patch_cols]
    return (on > 0) & (on >= threshold)


def check_tissue_threshold(threshold: float) -> None:
    if not 0 <= threshold <= 1:
        raise BadInput(f"--tissue-threshold {threshold}: use a fraction of the patch, 0 to 1")


def find_tissue(source: wsi.Slide, grid: Grid, *, threshold: float = 0.0,
                use_mask: bool = True) -> tuple[np.ndarray, float, np.ndarray, np.ndarray]:
    """The slide's thumbnail, its downsample from level 0, its tissue mask (all True without `use_mask`)
    and the boolean grid of patches to score."""
    check_tissue_threshold(threshold)
    thumb, thumb_scale = source.thumbnail(THUMBNAIL)
    if use_mask:
        mask = tissue.tissue_mask(thumb, source.mpp * thumb_scale)
    else:
        mask = np.ones(thumb.shape[:2], bool)
    scored = patches_on_tissue(cell_tissue(mask, thumb_scale, grid), grid, threshold)
    return thumb, thumb_scale, mask, scored


# ---------------------------------------------------------------- one slide

def slide(run: Path | str, image: Path | str, out: Path | str, *, mpp: float | None = None, stride: int = 32,
          tta: bool = False, batch_size: int = 256, device: str = "auto", threshold: float = 0.5,
          level: int | None = None, workers: int | None = None, tissue_threshold: float = 0.0,
          tissue_mask: bool = True, backend: str = "auto", predictor: HistoPredictor | None = None,
          on_progress: ProgressCallback | None = None, log=print) -> dict:
    """Score one slide with a histo run (or ensemble) and write heatmaps, QuPath GeoJSON, WSInfer CSV and
    `slide.json` (written last: its presence means the outputs are complete) to `out`; returns the summary.

    Args:
        mpp: µm per level-0 pixel, overriding the file's (required when the file has none).
        stride: model pixels between patch centres (32: one cell per labelled centre; 96: 9x faster).
        level: pyramid level to read (default: the coarsest not coarser than the model's resolution).
        workers: reading processes (default: half the cores; none, reading in this process, on 2 cores or fewer).
        tissue_threshold: fraction of a patch's 96x96 field that must be on tissue for it to be scored
            (0: any tissue).
        tissue_mask: False scores every patch of the slide, glass included (slowest, misses nothing).
        backend: inference backend when `run` is loaded here (auto: chosen for this slide's tiles, backends.py).
        predictor: a model already loaded with `predictor.load_run` (a server keeps one), else `run` is loaded.
        on_progress: called as on_progress(tiles_done, tiles_total) after each batch.
    """
    start = time.perf_counter()
    if not 0 < threshold < 1:
        raise BadInput(f"--threshold {threshold}: use a probability between 0 and 1")
    check_tissue_threshold(tissue_threshold)
    predictor = predictor or load_run(Path(run), device, backend=backend, log=log)
    predictor.check_tta(tta)  # an ensemble calibrated with (or without) TTA is refused the other way, up front
    source = wsi.open_slide(image, mpp)
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "slide.json").unlink(missing_ok=True)  # an earlier run's marker must not vouch for new files
        return _score_slide(predictor, source, out, stride=stride, tta=tta, batch_size=batch_size,
                            threshold=threshold, level=level, workers=workers, on_progress=on_progress,
                            tissue_threshold=tissue_threshold, use_mask=tissue_mask, start=start, log=log)
    finally:
        source.close()


def _score_slide(predictor: HistoPredictor, source: wsi.Slide, out: Path, *, stride: int, tta: bool,
                 batch_size: int, threshold: float, level: int | None, workers: int | None,
                 on_progress: ProgressCallback | None, tissue_threshold: float, use_mask: bool, start: float,
                 log) -> dict:
    model_mpp = predictor.mpp
    grid = make_grid(source, model_mpp, stride)
    if level is None:
        level = wsi.pick_level(source, model_mpp)
    elif not 0 <= level < len(source.dimensions):
        raise BadInput(f"--level {level}: {source.path} has levels 0 to {len(source.dimensions) - 1}")

    t = time.perf_counter()
    thumb, thumb_scale, mask, scored = find_tissue(source, grid, threshold=tissue_threshold, use_mask=use_mask)
    tissue_seconds = time.perf_counter() - t
    total = int(scored.sum())
    if total == 0:
        raise wsi.SlideError(f"{source.path}: no tissue found (nothing stained on the thumbnail); "
                             "is this a brightfield H&E slide?")
    log(f"{source.path.name}: {source.dimensions[0][0]}x{source.dimensions[0][1]} px at {source.mpp:g} µm/px, "
        f"level {level} ({source.level_mpp(level):.3g} µm/px), {total:,} tiles on tissue, stride {stride}")

    workers = reading_workers(workers, source)
    t = time.perf_counter()
    heat_sum, heat_count, stages = _infer(predictor, source, grid, level, scored, tta=tta, batch_size=batch_size,
                                  workers=workers, on_progress=on_progress)
    infer_seconds = time.perf_counter() - t
    with np.errstate(invalid="ignore"):
        heat = (heat_sum / heat_count).astype(np.float16)  # NaN where no patch was scored
    seconds = time.perf_counter() - start

    cell_mm2 = (stride * model_mpp / 1000) ** 2
    summary = {
        **predictor.describe(), "file": str(Path(source.path).resolve()), "mpp": source.mpp,
        "mpp_source": source.mpp_source, "level": level, "level_mpp": source.level_mpp(level),
        "level0_size": list(source.dimensions[0]), "stride": stride, "tta": tta, "grid": [grid.rows, grid.cols],
        "cell_level0_px": grid.stride * grid.scale, "tiles_scored": total, "tissue_mask": use_mask,
        "tissue_threshold": tissue_threshold,
        "tissue_area_mm2": float(mask.sum() * (source.mpp * thumb_scale / 1000) ** 2),
        "tumour_area_mm2": float(np.sum(heat >= threshold) * cell_mm2), "threshold": threshold,
        "max_prob": float(np.nanmax(heat)), "seconds": seconds, "tiles_per_s": total / max(seconds, 1e-9),
        "tissue_seconds": tissue_seconds, "read_and_infer_seconds": infer_seconds,
        "stages": stages.record(), "workers": workers, **peak_rss_mb(),
    }
    slide_outputs.write_all(out, heat, grid, thumb, thumb_scale, mask, source.mpp, summary, threshold)
    files.write_text_atomic(out / "slide.json", json.dumps(summary, indent=2))
    log(f"  max probability {summary['max_prob']:.3f}, tumour {summary['tumour_area_mm2']:.3f} mm² of "
        f"{summary['tissue_area_mm2']:.2f} mm² tissue; {seconds:.1f} s ({summary['tiles_per_s']:.0f} tiles/s); "
        f"written to {out}")
    return summary


def reading_workers(workers: int | None, source: wsi.Slide) -> int:
    """Reading processes: as asked, else half the cores, but none on 2 cores or fewer, and none for a PNG/JPEG,
    which is held in memory already (workers would each decode it again).

    On 2 cores a reading process takes a core from one of the model's two threads, which then wait for each
    other at every layer: reading in this process, between batches, was faster even when it had to resample
    (a JPEG pyramid read at 2x shrink, stride 32: 1,351 against 1,247 tiles/s with one worker)."""
    if source._image is not None:
        return 0
    if workers is not None:
        return workers
    cores = os.cpu_count() or 1
    return 0 if cores <= 2 else cores // 2


def _infer(predictor: HistoPredictor, source: wsi.Slide, grid: Grid, level: int, scored: np.ndarray, *, tta: bool,
           batch_size: int, workers: int | None,
           on_progress: ProgressCallback | None) -> tuple[np.ndarray, np.ndarray, Stages]:
    """Sum and count grids of the probabilities of every scored patch, and the seconds per stage."""
    blocks = make_blocks(grid.stride, grid.offset, grid.patch_rows, grid.patch_cols, scored)
    level_per_model = grid.scale / source.downsamples[level]
    reader = RegionReader(source.path, source.mpp if source.mpp_source == "--mpp" else None, level,
                          level_per_model, blocks)
    if source._image is not None:
        reader._slide = source
    loader = torch.utils.data.DataLoader(reader, batch_size=None, shuffle=False, num_workers=workers,
                                         prefetch_factor=2 if workers else None)
    heat_sum = np.zeros((grid.rows, grid.cols), np.float32)
    heat_count = np.zeros((grid.rows, grid.cols), np.float32)
    batch = np.empty((batch_size, PATCH, PATCH, 3), np.uint8)
    where = np.empty((batch_size, 2), np.int64)
    filled, done, total = 0, 0, int(scored.sum())
    stages = Stages()
    bar = tqdm(total=total, unit="tile", desc=source.path.name, leave=False, disable=not sys.stderr.isatty())

    def flush() -> None:
        nonlocal filled, done
        t = time.perf_counter()
        probs = predictor.predict_proba(batch[:filled], tta=tta, job=total - done).astype(np.float32)
        t_copy = time.perf_counter()
        stages.infer += t_copy - t
        rows, cols = where[:filled, 0], where[:filled, 1]
        for di in range(grid.span):  # each patch is scored once, so no cell repeats within (di, dj): no np.add.at
            for dj in range(grid.span):
                heat_sum[rows + di, cols + dj] += probs
                heat_count[rows + di, cols + dj] += 1
        stages.copy += time.perf_counter() - t_copy
        done += filled
        bar.update(filled)
        if on_progress:
            on_progress(done, total)
        filled = 0

    waited = time.perf_counter()
    for k, region, error, (decode_s, resample_s) in loader:
        t = time.perf_counter()
        stages.waiting += t - waited
        stages.decode += float(decode_s)
        stages.resample += float(resample_s)
        if error:
            raise wsi.SlideError(error)
        region = region.numpy() if isinstance(region, torch.Tensor) else region
        b = blocks[int(k)]
        ii, jj = np.nonzero(scored[b.i0:b.i1, b.j0:b.j1])
        for i, j in zip(ii.tolist(), jj.tolist()):
            y, x = i * grid.stride, j * grid.stride
            batch[filled] = region[y:y + PATCH, x:x + PATCH]
            where[filled] = (b.i0 + i, b.j0 + j)
            filled += 1
            if filled == batch_size:
                stages.copy += time.perf_counter() - t
                flush()
                t = time.perf_counter()
        stages.copy += time.perf_counter() - t
        waited = time.perf_counter()
    stages.waiting += time.perf_counter() - waited  # the loader's last call, which stops its readers
    if filled:
        flush()
    if not workers:  # read in this process: its reading is decode and resample, not waiting
        stages.waiting = max(0.0, stages.waiting - stages.decode - stages.resample)
    bar.close()
    return heat_sum, heat_count, stages


def peak_rss_mb() -> dict:
    """Peak resident memory of this process and of its largest finished child (the reading workers)."""
    return {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_rss_workers_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}


# ---------------------------------------------------------------- many slides

def slides(run: Path | str, images: Path | str, out: Path | str, *, device: str = "auto", log=print,
           **options) -> list[dict]:
    """Score every slide of a folder or glob into `out/<slide name>/`, and rank them in `out/slides.csv`.

    A slide that fails is listed with its error and the others go on. Under torchrun the ranks share the
    list (rank r takes slides r, r + world, ...) and rank 0 writes slides.csv.
    """
    import pandas as pd

    paths = wsi.list_slides(images)
    world = engine.join_world(device)
    dev = engine.pick_device(device, world)
    predictor = load_run(Path(run), str(dev), backend=options.get("backend", "auto"), log=log)
    out = Path(out)
    stems = [p.name.split(".")[0] for p in paths]
    names = {p: stem if stems.count(stem) == 1 else p.name for p, stem in zip(paths, stems)}  # a.svs, a.tif
    rows = []
    for path in paths[world.rank::world.size]:
        name = names[path]
        try:
            summary = slide(run, path, out / name, device=str(dev), predictor=predictor, log=log, **options)
            rows.append({"slide": path.name, "status": "ok", "max_prob": summary["max_prob"],
                         "tumour_area_mm2": summary["tumour_area_mm2"],
                         "tissue_area_mm2": summary["tissue_area_mm2"], "tiles": summary["tiles_scored"],
                         "seconds": summary["seconds"], "error": ""})
        except (wsi.SlideError, OSError, ValueError) as err:
            log(f"{path.name}: skipped: {err}")
            rows.append({"slide": path.name, "status": "error", "error": str(err)})
    if world.size > 1:
        import torch.distributed as dist

        gathered: list = [None] * world.size
        dist.all_gather_object(gathered, rows)
        rows = [row for part in gathered for row in part]
    table = pd.DataFrame(rows, columns=["slide", "status", "max_prob", "tumour_area_mm2", "tissue_area_mm2",
                                        "tiles", "seconds", "error"])
    table = table.sort_values(["status", "max_prob"], ascending=[False, False], kind="stable")
    if world.main:
        files.write_csv_atomic(table, out / "slides.csv")
        failed = int((table["status"] == "error").sum())
        log(f"{len(table) - failed} slides scored, {failed} failed; ranking in {out / 'slides.csv'}")
    return table.to_dict("records")
