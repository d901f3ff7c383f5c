"""The classical baseline: TF-IDF of word 1-2-grams and character 2-5-grams, logistic regression.

Features are hashed (no fitted vocabulary to store) and the model is saved as plain tensors in a
checkpoint loaded with weights_only, like every other Spotter model: nothing is unpickled.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize

from .. import engine

_WORDS = HashingVectorizer(ngram_range=(1, 2), n_features=2**18, alternate_sign=False, norm=None,
                           token_pattern=r"(?u)\b\w+\b|[!?]")
_CHARS = HashingVectorizer(analyzer="char_wb", ngram_range=(2, 5), n_features=2**18, alternate_sign=False, norm=None)


def counts(texts: list[str], keywords: list[str]) -> sp.csr_matrix:
    """Hashed word and character n-gram counts of each (keyword, tweet): computed once, shared by the folds."""
    docs = [f"{k} {t}" if k else t for t, k in zip(texts, keywords)]
    return sp.hstack([_WORDS.transform(docs), _CHARS.transform(docs)]).tocsr()


def _tfidf(counts: sp.csr_matrix, idf: np.ndarray) -> sp.csr_matrix:
    x = counts.astype(np.float64)
    x.data = 1 + np.log(x.data)  # sublinear term frequency
    return normalize(x @ sp.diags(idf), copy=False)


def train_fold(fold_dir: Path, features: sp.csr_matrix, targets: np.ndarray, train_rows: np.ndarray,
               val_rows: np.ndarray, seed: int = 0, c: float = 4.0, write: bool = True) -> np.ndarray:
    """Fit IDF and the logistic regression on `train_rows`, save them, return `val_rows`' probabilities."""
    train_counts = features[train_rows]
    df = np.bincount(train_counts.indices, minlength=features.shape[1])
    idf = np.log((1 + len(train_rows)) / (1 + df)) + 1
    model = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    model.fit(_tfidf(train_counts, idf), targets[train_rows])
    fold_dir.mkdir(parents=True, exist_ok=True)
    if write:
        engine.save_atomic({"version": engine.CHECKPOINT_VERSION, "task": "tweets", "model_type": "tfidf",
                            "idf": torch.from_numpy(idf.astype(np.float32)),
                            "coef": torch.from_numpy(model.coef_[0].astype(np.float32)),
                            "intercept": float(model.intercept_[0])}, fold_dir / "best.pt")
    return model.predict_proba(_tfidf(features[val_rows], idf))[:, 1]


def load_fold(fold_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """A fold's (idf, coefficients, intercept)."""
    ckpt = engine.load_checkpoint(fold_dir / "best.pt", "tweets")
    return ckpt["idf"].double().numpy(), ckpt["coef"].double().numpy(), ckpt["intercept"]


def predict(features: sp.csr_matrix, fold: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    idf, coef, intercept = fold
    logits = _tfidf(features, idf) @ coef + intercept
    return 1 / (1 + np.exp(-logits))
