"""Slides for the WSInfer check, and the tile-by-tile comparison of WSInfer's CSVs with `histo slide`'s.

    python scripts/wsinfer_check.py slides OUT      # OUT/native/ (level 0 at the model's 0.972 µm/px) and
                                                    # OUT/fine/ (level 0 at 0.486 µm/px: WSInfer resizes 192 -> 96)
    python scripts/wsinfer_check.py compare OUT     # OUT/wsinfer-<kind>/ against OUT/spotter-<kind>/

Run by scripts/wsinfer_check.sh, which builds WSInfer's own environment; see docs/slides.md.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import pandas as pd

from spotter import mosaic
from spotter.histo.settings import KAGGLE_MPP

KINDS = {"native": 1, "fine": 2}  # level-0 pixels per model pixel
SIDE = 8  # patches a side: 64 real patches


def shared_patches() -> Path:
    return Path(os.environ.get("SPOTTER_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
        / "histopathology"


def write_slides(out: Path) -> None:
    """One mosaic of real labelled patches (half tumour) at two scans: native and twice as fine (bicubic, as a
    finer scan would resolve the same tissue), each in its own folder (WSInfer reads every file of a folder)."""
    from PIL import Image

    data = shared_patches()
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str})
    rng = np.random.default_rng(7)
    ids = [i for label in (0, 1) for i in rng.choice(labels.id[labels.label == label], SIDE * SIDE // 2, False)]
    image = mosaic.mosaic_image(mosaic.read_patches(data / "train", list(rng.permutation(ids))), SIDE, SIDE, 96)
    for kind, up in KINDS.items():
        folder = out / kind
        folder.mkdir(parents=True, exist_ok=True)
        fine = np.asarray(Image.fromarray(image).resize((image.shape[1] * up, image.shape[0] * up), Image.BICUBIC))
        mosaic.write_mosaic(folder / f"mosaic-{kind}.tif", fine, upsample=1, mpp=KAGGLE_MPP / up)
    print(f"slides written under {out}")


def compare(out: Path) -> None:
    rows = []
    for kind in KINDS:
        (ours,) = (out / f"spotter-{kind}").glob("*/tiles.csv")
        (theirs,) = (out / f"wsinfer-{kind}" / "model-outputs-csv").glob("*.csv")
        a, b = pd.read_csv(ours), pd.read_csv(theirs)
        both = a.merge(b, on=["minx", "miny", "width", "height"], suffixes=("_spotter", "_wsinfer"))
        diff = (both["prob_tumor_spotter"] - both["prob_tumor_wsinfer"]).abs()
        rows.append({"slide": kind, "level-0 µm/px": round(KAGGLE_MPP / KINDS[kind], 3), "spotter tiles": len(a),
                     "wsinfer tiles": len(b), "same tiles": len(both), "median |Δp|": diff.median(),
                     "mean |Δp|": diff.mean(), "max |Δp|": diff.max()})
    table = pd.DataFrame(rows)
    text = table.to_string(index=False, float_format=lambda v: f"{v:.4g}")
    (out / "comparison.txt").write_text(text + "\n")
    print(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("step", choices=["slides", "compare"])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    write_slides(args.out) if args.step == "slides" else compare(args.out)


if __name__ == "__main__":
    main()
