"""Whole-slide stages, for `spotter bench` (`stage_slide`) and bench/slide_bench.py (both).

`stage_slide`: end-to-end tiles/s of `histo slide` on a mosaic of real patches against the same model's
inference on in-memory uint8 batches (the ceiling: no reading, no cutting), and the tissue-mask time.
`stage_jpeg_slide`: the same comparison on a JPEG-compressed pyramid, per model, with the slide's time by stage.
`stage_big_slide`: peak resident memory and speed on a large synthetic slide (50k x 50k pixels at
0.25 µm/px by default), written tile by tile and scored in a fresh process so its peak is its own.
Without a run, an untrained ResNet is used: its speed is the trained one's.
"""
from __future__ import annotations

import multiprocessing
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import engine, runs
from ..histo import slide
from ..histo.models import create_model
from ..histo.predictor import HistoPredictor, load_run
from ..histo.settings import HistoSettings
from ..mosaic import mosaic_image, read_patches, synthetic_slide, write_mosaic
from .inference import untrained_predictor
from .timing import median_rate


def bench_predictor(run: str | None, device: str) -> HistoPredictor:
    if run:
        return load_run(Path(run), device)
    dev = engine.pick_device(device)
    model = create_model("resnet", pretrained=False).to(dev, memory_format=torch.channels_last).eval()
    return HistoPredictor(runs.Run(Path("untrained-resnet"), "histo"), HistoSettings(model="resnet"), model=model,
                          device=dev, precision=engine.pick_precision(dev))


def _patches(data: Path, n: int, seed: int = 0) -> np.ndarray:
    ids = pd.read_csv(Path(data) / "train_labels.csv")["id"].sample(n, random_state=seed)
    return read_patches(Path(data) / "train", list(ids))


def stage_slide(data: str, quick: bool, device: str, run: str | None = None, stride: int = 32) -> dict:
    """Mosaic of 40x40 real patches (16x16 with `quick`) at 0.486 µm/px, read at level 1. The predictor runs
    one batch first, as large a job as the slide's, so that the slide is timed warm (as the in-memory batches
    are) and on the backend `auto` takes for it, built before the clock starts."""
    side = 16 if quick else 40
    predictor = bench_predictor(run, device)
    patches = _patches(Path(data), side * side)
    batch = np.resize(patches, (256, *patches.shape[1:]))  # the same pixels, already in memory
    job = (side * 96 // stride) ** 2  # about the slide's tiles
    predictor.predict_proba(batch, job=job)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mosaic.tif"
        write_mosaic(path, mosaic_image(patches, side, side, 192))
        summary = slide.slide(None, path, Path(tmp) / "out", stride=stride, device=device, predictor=predictor,
                              log=lambda message: None)

    def infer() -> float:
        start = time.perf_counter()
        predictor.predict_proba(batch, job=job)
        return len(batch) / (time.perf_counter() - start)

    infer()  # warm-up
    ceiling = statistics.median(infer() for _ in range(3 if quick else 8))
    read_and_infer = summary["tiles_scored"] / summary["read_and_infer_seconds"]
    return {"slide_tiles": summary["tiles_scored"], "slide_stride": stride,
            "slide_tiles_per_s_end_to_end": summary["tiles_per_s"],
            "slide_tiles_per_s_read_and_infer": read_and_infer,
            "slide_in_memory_tiles_per_s": ceiling, "slide_fraction_of_in_memory": read_and_infer / ceiling,
            "slide_tissue_mask_s": summary["tissue_seconds"], "slide_seconds": summary["seconds"],
            "slide_peak_rss_mb": summary["peak_rss_mb"], "slide_stages": summary["stages"]}


def stage_jpeg_slide(data: str, quick: bool, device: str, model: str, stride: int = 32, backend: str = "eager",
                     workers: int | None = None) -> dict:
    """`histo slide` read + infer on a JPEG-compressed tiled pyramid (as scanners write; a mosaic of 40x40 real
    patches, 16x16 with `quick`, read at level 1, the model's resolution) against the same predictor on the
    same mosaic's stride-32 tiles held in memory, timed before the slide and after it. The predictor (an
    untrained `model`) runs one batch first, as large a job as the slide's, so that both are timed warm and on
    the same backend (eager by default: the ratio is then reading's cost alone); the split of the slide's time
    by stage is slide.json's `stages`."""
    side = 16 if quick else 40
    patches = _patches(Path(data), side * side)
    image = mosaic_image(patches, side, side, 192)
    windows = np.lib.stride_tricks.sliding_window_view(image[192:-192, 192:-192], (96, 96, 3))[::stride, ::stride, 0]
    tiles = np.ascontiguousarray(windows.reshape(-1, 96, 96, 3)[:1024 if quick else 4096])
    job = windows.shape[0] * windows.shape[1]  # about the slide's tiles: auto decides as it will for the slide
    predictor = untrained_predictor(model, device, backend)
    predictor.predict_proba(tiles[:predictor.batch_size], job=job)  # warm-up, and the backend built

    def infer() -> int:
        return len(predictor.predict_proba(tiles, job=job))

    repeats = 2 if quick else 3
    rates = [median_rate(infer, repeats)]  # before the slide and after it, so that a drift in load hits both
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mosaic.tif"
        write_mosaic(path, image, compression="jpeg")
        summary = slide.slide(None, path, Path(tmp) / "out", stride=stride, device=device, predictor=predictor,
                              workers=workers, log=lambda message: None)
        file_mb = path.stat().st_size / 2**20
    rates.append(median_rate(infer, repeats, warmup=0))
    in_memory = statistics.mean(rates)
    read_and_infer = summary["tiles_scored"] / summary["read_and_infer_seconds"]
    return {f"jpeg_slide_{model}": {
        "model": model, "backend": predictor.backend.decision.backend, "precision": predictor.precision,
        "stride": stride, "tiles": summary["tiles_scored"], "workers": summary["workers"],
        "tiles_per_s_read_and_infer": read_and_infer, "in_memory_tiles_per_s": in_memory,
        "fraction_of_in_memory": read_and_infer / in_memory, "stages": summary["stages"],
        "in_memory_before_after": rates, "read_and_infer_s": summary["read_and_infer_seconds"],
        "file_mb": file_mb}}


def _score_big(path: str, out: str, run: str | None, device: str, stride: int, queue) -> None:
    summary = slide.slide(None, path, out, stride=stride, device=device, predictor=bench_predictor(run, device))
    queue.put(summary)


def stage_big_slide(data: str, side: int = 50_000, device: str = "auto", run: str | None = None, stride: int = 32,
                    folder: str | None = None) -> dict:
    """Write a `side` x `side` synthetic slide (JPEG tiles, 30 % tissue) and score it in a fresh process."""
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        path = Path(tmp) / f"synthetic_{side}.tif"
        start = time.perf_counter()
        synthetic_slide(path, _patches(Path(data), 64, seed=1), side)
        write_seconds = time.perf_counter() - start
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        child = context.Process(target=_score_big, args=(str(path), str(Path(tmp) / "out"), run, device, stride, queue))
        child.start()
        summary = queue.get()
        child.join()
        size_mb = path.stat().st_size / 2**20
    return {"big_side": side, "big_file_mb": size_mb, "big_write_s": write_seconds, "big_stride": stride,
            "big_tiles": summary["tiles_scored"], "big_seconds": summary["seconds"],
            "big_tiles_per_s": summary["tiles_per_s"], "big_tissue_mask_s": summary["tissue_seconds"],
            "big_peak_rss_mb": summary["peak_rss_mb"], "big_peak_rss_workers_mb": summary["peak_rss_workers_mb"]}
