"""What the model picker shows about a served run, read from its folder."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from .. import runs

# Training settings a caller may see. An allow-list, not a deny-list: settings that hold paths on the server
# (data, pack_root, embeddings, teacher) and any setting added later stay private until named here.
SHOWN_SETTINGS = {
    "train": ("epochs", "batch_size", "lr", "weight_decay", "time_budget_min", "patience", "seed", "device",
              "precision", "ema"),
    "histo": ("model", "crop", "rescan", "crop_jitter", "colour_jitter", "mixup", "soft_weight", "val_fraction",
              "skip_bad", "augment", "compile", "val_split", "mpp", "refit"),
    "tweets": ("model", "folds", "val_fraction", "resolve_duplicates", "skip_bad", "unfreeze_epoch", "encoder",
               "pooling", "max_tokens", "fold_groups", "keyword", "soft_weight", "transfer_copies", "refit"),
}


def _shown(settings: dict, group: str) -> dict:
    shown = {k: settings[k] for k in SHOWN_SETTINGS[group] if k in settings}
    if "/" in str(shown.get("encoder", "")) or "\\" in str(shown.get("encoder", "")):
        del shown["encoder"]  # a packaged encoder's name is shown, a local folder is not
    return shown


def model_info(name: str, task: str, run: runs.Run, predictor) -> dict:
    """What the model picker shows: task, kind, validation scores from the run folder, training settings."""
    info: dict[str, Any] = {"name": name, "task": task, "kind": predictor.name, "threshold": predictor.threshold,
                            "ensemble": run.is_ensemble, "validation": {}, "settings": {}}
    if run.is_ensemble:
        info["members"] = [m.path.name for m in run.members]
        v = run.spec.get("validation", {})
        info["validation"] = {k: v[k] for k in ("auc", "f1", "f1_best", "precision", "recall", "accuracy") if k in v}
    else:
        info["settings"] = {**_shown(run.settings, task), **_shown(run.train, "train")}
    if task == "histo" and not run.is_ensemble:
        for file, key in (("evaluation_tta.json", "tta"), ("evaluation.json", "plain")):
            report = _read_json(run.path / file)
            if report and "validation split" in str(report.get("data", "")):
                info["validation"][f"auc_{key}"] = report["auc"]
        metrics = pd.read_csv(run.path / "metrics.csv") if (run.path / "metrics.csv").exists() else None
        if metrics is not None and "val_auc" in metrics:  # a refit run has no validation
            best = metrics.loc[metrics["val_auc"].idxmax()]
            info["validation"].setdefault("auc", float(best["val_auc"]))
            info["validation"]["best_epoch"] = int(best["epoch"])
        info["explanation"] = "Grad-CAM"
    elif task == "histo":
        info["explanation"] = "Grad-CAM (mean of the members' maps)"
    if task == "tweets":
        summary = run.summary
        # Runs score out-of-fold F1 at thresholds chosen without the scored fold, with 95 % intervals;
        # ensembles (and runs made before that) keep their scores under "validation".
        v = summary.get("validation", summary)
        info["validation"].update({k: v[k] for k in ("f1", "auc", "precision", "recall", "f1_ci95", "auc_ci95")
                                   if k in v})
        if "f1_mean" in summary:
            info["validation"].update(f1_mean=summary["f1_mean"], f1_std=summary["f1_std"], folds=summary["folds"])
        blend = "integrated gradients and exact contributions, averaged"  # MiniLM's member has no word attributions
        no_words = {name: None for name in ("minilm-frozen", "sentence-lr", "ensemble")}  # no word attributions
        info["explanation"] = {"tfidf": "exact contributions", **no_words, "blend": blend,
                               "blend-minilm": blend}.get(predictor.name, "integrated gradients")
    return info


def _read_json(path: Path) -> dict | None:
    """An evaluation report the run folder may hold (written by `evaluate`, not part of the run itself)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
