"""Precision choice for `--precision auto`: time a few steps in fp32 and in bf16, keep the faster, remember it.

Whether bf16 pays is a property of the model, the input shape and the machine, not of the CPU's flag list:
on one 2-core Xeon with AVX512-BF16 bf16 was slower than fp32 for the default CNN, on an AMD Zen 4 its
matmuls were 2.2x faster. So the first time a (model, input shape, device, threads, torch version, CPU
model, train or inference) combination is seen, a few steps are timed in each precision on a throwaway
copy of the model, and the decision is cached in `<cache>/precision.json` (`SPOTTER_CACHE`, default
`~/.cache/spotter`). Delete that file to measure again. A measurement disturbed by other load is measured
again by a later run until a quiet one stands (measured.py); a resumed run keeps its own precision (engine).
"""
from __future__ import annotations

import copy
import json
import platform
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from . import files, measured
from .steps import autocast, call_model, train_step

PRECISIONS = ("fp32", "bf16")
# bf16 rounds activations and gradients; take it only when it is clearly faster, not within timing noise.
BF16_MIN_SPEEDUP = 1.05
WARMUP_STEPS = 2  # oneDNN builds its kernels on the first steps of each shape and precision
TIMED_STEPS = 3  # per precision, alternating between the two so both see the same machine load


@dataclass
class Choice:
    precision: str
    reason: str
    seconds_per_step: dict[str, float] = field(default_factory=dict)  # median seconds per step, per precision
    cached: bool = False


def cache_file() -> Path:
    return files.cache_dir("precision.json")


def cpu_model() -> str:
    """The CPU's model name, as lscpu shows it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} x{torch.get_num_threads()} threads"


def _shapes(inputs: Any) -> list[list[int]]:
    tensors = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
    return [list(t.shape) for t in tensors if isinstance(t, torch.Tensor)]


def key_fields(model: nn.Module, inputs: Any, device: torch.device) -> dict[str, Any]:
    """What a measured decision about running `model` depends on: the model (class, size, input resizing,
    compiled or not), the input shape (crop and batch), the device and thread count, the torch version."""
    params = sum(p.numel() for p in model.parameters())
    compiled = getattr(model, "_compiled_call_impl", None) is not None  # nn.Module.compile()
    resized = getattr(model, "input_size", None)  # a model that enlarges its input does more work per image
    return {"model": f"{type(model).__name__}/{params}{f'@{resized}' if resized else ''}"
                     f"{' compiled' if compiled else ''}",
            "inputs": _shapes(inputs), "device": device_name(device), "torch": torch.__version__}


def cache_key(model: nn.Module, inputs: Any, device: torch.device, train: bool) -> str:
    """`key_fields`, and whether it trains or only predicts."""
    return json.dumps({**key_fields(model, inputs, device), "mode": "train" if train else "infer"}, sort_keys=True)


def decide(key: str, time_step: Callable[[str], list[float]], *, log: Callable[[str], None] | None = None,
           path: Path | None = None) -> Choice:
    """The cached decision for `key`, or a new one from `time_step(precision) -> seconds of timed steps`.
    A cached decision whose timings were disturbed is measured again, unless this run made it."""
    path = path or cache_file()
    saved = measured.read(path).get(key)
    if saved is not None and measured.reusable(saved):
        if log:
            log(f"precision auto: {saved['precision']}; {saved['reason']} (cached in {path})")
        return Choice(saved["precision"], f"{saved['reason']} (cached in {path})", saved["seconds_per_step"], True)
    if log:
        log("precision auto: " + ("the cached measurement was disturbed, measuring fp32 and bf16 again"
                                  if saved is not None else
                                  "timing a few steps in fp32 and bf16 (once for this model, input shape and machine)"))
    samples = measured.time_alternating(PRECISIONS, time_step, TIMED_STEPS)
    seconds = measured.medians(samples)
    speedup = seconds["fp32"] / seconds["bf16"]
    chosen = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    reason = (f"measured {seconds['fp32'] * 1e3:.0f} ms/step in fp32, {seconds['bf16'] * 1e3:.0f} ms/step in bf16: "
              + (f"bf16 is {speedup:.2f}x faster" if chosen == "bf16" else
                 f"bf16 is {'slower' if speedup < 1 else 'not 5 % faster'} ({speedup:.2f}x)"))
    noisy = measured.disturbed(samples)
    if noisy:  # used by this run (its steps must agree), measured again by a later one
        reason += "; " + measured.noisy_note(noisy)
    measured.update(path, key, measured.stamp({"precision": chosen, "reason": reason, "seconds_per_step": seconds},
                                              noisy))
    if log:
        log(f"precision auto: {chosen}; {reason}")
    return Choice(chosen, reason, seconds, False)


# ---------------------------------------------------------------- timing real steps

def step_timer(model: nn.Module, batch: tuple[Any, torch.Tensor], device: torch.device,
               train: bool) -> Callable[[str], list[float]]:
    """A function timing one training step (or one forward pass without gradients) of a copy of `model` on
    `batch` in a given precision, warming each precision up first. The caller's model is not touched."""
    inputs, targets = batch
    probe: dict[str, Any] = {}  # the model's copy and its optimizer, made on first use (not on a cache hit)
    warmed: set[str] = set()

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def once(precision: str) -> float:
        if not probe:
            probe["model"] = copy.deepcopy(model).to(device).train(train)
            probe["optimizer"] = torch.optim.AdamW(probe["model"].parameters(), lr=1e-6)
        start = time.perf_counter()
        if train:
            train_step(probe["model"], inputs, targets, probe["optimizer"], device, precision)
        else:
            with torch.no_grad(), autocast(device, precision):
                call_model(probe["model"], inputs)
        sync()
        return time.perf_counter() - start

    def time_step(precision: str) -> list[float]:
        if precision not in warmed:
            for _ in range(WARMUP_STEPS):
                once(precision)
            warmed.add(precision)
        return [once(precision)]

    return time_step


def choose(device: torch.device, requested: str = "auto", *, model: nn.Module | None = None,
           batch: tuple[Any, torch.Tensor] | Callable[[], tuple[Any, torch.Tensor]] | None = None,
           train: bool = True, log: Callable[[str], None] | None = None) -> Choice:
    """The precision to run `model` in. `batch` is a real batch (or a function making one) of the shape it
    will see. Without a model to time, `auto` means fp32, which is never wrong, only perhaps slower."""
    if requested != "auto":
        return Choice(requested, "set explicitly (--precision, or by the model for its own reasons)")
    if model is None or batch is None:
        return Choice("fp32", "auto without a model to time: fp32")
    # The probe must not move any random stream the run uses (dropout draws from torch's global
    # generator): a cached decision and a fresh one must give the same run.
    with rng_untouched(device):
        batch = batch() if callable(batch) else batch
        return decide(cache_key(model, batch[0], device, train), step_timer(model, batch, device, train), log=log)


class rng_untouched:
    """Restore torch's (CPU and CUDA), NumPy's and Python's global random states on exit."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __enter__(self):
        self.states = (torch.get_rng_state(), torch.cuda.get_rng_state_all() if self.cuda else None,
                       np.random.get_state(), random.getstate())

    def __exit__(self, *exc):
        torch_state, cuda_states, np_state, py_state = self.states
        torch.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
        np.random.set_state(np_state)
        random.setstate(py_state)
        return False

