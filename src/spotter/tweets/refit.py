"""Refit (`tweets train --refit --config RUN`): once a recipe is chosen by cross-validation, the final model
trains on every labelled tweet (one model; for a blend, one per member), without validation or early stopping.

Its schedule and threshold come from the validated run RUN: the RNN trains as many epochs as the median of RUN's
folds' best epochs, rounded up (each fold's epoch of highest validation AUC, in its metrics.csv), or `--epochs N`; the
decision threshold is RUN's, tuned on its out-of-fold predictions (a refit has no held-out rows to tune one on).
The run records both sources in settings.json and summary.json (`refit`).
"""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import engine, runs
from ..errors import BadInput
from .settings import TweetSettings

NEEDS_CONFIG = ("--refit needs --config RUN: a finished cross-validated tweets run, whose out-of-fold threshold "
                "the refit uses (it has no validation rows to tune one on) and whose folds' best epochs it trains "
                "(or --epochs N with it)")


def fold_best_epochs(run: runs.Run) -> list[int]:
    """Each trained network's best epoch in `run` (highest validation AUC in its metrics.csv): one per fold for
    an RNN, a blend's BiGRU members; none for models without epochs (TF-IDF, logistic regressions)."""
    best = []
    for k in range(int(run.summary.get("folds", 0))):
        for metrics in sorted((run.path / f"fold{k}").glob("**/metrics.csv")):
            rows = pd.read_csv(metrics)
            if "val_auc" in rows and rows["val_auc"].notna().any():
                best.append(int(rows.loc[rows["val_auc"].idxmax(), "epoch"]))
    return best


def validated_run(config: Path) -> runs.Run:
    """The finished cross-validated run that --config names (its folder or settings.json)."""
    run_dir = Path(config) if Path(config).is_dir() else Path(config).parent
    run = runs.open_run(run_dir, "tweets")
    if run.is_ensemble:
        raise BadInput(f"--config {run_dir}: an ensemble is not trained; refit one of its runs")
    if not run.summary or "threshold" not in run.summary:
        raise BadInput(f"--config {run_dir}: not a finished run (no {runs.SUMMARY}); finish it with --resume")
    if run.summary.get("refit"):
        raise BadInput(f"--config {run_dir}: a refit run has no folds to copy a schedule and threshold from; "
                       f"give the validated run it was refitted from ({run.summary.get('threshold_from')})")
    return run


def schedule(settings: TweetSettings, train: engine.TrainSettings, *, given: dict[str, Any],
             config: Path | None) -> tuple[engine.TrainSettings, dict | None]:
    """The training settings a refit trains with, and its record (schedule and threshold sources, epochs,
    threshold); (train, None) when not refitting."""
    if not settings.refit:
        return train, None
    if "patience" in given:
        raise BadInput("--patience stops on a validation score, and --refit has no validation rows")
    if "time_budget_min" in given:
        raise BadInput("--time-budget: a refit trains the --config run's epochs (or --epochs N)")
    if config is None:
        raise BadInput(NEEDS_CONFIG)
    run = validated_run(config)
    train = replace(train, time_budget_min=None)  # (a --config run's time budget is dropped too)
    source = str(run.path.resolve())
    best = fold_best_epochs(run)
    if "epochs" in given:
        epochs, schedule_from = train.epochs, None
    elif best:
        epochs, schedule_from = int(np.ceil(np.median(best))), source
    else:  # no network with epochs (tfidf): the planned epochs are never used
        epochs, schedule_from = train.epochs, None
    record = {"refit": True, "schedule_from": schedule_from, "epochs": epochs, "fold_best_epochs": best,
              "threshold": float(run.summary["threshold"]), "threshold_from": source,
              "threshold_source": f"{source}: tuned for F1 on its out-of-fold predictions"}
    return replace(train, epochs=epochs, patience=None), record


def refuse(run: runs.Run, purpose: str) -> None:
    """One line refusing a refit run where out-of-fold predictions are needed (`purpose`: what they are for)."""
    if run.summary.get("refit"):
        raise BadInput(f"{run.path}: a refit run has no out-of-fold predictions {purpose}; use the cross-validated "
                       f"run it was refitted from ({run.summary.get('threshold_from')})")


def saved_record(run_dir: Path) -> dict | None:
    """The refit record a run saved in settings.json (to resume it), or None."""
    path = Path(run_dir) / runs.SETTINGS
    return json.loads(path.read_text()).get("refit") if path.exists() else None
