"""How training time and memory grow with the data: the default CNN trained from packs of 1x, 8x and 32x
the shared Kaggle patches (32x of 6,832 is 218,624, about the full 220,025-patch Kaggle set).

    python bench/scaling_bench.py [--data ../shared/data/histopathology] [--scales 1,8,32] [--steps 200]

Larger packs are tiled from the real patches (`spotter bench --scale` does the same), written under the
home folder (32x is 6 GB) and deleted afterwards. Each scale trains `--steps` batches of 128 in shuffled
order over the whole pack, in its own process, after the pack's pages were dropped from the page cache
(so reads come from the disk, as in a first epoch; `--warm` keeps them). It reports images/s (median of
windows of steps), the epoch time that rate implies, the process's peak RSS (the memory map streams, so it
should not grow with the pack) and the time to write the pack. Prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import torch

from spotter.bench import SHARED_HISTO, isolated, stage_make_scale_pack, stage_scale
from spotter.precision import cpu_model


def drop_from_page_cache(path: Path) -> None:
    """Ask the kernel to forget the file's cached pages (clean pages go; no root needed)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def real_pack(data: str) -> dict:
    from spotter.histo.data import pack_folder
    packed = pack_folder(Path(data), progress=False)["train"]
    return {"folder": str(packed.path), "patches": len(packed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=SHARED_HISTO)
    parser.add_argument("--scales", default="1,8,32", help="multiples of the shared patches, comma-separated")
    parser.add_argument("--steps", type=int, default=200, help="training steps of 128 images per scale")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--warm", action="store_true", help="keep the pack in the page cache (later epochs)")
    parser.add_argument("--out", type=Path, default=Path("bench-scaling.json"))
    args = parser.parse_args()

    real = isolated(real_pack, str(args.data))
    rows = []
    for scale in (int(s) for s in args.scales.split(",")):
        with tempfile.TemporaryDirectory(dir=Path.home()) as folder:
            made = {"scale_patches": real["patches"], "scale_pack_gb": real["patches"] * 96 * 96 * 3 / 1e9}
            if scale > 1:
                made = isolated(stage_make_scale_pack, str(args.data), folder, scale * real["patches"])
            else:
                folder = real["folder"]
            if "failed" in made:
                rows.append({"scale": scale, **made})
                continue
            if not args.warm:
                drop_from_page_cache(Path(folder) / "pixels.npy")
            trained = isolated(stage_scale, folder, False, args.device, args.steps)
            rows.append({"scale": scale, **made, **trained})
        print(format_row(rows[-1]), flush=True)
    result = {"cpu": cpu_model(), "threads": torch.get_num_threads(), "torch": torch.__version__,
              "steps": args.steps, "page_cache": "warm" if args.warm else "dropped before each scale", "rows": rows}
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\n{result['cpu']}, {result['threads']} threads, torch {result['torch']}; {args.steps} steps of 128 per "
          f"scale; page cache {result['page_cache']}\n")
    print(HEADER)
    for row in rows:
        print(format_row(row))
    print(f"\nwrote {args.out}")
    if any("failed" in row for row in rows):
        sys.exit(1)


HEADER = ("| scale | patches | pack | writing the pack | training img/s (windows) | one epoch at that rate | "
          "peak RSS |\n|---|---|---|---|---|---|---|")


def format_row(r: dict) -> str:
    if "failed" in r:
        return f"| {r['scale']}x | FAILED: {r['failed']} ||||||"
    write = f"{r['scale_pack_write_s']:.0f} s" if "scale_pack_write_s" in r else "(the real pack)"
    w = r["scale_img_per_s_windows"]
    return (f"| {r['scale']}x | {r['scale_patches']:,} | {r['scale_pack_gb']:.2f} GB | {write} | "
            f"{r['scale_img_per_s']:,.0f} ({min(w):,.0f}-{max(w):,.0f}) | {r['scale_epoch_s'] / 60:.1f} min | "
            f"{r['peak_rss_mb']:,.0f} MB |")


if __name__ == "__main__":
    main()
