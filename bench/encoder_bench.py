"""Fine-tuning speed of the transformer encoders on real tweets: tweets/s of training steps for each encoder,
precision, maximum token count and batching (length-grouped, as training does, or padded to the maximum).

    python bench/encoder_bench.py [--encoders minilm mpnet] [--steps 6] [--batch-size 32]

Each configuration runs 2 warm-up steps (oneDNN builds kernels per shape) then `--steps` timed ones; the
table gives the median step's rate. Needs the pretrained extra (and `make mpnet` for mpnet). The measurement
is spotter.bench.tweets's `encoder_table`.
"""
from __future__ import annotations

import argparse

from spotter.bench.tweets import encoder_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoders", nargs="+", default=["minilm", "mpnet"])
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    encoder_table(args.encoders, args.steps, args.batch_size)


if __name__ == "__main__":
    main()
