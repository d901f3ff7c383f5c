"""Tweets stages: the recurrent default (bigru) and MiniLM, training and inference, for `spotter bench`; and
the fine-tuning speed of each transformer encoder by precision, token count and batching (bench/encoder_bench.py)."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from .. import engine, files
from ..tweets import encoders, minilm
from ..tweets.adapters import encode, iterate_batches
from ..tweets.data import prepare
from ..tweets.embeddings import embedding_matrix, load_glove
from ..tweets.models import create_rnn
from ..tweets.text import Corpus, NormaliseOptions, Vocabulary, keyword_text, read_tweets
from .timing import auto_precision, median_rate, timed_steps, trainer


def stage_tweets(data: str, quick: bool, device: str) -> dict[str, Any]:
    dev = engine.pick_device(device)
    df = read_tweets(Path(data) / "train.csv", labelled=True)
    _, tokens = prepare(df, NormaliseOptions())
    keywords = [keyword_text(k) for k in df["keyword"]]
    vocab = Vocabulary.build(tokens)
    words, vectors = load_glove()
    model = create_rnn("bigru", torch.from_numpy(embedding_matrix(vocab, words, vectors)), 300).to(dev)
    model.embedding.weight.requires_grad_(True)
    kw_list = sorted(set(keywords) - {""})
    data_enc = encode(tokens, keywords, vocab, kw_list, 40, df["target"].to_numpy())
    step = trainer(model, engine.make_optimizer(model, engine.TrainSettings()), dev, "fp32")  # as the task runs it
    epoch_steps = -(-len(df) // 64)

    def train_epoch(seed: int) -> float:
        model.train()
        return timed_steps(step, iterate_batches(data_enc, 64, dev, seed=seed), epoch_steps, dev)

    def infer() -> int:
        probs, _ = engine.predict_probs(model, iterate_batches(data_enc, 512, dev), dev, "fp32")
        return len(probs)

    train_epoch(0)  # warm-up
    return {"tweets_train_per_s": statistics.median(train_epoch(s) for s in range(1, 2 if quick else 4)),
            "tweets_infer_per_s": median_rate(infer, 3)}


def stage_minilm(data: str, quick: bool, device: str) -> dict[str, Any]:
    """MiniLM on the real tweets: fine-tuning (batches of 32, cut to their longest tweet) and inference
    (sorted by length, batches of 256), which is also the cost of `minilm-frozen`'s one embedding pass."""
    dev = engine.pick_device(device)
    df = read_tweets(Path(data) / "train.csv", labelled=True)
    texts, _ = prepare(df, NormaliseOptions())
    keywords = [keyword_text(k) for k in df["keyword"]]
    data_tokens = minilm.tokenize_pairs(minilm.load_tokenizer(), texts, keywords, df["target"].to_numpy())
    model = minilm.TransformerClassifier(minilm.load_encoder()).to(dev)
    optimizer = engine.make_optimizer(model, engine.TrainSettings(lr=5e-5))
    steps = 4 if quick else 12
    # Batches are cut to their longest tweet, so shapes vary: the decision is timed on the first batch's.
    precision, why = auto_precision(dev, model, lambda: next(minilm.iterate_batches(data_tokens, 32, dev, seed=0)))
    step = trainer(model, optimizer, dev, precision)
    model.train()
    timed_steps(step, minilm.iterate_batches(data_tokens, 32, dev, seed=1), 2, dev)  # warm-up
    train = statistics.median(timed_steps(step, minilm.iterate_batches(data_tokens, 32, dev, seed=s), steps, dev)
                              for s in range(2, 3 if quick else 5))
    _, ordered = data_tokens.by_length()
    ordered = ordered.take(np.arange(1024)) if quick else ordered

    def infer() -> int:
        probs, _ = engine.predict_probs(model, minilm.iterate_batches(ordered, 256, dev), dev, precision)
        return len(probs)

    return {"minilm_train_per_s": train, "minilm_infer_per_s": median_rate(infer, 1 if quick else 2),
            "minilm_precision": precision, "minilm_precision_reason": why}


def encoder_train_rate(encoder: str, precision: str, max_tokens: int, grouped: bool, corpus: Corpus, steps: int,
                       batch_size: int) -> float:
    """Median tweets/s of `steps` fine-tuning steps, after 2 warm-up steps (oneDNN builds kernels per shape)."""
    folder = encoders.folder_of(encoder)
    tokens = minilm.tokenize_pairs(minilm.load_tokenizer(folder), corpus.texts, corpus.keywords, corpus.targets,
                                   max_tokens=max_tokens)
    if not grouped:  # every batch padded to max_tokens, as a plain fine-tuning loop would
        tokens.lengths[:] = max_tokens
    torch.manual_seed(0)
    model = minilm.TransformerClassifier(minilm.load_encoder(folder=folder))
    optimizer = engine.make_optimizer(model, engine.TrainSettings(lr=5e-5))
    device, rates = torch.device("cpu"), []
    for i, (inputs, targets) in enumerate(minilm.iterate_batches(tokens, batch_size, device, seed=1)):
        start = time.perf_counter()
        engine.train_step(model, inputs, targets, optimizer, device, precision)
        if i >= 2:
            rates.append(len(targets) / (time.perf_counter() - start))
        if len(rates) == steps:
            break
    return statistics.median(rates)


def encoder_table(encoder_names: list[str], steps: int, batch_size: int) -> None:
    """Each encoder in fp32 and bf16 at 64 and 96 tokens, length-grouped, and fp32 padded to 96, on 2,000 real
    tweets: prints each rate as it comes, then the table."""
    df = pd.read_csv(files.shared_data("disaster-tweets") / "train.csv").sample(2000, random_state=0)
    corpus = Corpus.build(df["text"], df["keyword"], NormaliseOptions(), df["target"].to_numpy())
    rows = []
    for encoder in encoder_names:
        for precision in ("fp32", "bf16"):
            for max_tokens in (64, 96):
                rate = encoder_train_rate(encoder, precision, max_tokens, True, corpus, steps, batch_size)
                rows.append((encoder, precision, max_tokens, "length-grouped", rate))
                print(*rows[-1][:4], f"{rate:.1f} tweets/s", flush=True)
        rate = encoder_train_rate(encoder, "fp32", 96, False, corpus, steps, batch_size)
        rows.append((encoder, "fp32", 96, "padded to 96", rate))
        print(*rows[-1][:4], f"{rate:.1f} tweets/s", flush=True)
    print(f"\nCPU threads {torch.get_num_threads()}, batch {batch_size}, median of {steps} steps\n")
    print("| encoder | precision | max tokens | batches | training tweets/s |\n|---|---|---|---|---|")
    for encoder, precision, max_tokens, batching, rate in rows:
        print(f"| {encoder} | {precision} | {max_tokens} | {batching} | {rate:.1f} |")
