"""Scores and wall time of whole runs, each trained and evaluated through the `spotter` command as a user
would: histology models (validation AUC with and without 8x TTA) for bench/histo_bench.py, and tweets models
(K-fold cross-validated F1) for bench/tweets_bench.py, with ensembles of them."""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def spotter(*args) -> str:
    """Run `python -m spotter ARGS`; its stderr becomes the error when it fails."""
    result = subprocess.run([sys.executable, "-m", "spotter", *map(str, args)], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr)
    return result.stdout


# ---------------------------------------------------------------- histology

def histo_train_and_score(data: Path, out: Path, model: str, extra: list) -> dict:
    start = time.perf_counter()
    spotter("histo", "train", "--data", data, "--out", out, "--model", model, *extra)
    seconds = time.perf_counter() - start
    epochs = sum(1 for _ in open(out / "metrics.csv")) - 1
    return {"model": model, "train_seconds": seconds, "epochs": epochs, **histo_score(out)}


def histo_score(out: Path, tta_out: Path | None = None) -> dict:
    """Validation AUC of a run or ensemble, without and with 8x TTA (an ensemble calibrated on TTA
    predictions, `tta_out`, scores the TTA column)."""
    tta_out = tta_out or out
    spotter("histo", "evaluate", out)
    spotter("histo", "evaluate", tta_out, "--tta")
    plain = json.loads((out / "evaluation.json").read_text())
    tta = json.loads((tta_out / "evaluation_tta.json").read_text())
    return {"val_auc": plain["auc"], "val_auc_tta": tta["auc"], "val_images": plain["images"]}


def histo_runs(data: Path, models: list[str], ensembles: list[str], budget: float,
               runs_dir: Path | None = None) -> list[dict]:
    """Train and score each model (the seed model on the write-up's schedule, the others for `budget`
    minutes), then each ensemble (name+name) of trained ones; prints each score as it comes."""
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for model in models:
            # The seed model gets the write-up's schedule (11 epochs); the others the time budget.
            extra = ["--epochs", 11, "--lr", 1e-3] if model == "seed" else ["--time-budget", budget]
            runs.append(histo_train_and_score(data, (runs_dir or Path(tmp)) / model, model, extra))
            print(f"{model}: val AUC {runs[-1]['val_auc']:.4f}, with TTA {runs[-1]['val_auc_tta']:.4f}", flush=True)
        for name in ensembles:
            members = name.split("+")
            if not set(members) <= {r["model"] for r in runs}:
                continue
            out = (runs_dir or Path(tmp)) / name
            # An ensemble's calibration holds for predictions made as it was fitted: one of each.
            spotter("histo", "ensemble", *(out.parent / m for m in members), "--out", out)
            spotter("histo", "ensemble", *(out.parent / m for m in members), "--out", out.with_name(name + "-tta"),
                    "--tta")
            runs.append({**histo_score(out, out.with_name(name + "-tta")), "model": name, "epochs": None,
                         "train_seconds": sum(r["train_seconds"] for r in runs if r["model"] in members)})
    return runs


def histo_table(runs: list[dict]) -> str:
    lines = ["\n| model | epochs | train time | val AUC | val AUC 8x TTA |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['epochs'] or '-'} | {r['train_seconds'] / 60:.1f} min | {r['val_auc']:.4f} | "
              f"{r['val_auc_tta']:.4f} |" for r in runs]
    return "\n".join(lines)


def histo_speed(results: dict) -> str:
    """Packing and training throughput from `stage_pack` and `stage_histo_train`, in two lines."""
    return (f"\npacking (warm cache): {results['pack_files_per_s']:,.0f} files/s; "
            f"plain PIL loop {results['pil_files_per_s']:,.0f} files/s "
            f"({results['pack_files_per_s'] / results['pil_files_per_s']:.1f}x)\n"
            f"training throughput ({results['precision']}): ceiling {results['train_ceiling_img_per_s']:.0f} img/s, "
            f"end to end {results['train_e2e_img_per_s']:.0f} img/s ({results['e2e_over_ceiling']:.1%})")


# ---------------------------------------------------------------- tweets

def tweets_score(name: str, run: Path, seconds: float) -> dict:
    """Per-fold F1 (models), whole out-of-fold F1 and AUC (models and ensembles) of a finished run."""
    summary = json.loads((run / "summary.json").read_text())
    # Runs report F1 with each fold cut at a threshold tuned without it; ensembles tune on the rows they score.
    at_threshold = summary.get("validation_at_threshold", summary.get("validation"))
    result = {"model": name, "oof_f1": summary.get("f1", at_threshold["f1"]), "oof_auc": at_threshold["auc"],
              "f1_ci95": summary.get("f1_ci95", at_threshold.get("f1_ci95")),
              "threshold": summary["threshold"], "seconds": seconds}
    if "fold_f1" in summary:
        result.update(f1_mean=summary["f1_mean"], f1_std=summary["f1_std"], fold_f1=summary["fold_f1"],
                      glove_coverage=summary["glove_coverage"])
    print(f"{name}: out-of-fold F1 {result['oof_f1']:.4f}  ({seconds:.0f} s)", flush=True)
    return result


def tweets_runs(data: Path, folds: int, models: list[str], ensembles: list[str],
                runs_dir: Path | None = None) -> list[dict]:
    """Train each model with `folds`-fold cross-validation, then each ensemble (name+name) of them, and score
    them all; prints each score as it comes."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        runs = runs_dir or Path(tmp)
        for model in models:
            start = time.perf_counter()
            spotter("tweets", "train", "--data", data, "--out", runs / model, "--model", model, "--folds", folds)
            results.append(tweets_score(model, runs / model, time.perf_counter() - start))
        for name in ensembles:
            start = time.perf_counter()
            spotter("tweets", "ensemble", *(runs / m for m in name.split("+")), "--out", runs / name)
            results.append(tweets_score(name, runs / name, time.perf_counter() - start))
    return results


def tweets_table(results: list[dict], folds: int) -> str:
    lines = [f"\n| model | {folds}-fold F1 (mean ± sd) | out-of-fold F1 | out-of-fold AUC | threshold | wall time |",
             "|---|---|---|---|---|---|"]
    for r in results:
        per_fold = f"{r['f1_mean']:.4f} ± {r['f1_std']:.4f}" if "f1_mean" in r else "(ensemble)"
        lines.append(f"| {r['model']} | {per_fold} | {r['oof_f1']:.4f} | {r['oof_auc']:.4f} | {r['threshold']:.3f} | "
                     f"{r['seconds']:.0f} s |")
    cover = next((r["glove_coverage"] for r in results if r.get("glove_coverage")), None)
    if cover:
        lines.append(f"\nGloVe 6B 50-d coverage of the training vocabulary: {cover['raw']['vocabulary']:.1%} of "
                     f"{cover['raw']['distinct_words']} words before normalisation, "
                     f"{cover['normalised']['vocabulary']:.1%} of {cover['normalised']['distinct_words']} after "
                     f"({cover['raw']['tokens']:.1%} -> {cover['normalised']['tokens']:.1%} of running tokens)")
    return "\n".join(lines)
