"""How long the `explore` reports take: histology on a pack the size of Kaggle's training set (220,025
patches, 6 GB, tiled from the real patches; needs that much free disk) and tweets on the real train.csv.
Prints a table.

    python bench/reports_bench.py [--patches 220025] [--data ../shared/data/histopathology]
                                  [--tweets ../shared/data/disaster-tweets] [--keep DIR]

The measurement is spotter.bench.reports's.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from spotter.bench.reports import explore_table, explore_times
from spotter.files import shared_data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=220_025)
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"))
    parser.add_argument("--tweets", type=Path, default=shared_data("disaster-tweets"))
    parser.add_argument("--keep", type=Path, help="build the big pack here and keep it (default: a temporary folder)")
    args = parser.parse_args()
    print(explore_table(explore_times(args.patches, args.data, args.tweets, args.keep)))


if __name__ == "__main__":
    main()
