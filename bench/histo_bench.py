"""Histopathology benchmark: packing speed, training throughput against its ceiling, and the scores of the
default and seed models trained on the shared real patches. Prints a table and writes JSON.

    python bench/histo_bench.py [--data ../shared/data/histopathology] [--budget 15] [--skip-train]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from spotter import engine
from spotter.histo.data import find_sources, pack
from spotter.histo.models import create_model
from spotter.histo.preprocess import Augment, preprocess
from spotter.histo.task import iterate_batches, split_train_val

ROOT = Path(__file__).resolve().parents[1]


def pack_speed(data: Path, repeats: int = 3) -> dict:
    source = find_sources(data)["train"]
    with tempfile.TemporaryDirectory() as tmp:
        pack(source, Path(tmp) / "warm", progress=False)  # warms the page cache
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            pack(source, Path(tmp) / f"run{i}", progress=False)
            times.append(time.perf_counter() - start)
        packed = pack(source, Path(tmp) / "run0", progress=False)
        pixels = np.asarray(packed.pixels)
    from PIL import Image
    paths = source.paths[:2000]
    start = time.perf_counter()
    for p in paths:
        np.asarray(Image.open(p).convert("RGB"))
    pil = len(paths) / (time.perf_counter() - start)
    return {"pack_files_per_s": len(source.paths) / statistics.median(times), "pil_files_per_s": pil,
            "files": len(source.paths)}, pixels, packed


def throughput(packed, model_name: str, batch_size: int = 128, steps: int = 12) -> dict:
    """Images/s of the model stepping on a batch already in memory (ceiling) and end to end from the pack."""
    device = torch.device("cpu")
    precision = engine.pick_precision(device)
    model = create_model(model_name).to(memory_format=torch.channels_last)
    settings = engine.TrainSettings()
    optimizer = engine.make_optimizer(model, settings)
    rows = np.arange(len(packed))

    def step(x, y):
        with engine.autocast(device, precision):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    x, y = next(iterate_batches(packed, rows, batch_size, device, 96, seed=0, augment=Augment()))
    ceiling, e2e = [], []
    for _ in range(3):  # alternate, so both see the same machine state
        for i in range(steps):
            start = time.perf_counter()
            step(x, y)
            if i >= 2:
                ceiling.append(batch_size / (time.perf_counter() - start))
        batches = iterate_batches(packed, rows, batch_size, device, 96, seed=1, augment=Augment())
        start = time.perf_counter()
        for i, (bx, by) in enumerate(batches):
            step(bx, by)
            now = time.perf_counter()
            if i >= 2:
                e2e.append(batch_size / (now - start))
            start = now
            if i + 1 >= steps:
                break
    c, e = statistics.median(ceiling), statistics.median(e2e)
    return {"train_ceiling_img_per_s": c, "train_e2e_img_per_s": e, "e2e_over_ceiling": e / c, "precision": precision}


def spotter(*args) -> str:
    result = subprocess.run([sys.executable, "-m", "spotter", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr)
    return result.stdout


def train_and_score(data: Path, out: Path, model: str, extra: list[str]) -> dict:
    start = time.perf_counter()
    spotter("histo", "train", "--data", data, "--out", out, "--model", model, *extra)
    seconds = time.perf_counter() - start
    spotter("histo", "evaluate", out)
    spotter("histo", "evaluate", out, "--tta")
    plain = json.loads((out / "evaluation.json").read_text())
    tta = json.loads((out / "evaluation_tta.json").read_text())
    epochs = sum(1 for _ in open(out / "metrics.csv")) - 1
    return {"model": model, "train_seconds": seconds, "epochs": epochs, "val_auc": plain["auc"],
            "val_auc_tta": tta["auc"], "val_images": plain["images"], "infer_img_per_s": plain["images_per_s"],
            "infer_tta_img_per_s": tta["images_per_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "histopathology")
    parser.add_argument("--budget", type=float, default=15, help="minutes for the default model")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--out", type=Path, default=Path("bench-histo.json"))
    args = parser.parse_args()

    results: dict = {"device": "cpu", "threads": torch.get_num_threads()}
    speed, _, packed = pack_speed(args.data)
    results.update(speed)
    results.update(throughput(packed, "resnet"))
    runs = []
    if not args.skip_train:
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(train_and_score(args.data, Path(tmp) / "default", "resnet", ["--time-budget", args.budget]))
            # The write-up's model and schedule: 11 epochs.
            runs.append(train_and_score(args.data, Path(tmp) / "seed", "seed", ["--epochs", 11, "--lr", 1e-3]))
    results["runs"] = runs
    args.out.write_text(json.dumps(results, indent=2))

    print(f"\npacking {results['files']} files (warm cache): {results['pack_files_per_s']:,.0f} files/s; "
          f"plain PIL loop {results['pil_files_per_s']:,.0f} files/s "
          f"({results['pack_files_per_s'] / results['pil_files_per_s']:.1f}x)")
    print(f"training throughput ({results['precision']}): ceiling {results['train_ceiling_img_per_s']:.0f} img/s, "
          f"end to end {results['train_e2e_img_per_s']:.0f} img/s ({results['e2e_over_ceiling']:.1%})")
    if runs:
        print(f"\n| model | epochs | train time | val AUC | val AUC 8x TTA | infer img/s | TTA img/s |")
        print("|---|---|---|---|---|---|---|")
        for r in runs:
            print(f"| {r['model']} | {r['epochs']} | {r['train_seconds'] / 60:.1f} min | {r['val_auc']:.4f} | "
                  f"{r['val_auc_tta']:.4f} | {r['infer_img_per_s']:.0f} | {r['infer_tta_img_per_s']:.0f} |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
