"""Training from packs larger than the shared data: a pack tiled from the real patches (the full Kaggle
training set's size by default) and training from it in shuffled order, for `spotter bench --scale`,
bench/scaling_bench.py (1x, 8x, 32x the shared patches) and bench/reports_bench.py."""
from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import engine
from ..histo.data import load_pack, pack_folder
from ..histo.models import create_model
from ..histo.preprocess import Augment
from ..histo.task import iterate_batches
from .histo import default_cnn
from .isolate import isolated
from .timing import WARMUP_STEPS, auto_precision, timed_steps, trainer


def stage_make_scale_pack(data: str, folder: str, patches: int = 220_025) -> dict[str, Any]:
    """A pack of `patches` patches (default: the full Kaggle training set's size, 6 GB), tiled from the real ones."""
    real = pack_folder(Path(data), progress=False)["train"]
    start_time = time.perf_counter()
    pixels = np.lib.format.open_memmap(Path(folder) / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(patches, 96, 96, 3))
    for start in range(0, patches, len(real)):
        pixels[start:start + len(real)] = real.pixels[:patches - start]
    pixels.flush()
    del pixels
    np.savez(Path(folder) / "index.npz", ids=np.arange(patches).astype(str), labels=np.resize(real.labels, patches))
    return {"scale_patches": patches, "scale_pack_gb": (Path(folder) / "pixels.npy").stat().st_size / 1e9,
            "scale_pack_write_s": time.perf_counter() - start_time}


def stage_scale(folder: str, quick: bool, device: str, steps: int | None = None) -> dict[str, Any]:
    """Train from a large pack in shuffled order: throughput per window of steps through the epoch; this
    process's peak RSS shows whether memory stays bounded while the memory map streams."""
    dev = engine.pick_device(device)
    packed = load_pack(Path(folder))
    default = default_cnn()
    model = create_model(default.model).to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings())
    steps = steps or (100 if quick else 600)
    window = min(25, max(1, steps // 4))

    def batches(seed: int):
        return iterate_batches(packed, np.arange(len(packed)), 128, dev, default.crop, seed=seed,
                               augment=Augment(default.crop_jitter, default.colour_jitter))

    precision, why = auto_precision(dev, model, lambda: next(batches(0)))
    step = trainer(model, optimizer, dev, precision)
    timed_steps(step, batches(1), WARMUP_STEPS, dev)
    stream = batches(2)
    windows = [timed_steps(step, stream, window, dev) for _ in range(steps // window)]
    rate = statistics.median(windows)
    return {"scale_img_per_s_windows": windows, "scale_img_per_s": rate, "scale_steps": steps,
            "scale_epoch_s": len(packed) / rate, "scale_precision": precision, "scale_precision_reason": why}


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (clean pages go; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def real_pack(data: str) -> dict:
    packed = pack_folder(Path(data), progress=False)["train"]
    return {"folder": str(packed.path), "patches": len(packed)}


def scaling(data: Path, scales: list[int], steps: int, device: str, warm: bool) -> list[dict[str, Any]]:
    """One row per multiple of the shared patches: the pack written (1x: the real one), its pages dropped from
    the page cache unless `warm`, then `steps` training steps in a fresh process. Prints each row as it comes."""
    real = isolated(real_pack, str(data))
    rows = []
    for scale in scales:
        with tempfile.TemporaryDirectory(dir=Path.home()) as folder:
            made = {"scale_patches": real["patches"], "scale_pack_gb": real["patches"] * 96 * 96 * 3 / 1e9}
            if scale > 1:
                made = isolated(stage_make_scale_pack, str(data), folder, scale * real["patches"])
            else:
                folder = real["folder"]
            if "failed" in made:
                rows.append({"scale": scale, **made})
                continue
            if not warm:
                drop_from_page_cache(Path(folder) / "pixels.npy")
            trained = isolated(stage_scale, folder, False, device, steps)
            rows.append({"scale": scale, **made, **trained})
        print(format_scaling_row(rows[-1]), flush=True)
    return rows


SCALING_HEADER = ("| scale | patches | pack | writing the pack | training img/s (windows) | one epoch at that rate | "
                  "peak RSS |\n|---|---|---|---|---|---|---|")


def format_scaling_row(r: dict) -> str:
    if "failed" in r:
        return f"| {r['scale']}x | FAILED: {r['failed']} ||||||"
    write = f"{r['scale_pack_write_s']:.0f} s" if "scale_pack_write_s" in r else "(the real pack)"
    w = r["scale_img_per_s_windows"]
    return (f"| {r['scale']}x | {r['scale_patches']:,} | {r['scale_pack_gb']:.2f} GB | {write} | "
            f"{r['scale_img_per_s']:,.0f} ({min(w):,.0f}-{max(w):,.0f}) | {r['scale_epoch_s'] / 60:.1f} min | "
            f"{r['peak_rss_mb']:,.0f} MB |")
