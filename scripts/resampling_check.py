"""How much histo runs' probabilities move when their held-out patches are read from a 2x or 4x finer level
and resampled to 96 px (antialiased bilinear as WSInfer, area as a pyramid, and `histo slide`'s reader).
Prints a Markdown table and writes JSON; the measurement is spotter.bench.resampling's (see its docstring).

    python scripts/resampling_check.py RUN [RUN ...] [--data FOLDER] [--n 768] [--scales 2 4]
                                       [--blur 0 0.5] [--device cpu] [--out resampling.json]

`--scales 3.857` is an Aperio 40x scan (0.252 µm/px) read at 0.972 µm/px; `area` is skipped there.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from spotter.bench.resampling import WAYS, format_table, measure
from spotter.files import shared_data
from spotter.precision import cpu_model


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=Path, help="histo run folders (plain runs: their validation rows)")
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"),
                        help="the Kaggle-layout folder the runs were trained on")
    parser.add_argument("--n", type=int, default=768, help="held-out patches per run")
    parser.add_argument("--scales", type=float, nargs="+", default=[2, 4], help="finer level, times the model's")
    parser.add_argument("--blur", type=float, nargs="+", default=[0.0],
                        help="Gaussian sigma in model pixels applied at the finer level (0: none)")
    parser.add_argument("--ways", nargs="+", choices=WAYS, default=list(WAYS))
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("resampling.json"))
    args = parser.parse_args(argv)

    scales = [int(s) if float(s).is_integer() else s for s in args.scales]
    results = measure(args.runs, args.data, n=args.n, scales=scales, blurs=args.blur, ways=args.ways,
                      device=args.device, precision=args.precision, seed=args.seed,
                      log=lambda line: print(line, file=sys.stderr))
    report = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "data": str(args.data), "seed": args.seed, "runs": results}
    args.out.write_text(json.dumps(report, indent=2))
    print(format_table(results))
    print(f"written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
