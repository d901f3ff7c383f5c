"""Tweet recipes side by side on the same folds: train each with the CLI (K-fold, one seed), and print a table
of out-of-fold F1 (each fold cut at a threshold tuned without it) and AUC with bootstrap 95 % intervals.

A recipe may name another as its teacher ("{minilm}" in its arguments is that run's folder); teachers are
trained first. Runs already finished in --out are reused.

    PYTHONPATH=src python scripts/tweets_recipes.py --recipes tfidf bigru minilm bigru-distil-minilm
"""
import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

from spotter.files import shared_data

RECIPES = {
    "blend": ["--model", "blend"],
    "blend-distil-minilm": ["--model", "blend", "--teacher", "{minilm}"],
    "tfidf": ["--model", "tfidf"],
    "tfidf-no-keyword": ["--model", "tfidf", "--no-keyword"],
    "bigru": ["--model", "bigru"],
    "bigru-no-keyword": ["--model", "bigru", "--no-keyword"],
    "minilm": ["--model", "minilm"],
    "minilm-no-keyword": ["--model", "minilm", "--no-keyword"],
    "minilm-cased": ["--model", "minilm", "--no-lower"],
    "bigru-distil-minilm": ["--model", "bigru", "--teacher", "{minilm}"],
    "bigru-distil-minilm-soft1": ["--model", "bigru", "--teacher", "{minilm}", "--soft-weight", "1"],
    "bigru-distil-minilm-copies0": ["--model", "bigru", "--teacher", "{minilm}", "--transfer-copies", "0"],
    "bigru-distil-minilm-copies4": ["--model", "bigru", "--teacher", "{minilm}", "--transfer-copies", "4"],
}


def run_recipe(name: str, folds: int, seed: int, data: Path, out: Path) -> dict:
    run = out / f"{name}-k{folds}-seed{seed}"
    args = RECIPES[name]
    for teacher in re.findall(r"\{(.+?)\}", " ".join(args)):
        run_recipe(teacher, folds, seed, data, out)
        args = [a.replace("{" + teacher + "}", str(out / f"{teacher}-k{folds}-seed{seed}")) for a in args]
    if not (run / "summary.json").exists():
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "spotter", "tweets", "train", "--data", str(data), "--out", str(run),
                        "--folds", str(folds), "--seed", str(seed), *args], check=True)
        (run / "wall_seconds.txt").write_text(f"{time.perf_counter() - start:.1f}\n")
    s = json.loads((run / "summary.json").read_text())
    return {"recipe": name, "f1": s["f1"], "f1_ci": s["f1_ci95"], "auc": s["auc"], "auc_ci": s["auc_ci95"],
            "wall": float((run / "wall_seconds.txt").read_text())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=shared_data("disaster-tweets"))
    parser.add_argument("--out", type=Path, default=Path("runs/tweet-recipes"))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    args = parser.parse_args()
    rows = [run_recipe(name, args.folds, args.seed, args.data, args.out) for name in args.recipes]
    print(f"\n{args.folds}-fold CV, seed {args.seed}: out-of-fold F1 and AUC with bootstrap 95 % intervals")
    print("| recipe | wall s | OOF F1 | OOF AUC |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['recipe']} | {r['wall']:.0f} | {r['f1']:.4f} [{r['f1_ci'][0]:.4f}, {r['f1_ci'][1]:.4f}] | "
              f"{r['auc']:.4f} [{r['auc_ci'][0]:.4f}, {r['auc_ci'][1]:.4f}] |")


if __name__ == "__main__":
    main()
