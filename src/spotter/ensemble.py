"""Ensembles of finished runs, for either task.

Members are calibrated one by one (Platt scaling: a logistic regression on each member's logit, fitted on
the validation predictions all members share), then their calibrated probabilities are averaged with
equal weights: no weight is tuned on the validation set. An ensemble folder holds `ensemble.json`
(members, calibration, threshold), `summary.json` and `validation_predictions.csv` (runs.py), and is used like
any run; its members may be ensembles too.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from . import files, runs
from .errors import BadInput
from .metrics import binary_report, interval_text, intervals

# (ids, labels, probabilities) of a run's validation predictions
Validation = tuple[np.ndarray, np.ndarray, np.ndarray]


def _logit(probs: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probs, np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def platt(probs: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """(a, b) such that sigmoid(a * logit(p) + b) is calibrated on these labels."""
    fit = LogisticRegression(C=1e4).fit(_logit(probs)[:, None], labels.astype(int))
    return float(fit.coef_[0, 0]), float(fit.intercept_[0])


def combine(member_probs: list[np.ndarray], calibration: list[tuple[float, float]]) -> np.ndarray:
    """The mean of the members' calibrated probabilities."""
    calibrated = [1 / (1 + np.exp(-(a * _logit(p) + b))) for p, (a, b) in zip(member_probs, calibration)]
    return np.mean(calibrated, axis=0)


def build(kind: str, members: list[Path], out: Path, validation: Callable[[Path], Validation],
          score: Callable[[np.ndarray, np.ndarray], dict], main_metric: str, *, threshold: Callable | None = None,
          record: dict | None = None, honest: Callable | None = None, overwrite: bool = False, log=print) -> dict:
    """Calibrate and combine `members` into the run folder `out`; returns the validation summary.

    `validation(run)` gives a member's validation predictions; every member must have predicted the same
    rows (same data, seed, split and folds), else the calibration would mix different examples.
    `threshold(labels, probs)`, when given, tunes the decision threshold on the combined predictions.
    `record` adds how the members' predictions were made (e.g. {"tta": True}) to ensemble.json.
    `honest(ids, labels, probs)`, when given, adds scores whose threshold no scored row helped choose.
    """
    if len(members) < 2:
        raise BadInput("an ensemble needs at least two runs")
    out = Path(out)
    if any((out / name).exists() for name in ("best.pt", "run.json", runs.SETTINGS)):
        raise BadInput(f"{out}: already holds a trained run; give the ensemble a folder of its own")
    runs.claim(out, overwrite=overwrite)
    preds = [validation(Path(m)) for m in members]
    ids, labels = preds[0][0], preds[0][1]
    aligned = []
    for member, (m_ids, m_labels, m_probs) in zip(members, preds):
        index = pd.Series(np.arange(len(m_ids)), index=m_ids)
        if len(m_ids) != len(ids) or not index.index.is_unique or not np.isin(ids, m_ids).all():
            raise BadInput(f"{member}: its validation rows differ from {members[0]}'s; train every member "
                             "on the same data with the same seed, split and folds")
        rows = index[ids].to_numpy()
        if not np.array_equal(m_labels[rows], labels):
            raise BadInput(f"{member}: its validation labels differ from {members[0]}'s")
        aligned.append(m_probs[rows])
    calibration = [platt(p, labels) for p in aligned]
    probs = combine(aligned, calibration)
    cut = threshold(labels, probs)[0] if threshold else 0.5
    scores = {**score(labels, probs), **binary_report(labels, probs, cut), **intervals(labels, probs, probs >= cut),
              **(honest(ids, labels, probs) if honest else {})}
    summary = {"version": 1, "task": kind, **(record or {}), "members": [str(Path(m).resolve()) for m in members],
               "calibration": calibration, "threshold": cut,
               "member_scores": [score(labels, p)[main_metric] for p in aligned],
               "validation": scores, "rows": len(ids),
               "tuned_on": "calibration and threshold are fitted on the validation rows they are scored on "
                           "(two parameters per member and one threshold: a small optimism)"}
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"id": ids, "target": labels, "prob": probs}).to_csv(out / runs.PREDICTIONS, index=False)
    files.write_text_atomic(out / runs.ENSEMBLE, json.dumps(summary, indent=2))
    try:  # the validation rows, as the members recorded them (tweets runs made before folds.csv did not)
        files.write_csv_atomic(runs.open_run(members[0], kind).folds(), out / runs.FOLDS)
    except runs.RunError:
        pass
    # What every consumer reads from any run: the threshold and the scores.
    files.write_text_atomic(out / runs.SUMMARY, json.dumps(
        {"model": "ensemble", "threshold": cut, "validation": summary["validation"], "members": summary["members"]},
        indent=2))
    for member, value in zip(members, summary["member_scores"]):
        log(f"  {member}: validation {main_metric} {value:.4f}")
    log(f"ensemble of {len(members)}: validation {main_metric} {summary['validation'][main_metric]:.4f} "
        f"on {len(ids)} rows; written to {out}")
    if "f1_cross_fitted" in scores:
        log(f"  F1 with each fold cut at a threshold tuned on the other folds: {scores['f1_cross_fitted']:.4f} "
            f"{interval_text(scores['f1_cross_fitted_ci95'])}")
    return summary
