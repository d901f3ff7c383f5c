"""Histopathology benchmark: packing speed, training throughput against its ceiling, and the scores of the
default (effnet-lite1), the from-scratch resnet-plain and the write-up's seed model trained on the shared real
patches. Prints a table and writes JSON.

    python bench/histo_bench.py [--data ../shared/data/histopathology] [--budget 15]
                                [--models resnet-plain,effnet-lite1,seed] [--skip-speed]

The speed stages are `spotter bench`'s (spotter.bench.histo); the scores, spotter.bench.scores's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from spotter.bench import scores
from spotter.bench.histo import stage_histo_train, stage_pack
from spotter.files import shared_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"))
    parser.add_argument("--budget", type=float, default=15, help="minutes for every model but seed")
    parser.add_argument("--models", default="resnet-plain,effnet-lite1,seed",
                        help="models to train and score, comma-separated (empty: none)")
    parser.add_argument("--ensembles", nargs="*", default=["resnet-plain+effnet-lite1"],
                        help="ensembles of trained models, each as name+name (calibrated on 8x TTA predictions)")
    parser.add_argument("--skip-speed", action="store_true", help="skip the packing and throughput stages")
    parser.add_argument("--runs-dir", type=Path, help="keep the trained runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("bench-histo.json"))
    args = parser.parse_args()

    results: dict = {"threads": torch.get_num_threads()}
    if not args.skip_speed:
        results.update(stage_pack(str(args.data), quick=False))
        results.update(stage_histo_train(str(args.data), quick=False, device="auto"))
    runs = scores.histo_runs(args.data, list(filter(None, args.models.split(","))), args.ensembles, args.budget,
                             args.runs_dir)
    results["runs"] = runs
    args.out.write_text(json.dumps(results, indent=2))
    if not args.skip_speed:
        print(scores.histo_speed(results))
    if runs:
        print(scores.histo_table(runs))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
