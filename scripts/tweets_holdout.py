"""What `predict` ships, measured: one model (one 80/20 split) against the average of K fold models.

Holds out a group-disjoint 20 % of train.csv (no normalised text on both sides), trains each setting with the
CLI on the rest, and scores the shipped predictor on the held-out tweets at the run's own threshold, with
bootstrap 95 % intervals. Nothing is tuned on the held-out rows.

With --refit, each K-fold run (K >= 2) is also refitted on the same tweets (`tweets train --refit --config RUN`:
one model on every row, RUN's epochs and threshold) and scored beside it, with a paired bootstrap interval of
the refit's gain over the fold average on the same held-out tweets.

    PYTHONPATH=src python scripts/tweets_holdout.py --model blend --folds 1 5
    PYTHONPATH=src python scripts/tweets_holdout.py --model blend-minilm --folds 5 --refit
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
from spotter.metrics import f1_score, roc_auc
from spotter.tweets.text import NormaliseOptions, normalise


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data("disaster-tweets"))
    parser.add_argument("--out", type=Path, default=Path("runs/tweet-holdout"))
    parser.add_argument("--model", default="blend")
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 5])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--refit", action="store_true", help="also refit each K-fold run on the same tweets")
    args = parser.parse_args()
    df = pd.read_csv(args.data / "train.csv", dtype=str, keep_default_na=False)
    groups = [normalise(t, NormaliseOptions()) for t in df["text"]]
    keep, held = next(GroupShuffleSplit(n_splits=1, test_size=0.2, random_state=args.seed).split(df, groups=groups))
    data = args.out / "data"
    data.mkdir(parents=True, exist_ok=True)
    df.iloc[np.sort(keep)].to_csv(data / "train.csv", index=False)
    df.iloc[np.sort(held)].to_csv(data / "holdout.csv", index=False)
    rows, gains = [], []
    for folds in args.folds:
        run = args.out / f"{args.model}-k{folds}"
        train = ["--data", str(data), "--model", args.model, "--folds", str(folds), "--seed", str(args.seed)]
        rows.append((str(folds), *_trained_and_scored(run, train, data)))
        if args.refit and folds >= 2:
            refit = args.out / f"{args.model}-k{folds}-refit"
            rows.append((f"{folds}, refit", *_trained_and_scored(refit, ["--refit", "--config", str(run)], data)))
            gains.append((folds, _paired_gain(run, refit, data / "holdout.csv", args.seed)))
    print(f"\n{args.model}: trained on {len(keep)} tweets, scored on {len(held)} held-out ones (group-disjoint)")
    print("| folds | wall s | own CV F1 | held-out F1 | held-out AUC |\n|---|---|---|---|---|")
    for folds, wall, cv_f1, r in rows:
        cv = "-" if cv_f1 is None else f"{cv_f1:.4f}"
        print(f"| {folds} | {wall:.0f} | {cv} | {r['f1']:.4f} [{r['f1_ci95'][0]:.4f}, {r['f1_ci95'][1]:.4f}] | "
              f"{r['auc']:.4f} [{r['auc_ci95'][0]:.4f}, {r['auc_ci95'][1]:.4f}] |")
    for folds, gain in gains:
        print(f"refit minus the {folds}-fold average on the same held-out tweets (paired bootstrap 95 %): F1 "
              f"{gain['f1']:+.4f} [{gain['f1_ci95'][0]:+.4f}, {gain['f1_ci95'][1]:+.4f}], AUC {gain['auc']:+.4f} "
              f"[{gain['auc_ci95'][0]:+.4f}, {gain['auc_ci95'][1]:+.4f}]")


def _spotter(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "spotter", "tweets", *args], check=True)


def _trained_and_scored(run: Path, train: list[str], data: Path) -> tuple[float, float | None, dict]:
    """Train `run` with the CLI (unless done), score it on the held-out tweets: (wall s, own CV F1, report)."""
    if not (run / "evaluation.json").exists():
        start = time.perf_counter()
        _spotter("train", "--out", str(run), *train)
        (run / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
        _spotter("evaluate", str(run), "--csv", str(data / "holdout.csv"))
    summary = json.loads((run / "summary.json").read_text())
    return (float((run / "wall_seconds.txt").read_text()), summary.get("f1"),
            json.loads((run / "evaluation.json").read_text()))


def _paired_gain(run: Path, refit: Path, holdout: Path, seed: int, rounds: int = 2000) -> dict:
    """The refit's F1 and AUC minus the fold average's on the held-out tweets, each at its run's threshold, and
    the 95 % interval of that difference over bootstrap resamples of the tweets (both scored on the same ones)."""
    labels = pd.read_csv(holdout, dtype={"id": str})["target"].to_numpy().astype(int)
    decided = []
    for source in (run, refit):
        out = source / "holdout_predictions.csv"
        if not out.exists():
            _spotter("predict", str(source), "--csv", str(holdout), "--out", str(out), "--proba")
        table = pd.read_csv(out)
        decided.append((table["target"].to_numpy().astype(bool), table["proba"].to_numpy()))
    (fold_hard, fold_prob), (refit_hard, refit_prob) = decided

    def gain(rows: np.ndarray) -> tuple[float, float]:
        y = labels[rows]
        return (f1_score(y, refit_hard[rows]) - f1_score(y, fold_hard[rows]),
                roc_auc(y, refit_prob[rows]) - roc_auc(y, fold_prob[rows]))

    rng = np.random.default_rng(seed)
    draws = np.array([gain(rng.integers(0, len(labels), len(labels))) for _ in range(rounds)])
    f1, auc = gain(np.arange(len(labels)))
    return {"f1": f1, "auc": auc, "f1_ci95": np.percentile(draws[:, 0], [2.5, 97.5]).tolist(),
            "auc_ci95": np.percentile(draws[:, 1], [2.5, 97.5]).tolist()}


if __name__ == "__main__":
    main()
