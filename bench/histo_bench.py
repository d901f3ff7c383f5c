"""Histopathology benchmark: packing speed, training throughput against its ceiling, and the scores of the
default (effnet-lite1), the from-scratch resnet-plain and the write-up's seed model trained on the shared real
patches. Prints a table and writes JSON.

    python bench/histo_bench.py [--data ../shared/data/histopathology] [--budget 15]
                                [--models resnet-plain,effnet-lite1,seed] [--skip-speed]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from spotter.bench import stage_histo_train, stage_pack
from spotter.files import shared_data

def spotter(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "spotter", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr)
    return result.stdout


def train_and_score(data: Path, out: Path, model: str, extra: list[str]) -> dict:
    start = time.perf_counter()
    spotter("histo", "train", "--data", data, "--out", out, "--model", model, *extra)
    seconds = time.perf_counter() - start
    epochs = sum(1 for _ in open(out / "metrics.csv")) - 1
    return {"model": model, "train_seconds": seconds, "epochs": epochs, **score(out)}


def score(out: Path, tta_out: Path | None = None) -> dict:
    """Validation AUC of a run or ensemble, without and with 8x TTA (an ensemble calibrated on TTA
    predictions, `tta_out`, scores the TTA column)."""
    tta_out = tta_out or out
    spotter("histo", "evaluate", out)
    spotter("histo", "evaluate", tta_out, "--tta")
    plain = json.loads((out / "evaluation.json").read_text())
    tta = json.loads((tta_out / "evaluation_tta.json").read_text())
    return {"val_auc": plain["auc"], "val_auc_tta": tta["auc"], "val_images": plain["images"]}


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
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in filter(None, args.models.split(",")):
            # The seed model gets the write-up's schedule (11 epochs); the others the time budget.
            extra = ["--epochs", 11, "--lr", 1e-3] if model == "seed" else ["--time-budget", args.budget]
            runs.append(train_and_score(args.data, (args.runs_dir or Path(tmp)) / model, model, extra))
            print(f"{model}: val AUC {runs[-1]['val_auc']:.4f}, with TTA {runs[-1]['val_auc_tta']:.4f}", flush=True)
        for name in args.ensembles:
            members = name.split("+")
            if not set(members) <= {r["model"] for r in runs}:
                continue
            out = (args.runs_dir or Path(tmp)) / name
            # An ensemble's calibration holds for predictions made as it was fitted: one of each.
            spotter("histo", "ensemble", *(out.parent / m for m in members), "--out", out)
            spotter("histo", "ensemble", *(out.parent / m for m in members), "--out", out.with_name(name + "-tta"),
                    "--tta")
            runs.append({**score(out, out.with_name(name + "-tta")), "model": name, "epochs": None,
                         "train_seconds": sum(r["train_seconds"] for r in runs if r["model"] in members)})
    results["runs"] = runs
    args.out.write_text(json.dumps(results, indent=2))

    if not args.skip_speed:
        print_speed(results)
    if runs:
        print("\n| model | epochs | train time | val AUC | val AUC 8x TTA |")
        print("|---|---|---|---|---|")
        for r in runs:
            print(f"| {r['model']} | {r['epochs'] or '-'} | {r['train_seconds'] / 60:.1f} min | {r['val_auc']:.4f} | "
                  f"{r['val_auc_tta']:.4f} |")
    print(f"\nwrote {args.out}")


def print_speed(results: dict) -> None:
    print(f"\npacking (warm cache): {results['pack_files_per_s']:,.0f} files/s; "
          f"plain PIL loop {results['pil_files_per_s']:,.0f} files/s "
          f"({results['pack_files_per_s'] / results['pil_files_per_s']:.1f}x)")
    print(f"training throughput ({results['precision']}): ceiling {results['train_ceiling_img_per_s']:.0f} img/s, "
          f"end to end {results['train_e2e_img_per_s']:.0f} img/s ({results['e2e_over_ceiling']:.1%})")


if __name__ == "__main__":
    main()
