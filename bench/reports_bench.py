"""How long the `explore` reports take: histology on a pack the size of Kaggle's training set (220,025
patches, 6 GB, tiled from the real patches; needs that much free disk) and tweets on the real train.csv.
Prints a table.

    python bench/reports_bench.py [--patches 220025] [--data ../shared/data/histopathology]
                                  [--tweets ../shared/data/disaster-tweets] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from spotter.files import shared_data

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=220_025)
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"))
    parser.add_argument("--tweets", type=Path, default=shared_data("disaster-tweets"))
    parser.add_argument("--keep", type=Path, help="build the big pack here and keep it (default: a temporary folder)")
    args = parser.parse_args()

    from spotter.bench import stage_make_scale_pack
    from spotter.histo.data import load_pack
    from spotter.reports import histo, tweets
    from spotter.tweets.text import read_tweets

    rows = []
    folder = Path(args.keep or tempfile.mkdtemp(prefix="spotter-reports-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if not (folder / "pixels.npy").exists() or load_pack(folder).pixels.shape[0] != args.patches:
            stage_make_scale_pack(str(args.data), str(folder), args.patches)
        pack = load_pack(folder)
        os.sync()  # the pack's pages are written out; reading them may still hit the page cache
        clock = Clock()
        report = histo.explore(pack, progress=False)
        report.write(folder / "report")
        wall, cpu = clock.read()
        rows.append(("histo explore: the pass over the pack", len(pack), report.numbers["seconds"]["scan"], None))
        rows.append(("histo explore: whole report", len(pack), wall, cpu))
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    clock = Clock()
    df = read_tweets(args.tweets / "train.csv", labelled=True)
    tweets.explore(df)
    rows.append(("tweets explore (whole report)", len(df), *clock.read()))

    # CPU seconds beside wall seconds: on a shared machine the wall clock includes waiting for a core.
    print(f"{'stage':40} {'items':>9} {'wall s':>8} {'cpu s':>8} {'items/wall s':>13}")
    for name, items, wall, cpu in rows:
        print(f"{name:40} {items:>9,} {wall:>8.1f} {'' if cpu is None else f'{cpu:.1f}':>8} {items / wall:>13,.0f}")


class Clock:
    """Wall and CPU seconds since the last read."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


if __name__ == "__main__":
    main()
