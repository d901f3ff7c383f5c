"""How long the `explore` reports take, for bench/reports_bench.py: histology on a pack the size of Kaggle's
training set (tiled from the real patches; needs that much free disk) and tweets on the real train.csv."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

from ..histo.data import load_pack
from ..reports import histo as histo_report, tweets as tweets_report
from ..tweets.text import read_tweets
from .scale import stage_make_scale_pack


class Clock:
    """Wall and CPU seconds since the last read."""

    def __init__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def read(self) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        spent = (wall - self.wall, cpu - self.cpu)
        self.wall, self.cpu = wall, cpu
        return spent


def explore_times(patches: int, data: Path, tweets_data: Path, keep: Path | None = None) -> list[tuple]:
    """(stage, items, wall s, cpu s or None) of each report; the big pack is built in `keep` and kept there
    (reused when it has `patches` patches), else in a temporary folder."""
    rows = []
    folder = Path(keep or tempfile.mkdtemp(prefix="spotter-reports-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        if not (folder / "pixels.npy").exists() or load_pack(folder).pixels.shape[0] != patches:
            stage_make_scale_pack(str(data), str(folder), patches)
        pack = load_pack(folder)
        os.sync()  # the pack's pages are written out; reading them may still hit the page cache
        clock = Clock()
        report = histo_report.explore(pack, progress=False)
        report.write(folder / "report")
        wall, cpu = clock.read()
        rows.append(("histo explore: the pass over the pack", len(pack), report.numbers["seconds"]["scan"], None))
        rows.append(("histo explore: whole report", len(pack), wall, cpu))
    finally:
        if not keep:
            shutil.rmtree(folder, ignore_errors=True)
    clock = Clock()
    df = read_tweets(tweets_data / "train.csv", labelled=True)
    tweets_report.explore(df)
    rows.append(("tweets explore (whole report)", len(df), *clock.read()))
    return rows


def explore_table(rows: list[tuple]) -> str:
    # CPU seconds beside wall seconds: on a shared machine the wall clock includes waiting for a core.
    lines = [f"{'stage':40} {'items':>9} {'wall s':>8} {'cpu s':>8} {'items/wall s':>13}"]
    lines += [f"{name:40} {items:>9,} {wall:>8.1f} {'' if cpu is None else f'{cpu:.1f}':>8} {items / wall:>13,.0f}"
              for name, items, wall, cpu in rows]
    return "\n".join(lines)
