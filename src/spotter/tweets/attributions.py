"""Word attributions of the tweet networks: integrated gradients (explain.py) on their token embeddings, summed
onto the words of the original text. The RNNs are attributed from an all-padding baseline, the transformers from
[PAD] word pieces with their special tokens kept."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..explain import IG_STEPS, align_to_words, integrated_gradients
from .minilm import MAX_TOKENS
from .text import normalise, tokenize


def rnn_attributions(model: nn.Module, vocab, keyword_list: list[str], length: int, text: str, keyword: str,
                     options, steps: int = IG_STEPS) -> dict:
    """Integrated gradients of a tweet RNN's logit on its word embeddings (and keyword embedding)."""
    device = next(model.parameters()).device
    tokens = tokenize(normalise(text, options))
    ids, n = vocab.encode(tokens, length)
    index = {k: i + 1 for i, k in enumerate(keyword_list)}
    ids_t = torch.from_numpy(ids)[None].to(device)
    kw_t = torch.tensor([index.get(keyword, 0)], device=device)
    lengths = torch.tensor([n])
    layers = [model.embedding] + ([model.keyword] if hasattr(model, "keyword") else [])
    forward = lambda ids, kw, lengths: model(ids, lengths, kw)  # noqa: E731
    parts = integrated_gradients(forward, layers, (ids_t, kw_t), (torch.zeros_like(ids_t), torch.zeros_like(kw_t)), (lengths,), steps)
    scores = parts[0][0, :n].sum(-1).detach().cpu().numpy()
    with torch.no_grad():
        logit = float(model(ids_t, lengths, kw_t))
        base = float(model(torch.zeros_like(ids_t), lengths, torch.zeros_like(kw_t)))
    pieces = tokens[:length]
    words = align_to_words(text, pieces, scores[:len(pieces)], lambda w: tokenize(normalise(w, options)))
    if not pieces and words:
        # No token the network reads (all CJK, say): it read one placeholder, which stands for the whole text.
        for w in words:
            w["attribution"] = float(scores[:n].sum()) / len(words)
    keyword_score = float(parts[1].sum()) if len(parts) > 1 and keyword else None
    return {"words": words, "keyword": keyword_score, "logit": logit, "baseline_logit": base,
            "method": f"integrated gradients on the word embeddings ({steps} steps, padding baseline)"}


def minilm_attributions(model: nn.Module, tokenizer, text: str, keyword: str, options,
                        steps: int = IG_STEPS, max_tokens: int | None = None) -> dict:
    """Integrated gradients of a fine-tuned transformer's logit (MiniLM or any `--encoder`) on its word-piece
    embeddings; special tokens stay as they are in the baseline, every other piece becomes padding."""
    device = next(model.parameters()).device
    enc = tokenizer([normalise(text, options)], [keyword], truncation="only_first",
                    max_length=max_tokens or MAX_TOKENS, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    segments = enc["token_type_ids"].to(device) if "token_type_ids" in enc else torch.zeros_like(ids)
    special = torch.tensor(tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True),
                           device=device).bool()[None]
    baseline = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))
    forward = lambda ids, mask, segments: model(ids, mask, segments)  # noqa: E731
    layer = model.encoder.get_input_embeddings()
    scores = integrated_gradients(forward, [layer], (ids,), (baseline,), (mask, segments), steps)[0][0].sum(-1).detach().cpu().numpy()
    with torch.no_grad():
        logit, base = float(model(ids, mask, segments)), float(model(baseline, mask, segments))
    pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    # Which text each piece belongs to: 0 the tweet, 1 the keyword (also for encoders without segment ids).
    sequence = np.array([-1 if i is None else i for i in enc.sequence_ids(0)])
    is_special = special[0].cpu().numpy()
    in_text = (sequence == 0) & ~is_special
    in_keyword = (sequence == 1) & ~is_special
    words = align_to_words(text, [p for p, t in zip(pieces, in_text) if t], scores[in_text],
                           lambda w: tokenizer.tokenize(normalise(w, options)))
    return {"words": words, "keyword": float(scores[in_keyword].sum()) if keyword else None,
            "logit": logit, "baseline_logit": base,
            "method": f"integrated gradients on the word-piece embeddings ({steps} steps, [PAD] baseline)"}
