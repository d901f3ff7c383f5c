"""Disaster tweets: the pipeline of a run (folds -> fit -> out-of-fold -> threshold -> summary), evaluate
and predict. Every model kind is an adapter in `adapters.py`; nothing here depends on which one.

A run folder (runs.py) holds `settings.json`, `summary.json` (model, decision threshold, per-fold scores, GloVe
coverage), `folds.csv`, `validation_predictions.csv` and one sub-folder per fold (`fold0/`, ...) with the engine's
checkpoints and metrics. Prediction (predictor.py) averages the fold models' probabilities and applies the
threshold tuned for F1 on out-of-fold predictions.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from .. import engine, ensemble, files, plots, runs
from ..errors import BadInput
from ..metrics import (best_f1_threshold, binary_report, confusion_text, cross_fitted_decisions, f1_score,
                       interval_text, intervals, roc_auc)
from . import adapters, refit
from .adapters import score
from .data import corpus_of, fold_splits, training_rows
from .predictor import Teacher, TweetsPredictor, load_run, run_settings
from .settings import TweetSettings
from .text import read_tweets

KIND = adapters.KIND


def train_defaults(model: str) -> dict:
    """Training settings of a model kind (the command line overrides them)."""
    return adapters.MODELS[model].defaults


# ---------------------------------------------------------------- train

def train(settings: TweetSettings, train_settings: engine.TrainSettings, run_dir: Path, *, resume: bool = False,
          overwrite: bool = False, refit_record: dict | None = None, log=print) -> dict:
    """Train every fold of `settings.model` into `run_dir`, then tune the F1 threshold on the out-of-fold
    predictions and write summary.json, validation_predictions.csv and precision_recall.png. A refit
    (`settings.refit`; `refit_record` from refit.schedule) trains one model on every row instead."""
    run_dir = Path(run_dir)
    # rank 0 alone judges the folder (under torchrun the others follow it)
    runs.claim(run_dir, resume=resume or not engine.join_world(train_settings.device).main, overwrite=overwrite)
    if resume and ((run_dir / runs.SETTINGS).exists() or (run_dir / "run.json").exists()):
        settings, train_settings = run_settings(runs.open_run(run_dir, KIND), train_settings.device)
        refit_record = refit.saved_record(run_dir)
    if settings.refit:
        return _train_refit(settings, train_settings, run_dir, refit_record, resume=resume, log=log)
    engine.seed_everything(train_settings.seed)
    world = engine.join_world(train_settings.device)
    log = log if world.main else engine.quiet  # under torchrun every rank runs this; rank 0 speaks and writes
    engine.check_shared_folder(world, run_dir)
    start = time.perf_counter()
    df, changed = _training_rows(settings, run_dir, world, log)
    corpus = corpus_of(df, settings)
    splits = fold_splits(corpus, settings, train_settings.seed)
    teacher = None
    if settings.teacher:
        teacher = Teacher(Path(settings.teacher), splits, df["id"].to_numpy(), corpus.raw, train_settings.device)
        log(f"teacher {settings.teacher}: {teacher.summary.get('model')}, out-of-fold F1 "
            f"{teacher.summary.get('f1', float('nan')):.4f}; its folds are this run's")
    if world.main:
        files.write_text_atomic(run_dir / runs.SETTINGS, json.dumps(
            {"train": asdict(train_settings), "task": {KIND: asdict(settings)}}, indent=2))
        fold_of = np.full(len(df), -1)
        for k, (_, val_rows) in enumerate(splits):
            fold_of[val_rows] = k
        seen = fold_of >= 0
        files.write_csv_atomic(pd.DataFrame({"id": df["id"][seen], "fold": fold_of[seen]}), run_dir / runs.FOLDS)
    model = adapters.create(settings, train_settings)
    facts = model.prepare(corpus, engine.pick_device(train_settings.device, world), log)
    if teacher is not None:
        facts["teacher"] = teacher.describe()
    oof = np.full(len(df), np.nan)
    for k, (train_rows, val_rows) in enumerate(splits):
        fold_dir = run_dir / f"fold{k}"
        if resume and (fold_dir / "val_probs.npy").exists():
            oof[val_rows] = np.load(fold_dir / "val_probs.npy")
            continue
        log(f"fold {k + 1}/{len(splits)}: {len(train_rows)} training, {len(val_rows)} validation tweets")
        engine.seed_everything(train_settings.seed * 1000 + k)  # a fold's model starts the same, resumed or not
        soft = (lambda texts, keywords, k=k: teacher.fold_probs(k, texts, keywords)) if teacher else None
        probs = model.fit_fold(corpus, fold_dir, train_rows, val_rows, resume=resume, log=log, soft=soft)
        if world.main:
            np.save(fold_dir / "val_probs.npy", probs)  # marks the fold finished for --resume
        engine.barrier(world)
        oof[val_rows] = probs
    summary = _summarise(settings, corpus.targets, oof, splits, changed=changed, facts=facts,
                         seconds=time.perf_counter() - start, seed=train_settings.seed)
    summary["fold_group_count"] = len(set(corpus.texts if settings.fold_groups == "normalised" else corpus.raw))
    if world.main:
        _write_outputs(run_dir, settings, df["id"], corpus.targets, oof, summary, len(splits))
    log(f"{settings.model}: out-of-fold F1 {summary['f1']:.4f} {interval_text(summary['f1_ci95'])} (each fold at a "
        f"threshold tuned without it; per fold {summary['f1_mean']:.4f} ± {summary['f1_std']:.4f}), "
        f"AUC {summary['auc']:.4f} {interval_text(summary['auc_ci95'])}; threshold {summary['threshold']:.3f}; "
        f"{summary['seconds']:.0f} s")
    return summary


def _train_refit(settings: TweetSettings, train_settings: engine.TrainSettings, run_dir: Path, record: dict, *,
                 resume: bool, log) -> dict:
    """One model (per blend member) on every labelled tweet, in `fold0/` (what predictors load), for the epochs
    and at the threshold of `record` (refit.py); no validation, so no scores and no validation predictions."""
    if not record:
        raise BadInput(refit.NEEDS_CONFIG)
    engine.seed_everything(train_settings.seed)
    world = engine.join_world(train_settings.device)
    log = log if world.main else engine.quiet
    engine.check_shared_folder(world, run_dir)
    start = time.perf_counter()
    df, changed = _training_rows(settings, run_dir, world, log)
    corpus = corpus_of(df, settings)
    if world.main:
        files.write_text_atomic(run_dir / runs.SETTINGS, json.dumps(
            {"train": asdict(train_settings), "task": {KIND: asdict(settings)}, "refit": record}, indent=2))
    model = adapters.create(settings, train_settings)
    facts = model.prepare(corpus, engine.pick_device(train_settings.device, world), log)
    epochs = f"{record['epochs']} epochs" + (f" (median of {record['fold_best_epochs']})"
                                             if record["schedule_from"] else "")
    log(f"refit: {len(df)} training tweets, no validation; {epochs}; threshold {record['threshold']:.3f} from "
        f"{record['threshold_from']}")
    engine.seed_everything(train_settings.seed * 1000)  # fold 0's seed
    model.fit_fold(corpus, run_dir / "fold0", np.arange(len(df)), np.zeros(0, np.int64), resume=resume, log=log)
    summary = {"model": settings.model, **record, "folds": 1, "tweets": len(df), "relabelled_duplicates": changed,
               "glove_coverage": None, **facts, "seconds": round(time.perf_counter() - start, 1),
               "tuned_on": {"threshold": record["threshold_source"],
                            "shipped_model": "one model trained on every labelled tweet; no number here scores it "
                                             "(scripts/tweets_holdout.py --refit does, on a hold-out)"}}
    if world.main:
        files.write_text_atomic(run_dir / runs.SUMMARY, json.dumps(summary, indent=2))
    log(f"{settings.model}: refitted on {len(df)} tweets in {summary['seconds']:.0f} s; threshold "
        f"{record['threshold']:.3f}")
    return summary


def _training_rows(settings: TweetSettings, run_dir: Path, world: engine.World, log) -> tuple[pd.DataFrame, int]:
    df, changed = training_rows(settings)
    run_dir.mkdir(parents=True, exist_ok=True)
    if df.attrs["skipped"] and world.main:
        (run_dir / "skipped.txt").write_text("\n".join(df.attrs["skipped"]) + "\n")
    if settings.resolve_duplicates:
        log(f"duplicate texts with conflicting targets: {changed} rows relabelled to their group's majority")
    return df, changed


TUNED_ON = {
    "threshold": "all out-of-fold predictions; the F1 figures (fold_f1, f1_mean, f1) use, for each fold, a "
                 "threshold tuned on the other folds only, so they are not scored on the rows that chose it",
    "best_epoch": "each fold's own validation AUC (mildly optimistic for that fold's out-of-fold scores)",
    "validation_at_threshold": "scored on the same rows that chose the threshold: optimistic",
    "shipped_model": "predict averages the fold models; no number here measures that average (on a hold-out "
                     "of train.csv it beat one model: scripts/tweets_holdout.py, README)",
}


def _summarise(settings: TweetSettings, targets: np.ndarray, oof: np.ndarray, splits, *, changed: int,
               facts: dict, seconds: float, seed: int) -> dict:
    """Scores of the out-of-fold predictions: F1 with thresholds chosen without the scored fold (for one
    validation split: without the scored half), bootstrap 95 % intervals, and the shipped threshold."""
    seen = ~np.isnan(oof)
    threshold, _ = best_f1_threshold(targets[seen], oof[seen])
    parts = [v for _, v in splits]
    if len(parts) == 1:
        parts = np.array_split(np.random.default_rng(seed).permutation(parts[0]), 2)
    decisions, fold_thresholds = cross_fitted_decisions(targets, np.nan_to_num(oof), parts)
    fold_f1 = [f1_score(targets[p], decisions[p]) for p in parts]
    rows = np.flatnonzero(seen)
    return {"model": settings.model, "threshold": threshold, "folds": len(splits),
            "fold_groups": settings.fold_groups,
            "fold_f1": fold_f1, "f1_mean": float(np.mean(fold_f1)), "f1_std": float(np.std(fold_f1)),
            "f1": f1_score(targets[rows], decisions[rows]), "fold_thresholds": fold_thresholds,
            "auc": roc_auc(targets[rows], oof[rows]),
            **intervals(targets[rows], oof[rows], decisions[rows], seed=seed),
            "validation_at_threshold": binary_report(targets[seen], oof[seen], threshold), "tuned_on": TUNED_ON,
            "relabelled_duplicates": changed, "glove_coverage": None, **facts, "seconds": round(seconds, 1)}


def _write_outputs(run_dir: Path, settings: TweetSettings, ids: pd.Series, targets: np.ndarray, oof: np.ndarray,
                   summary: dict, n_folds: int) -> None:
    seen = ~np.isnan(oof)
    files.write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
    pd.DataFrame({"id": ids[seen], "target": targets[seen], "prob": oof[seen]}).to_csv(
        run_dir / "validation_predictions.csv", index=False)
    title = f"{settings.model}: {'out-of-fold' if n_folds > 1 else 'validation'} predictions"
    plots.precision_recall(targets[seen], oof[seen], summary["threshold"], run_dir / "precision_recall.png",
                           title=title)


# ---------------------------------------------------------------- ensembles

def build_ensemble(members: list[Path], out: Path, *, overwrite: bool = False, log=print) -> dict:
    """Calibrate and average finished tweets runs or ensembles on their out-of-fold predictions (the members
    must share train.csv, seed and folds), and tune the F1 threshold of the average."""
    opened = [runs.open_run(member, KIND) for member in members]
    for run in opened:
        refit.refuse(run, "to calibrate an ensemble on")

    def cross_fitted(ids: np.ndarray, labels: np.ndarray, probs: np.ndarray) -> dict:
        """F1 as a run's: each fold's rows cut at the threshold tuned on the other folds' (the members'
        calibration is still fitted on every row)."""
        try:
            fold_of = opened[0].folds().set_index("id").loc[ids, "fold"].to_numpy()
        except runs.RunError:  # runs made before folds.csv
            return {}
        folds = np.unique(fold_of)
        if len(folds) < 2:  # one validation split: no other fold to tune on
            return {}
        decisions, _ = cross_fitted_decisions(labels, probs, [np.flatnonzero(fold_of == k) for k in folds])
        return {"f1_cross_fitted": f1_score(labels, decisions),
                "f1_cross_fitted_ci95": intervals(labels, probs, decisions)["f1_ci95"]}

    return ensemble.build(KIND, members, out, lambda m: runs.open_run(m, KIND).validation_predictions(), score,
                          "f1_best", threshold=best_f1_threshold, honest=cross_fitted, overwrite=overwrite, log=log)


# ---------------------------------------------------------------- evaluate and predict

def _frame_probs(predictor: TweetsPredictor, df: pd.DataFrame) -> np.ndarray:
    return predictor.predict_proba(df["text"].tolist(), df["keyword"].tolist())


def evaluate(run_dir: Path, csv: Path, *, device: str = "auto", skip_bad: bool = False, log=print) -> dict:
    """F1, precision, recall and AUC of a run on a labelled CSV, at the run's threshold."""
    run_dir = Path(run_dir)
    predictor = load_run(run_dir, device)
    df = read_tweets(csv, labelled=True, skip_bad=skip_bad)
    probs, labels = _frame_probs(predictor, df), df["target"].to_numpy()
    report = {**binary_report(labels, probs, predictor.threshold),
              **intervals(labels, probs, probs >= predictor.threshold), "tweets": len(df), "csv": str(csv)}
    files.write_text_atomic(run_dir / "evaluation.json", json.dumps(report, indent=2))
    plots.precision_recall(labels, probs, predictor.threshold, run_dir / "evaluation_precision_recall.png",
                           title=f"{Path(csv).name}: {len(df)} tweets")
    log(f"{csv}: {len(df)} tweets  F1 {report['f1']:.4f} {interval_text(report['f1_ci95'])}  precision "
        f"{report['precision']:.4f}  recall {report['recall']:.4f}  AUC {report['auc']:.4f} "
        f"{interval_text(report['auc_ci95'])}  at threshold {predictor.threshold:.3f}")
    log(confusion_text(report))
    return report


def predict(run_dir: Path, csv: Path, out: Path, *, proba: bool = False, device: str = "auto",
            skip_bad: bool = False, log=print) -> pd.DataFrame:
    """Kaggle's submission: `id,target` (0/1 at the run's threshold), same rows and order as `csv`."""
    predictor = load_run(run_dir, device)
    df = read_tweets(csv, labelled=False, skip_bad=skip_bad)
    probs = _frame_probs(predictor, df)
    submission = pd.DataFrame({"id": df["id"], "target": (probs >= predictor.threshold).astype(int)})
    if proba:
        submission["proba"] = probs
    files.write_csv_atomic(submission, out)
    log(f"wrote {len(submission)} predictions to {out} ({submission['target'].mean():.1%} disaster)")
    return submission
