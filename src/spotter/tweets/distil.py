"""Distillation: an RNN student learns from a finished teacher run's soft probabilities.

The teacher must have been cross-validated on the student's own folds: in the student's fold k the soft
labels come from the teacher model that was trained without fold k's validation rows, so the student's
out-of-fold scores stay honest. `predictor.Teacher` checks that and refuses a run with other folds.

The transfer set is the fold's training tweets plus augmented copies (Tang et al. 2019, "Distilling
task-specific knowledge from BERT into simple neural networks"): words dropped, words swapped for a GloVe
neighbour, and random n-grams of the tweet. Copies are made from the raw text, so teacher and student
each normalise them their own way; the teacher labels them, they have no hard label.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np


_PLAIN_WORD = re.compile(r"^[A-Za-z]+$")


# ---------------------------------------------------------------- the augmented transfer set

def plain_words(texts: list[str]) -> set[str]:
    """The lower-cased plain words of the texts: the ones `Augmenter` may swap for a GloVe neighbour."""
    return {w.lower() for text in texts for w in text.split() if _PLAIN_WORD.match(w)}


def glove_neighbours(words: dict[str, int], vectors: np.ndarray, wanted: set[str], k: int = 5,
                     among: int = 50_000) -> dict[str, list[str]]:
    """The `k` nearest GloVe words (cosine) of each wanted word, among GloVe's `among` most frequent
    (its files are in frequency order), so swaps stay common words."""
    top = sorted(words, key=words.get)[:among]
    pool = vectors[[words[w] for w in top]].astype(np.float32)
    pool /= np.linalg.norm(pool, axis=1, keepdims=True) + 1e-8
    queries = sorted(w for w in wanted if w in words)
    out: dict[str, list[str]] = {}
    for start in range(0, len(queries), 2048):  # in chunks: 2048 x 50k similarities at a time
        chunk = queries[start:start + 2048]
        q = vectors[[words[w] for w in chunk]].astype(np.float32)
        q /= np.linalg.norm(q, axis=1, keepdims=True) + 1e-8
        nearest = np.argsort(-(q @ pool.T), axis=1)[:, :k + 1]
        for word, row in zip(chunk, nearest):
            out[word] = [top[j] for j in row if top[j] != word][:k]
    return out


@dataclass
class Augmenter:
    """Tang et al.'s rules on whitespace words: each word is dropped with `p_drop`, or (a plain word with
    GloVe neighbours) swapped for one with `p_swap`; then with `p_ngram` only a random 1-5-word n-gram is kept."""

    neighbours: dict[str, list[str]]
    p_drop: float = 0.1
    p_swap: float = 0.1
    p_ngram: float = 0.25

    def __call__(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        out = []
        for word in words:
            u = rng.random()
            if u < self.p_drop:
                continue
            options = self.neighbours.get(word.lower()) if _PLAIN_WORD.match(word) else None
            if options and u < self.p_drop + self.p_swap:
                word = options[rng.integers(len(options))]
            out.append(word)
        if len(out) > 1 and rng.random() < self.p_ngram:
            n = int(rng.integers(1, min(5, len(out)) + 1))
            start = int(rng.integers(0, len(out) - n + 1))
            out = out[start:start + n]
        return " ".join(out) or text

    def copies(self, texts: list[str], n: int, seed: int) -> tuple[list[str], np.ndarray]:
        """`n` augmented copies of every text, and the row each came from."""
        rng = np.random.default_rng(seed)
        source = np.repeat(np.arange(len(texts)), n)
        return [self(texts[i], rng) for i in source], source
