"""PNG plots read from a run's files: training curves from metrics.csv, ROC and precision-recall curves."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn import metrics as skm  # noqa: E402


def training_curves(csv_path: Path, out: Path, panels: list[tuple[str, str]]) -> None:
    """One panel per metric, train and validation per epoch, like the original write-up's figure."""
    df = pd.read_csv(csv_path)
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (key, title) in zip(axes[0], panels):
        for split, style in (("train", "o-"), ("val", "s-")):
            column = f"{split}_{key}"
            if column in df:
                ax.plot(df["epoch"], df[column], style, ms=3, label="validation" if split == "val" else split)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def roc_curve(labels: np.ndarray, probs: np.ndarray, out: Path, title: str = "ROC") -> None:
    fpr, tpr, _ = skm.roc_curve(labels, probs)
    auc = skm.auc(fpr, tpr)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(fpr, tpr, label=f"AUC {auc:.4f}")
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=title)
    ax.legend(loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def precision_recall(labels: np.ndarray, probs: np.ndarray, threshold: float, out: Path, title: str = "") -> None:
    """Precision-recall curve with the chosen threshold marked."""
    precision, recall, thresholds = skm.precision_recall_curve(labels, probs)
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    ax.plot(recall, precision, label="precision-recall")
    pred = probs >= threshold
    tp = int((pred & (labels == 1)).sum())
    p = tp / max(int(pred.sum()), 1)
    r = tp / max(int((labels == 1).sum()), 1)
    ax.plot([r], [p], "o", color="C3", label=f"threshold {threshold:.3f} (P {p:.3f}, R {r:.3f})")
    ax.set(xlabel="recall", ylabel="precision", title=title or "precision-recall", xlim=(0, 1.01), ylim=(0, 1.01))
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
