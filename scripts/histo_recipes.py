"""Histology recipes side by side: train each with the CLI on the same time budget and validation splits
(one per seed), score its validation split with 8x TTA, and print a table with bootstrap 95 % intervals.

With --holdout DIR, recipes train on the 85 % of --data outside a fixed, stratified hold-out
(spotter.histo.holdout, written to DIR once) and are also scored on the 15 % held out, which no epoch, recipe or
threshold is chosen on; the validation AUC picks the best epoch and so flatters.

Runs already finished in --out are reused, so an interrupted comparison picks up where it stopped. A distilled
recipe trains its teacher's recipe first (or reuses it) on the same seed; the teacher's time is not in its row.

    PYTHONPATH=src python scripts/histo_recipes.py --budget 6 --seeds 0 1 --recipes resnet-pool plain-64 plain-96
    PYTHONPATH=src python scripts/histo_recipes.py --holdout runs/holdout --seeds 0 1 --recipes effnet-lite1-ema
"""
import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from spotter.files import shared_data
from spotter.histo.holdout import split_folder

RECIPES = {
    # the default before issue 13 (`resnet`, kept by name): stride-2 stem + max-pool, 80-px crop shifted up to 8 px
    "resnet-pool": ["--model", "resnet"],
    "resnet-pool-ema": ["--model", "resnet", "--ema", "0.998"],
    "resnet-pool-96-ema": ["--model", "resnet", "--crop", "96", "--ema", "0.998"],
    "resnet-deep": ["--model", "resnet-deep"],
    # resnet-plain with the stain jitter of the models that crop
    "plain-64": ["--model", "resnet-plain", "--crop", "64", "--colour-jitter", "0.1"],
    "plain-64-ema": ["--model", "resnet-plain", "--crop", "64", "--colour-jitter", "0.1", "--ema", "0.998"],
    "plain-80-ema": ["--model", "resnet-plain", "--crop", "80", "--colour-jitter", "0.1", "--ema", "0.998"],
    "plain-96-ema": ["--model", "resnet-plain", "--crop", "96", "--colour-jitter", "0.1", "--ema", "0.998"],
    "plain-64-ema-nojitter": ["--model", "resnet-plain", "--crop", "64", "--colour-jitter", "0", "--ema", "0.998"],
    # the default now (the plain baseline): whole 96-px patches, flips only
    "plain-96-flips": ["--model", "resnet-plain"],
    "plain-96-mixup": ["--model", "resnet-plain", "--mixup", "0.4"],
    "plain-96-flips-ema": ["--model", "resnet-plain", "--ema", "0.998"],
    # the EfficientNets' plain fine-tune settings (batch 64, peak 2e-3, decay 1e-2, no stain jitter) without and
    # with the weight average that is now their default
    "effnet": ["--model", "effnet-lite0", "--ema", "0"],
    "effnet-ema": ["--model", "effnet-lite0", "--ema", "0.998"],
    "effnet-mixup": ["--model", "effnet-lite0", "--ema", "0", "--mixup", "0.2"],
    # the fine-tunes' validation AUC peaks near epoch 14 of 21-26: one schedule of at most 14 epochs
    "effnet-ema-14": ["--model", "effnet-lite0", "--ema", "0.998", "--epochs", "14"],
    "effnet-ema-mixup": ["--model", "effnet-lite0", "--ema", "0.998", "--mixup", "0.2"],
    "effnet-lite1": ["--model", "effnet-lite1", "--ema", "0"],
    "effnet-lite1-ema": ["--model", "effnet-lite1", "--ema", "0.998"],
    "effnet-lite1-ema-14": ["--model", "effnet-lite1", "--ema", "0.998", "--epochs", "14"],
    "effnet-lite2": ["--model", "effnet-lite2", "--ema", "0"],
    # Lite0 on patches enlarged to 128 px inside the model
    "effnet-128": ["--model", "effnet-lite0-128"],
    "effnet-before": ["--model", "effnet-lite0", "--batch-size", "128", "--lr", "1e-3", "--weight-decay", "0.05",
                      "--colour-jitter", "0.1", "--ema", "0"],
    # resnet-plain learning from the Lite1 run of the same split (its teacher, below)
    "plain-96-distil": ["--model", "resnet-plain"],
    "plain-96-distil-0.8": ["--model", "resnet-plain", "--soft-weight", "0.8"],
    # resnet-plain with the stain jitter of the models that crop, alone and distilled
    "plain-96-jitter": ["--model", "resnet-plain", "--colour-jitter", "0.1"],
    "plain-96-jitter-0.2": ["--model", "resnet-plain", "--colour-jitter", "0.2"],
    "plain-96-distil-jitter": ["--model", "resnet-plain", "--colour-jitter", "0.1"],
}
TEACHERS = {name: "effnet-lite1-ema" for name in ("plain-96-distil", "plain-96-distil-0.8", "plain-96-distil-jitter")}


def run_recipe(name: str, seed: int, budget: float, data: Path, out: Path, holdout: Path | None = None) -> dict:
    run = out / f"{name}-seed{seed}"
    if not (run / "evaluation_tta.json").exists():
        extra = []
        if name in TEACHERS:
            run_recipe(TEACHERS[name], seed, budget, data, out, holdout)
            extra = ["--teacher", str(out / f"{TEACHERS[name]}-seed{seed}")]
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spotter", "histo", "train", "--data", str(data), "--out", str(run),
                        "--time-budget", str(budget), "--seed", str(seed), *RECIPES[name], *extra], check=True)
        wall = time.perf_counter() - start
        subprocess.run([sys.executable, "-m", "spotter", "histo", "evaluate", str(run), "--tta"], check=True)
        (run / "wall_seconds.txt").write_text(f"{wall:.1f}\n")
    held = run / "holdout" / "evaluation_tta.json"
    if holdout and not held.exists():
        subprocess.run([sys.executable, "-m", "spotter", "histo", "evaluate", str(run), "--tta", "--data",
                        str(holdout), "--out", str(held.parent)], check=True)
    evaluation = json.loads((run / "evaluation_tta.json").read_text())
    settings = json.loads((run / "settings.json").read_text())
    metrics = (run / "metrics.csv").read_text().strip().splitlines()
    held_out = json.loads(held.read_text()) if holdout else {"auc": float("nan"), "auc_ci95": [float("nan")] * 2}
    return {"recipe": name, "seed": seed, "auc": evaluation["auc"], "ci": evaluation["auc_ci95"],
            "holdout_auc": held_out["auc"], "holdout_ci": held_out["auc_ci95"],
            "epochs": len(metrics) - 1, "wall": float((run / "wall_seconds.txt").read_text()),
            "precision": settings["precision"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data("histopathology"))
    parser.add_argument("--out", type=Path, default=Path("runs/recipes"))
    parser.add_argument("--budget", type=float, default=15, help="minutes per run")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="one validation split per seed")
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES), choices=list(RECIPES),
                        help="none (the flag alone) with --holdout: only write the split")
    parser.add_argument("--holdout", type=Path, help="folder for the fixed hold-out split of --data (made once): "
                                                     "train on its develop/, report on its holdout/ too")
    args = parser.parse_args()
    data, holdout = split_folder(args.data, args.holdout) if args.holdout else (args.data, None)
    rows = [run_recipe(name, seed, args.budget, data, args.out, holdout)
            for name in args.recipes for seed in args.seeds]
    print(f"\n{args.budget:g}-minute budget, AUC with 8x TTA and bootstrap 95 % interval on the validation split "
          "(which picked the best epoch)" + (" and on the fixed hold-out (which picked nothing)" if holdout else ""))
    print("| recipe | seed | epochs | precision | wall s | val AUC (TTA) | hold-out AUC (TTA) |\n" + "|---" * 7 + "|")
    for r in rows:
        print(f"| {r['recipe']} | {r['seed']} | {r['epochs']} | {r['precision']} | {r['wall']:.0f} | "
              f"{r['auc']:.4f} [{r['ci'][0]:.4f}, {r['ci'][1]:.4f}] | "
              f"{r['holdout_auc']:.4f} [{r['holdout_ci'][0]:.4f}, {r['holdout_ci'][1]:.4f}] |")

if __name__ == "__main__":
    main()
