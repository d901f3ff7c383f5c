"""How training time and memory grow with the data: the default CNN trained from packs of 1x, 8x and 32x
the shared Kaggle patches (32x of 6,832 is 218,624, about the full 220,025-patch Kaggle set).

    python bench/scaling_bench.py [--data ../shared/data/histopathology] [--scales 1,8,32] [--steps 200]

Larger packs are tiled from the real patches (`spotter bench --scale` does the same), written under the
home folder (32x is 6 GB) and deleted afterwards. Each scale trains `--steps` batches of 128 in shuffled
order over the whole pack, in its own process, after the pack's pages were dropped from the page cache
(so reads come from the disk, as in a first epoch; `--warm` keeps them). It reports images/s (median of
windows of steps), the epoch time that rate implies, the process's peak RSS (the memory map streams, so it
should not grow with the pack) and the time to write the pack. Prints a table and writes JSON.
The stages are `spotter bench --scale`'s (spotter.bench.scale).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spotter.bench import SHARED_HISTO
from spotter.bench.scale import SCALING_HEADER, format_scaling_row, scaling
from spotter.precision import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_HISTO)
    parser.add_argument("--scales", default="1,8,32", help="multiples of the shared patches, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="training steps of 128 images per scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warm", action="store_true", help="keep the pack in the page cache (later epochs)")
    parser.add_argument("--out", type=Path, default=Path("bench-scaling.json"))
    args = parser.parse_args()

    rows = scaling(args.data, [int(s) for s in args.scales.split(",")], args.steps, args.device, args.warm)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "steps": args.steps, "page_cache": "warm" if args.warm else "dropped before each scale", "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['cpu']}, {result['threads']} threads, torch {result['torch']}; {args.steps} steps of 128 per "
          f"scale; page cache {result['page_cache']}\n")
    print(SCALING_HEADER)
    for row in rows:
        print(format_scaling_row(row))
    print(f"\nwrote {args.out}")
    if any("failed" in row for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
