"""torch.compile (inductor) against eager PyTorch: training and inference rates of the histology models,
compile time (with an empty and with a warm inductor cache), and whether compiling pays inside a budget.

    python bench/compile_bench.py [--models resnet,effnet-lite0] [--modes train,infer] [--budget 15]

Each measurement runs in its own process on in-memory batches of the real shape (the training ceiling:
batch 128 at the model's default crop, channels_last; inference: batch 256, no gradients), in the precision
`--precision auto` picks there (measured, see src/spotter/precision.py) unless --precision says otherwise.
Compile time is the time of the first steps (which trace and compile) beyond what those steps take once
compiled; "cold" uses an empty inductor cache, "warm" a second process on the cache the first one filled,
as a second training run on the same machine would. Compiling pays inside a budget of B minutes when
(B - compile time) x compiled rate > B x eager rate; the last column says so, for the warm cache.
Prints a table and writes JSON. The measurements are spotter.bench.torch_compile's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from spotter.bench import torch_compile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet,effnet-lite0")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--budget", type=float, default=15, help="minutes: does compiling pay within them")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds per measurement before it counts as failed")
    parser.add_argument("--out", type=Path, default=Path("bench-compile.json"))
    args = parser.parse_args()
    result = torch_compile.compare(args.models.split(","), args.modes.split(","), args.precision, args.steps,
                                   args.budget, args.timeout, args.out)
    if torch_compile.any_failed(result):
        sys.exit(1)


if __name__ == "__main__":
    main()
