"""The timed loops every stage shares: medians over repeats, training steps as a run takes them, and the
machine's own limits (matmul GFLOP/s, disk write speed) that stages are compared against."""
from __future__ import annotations

import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .. import engine, precision as precision_choice

WARMUP_STEPS = 3  # oneDNN builds kernels on first use of each shape; never time those steps


def median_rate(fn: Callable[[], int], repeats: int, warmup: int = 1) -> float:
    """Median of items/s over `repeats` calls of `fn` (which returns how many items it did)."""
    rates = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        n = fn()
        if i >= warmup:
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[Any, torch.Tensor], Any], batches: Iterable, steps: int,
                device: torch.device) -> float:
    """Items per second of `step(inputs, targets)` over the first `steps` of `batches`, including the time
    `batches` takes to produce them: the one timed loop of every training stage."""
    n = 0
    start = time.perf_counter()
    for inputs, targets in itertools.islice(batches, steps):
        step(inputs, targets)
        n += len(targets)
    sync(device)
    return n / (time.perf_counter() - start)


def trainer(model: torch.nn.Module, optimizer, device: torch.device, precision: str):
    """`step(inputs, targets)`: one optimisation step, exactly as a run takes it."""

    def step(inputs, targets) -> None:
        engine.train_step(model, inputs, targets, optimizer, device, precision)
    return step


def no_step(inputs, targets) -> None:
    """For timing the data pipeline alone."""


def auto_precision(dev, model, batch, train: bool = True) -> tuple[str, str]:
    """The precision `auto` gives this model and batch shape (measured once, cached), and why."""
    choice = precision_choice.choose(dev, model=model, batch=batch, train=train)
    return choice.precision, choice.reason


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def run() -> int:
        for _ in range(5):
            torch.mm(a, b)
        sync(device)
        return 5

    return median_rate(run, repeats) * 2 * size ** 3 / 1e9


def disk_write_mb_per_s(folder: Path, size: int, repeats: int = 1) -> float:
    """Write `size` bytes to a new file in `folder` and fsync it, as packing does: the disk's own limit."""
    chunk = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()  # not compressible
    rates = []
    for i in range(repeats):
        path = Path(folder) / f"disk-probe-{i}"
        start = time.perf_counter()
        with open(path, "wb") as f:
            for offset in range(0, size, len(chunk)):
                f.write(chunk[:min(len(chunk), size - offset)])
            f.flush()
            os.fsync(f.fileno())
        rates.append(size / (time.perf_counter() - start) / 1e6)
        path.unlink()
    return statistics.median(rates)
