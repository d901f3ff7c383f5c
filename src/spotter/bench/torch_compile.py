"""torch.compile (inductor) against eager PyTorch, for bench/compile_bench.py: training and inference rates of
the histology models, compile time (with an empty and with a warm inductor cache), and whether compiling pays
inside a budget.

Each measurement runs in its own process on in-memory batches of the real shape (the training ceiling:
batch 128 at the model's default crop, channels_last; inference: batch 256, no gradients), in the precision
`--precision auto` picks there (measured, see src/spotter/precision.py) unless --precision says otherwise.
Compile time is the time of the first steps (which trace and compile) beyond what those steps take once
compiled; "cold" uses an empty inductor cache, "warm" a second process on the cache the first one filled,
as a second training run on the same machine would. Compiling pays inside a budget of B minutes when
(B - compile time) x compiled rate > B x eager rate; the last column says so, for the warm cache.
"""
from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from .. import engine, precision as precision_choice
from ..histo.models import create_model
from ..histo.task import HistoSettings
from ..precision import cpu_model
from .isolate import isolated
from .timing import matmul_gflops, sync

WARMUP = 3


def measure(model_name: str, mode: str, compiled: bool, precision: str, steps: int, cache_dir: str,
            freezing: bool = False) -> dict:
    """One (model, mode, eager or compiled) measurement; runs in a fresh process."""
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir  # before inductor is imported (compile imports it)
    if freezing:
        # Imported here, after the cache folder is set, and only when asked: a config switch, not a dependency.
        import torch._inductor.config as inductor_config
        inductor_config.freezing = True  # weights become constants: oneDNN can prepack and fold them
    device = torch.device("cpu")
    crop = HistoSettings(model=model_name).crop
    batch = 128 if mode == "train" else 256
    model = create_model(model_name, pretrained=False).to(memory_format=torch.channels_last)
    model.train(mode == "train")
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(batch, 3, crop, crop, generator=generator).to(memory_format=torch.channels_last),
                torch.randint(0, 2, (batch,), generator=generator).float()) for _ in range(4)]
    if precision == "auto":
        precision = precision_choice.choose(device, model=model, batch=batches[0], train=mode == "train").precision
    optimizer = engine.make_optimizer(model, engine.TrainSettings())
    with FlopCounterMode(display=False) as counter:
        _step(model, optimizer, batches[0], device, precision, mode)
    gflop_per_image = counter.get_total_flops() / batch / 1e9
    if compiled:
        model.compile()  # in place: parameter names (and so checkpoints) stay as they are

    warm_times = []
    for i in range(WARMUP):
        start = time.perf_counter()
        _step(model, optimizer, batches[i % 4], device, precision, mode)
        warm_times.append(time.perf_counter() - start)
    times = []
    for i in range(steps):
        start = time.perf_counter()
        _step(model, optimizer, batches[i % 4], device, precision, mode)
        sync(device)
        times.append(time.perf_counter() - start)
    step_s = statistics.median(times)
    rate = batch / step_s
    return {"model": model_name, "mode": mode, "compiled": compiled, "freezing": freezing, "precision": precision,
            "img_per_s": rate, "first_steps_s": sum(warm_times), "compile_s": max(0.0, sum(warm_times) - WARMUP * step_s),
            "gflops": rate * gflop_per_image, "gflop_per_image": gflop_per_image, "crop": crop, "batch": batch}


def _step(model, optimizer, batch, device, precision, mode) -> None:
    inputs, targets = batch
    if mode == "train":
        engine.train_step(model, inputs, targets, optimizer, device, precision)
    else:
        with torch.no_grad(), engine.autocast(device, precision):
            model(inputs)


def _matmul(precision: str) -> dict:
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    return {"matmul_gflops": matmul_gflops(torch.device("cpu"), dtype)}


def pays_within(budget_min: float, eager: float, compiled: float, compile_s: float) -> bool:
    """More images in the budget with compiling (its time spent first) than without."""
    return (budget_min * 60 - compile_s) * compiled > budget_min * 60 * eager


def compare(models: list[str], modes: list[str], precision: str, steps: int, budget: float, timeout_s: float,
            out: Path) -> dict:
    """Eager, compiled on a cold cache and on a warm one (and, for inference, with freezing) for each model and
    mode; prints each row as it comes, then the table; writes JSON to `out`."""
    rows, matmul = [], {}
    for model in models:
        for mode in modes:
            with tempfile.TemporaryDirectory() as cache:
                runs = {"eager": isolated(measure, model, mode, False, precision, steps, cache, timeout_s=timeout_s)}
                chosen = runs["eager"].get("precision", precision)
                runs["cold"] = isolated(measure, model, mode, True, chosen, steps, cache, timeout_s=timeout_s)
                runs["warm"] = isolated(measure, model, mode, True, chosen, steps, cache, timeout_s=timeout_s)
                if mode == "infer":
                    with tempfile.TemporaryDirectory() as frozen_cache:
                        runs["freezing"] = isolated(measure, model, mode, True, chosen, steps, frozen_cache,
                                                    True, timeout_s=timeout_s)
            if chosen not in matmul and chosen in ("fp32", "bf16"):
                matmul[chosen] = isolated(_matmul, chosen).get("matmul_gflops")
            rows.append({"model": model, "mode": mode, "precision": chosen, "matmul_gflops": matmul.get(chosen),
                         **{name: run for name, run in runs.items()}})
            print(format_row(rows[-1], budget), flush=True)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "budget_min": budget, "rows": rows}
    out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['cpu']}, {result['threads']} threads, torch {result['torch']}\n")
    print(HEADER)
    for row in rows:
        print(format_row(row, budget))
    print(f"\nwrote {out}")
    return result


def any_failed(result: dict) -> bool:
    return any("failed" in run for row in result["rows"] for run in row.values() if isinstance(run, dict))


HEADER = ("| model | mode | precision | eager img/s (of matmul) | compiled img/s (of matmul) | speed-up | "
          "compile s, cold / warm cache | pays in budget |\n|---|---|---|---|---|---|---|---|")


def format_row(row: dict, budget: float) -> str:
    eager, cold, warm = row["eager"], row["cold"], row["warm"]
    failed = [f"{name}: {run['failed']}" for name, run in row.items() if isinstance(run, dict) and "failed" in run]
    if failed:
        return f"| {row['model']} | {row['mode']} | {row['precision']} | FAILED: {'; '.join(failed)} |||||"
    of = lambda run: f" ({run['gflops'] / row['matmul_gflops']:.0%})" if row["matmul_gflops"] else ""  # noqa: E731
    compiled = f"{warm['img_per_s']:,.0f}{of(warm)}"
    if "freezing" in row:
        compiled += f"; with freezing {row['freezing']['img_per_s']:,.0f}{of(row['freezing'])}"
    pays = pays_within(budget, eager["img_per_s"], warm["img_per_s"], warm["compile_s"])
    return (f"| {row['model']} | {row['mode']} | {row['precision']} | {eager['img_per_s']:,.0f}{of(eager)} | "
            f"{compiled} | {warm['img_per_s'] / eager['img_per_s']:.2f}x | {cold['compile_s']:.0f} / "
            f"{warm['compile_s']:.0f} | {'yes' if pays else 'no'} ({budget:g} min) |")
