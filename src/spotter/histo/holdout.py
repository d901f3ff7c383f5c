"""A fixed hold-out of a labelled Kaggle folder: patches no recipe, epoch or threshold is chosen on, kept only to
report how recipes do on data nothing tuned on (validation splits pick the best epoch, so they flatter).

A patch is held out by a hash of its id within its label, so the hold-out is stratified and stays the same
patches whatever else the folder holds or however it is ordered.
"""
import hashlib
import os
from pathlib import Path

import numpy as np
import pandas as pd

from spotter.histo.data import read_labels_csv

HOLDOUT_FRACTION = 0.15


def _rank(patch_id: str) -> str:
    return hashlib.sha256(f"spotter-holdout:{patch_id}".encode()).hexdigest()


def holdout_mask(labels: pd.DataFrame, fraction: float = HOLDOUT_FRACTION) -> np.ndarray:
    """True for the rows held out: per label, the round(fraction * n) ids that hash lowest."""
    held = np.zeros(len(labels), bool)
    ranks = labels["id"].map(_rank).to_numpy()
    for label in labels["label"].unique():
        rows = np.flatnonzero(labels["label"].to_numpy() == label)
        held[rows[np.argsort(ranks[rows])[:round(fraction * len(rows))]]] = True
    return held


def split_folder(data: Path, out: Path, fraction: float = HOLDOUT_FRACTION) -> tuple[Path, Path]:
    """Write out/develop and out/holdout, each a Kaggle layout (train/ of links to data's .tif files,
    train_labels.csv), and return them. The patches are linked, not copied."""
    labels = read_labels_csv(data / "train_labels.csv")
    held = holdout_mask(labels, fraction)
    folders = []
    for name, rows in (("develop", labels[~held]), ("holdout", labels[held])):
        folder = out / name
        (folder / "train").mkdir(parents=True, exist_ok=True)
        for patch_id in rows["id"]:
            link = folder / "train" / f"{patch_id}.tif"
            if not link.exists():
                os.symlink((data / "train" / f"{patch_id}.tif").resolve(), link)
        rows.to_csv(folder / "train_labels.csv", index=False)
        folders.append(folder)
    return folders[0], folders[1]
