"""Whole-set metrics for binary detectors (never averaged over batches)."""
from __future__ import annotations

from typing import Callable

import numpy as np
from sklearn.metrics import confusion_matrix, precision_recall_curve, roc_auc_score


def roc_auc(labels: np.ndarray, probs: np.ndarray) -> float:
    """ROC AUC, or NaN when only one class is present (AUC is undefined then)."""
    if len(np.unique(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, probs))


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(probs.astype(np.float64), 1e-7, 1 - 1e-7)
    return float(-np.mean(labels * np.log(p) + (1 - labels) * np.log(1 - p)))


def binary_report(labels: np.ndarray, probs: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """AUC, accuracy, precision, recall, F1 and the confusion matrix at `threshold`."""
    labels = np.asarray(labels).astype(int)
    pred = (np.asarray(probs) >= threshold).astype(int)
    tn, fp, fn, tp = confusion_matrix(labels, pred, labels=[0, 1]).ravel()
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"auc": roc_auc(labels, probs), "accuracy": float((pred == labels).mean()),
            "precision": float(precision), "recall": float(recall), "f1": float(f1),
            "threshold": float(threshold), "tn": int(tn), "fp": int(fp), "fn": int(fn), "tp": int(tp),
            "loss": log_loss(labels, np.asarray(probs))}


def confusion_text(report: dict) -> str:
    """The confusion matrix of a `binary_report` as one line."""
    return f"confusion matrix: TN {report['tn']}  FP {report['fp']}  FN {report['fn']}  TP {report['tp']}"


def best_f1_threshold(labels: np.ndarray, probs: np.ndarray) -> tuple[float, float]:
    """The threshold that maximises F1 over the whole set, and that F1.

    Positive means prob >= threshold. The threshold is set halfway between the lowest score called
    positive and the next lower score, so it does not sit exactly on one validation score.
    """
    precision, recall, thresholds = precision_recall_curve(labels, probs)
    f1 = 2 * precision[:-1] * recall[:-1] / np.maximum(precision[:-1] + recall[:-1], 1e-12)
    best = int(np.argmax(f1))
    threshold = thresholds[best]
    below = np.unique(probs[probs < threshold])
    if len(below):
        threshold = (threshold + below[-1]) / 2
    return float(threshold), float(f1[best])


# ---------------------------------------------------------------- honest estimates

def bootstrap_interval(statistic: Callable[[np.ndarray], float], n_rows: int, *, resamples: int = 300,
                       seed: int = 0) -> list[float]:
    """95 % percentile interval of `statistic(rows)` over `resamples` bootstrap resamples of the row
    indices (seeded, so a report is reproducible). Resamples where it is undefined (NaN) are left out."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n_rows, n_rows)) for _ in range(resamples)], np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return [float("nan"), float("nan")]
    low, high = np.percentile(values, [2.5, 97.5])
    return [float(low), float(high)]


def interval_text(bounds: list[float]) -> str:
    return f"[95 % CI {bounds[0]:.3f}-{bounds[1]:.3f}]"


def f1_score(labels: np.ndarray, decisions: np.ndarray) -> float:
    tp = float(np.sum((labels == 1) & decisions))
    predicted, actual = float(np.sum(decisions)), float(np.sum(labels == 1))
    return 2 * tp / (predicted + actual) if predicted + actual else 0.0


def intervals(labels: np.ndarray, probs: np.ndarray, decisions: np.ndarray | None = None, **kwargs) -> dict:
    """Bootstrap 95 % intervals of ROC AUC and (given 0/1 `decisions`) F1, resampling the same rows for both."""
    labels, probs = np.asarray(labels).astype(int), np.asarray(probs)
    out = {"auc_ci95": bootstrap_interval(lambda rows: roc_auc(labels[rows], probs[rows]), len(labels), **kwargs)}
    if decisions is not None:
        decisions = np.asarray(decisions).astype(bool)
        out["f1_ci95"] = bootstrap_interval(lambda rows: f1_score(labels[rows], decisions[rows]), len(labels),
                                            **kwargs)
    return out


def cross_fitted_decisions(labels: np.ndarray, probs: np.ndarray, parts: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
    """0/1 decisions where each part's rows are cut at the F1-best threshold of the *other* parts' rows,
    so no row helps choose its own threshold; and those thresholds. Rows in no part stay 0."""
    decisions = np.zeros(len(labels), bool)
    in_parts = np.zeros(len(labels), bool)
    for part in parts:
        in_parts[part] = True
    thresholds = []
    for part in parts:
        others = in_parts.copy()
        others[part] = False
        threshold, _ = best_f1_threshold(labels[others], probs[others])
        decisions[part] = probs[part] >= threshold
        thresholds.append(threshold)
    return decisions, thresholds
