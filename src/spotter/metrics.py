"""Whole-set metrics for binary detectors (never averaged over batches)."""
from __future__ import annotations

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
