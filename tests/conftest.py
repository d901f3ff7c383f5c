import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from spotter.files import shared_data

SHARED = shared_data()
HISTO = SHARED / "histopathology"
TWEETS = SHARED / "disaster-tweets"


def require(path: Path) -> None:
    """Skip a test that needs the shared Kaggle data when it is not there, except in CI (CI=true), which
    has it: there a missing folder fails loudly instead of silently skipping most end-to-end tests."""
    if path.exists():
        return
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true but the shared data is missing at {path}; CI must provide ../shared/data",
                    pytrace=False)
    pytest.skip(f"shared data not found at {path}")


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """Packs go to a per-test cache, never the user's."""
    monkeypatch.setenv("SPOTTER_CACHE", str(tmp_path / "cache"))


def histo_slice(folder: Path, n: int, seed: int = 0, n_test: int = 5) -> Path:
    """A Kaggle-layout folder holding `n` real labelled patches (stratified sample) and `n_test` test ones."""
    require(HISTO)
    labels = pd.read_csv(HISTO / "train_labels.csv")
    rng = np.random.default_rng(seed)
    picked = pd.concat([g.sample(n // 2, random_state=int(rng.integers(1 << 30))) for _, g in labels.groupby("label")])
    (folder / "train").mkdir(parents=True)
    (folder / "test").mkdir()
    for patch_id in picked["id"]:
        (folder / "train" / f"{patch_id}.tif").symlink_to(HISTO / "train" / f"{patch_id}.tif")
    for path in sorted((HISTO / "test").glob("*.tif"))[:n_test]:
        (folder / "test" / path.name).symlink_to(path)
    picked.to_csv(folder / "train_labels.csv", index=False)
    return folder


def tweets_slice(folder: Path, n: int, seed: int = 0, n_test: int = 60) -> Path:
    """A folder with `n` real rows of Kaggle's train.csv (random sample) and the first `n_test` of test.csv."""
    require(TWEETS)
    folder.mkdir(parents=True)
    pd.read_csv(TWEETS / "train.csv").sample(n, random_state=seed).to_csv(folder / "train.csv", index=False)
    pd.read_csv(TWEETS / "test.csv").head(n_test).to_csv(folder / "test.csv", index=False)
    return folder


@pytest.fixture
def real_histo(tmp_path) -> Path:
    return histo_slice(tmp_path / "histo", 160)
