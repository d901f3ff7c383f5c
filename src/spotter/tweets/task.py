"""Disaster tweets: the pipeline of a run (folds -> fit -> out-of-fold -> threshold -> summary), evaluate
and predict. Every model kind is an adapter in `adapters.py`; nothing here depends on which one.

A run folder holds `summary.json` (model, decision threshold, per-fold scores, GloVe coverage) and one
sub-folder per fold (`fold0/`, ...) with the engine's checkpoints and metrics. Prediction averages the
fold models' probabilities and applies the threshold tuned for F1 on out-of-fold predictions.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from .. import engine, ensemble, explain, files, plots
from ..metrics import (best_f1_threshold, binary_report, confusion_text, cross_fitted_decisions, f1_score,
                       interval_text, intervals, roc_auc)
from . import adapters
from .adapters import encode, iterate_batches, score  # noqa: F401 (encode, iterate_batches: used by bench.py)
from .settings import TweetSettings
from .text import Corpus, NormaliseOptions, keyword_text, read_tweets, resolve_conflicting_duplicates

KIND = adapters.KIND
MODEL_NAMES = list(adapters.MODELS)


def train_defaults(model: str) -> dict:
    """Training settings of a model kind (the command line overrides them)."""
    return adapters.MODELS[model].defaults


def prepare(df: pd.DataFrame, options: NormaliseOptions) -> tuple[list[str], list[list[str]]]:
    """Normalised text and tokens of each tweet (see text.Corpus, the one preprocessing path)."""
    corpus = Corpus.build(df["text"], df["keyword"], options)
    return corpus.texts, corpus.tokens


def fold_splits(corpus: Corpus, settings: TweetSettings, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep every copy of a text on one side (duplicates would leak otherwise)."""
    n_splits = settings.folds if settings.folds >= 2 else max(2, round(1 / settings.val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    groups = corpus.texts if settings.fold_groups == "normalised" else corpus.raw
    splits = list(splitter.split(np.zeros(len(corpus)), corpus.targets, groups=groups))
    return splits if settings.folds >= 2 else splits[:1]


# ---------------------------------------------------------------- train

def train(settings: TweetSettings, train_settings: engine.TrainSettings, run_dir: Path, *, resume: bool = False,
          log=print) -> dict:
    """Train every fold of `settings.model` into `run_dir`, then tune the F1 threshold on the out-of-fold
    predictions and write summary.json, validation_predictions.csv and precision_recall.png."""
    run_dir = Path(run_dir)
    if resume and (run_dir / "run.json").exists():
        settings, train_settings = saved_settings(run_dir / "run.json", train_settings.device)
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
        from .distil import Teacher
        teacher = Teacher(Path(settings.teacher), splits, corpus.raw, train_settings.device)
        log(f"teacher {settings.teacher}: {teacher.summary.get('model')}, out-of-fold F1 "
            f"{teacher.summary.get('f1', float('nan')):.4f}; its folds are this run's")
    if world.main:
        files.write_text_atomic(run_dir / "run.json", json.dumps(
            {"tweets": asdict(settings), "train": asdict(train_settings)}, indent=2))
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


def saved_settings(path: Path, device: str = "auto") -> tuple[TweetSettings, engine.TrainSettings]:
    """A run's settings from its run.json (a resumed run keeps them; only the device may change)."""
    saved = json.loads(path.read_text())
    saved["tweets"].setdefault("fold_groups", "raw")  # how runs made before the setting split their folds
    return (engine.settings_from(TweetSettings, saved["tweets"], path),
            engine.settings_from(engine.TrainSettings, {**saved["train"], "device": device}, path))


def training_rows(settings: TweetSettings) -> tuple[pd.DataFrame, int]:
    """train.csv, checked, with conflicting duplicates relabelled (and how many rows changed)."""
    df = read_tweets(Path(settings.data) / "train.csv", labelled=True, skip_bad=settings.skip_bad)
    if settings.resolve_duplicates:
        return resolve_conflicting_duplicates(df)
    return df, 0


def corpus_of(df: pd.DataFrame, settings: TweetSettings) -> Corpus:
    """A run's training tweets as its models read them."""
    keywords = df["keyword"] if settings.keyword else [""] * len(df)
    return Corpus.build(df["text"], keywords, NormaliseOptions(**settings.normalise), df["target"].to_numpy())


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

def build_ensemble(runs: list[Path], out: Path, *, log=print) -> dict:
    """Calibrate and average finished tweets runs on their out-of-fold predictions (the members must
    share train.csv, seed and folds), and tune the F1 threshold of the average."""
    summary = ensemble.build(KIND, runs, out, ensemble.saved_validation, score, "f1_best",
                             threshold=best_f1_threshold, log=log)
    # What `evaluate` and `predict` read from any run: the threshold.
    files.write_text_atomic(Path(out) / "summary.json", json.dumps(
        {"model": "ensemble", "threshold": summary["threshold"], "validation": summary["validation"],
         "members": summary["members"]}, indent=2))
    return summary


# ---------------------------------------------------------------- the prediction API: load_run, TweetsPredictor

def load_summary(run_dir: Path) -> dict:
    """A finished run's (or ensemble's) summary.json, with a clear error when there is none."""
    path = Path(run_dir) / "summary.json"
    if not path.exists() and (Path(run_dir) / "best.pt").exists():
        engine.load_checkpoint(Path(run_dir) / "best.pt", KIND)  # names the run's task if it is another
    if not path.exists():
        raise engine.CheckpointError(f"{run_dir}: no finished tweets run there (summary.json missing); train it first")
    return json.loads(path.read_text())


class TweetsPredictor:
    """A finished run's fold models (or an ensemble's members), loaded once, scoring raw tweets.

    `predict_proba` normalises the tweets once, prepares them once for the model kind, and averages the
    fold models' probabilities (an ensemble: its members' calibrated ones). `threshold` is the run's
    decision threshold for F1.
    """

    def __init__(self, threshold: float, *, adapter: adapters.TweetModel | None = None,
                 folds: list[adapters.FoldModel] = (), options: NormaliseOptions | None = None, device=None,
                 members: list["TweetsPredictor"] = (), calibration: list[tuple[float, float]] = (),
                 use_keyword: bool = True):
        self.threshold = float(threshold)
        self.use_keyword = use_keyword
        self.adapter, self.folds, self.options, self.device = adapter, list(folds), options, device
        self.members, self.calibration = list(members), list(calibration)
        self.name = "ensemble" if self.members else adapter.settings.model

    def _keywords(self, texts: list[str], keywords: list[str] | None) -> list[str]:
        """The keywords the models read: none when not given or when the run was trained without them."""
        return [""] * len(texts) if keywords is None or not self.use_keyword else list(keywords)

    def predict_proba(self, texts: list[str], keywords: list[str] | None = None) -> np.ndarray:
        """Probability that each tweet is about a real disaster; `keywords` as in Kaggle's CSV (or None)."""
        texts = list(texts)
        keywords = self._keywords(texts, keywords)
        if len(keywords) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(keywords)} keywords")
        if not texts:
            return np.zeros(0, np.float64)
        if self.members:
            return ensemble.combine([m.predict_proba(texts, keywords) for m in self.members], self.calibration)
        inputs = self.adapter.inputs(Corpus.build(texts, keywords, self.options), self.device)
        return np.mean([fold(inputs) for fold in self.folds], axis=0)


    def explain(self, texts: list[str], keywords: list[str] | None = None) -> list[dict]:
        """Per tweet: attributions on the original text's words (and the keyword), averaged over the fold
        models (explain.py says how each kind is explained)."""
        if self.members:
            raise explain.NotExplainable("an ensemble has no single set of attributions; explain one of its members")
        if self.folds[0].explain is None:
            raise explain.NotExplainable(f"{self.name} has no word attributions; bigru, seed-gru, tfidf, minilm and "
                                         "transformer runs have")
        keywords = self._keywords(texts, keywords)
        return [explain.mean_explanations([fold.explain(text, keyword_text(keyword), self.options)
                                           for fold in self.folds])
                for text, keyword in zip(texts, keywords)]


def load_run(run_dir: Path, device: str = "auto") -> TweetsPredictor:
    """Load every fold model of a finished run (or every member of an ensemble) once."""
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    if ensemble.is_ensemble(run_dir):
        spec = ensemble.load(run_dir, KIND)
        return TweetsPredictor(summary["threshold"], members=[load_run(Path(m), device) for m in spec["members"]],
                               calibration=spec["calibration"])
    settings = saved_settings(run_dir / "run.json")[0]
    adapter, dev = adapters.create(settings), engine.pick_device(device)
    folds = [adapter.load_fold(run_dir / f"fold{k}", dev) for k in range(summary["folds"])]
    return TweetsPredictor(summary["threshold"], adapter=adapter, folds=folds,
                           options=NormaliseOptions(**settings.normalise), device=dev, use_keyword=settings.keyword)


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
