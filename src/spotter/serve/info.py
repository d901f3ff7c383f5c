"""What the model picker shows about a served run, read from its folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def model_info(name: str, task: str, run_dir: Path, predictor) -> dict:
    """What the model picker shows: task, kind, validation scores from the run folder, training settings."""
    ensemble = _read_json(run_dir / "ensemble.json")
    info: dict[str, Any] = {"name": name, "task": task, "kind": predictor.name, "threshold": predictor.threshold,
                            "ensemble": ensemble is not None, "validation": {}, "settings": {}}
    if ensemble:
        info["members"] = [Path(m).name for m in ensemble["members"]]
        v = ensemble.get("validation", {})
        info["validation"] = {k: v[k] for k in ("auc", "f1", "f1_best", "precision", "recall", "accuracy") if k in v}
    if task == "histo" and not ensemble:
        settings = _read_json(run_dir / "settings.json") or {}
        info["settings"] = {**settings.get("task", {}).get("histo", {}), **settings.get("train", {})}
        for file, key in (("evaluation_tta.json", "tta"), ("evaluation.json", "plain")):
            report = _read_json(run_dir / file)
            if report and "validation split" in str(report.get("data", "")):
                info["validation"][f"auc_{key}"] = report["auc"]
        if (run_dir / "metrics.csv").exists():
            metrics = pd.read_csv(run_dir / "metrics.csv")
            best = metrics.loc[metrics["val_auc"].idxmax()]
            info["validation"].setdefault("auc", float(best["val_auc"]))
            info["validation"]["best_epoch"] = int(best["epoch"])
        info["explanation"] = "Grad-CAM"
    elif task == "histo":
        info["explanation"] = "Grad-CAM (mean of the members' maps)"
    if task == "tweets":
        summary = _read_json(run_dir / "summary.json") or {}
        # Runs score out-of-fold F1 at thresholds chosen without the scored fold, with 95 % intervals;
        # ensembles (and runs made before that) keep their scores under "validation".
        v = summary.get("validation", summary)
        info["validation"].update({k: v[k] for k in ("f1", "auc", "precision", "recall", "f1_ci95", "auc_ci95")
                                   if k in v})
        if "f1_mean" in summary:
            info["validation"].update(f1_mean=summary["f1_mean"], f1_std=summary["f1_std"], folds=summary["folds"])
        run = _read_json(run_dir / "run.json") or {}
        info["settings"] = {**{k: v for k, v in run.get("tweets", {}).items() if k != "normalise"},
                            **run.get("train", {})}
        info["explanation"] = {"tfidf": "exact contributions", "minilm-frozen": None, "ensemble": None,
                               "blend": "integrated gradients and exact contributions, averaged"}.get(
            predictor.name, "integrated gradients")
    for private in ("data", "pack_root", "embeddings"):  # paths on the server: not for callers
        info["settings"].pop(private, None)
    return info
