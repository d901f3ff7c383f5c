"""Run folders: the one place that knows how a finished run, or an ensemble of runs, lies on disk.

Both tasks lay a run folder out the same way:

| file | what |
|---|---|
| `settings.json` | the resolved settings: `{"train": {...}, "task": {"histo" or "tweets": {...}}, ...}`; `--config` replays it |
| `summary.json` | the run's scores (and, for tweets, the decision threshold) |
| `folds.csv` | `id,fold`: the validation rows of each fold (a histology run has one fold, 0) |
| `validation_predictions.csv` | `id,target,prob`: the validation (out-of-fold) predictions |
| `best.pt`, `last.pt` or `fold<k>/` | the weights |

An ensemble folder holds `ensemble.json` (task, members, calibration, threshold) with the same `summary.json`,
`folds.csv` and `validation_predictions.csv`; its members are run folders or ensembles again.

Runs written before this layout still open: tweets runs kept their settings in `run.json`, histology runs their
validation ids in `val_ids.txt` and had no summary.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import UserError

SETTINGS = "settings.json"
SUMMARY = "summary.json"
FOLDS = "folds.csv"
PREDICTIONS = "validation_predictions.csv"
ENSEMBLE = "ensemble.json"
TASKS = ("histo", "tweets")
_LEGACY_TWEETS_SETTINGS = "run.json"
_LEGACY_VAL_IDS = "val_ids.txt"


class RunError(UserError, FileNotFoundError):
    """A folder that is not a finished run of the kind asked for; the message says what to do."""


@dataclass
class Run:
    """A finished run or ensemble folder, as read from disk (nothing is loaded into a model here)."""

    path: Path
    task: str  # "histo" or "tweets"
    settings: dict[str, Any] = field(default_factory=dict)  # the task's settings (an ensemble: its first run's)
    train: dict[str, Any] = field(default_factory=dict)  # the training loop's settings (likewise)
    summary: dict[str, Any] = field(default_factory=dict)
    spec: dict[str, Any] | None = None  # ensemble.json
    members: list["Run"] = field(default_factory=list)  # an ensemble's runs (ensembles of ensembles nest)

    @property
    def is_ensemble(self) -> bool:
        return self.spec is not None

    @property
    def kind(self) -> str:
        return "ensemble" if self.is_ensemble else "run"

    @property
    def name(self) -> str:
        """The model kind ("resnet", "bigru", ...) or "ensemble"."""
        return "ensemble" if self.is_ensemble else str(self.settings.get("model", "?"))

    @property
    def threshold(self) -> float:
        """The decision threshold: tuned for F1 on tweets, 0.5 for histology unless the run says otherwise."""
        source = self.spec if self.is_ensemble else self.summary
        return float(source.get("threshold", 0.5))

    @property
    def calibration(self) -> list[tuple[float, float]]:
        return [tuple(ab) for ab in self.spec["calibration"]] if self.is_ensemble else []

    @property
    def tta(self) -> bool | None:
        """An ensemble's calibration holds only for predictions made as it was fitted (with or without TTA)."""
        return self.spec.get("tta") if self.is_ensemble else None

    def runs(self) -> list["Run"]:
        """The plain runs under this one, depth first (a plain run is its own only one)."""
        return [leaf for m in self.members for leaf in m.runs()] if self.is_ensemble else [self]

    def folds(self) -> pd.DataFrame:
        """`id,fold` of every validation row (ids as strings)."""
        path = self.path / FOLDS
        if path.exists():
            return pd.read_csv(path, dtype={"id": str})
        legacy = self.path / _LEGACY_VAL_IDS
        if legacy.exists():
            return pd.DataFrame({"id": legacy.read_text().split(), "fold": 0})
        raise RunError(f"{self.path}: no {FOLDS}; it names the run's validation rows (retrain the run, or pass "
                       "--data to score it on a labelled folder instead)")

    def validation_ids(self) -> np.ndarray:
        return self.folds()["id"].to_numpy()

    def validation_predictions(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, labels, probabilities) of the validation predictions the run wrote."""
        path = self.path / PREDICTIONS
        if not path.exists():
            if self.summary.get("refit"):  # trained on every row: nothing was held out to predict
                raise RunError(f"{self.path}: a refit run has no validation predictions; score it on labelled data "
                               "it never saw (--csv or --data)")
            raise RunError(f"{self.path}: no {PREDICTIONS}; is it a finished run?")
        table = pd.read_csv(path, dtype={"id": str})
        return table["id"].to_numpy(), table["target"].to_numpy(), table["prob"].to_numpy()


def _read(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except OSError:
        return {}
    except ValueError as err:
        raise RunError(f"{path}: damaged ({err}); retrain the run") from None


def task_of(path: Path) -> str:
    """'histo' or 'tweets', from what the folder holds; a clear error when it is neither."""
    path = Path(path)
    if not path.is_dir():
        raise RunError(f"{path}: no such run folder, so no checkpoint; train it first")
    if (path / ENSEMBLE).exists():
        return str(_read(path / ENSEMBLE).get("task", "?"))
    task = _read(path / SETTINGS).get("task")
    if isinstance(task, dict):
        found = [name for name in TASKS if name in task]
        if found:
            return found[0]
    if (path / _LEGACY_TWEETS_SETTINGS).exists() or (path / SUMMARY).exists() and not (path / "best.pt").exists():
        return "tweets"
    if (path / "best.pt").exists():
        return "histo"
    raise RunError(f"{path}: not a finished Spotter run (no settings.json, best.pt or ensemble.json)")


def open_run(path: Path | str, task: str | None = None) -> Run:
    """The run or ensemble folder at `path`; with `task`, refuse a folder of the other task."""
    path = Path(path)
    found = task_of(path)
    if task is not None and found != task:
        raise RunError(f"{path}: this is a {found} run, not a {task} one; use `spotter {found}`")
    if found not in TASKS:
        raise RunError(f"{path}: unknown task {found!r}")
    summary = _read(path / SUMMARY)
    if (path / ENSEMBLE).exists():
        spec = _read(path / ENSEMBLE)
        members = [open_run(Path(m), found) for m in spec["members"]]
        first = members[0]
        return Run(path, found, first.settings, first.train, summary, spec, members)
    saved = _read(path / SETTINGS)
    if found == "tweets" and (path / _LEGACY_TWEETS_SETTINGS).exists() and "tweets" not in saved.get("task", {}):
        legacy = _read(path / _LEGACY_TWEETS_SETTINGS)
        saved = {"train": legacy.get("train", {}), "task": {"tweets": legacy.get("tweets", {})}}
    return Run(path, found, dict(saved.get("task", {}).get(found, {})), dict(saved.get("train", {})), summary)


# What a run writes into its folder; --overwrite removes these and nothing else.
_RUN_FILES = ("best.pt", "last.pt", "metrics.csv", "history.png", SETTINGS, SUMMARY, FOLDS, PREDICTIONS, ENSEMBLE,
              _LEGACY_TWEETS_SETTINGS, _LEGACY_VAL_IDS, "skipped.txt", "evaluation*.json", "roc*.png",
              "*precision_recall.png", "fold[0-9]*")


def holds_run(path: Path) -> bool:
    """Whether `path` holds a run or ensemble, finished or not."""
    return any((Path(path) / name).exists() for name in ("best.pt", "last.pt", SETTINGS, ENSEMBLE,
                                                          _LEGACY_TWEETS_SETTINGS))


def claim(path: Path, *, resume: bool = False, overwrite: bool = False) -> None:
    """Make sure writing a new run into `path` loses nothing by accident: a folder that holds a run needs
    --resume (continue it) or --overwrite (replace it: its run files are removed first)."""
    path = Path(path)
    if resume or not holds_run(path):
        return
    if not overwrite:
        raise RunError(f"{path}: holds a run already; use --resume to continue it, a new --out, or --overwrite "
                       "to replace it")
    for pattern in _RUN_FILES:
        for old in path.glob(pattern):
            shutil.rmtree(old) if old.is_dir() else old.unlink()
