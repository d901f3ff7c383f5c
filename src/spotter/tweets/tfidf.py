"""The classical baseline: TF-IDF of word 1-2-grams and character 2-5-grams, logistic regression.

Features are hashed (no fitted vocabulary to store) and the model is saved as plain tensors in a
checkpoint loaded with weights_only, like every other Spotter model: nothing is unpickled.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import normalize
from sklearn.utils import murmurhash3_32

from .. import engine
from ..explain import align_to_words
from .text import normalise

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
    if len(val_rows) == 0:  # a refit on every row
        return np.zeros(0)
    return model.predict_proba(_tfidf(features[val_rows], idf))[:, 1]


def load_fold(fold_dir: Path) -> tuple[np.ndarray, np.ndarray, float]:
    """A fold's (idf, coefficients, intercept)."""
    ckpt = engine.load_checkpoint(fold_dir / "best.pt", "tweets")
    return ckpt["idf"].double().numpy(), ckpt["coef"].double().numpy(), ckpt["intercept"]


def predict(features: sp.csr_matrix, fold: tuple[np.ndarray, np.ndarray, float]) -> np.ndarray:
    idf, coef, intercept = fold
    logits = _tfidf(features, idf) @ coef + intercept
    return 1 / (1 + np.exp(-logits))


def contributions(fold: tuple[np.ndarray, np.ndarray, float], text: str, keyword: str, options) -> dict:
    """The exact decomposition of the TF-IDF model's logit: feature j adds x_j * coef_j, shared equally by
    its occurrences; a word gets its unigram, half of each word bigram it is in, and its character n-grams.
    `fold` is a fold's (idf, coefficients, intercept), as `load_fold` returns it."""
    normalised = normalise(text, options)
    doc = f"{keyword} {normalised}" if keyword else normalised
    lower = _WORDS.build_preprocessor()(doc)
    doc_words = lower.split(" ")
    n_features = _WORDS.n_features
    occurrences: list[tuple[int, list[int]]] = []  # (feature column, doc words it belongs to)

    def column(gram: str, offset: int) -> int:
        return offset + abs(murmurhash3_32(gram, seed=0)) % n_features

    tokens = [(m.group(), lower[:m.start()].count(" ")) for m in re.finditer(_WORDS.token_pattern, lower)]
    for gram, w in tokens:
        occurrences.append((column(gram, 0), [w]))
    for (a, wa), (b, wb) in zip(tokens, tokens[1:]):
        occurrences.append((column(f"{a} {b}", 0), [wa, wb]))
    chars = _CHARS.build_analyzer()
    for w, word in enumerate(doc_words):
        for gram in chars(word):
            occurrences.append((column(gram, n_features), [w]))

    doc_counts = counts([normalised], [keyword])
    mine = np.bincount([c for c, _ in occurrences], minlength=doc_counts.shape[1])
    if not np.array_equal(mine, doc_counts.toarray()[0]):  # would mean sklearn changed how it hashes
        raise RuntimeError("TF-IDF contributions: n-gram enumeration does not match the vectorizer")
    idf, coef, intercept = fold
    x = _tfidf(doc_counts, idf).toarray()[0]
    per_occurrence = np.divide(x * coef, np.maximum(mine, 1))
    per_word = np.zeros(len(doc_words))
    for col, owners in occurrences:
        for w in owners:
            per_word[w] += per_occurrence[col] / len(owners)
    n_kw = len(keyword.split()) if keyword else 0
    text_scores = per_word[n_kw:]
    words = align_to_words(text, normalised.split(), text_scores, lambda w: normalise(w, options).split())
    return {"words": words, "keyword": float(per_word[:n_kw].sum()) if keyword else None,
            "logit": float(x @ coef + intercept), "baseline_logit": float(intercept),
            "method": "exact TF-IDF contributions (feature value x coefficient)"}
