"""Refit (`histo train --refit`): once a recipe is chosen on a validation split, the final model trains on every
labelled patch with the same schedule, without early stopping, and its last epoch is the model.

The schedule is either the epochs a validated run (`--config RUN`) actually trained (early stopping and time
budgets end runs before their planned epochs; a refit has nothing to stop on, so it trains exactly as many), or
`--epochs N` / `--time-budget MIN` given on the command line (the budget is planned over every patch).
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from .. import engine, runs
from ..errors import BadInput
from .settings import HistoSettings

NEEDS_SCHEDULE = ("--refit needs a schedule: --config RUN (a finished validated run: the epochs it trained), "
                  "--epochs N or --time-budget MIN")


def trained_epochs(run_dir: Path) -> int:
    """How many epochs the finished run in `run_dir` trained: its metrics.csv rows."""
    run = runs.open_run(run_dir, "histo")
    if run.is_ensemble:
        raise BadInput(f"--config {run_dir}: an ensemble is not trained; replay one of its runs")
    if not (run.path / runs.SUMMARY).exists() or not (run.path / "metrics.csv").exists():
        raise BadInput(f"--config {run_dir}: not a finished run (no {runs.SUMMARY} or metrics.csv), so it has no "
                       "epoch count to copy; finish it with --resume, or give --epochs")
    epochs = pd.read_csv(run.path / "metrics.csv")["epoch"]
    if epochs.empty:
        raise BadInput(f"--config {run_dir}: its metrics.csv has no epoch; give --epochs")
    return int(epochs.max())


def schedule(histo: HistoSettings, train: engine.TrainSettings, *, given: dict[str, Any], config: Path | None,
             resuming: bool = False) -> tuple[engine.TrainSettings, str | None]:
    """The training settings a refit run trains with, and the run whose trained epochs they copy (None: the
    command line's schedule). `given`: the training settings given on the command line; `config`: the --config
    path (a run folder or its settings.json). A resumed run keeps its own settings."""
    if resuming or not histo.refit:
        return train, None
    if "patience" in given:
        raise BadInput("--patience stops on a validation score, and --refit has no validation split")
    if "epochs" in given or "time_budget_min" in given:  # (a --config run's time budget is dropped too)
        return replace(train, time_budget_min=given.get("time_budget_min"), patience=None), None
    if config is None:
        raise BadInput(NEEDS_SCHEDULE)
    run_dir = Path(config) if Path(config).is_dir() else Path(config).parent
    return (replace(train, epochs=trained_epochs(run_dir), time_budget_min=None, patience=None),
            str(run_dir.resolve()))
