"""Tweets benchmark: K-fold cross-validated F1 (mean and spread) and wall time of each model on Kaggle's
train.csv, ensembles of them, plus GloVe coverage before and after normalisation. Prints a table and
writes JSON.

    python bench/tweets_bench.py [--data ../shared/data/disaster-tweets] [--folds 5]
        [--models tfidf seed-gru bigru minilm-frozen minilm] [--ensembles bigru+minilm tfidf+bigru+minilm]

The runs are trained and scored by spotter.bench.scores.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from spotter.bench.scores import tweets_runs, tweets_table
from spotter.files import shared_data


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

    results = tweets_runs(args.data, args.folds, args.models, args.ensembles, args.runs_dir)
    args.out.write_text(json.dumps(results, indent=2))
    print(tweets_table(results, args.folds))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
