"""`histo train --compile`: torch.compile (inductor) for a model's training, and where it is the default.

Compiling traces the model and generates fused C++ (CPU) or Triton (GPU) kernels on the first steps,
which costs minutes on a small CPU; it is the default only for models where `bench/compile_bench.py`
measured more images inside a 15-minute budget with it than without (compile time included), see README.
The inductor cache lives under the Spotter cache folder, so a second run of the same model and shape
compiles from it in a fraction of the time.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

# model -> compile by default. Measured with bench/compile_bench.py on the 2-core AMD EPYC (torch 2.13.0+cpu),
# under load from other jobs: see the README's benchmark section. Not compiled where it did not pay.
COMPILE_BY_DEFAULT: dict[str, bool] = {"resnet": False, "effnet-lite0": False, "seed": False}


def cache_dir() -> Path:
    return Path(os.environ.get("SPOTTER_CACHE", Path.home() / ".cache" / "spotter")) / "inductor"


def default_for(model_name: str) -> bool:
    return COMPILE_BY_DEFAULT.get(model_name, False)


def compile_in_place(model: nn.Module) -> nn.Module:
    """Compile `model`'s forward (and so its backward) in place: parameter names, and so checkpoints,
    stay as they are, and copies of the model (the precision probe, the epoch planner) compile too."""
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir()))
    model.compile()
    return model
