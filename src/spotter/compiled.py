"""`histo train --compile`: torch.compile (inductor) for a model's training, and where it is the default.

Compiling traces the model and generates fused C++ (CPU) or Triton (GPU) kernels on the first steps,
which costs a minute or more on a small CPU; it is the default only for models where `bench/compile_bench.py`
measured more images inside a 15-minute budget with it than without (compile time included), and only for
runs long enough to win that time back (see README).
The inductor cache lives under the Spotter cache folder, so a second run of the same model and shape
compiles from it in a fraction of the time.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import engine, files
from .precision import rng_untouched

# Models compiled by default for runs with a time budget of at least MIN_BUDGET_MIN minutes, where
# bench/compile_bench.py measured that compiling pays for its own time (see the README's benchmarks).
# None yet: on the quiet 2-core AMD EPYC, compiled resnet training in bf16 (what `auto` picks there) ran at
# 0.82x eager; the 1.77x measured earlier was fp32 on a heavily loaded machine.
COMPILE_BY_DEFAULT: set[str] = set()
# Compiling the training, validation and last-batch graphs takes a minute or two on a 2-core CPU with an
# empty cache; a short run never wins it back.
MIN_BUDGET_MIN = 5.0


def cache_dir() -> Path:
    return files.cache_dir("inductor")


def default_for(model_name: str, time_budget_min: float | None, device_type: str, processes: int) -> bool:
    """Whether `histo train` compiles when neither --compile nor --no-compile is given: only what was
    measured to pay, a single process on a CPU."""
    return (model_name in COMPILE_BY_DEFAULT and (time_budget_min or 0) >= MIN_BUDGET_MIN and device_type == "cpu"
            and processes == 1)


def compile_in_place(model: nn.Module) -> nn.Module:
    """Compile `model`'s forward (and so its backward) in place: parameter names, and so checkpoints,
    stay as they are, and copies of the model (the precision probe, the epoch planner) compile too."""
    use_spotter_cache()
    model.compile()
    return model


def use_spotter_cache() -> None:
    """Point inductor's cache at Spotter's, unless the user chose one (inductor itself writes its default
    into the same environment variable once it has used it)."""
    try:
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir
        default = os.path.abspath(default_cache_dir())
    except ImportError:  # a torch without this helper: only an unset variable is ours to set
        default = None
    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if current is None or os.path.abspath(current) == default:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(cache_dir())


def warm_up(task, settings, device: torch.device, log: Callable[[str], None] = print):
    """Compile every graph a run needs (the training step in the precision the run will use, validation's
    full and last batch) before `engine.fit` starts, so that the epoch planner and the replanning after the
    first epoch time compiled steps, not compiling. The time this takes comes off the time budget, which
    stays the whole run's. Returns the settings to train with. Model weights, BatchNorm statistics and
    random streams are left as they were."""
    start = time.monotonic()
    requested = task.precision if settings.precision == "auto" and task.precision else settings.precision
    model = task.model.to(device)
    batch = next(task.train_batches(0, 0, 1))
    # Decided here and cached, so engine.fit finds the same decision (and records why).
    precision = engine.pick_precision(device, requested, model=model, batch=batch, log=log)
    saved = copy.deepcopy(model.state_dict())
    with rng_untouched(device):
        model.train()
        inputs, targets = batch
        with engine.autocast(device, precision):
            logits = engine.call_model(model, inputs)
        nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float()).backward()
        model.zero_grad(set_to_none=True)
        validation = task.val_batches(0, 1) if task.val_batches is not None else ()
        sizes = list(dict.fromkeys(len(y) for _, y in validation))  # distinct, in order
        model.eval()
        with torch.no_grad(), engine.autocast(device, precision):
            for n in sizes:
                engine.call_model(model, torch.cat([inputs] * -(-n // len(targets)))[:n])
    model.load_state_dict(saved)
    spent = time.monotonic() - start
    log(f"compiled the model in {spent:.0f} s{' (taken from the time budget)' if settings.time_budget_min else ''}")
    if settings.time_budget_min:
        settings = dataclasses.replace(settings, time_budget_min=max(settings.time_budget_min - spent / 60, 0.05))
    return settings
