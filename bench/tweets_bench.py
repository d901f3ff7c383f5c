"""Tweets benchmark: K-fold cross-validated F1 (mean and spread) and wall time of each model on Kaggle's
train.csv, plus GloVe coverage before and after normalisation. Prints a table and writes JSON.

    python bench/tweets_bench.py [--data ../shared/data/disaster-tweets] [--folds 5] [--models tfidf seed-gru bigru]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "disaster-tweets")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["tfidf", "seed-gru", "bigru"])
    parser.add_argument("--out", type=Path, default=Path("bench-tweets.json"))
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models:
            run = Path(tmp) / model
            start = time.perf_counter()
            done = subprocess.run([sys.executable, "-m", "spotter", "tweets", "train", "--data", str(args.data),
                                   "--out", str(run), "--model", model, "--folds", str(args.folds)],
                                  capture_output=True, text=True)
            if done.returncode:
                raise SystemExit(done.stderr)
            seconds = time.perf_counter() - start
            summary = json.loads((run / "summary.json").read_text())
            results.append({"model": model, "f1_mean": summary["f1_mean"], "f1_std": summary["f1_std"],
                            "fold_f1": summary["fold_f1"], "oof_auc": summary["validation"]["auc"],
                            "threshold": summary["threshold"], "seconds": seconds,
                            "glove_coverage": summary["glove_coverage"]})
            print(f"{model}: F1 {summary['f1_mean']:.4f} ± {summary['f1_std']:.4f}  ({seconds:.0f} s)", flush=True)
    args.out.write_text(json.dumps(results, indent=2))

    print(f"\n| model | {args.folds}-fold F1 (mean ± sd) | out-of-fold AUC | threshold | wall time |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['f1_mean']:.4f} ± {r['f1_std']:.4f} | {r['oof_auc']:.4f} | "
              f"{r['threshold']:.3f} | {r['seconds']:.0f} s |")
    cover = next((r["glove_coverage"] for r in results if r["glove_coverage"]), None)
    if cover:
        print(f"\nGloVe 6B 50-d coverage of the training vocabulary: {cover['raw']['vocabulary']:.1%} of "
              f"{cover['raw']['distinct_words']} words before normalisation, {cover['normalised']['vocabulary']:.1%} "
              f"of {cover['normalised']['distinct_words']} after ({cover['raw']['tokens']:.1%} -> "
              f"{cover['normalised']['tokens']:.1%} of running tokens)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
