"""Whole-slide benchmark: `histo slide` end to end against in-memory inference of the same model, the
tissue-mask time, and peak memory on a large synthetic slide. Prints a table and writes JSON.

    python bench/slide_bench.py [--quick] [--device auto] [--run RUN] [--stride 32]
                                [--big-side 50000] [--big-stride 32] [--skip-big] [--skip-mosaic]
                                [--out slide_bench.json]

Without --run an untrained ResNet is scored (the same speed as a trained one). The stages are
spotter.bench.slides's (`spotter bench` runs `stage_slide`).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spotter.bench.slides import stage_big_slide, stage_slide
from spotter.files import shared_data
from spotter.precision import cpu_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"))
    parser.add_argument("--run", help="histo run or ensemble (default: an untrained ResNet)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="16x16-patch mosaic and a 20k x 20k slide")
    parser.add_argument("--stride", type=int, default=32)
    parser.add_argument("--big-side", type=int, help="side of the synthetic slide (default 50000; 20000 quick)")
    parser.add_argument("--big-stride", type=int, default=32)
    parser.add_argument("--skip-big", action="store_true")
    parser.add_argument("--skip-mosaic", action="store_true", help="only the big slide (its memory check)")
    parser.add_argument("--tmp", help="folder for the synthetic slide (default: the system's temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("slide_bench.json"))
    args = parser.parse_args()

    results = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": args.device}
    if not args.skip_mosaic:
        results.update(stage_slide(str(args.data), args.quick, args.device, args.run, args.stride))
    if not args.skip_big:
        side = args.big_side or (20_000 if args.quick else 50_000)
        results.update(stage_big_slide(str(args.data), side, args.device, args.run, args.big_stride, args.tmp))
    args.out.write_text(json.dumps(results, indent=2))
    width = max(map(len, results))
    for key, value in results.items():
        shown = f"{value:,.3f}" if isinstance(value, float) else str(value)
        print(f"{key:<{width}}  {shown}")
    print(f"written to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
