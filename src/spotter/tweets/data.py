"""The training tweets of a run: train.csv checked and de-duplicated, the corpus its models read, and its folds."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .settings import TweetSettings
from .text import Corpus, NormaliseOptions, read_tweets, resolve_conflicting_duplicates


def prepare(df: pd.DataFrame, options: NormaliseOptions) -> tuple[list[str], list[list[str]]]:
    """Normalised text and tokens of each tweet (see text.Corpus, the one preprocessing path)."""
    corpus = Corpus.build(df["text"], df["keyword"], options)
    return corpus.texts, corpus.tokens


def fold_splits(corpus: Corpus, settings: TweetSettings, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep every copy of a text on one side (duplicates would leak otherwise)."""
    n_splits = settings.folds if settings.folds >= 2 else max(2, round(1 / settings.val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    groups = corpus.texts if settings.fold_groups == "normalised" else corpus.raw
    splits = list(splitter.split(np.zeros(len(corpus)), corpus.targets, groups=groups))
    return splits if settings.folds >= 2 else splits[:1]


def training_rows(settings: TweetSettings) -> tuple[pd.DataFrame, int]:
    """train.csv, checked, with conflicting duplicates relabelled (and how many rows changed)."""
    df = read_tweets(Path(settings.data) / "train.csv", labelled=True, skip_bad=settings.skip_bad)
    if settings.resolve_duplicates:
        return resolve_conflicting_duplicates(df)
    return df, 0


def corpus_of(df: pd.DataFrame, settings: TweetSettings) -> Corpus:
    """A run's training tweets as its models read them."""
    keywords = df["keyword"] if settings.keyword else [""] * len(df)
    return Corpus.build(df["text"], keywords, NormaliseOptions(**settings.normalise), df["target"].to_numpy())
