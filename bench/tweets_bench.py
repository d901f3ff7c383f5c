"""Tweets benchmark: K-fold cross-validated F1 (mean and spread) and wall time of each model on Kaggle's
train.csv, ensembles of them, plus GloVe coverage before and after normalisation. Prints a table and
writes JSON.

    python bench/tweets_bench.py [--data ../shared/data/disaster-tweets] [--folds 5]
        [--models tfidf seed-gru bigru minilm-frozen minilm] [--ensembles bigru+minilm tfidf+bigru+minilm]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from spotter.files import shared_data

def spotter(*args) -> None:
    done = subprocess.run([sys.executable, "-m", "spotter", *map(str, args)], capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(done.stderr)


def scores(name: str, run: Path, seconds: float) -> dict:
    """Per-fold F1 (models), whole out-of-fold F1 and AUC (models and ensembles) of a finished run."""
    summary = json.loads((run / "summary.json").read_text())
    # Runs report F1 with each fold cut at a threshold tuned without it; ensembles tune on the rows they score.
    at_threshold = summary.get("validation_at_threshold", summary.get("validation"))
    result = {"model": name, "oof_f1": summary.get("f1", at_threshold["f1"]), "oof_auc": at_threshold["auc"],
              "f1_ci95": summary.get("f1_ci95", at_threshold.get("f1_ci95")),
              "threshold": summary["threshold"], "seconds": seconds}
    if "fold_f1" in summary:
        result.update(f1_mean=summary["f1_mean"], f1_std=summary["f1_std"], fold_f1=summary["fold_f1"],
                      glove_coverage=summary["glove_coverage"])
    print(f"{name}: out-of-fold F1 {result['oof_f1']:.4f}  ({seconds:.0f} s)", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=shared_data("disaster-tweets"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["tfidf", "seed-gru", "bigru", "minilm-frozen", "minilm"])
    parser.add_argument("--ensembles", nargs="*", default=["bigru+minilm", "tfidf+bigru+minilm"],
                        help="ensembles of trained models, each as name+name")
    parser.add_argument("--runs-dir", type=Path, help="keep the trained runs here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("bench-tweets.json"))
    args = parser.parse_args()

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = args.runs_dir or Path(tmp)
        for model in args.models:
            start = time.perf_counter()
            spotter("tweets", "train", "--data", args.data, "--out", runs / model, "--model", model,
                    "--folds", args.folds)
            results.append(scores(model, runs / model, time.perf_counter() - start))
        for name in args.ensembles:
            start = time.perf_counter()
            spotter("tweets", "ensemble", *(runs / m for m in name.split("+")), "--out", runs / name)
            results.append(scores(name, runs / name, time.perf_counter() - start))
    args.out.write_text(json.dumps(results, indent=2))

    print(f"\n| model | {args.folds}-fold F1 (mean ± sd) | out-of-fold F1 | out-of-fold AUC | threshold | wall time |")
    print("|---|---|---|---|---|---|")
    for r in results:
        per_fold = f"{r['f1_mean']:.4f} ± {r['f1_std']:.4f}" if "f1_mean" in r else "(ensemble)"
        print(f"| {r['model']} | {per_fold} | {r['oof_f1']:.4f} | {r['oof_auc']:.4f} | {r['threshold']:.3f} | "
              f"{r['seconds']:.0f} s |")
    cover = next((r["glove_coverage"] for r in results if r.get("glove_coverage")), None)
    if cover:
        print(f"\nGloVe 6B 50-d coverage of the training vocabulary: {cover['raw']['vocabulary']:.1%} of "
              f"{cover['raw']['distinct_words']} words before normalisation, {cover['normalised']['vocabulary']:.1%} "
              f"of {cover['normalised']['distinct_words']} after ({cover['raw']['tokens']:.1%} -> "
              f"{cover['normalised']['tokens']:.1%} of running tokens)")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
