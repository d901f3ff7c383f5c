"""The inference table of `spotter bench` alone: each model on eager, compiled and onnx, plain and 8x TTA, with
setup, break-even against eager and what `--backend auto` chooses for 29 / 57,458 / 300k patches; then the
JPEG-pyramid slide stage for the given models. Each model x backend in its own process. Prints the tables and
writes JSON.

    python bench/inference_bench.py [--quick] [--device auto] [--models seed,resnet]
                                    [--slide-models effnet-lite1,resnet] [--slide-backend eager]
                                    [--out inference_bench.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spotter.bench import inference
from spotter.bench.isolate import isolated
from spotter.bench.report import jpeg_slide_table
from spotter.bench.slides import stage_jpeg_slide
from spotter.files import shared_data
from spotter.precision import cpu_model
from spotter.runners import BACKENDS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--quick", action="store_true", help="256 patches (32 with TTA), 16x16-patch mosaic")
    names = lambda text: [m for m in text.split(",") if m]  # noqa: E731
    parser.add_argument("--models", type=names, help="default: all (effnet-lite1 with its weights installed)")
    parser.add_argument("--slide-models", type=names, default=[], help="JPEG slide stage for these models")
    parser.add_argument("--slide-backend", default="eager", choices=["auto", *BACKENDS],
                        help="the JPEG slide stage's backend (eager: the ratio is reading's cost alone; a faster "
                             "backend makes reading weigh more)")
    parser.add_argument("--out", type=Path, default=Path("inference_bench.json"))
    args = parser.parse_args()

    stage = lambda fn, *a: isolated(fn, *a)  # noqa: E731
    rows, stages = inference.measure(stage, str(args.data), args.quick, args.device, args.models)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "device": args.device, "inference": rows,
              "failed_stages": {name: s["failed"] for name, s in stages.items() if "failed" in s}}
    for model in args.slide_models:
        slide = stage(stage_jpeg_slide, str(args.data), args.quick, args.device, model, 32, args.slide_backend)
        if "failed" in slide:
            result["failed_stages"][f"jpeg_slide {model}"] = slide["failed"]
        result.update({k: v for k, v in slide.items() if k != "peak_rss_mb"})
    args.out.write_text(json.dumps(result, indent=2))
    print(f"{result['cpu']}, {result['threads']} threads")
    print("\n".join(inference.format_table(rows) + jpeg_slide_table(result)))
    print(f"written to {args.out}", file=sys.stderr)
    sys.exit(1 if result["failed_stages"] else 0)


if __name__ == "__main__":
    main()
