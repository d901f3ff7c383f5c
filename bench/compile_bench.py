"""torch.compile (inductor) against eager PyTorch for the histology models; what it measures and how:
spotter.bench.torch_compile.

    python bench/compile_bench.py [--models resnet,effnet-lite0] [--modes train,infer] [--budget 15]

Prints a table and writes JSON.
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
