"""`histo train --compile`: torch.compile (inductor) for a model's training, and where it is the default.

Compiling traces the model and generates fused C++ (CPU) or Triton (GPU) kernels on the first steps,
which costs a minute or more on a small CPU; it is the default only for models where `bench/compile_bench.py`
measured more images inside a 15-minute budget with it than without (compile time included), and only for
runs long enough to win that time back (see README).
The inductor cache lives under the Spotter cache folder, so a second run of the same model and shape
compiles from it in a fraction of the time.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

# Models compiled by default for runs with a time budget of at least MIN_BUDGET_MIN minutes, where
# bench/compile_bench.py measured that compiling pays for its own time (see the README's benchmarks).
COMPILE_BY_DEFAULT = {"resnet"}
# Compiling the training, validation and last-batch graphs takes a minute or two on a 2-core CPU with an
# empty cache; a short run never wins it back.
MIN_BUDGET_MIN = 5.0


def cache_dir() -> Path:
    return Path(os.environ.get("SPOTTER_CACHE", Path.home() / ".cache" / "spotter")) / "inductor"


def default_for(model_name: str, time_budget_min: float | None, device_type: str, processes: int) -> bool:
    """Whether `histo train` compiles when neither --compile nor --no-compile is given: only what was
    measured to pay, a single process on a CPU."""
    return (model_name in COMPILE_BY_DEFAULT and (time_budget_min or 0) >= MIN_BUDGET_MIN and device_type == "cpu"
            and processes == 1)


def compile_in_place(model: nn.Module) -> nn.Module:
    """Compile `model`'s forward (and so its backward) in place: parameter names, and so checkpoints,
    stay as they are, and copies of the model (the precision probe, the epoch planner) compile too."""
    _use_spotter_cache()
    model.compile()
    return model


def _use_spotter_cache() -> None:
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
