"""What `predict` ships, measured: one model (one 80/20 split) against the average of K fold models.

Holds out a group-disjoint 20 % of train.csv (no normalised text on both sides), trains each setting with the
CLI on the rest, and scores the shipped predictor on the held-out tweets at the run's own threshold, with
bootstrap 95 % intervals. Nothing is tuned on the held-out rows.

    PYTHONPATH=src python scripts/tweets_holdout.py --model blend --folds 1 5
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupShuffleSplit

from spotter.files import shared_data
from spotter.tweets.text import NormaliseOptions, normalise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data("disaster-tweets"))
    parser.add_argument("--out", type=Path, default=Path("runs/tweet-holdout"))
    parser.add_argument("--model", default="blend")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    df = pd.read_csv(args.data / "train.csv", dtype=str, keep_default_na=False)
    groups = [normalise(t, NormaliseOptions()) for t in df["text"]]
    keep, held = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=args.seed).split(df, groups=groups))
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    df.iloc[np.sort(keep)].to_csv(data / "train.csv", index=False)
    df.iloc[np.sort(held)].to_csv(data / "holdout.csv", index=False)
    rows = []
    for folds in args.folds:
        run = args.out / f"{args.model}-k{folds}"
        if not (run / "evaluation.json").exists():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "spotter", "tweets", "train", "--data", str(data), "--out", str(run),
                            "--model", args.model, "--folds", str(folds), "--seed", str(args.seed)], check=True)
            (run / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
            subprocess.run([sys.executable, "-m", "spotter", "tweets", "evaluate", str(run), "--csv",
                            str(data / "holdout.csv")], check=True)
        report = json.loads((run / "evaluation.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        rows.append((folds, float((run / "wall_seconds.txt").read_text()), summary["f1"], report))
    print(f"\n{args.model}: trained on {len(keep)} tweets, scored on {len(held)} held-out ones (group-disjoint)")
    print("| folds | wall s | own CV F1 | held-out F1 | held-out AUC |\n|---|---|---|---|---|")
    for folds, wall, cv_f1, r in rows:
        print(f"| {folds} | {wall:.0f} | {cv_f1:.4f} | {r['f1']:.4f} [{r['f1_ci95'][0]:.4f}, {r['f1_ci95'][1]:.4f}] | "
              f"{r['auc']:.4f} [{r['auc_ci95'][0]:.4f}, {r['auc_ci95'][1]:.4f}] |")


if __name__ == "__main__":
    main()
