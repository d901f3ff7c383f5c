"""Tweet RNNs. Inputs: token ids (B, L) padded with 0 at the end, real lengths (B,), keyword ids (B,)."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import BadInput
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


def _run_rnn(rnn: nn.RNNBase, x: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Run over the real tokens only, so padding can never change a prediction."""
    packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, hidden = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, hidden


class SeedGRU(nn.Module):
    """The original write-up's model: frozen GloVe, Dropout 0.2, GRU(64) with input dropout 0.2, Dense(1)."""

    sequence_length, max_vocabulary = 25, 20_000

    def __init__(self, embeddings: torch.Tensor, n_keywords: int = 0):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(embeddings, freeze=True, padding_idx=0)
        self.dropout = nn.Dropout(0.2)
        self.input_dropout = nn.Dropout(0.2)  # Keras GRU(dropout=0.2) drops the GRU's inputs
        self.gru = nn.GRU(embeddings.shape[1], 64, batch_first=True)
        self.out = nn.Linear(64, 1)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, keywords: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(self.dropout(self.embedding(ids)))
        _, hidden = _run_rnn(self.gru, x, lengths)
        return self.out(hidden[-1]).squeeze(1)


class SpatialDropout(nn.Dropout1d):
    """Drops whole embedding channels across the sequence (Keras' SpatialDropout1D)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, L, D)
        return super().forward(x.transpose(1, 2)).transpose(1, 2)


class BiGRU(nn.Module):
    """Bidirectional GRU with spatial dropout, max and mean pooling over the real tokens, and the
    tweet's keyword as a learned embedding; GloVe starts frozen and is unfrozen after a warm-up."""

    sequence_length, max_vocabulary = 40, None

    def __init__(self, embeddings: torch.Tensor, n_keywords: int, hidden: int = 64, dropout: float = 0.3):
        super().__init__()
        self.embedding = nn.Embedding.from_pretrained(embeddings, freeze=True, padding_idx=0)
        self.spatial_dropout = SpatialDropout(dropout)
        self.gru = nn.GRU(embeddings.shape[1], hidden, batch_first=True, bidirectional=True)
        self.keyword = nn.Embedding(n_keywords + 1, 16)  # 0: no keyword
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(4 * hidden + 16, 64), nn.ReLU(),
                                  nn.Dropout(dropout), nn.Linear(64, 1))

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor, keywords: torch.Tensor) -> torch.Tensor:
        x = self.spatial_dropout(self.embedding(ids))
        out, _ = _run_rnn(self.gru, x, lengths)
        mask = (torch.arange(ids.shape[1], device=ids.device)[None, :] < lengths[:, None]).unsqueeze(2)
        max_pool = out.masked_fill(~mask, float("-inf")).amax(1)
        mean_pool = (out * mask).sum(1) / lengths[:, None].clamp(min=1)
        return self.head(torch.cat([max_pool, mean_pool, self.keyword(keywords)], 1)).squeeze(1)


RNN_MODELS = {"seed-gru": SeedGRU, "bigru": BiGRU}


def create_rnn(name: str, embeddings: torch.Tensor, n_keywords: int) -> nn.Module:
    """The RNN `name` on these embedding rows (a GloVe matrix, or zeros that a checkpoint fills)."""
    if name not in RNN_MODELS:
        raise BadInput(f"unknown tweet RNN {name!r}; choose one of: {', '.join(RNN_MODELS)}")
    return RNN_MODELS[name](embeddings, n_keywords)
