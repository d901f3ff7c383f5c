"""Tweet models behind one interface, registered by name: the task pipeline has no per-model branches.

Each kind of model is one `TweetModel` subclass in `MODELS`. A training run makes one adapter, calls
`prepare` once (run-wide work: GloVe, tokens, cached embeddings) and `fit_fold` for each fold; a predictor
makes one, loads each fold with `load_fold`, prepares a batch of tweets once with `inputs` and runs every
fold model on it. Adding a model means adding a class here (its network may live in its own module).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from .. import engine, explain, plots
from ..metrics import best_f1_threshold, binary_report, log_loss
from . import distil, encoders, minilm, sentence_lr, tfidf
from .attributions import minilm_attributions, rnn_attributions
from .embeddings import coverage, embedding_matrix, load_glove
from .models import RNN_MODELS, create_rnn
from .text import Corpus, NormaliseOptions, Vocabulary, encode_texts, tokenize

KIND = "tweets"
RNN_DEFAULTS = {"epochs": 12, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "patience": 3}


@dataclass
class FoldModel:
    """A fold loaded for prediction: `fold(inputs)` gives probabilities from the adapter's `inputs`;
    `fold.explain(text, keyword, options)` one tweet's word attributions (attributions.py), None where the kind
    has none."""

    predict: Callable[[Any], np.ndarray]
    explain: Callable[[str, str, Any], dict] | None = None

    def __call__(self, inputs: Any) -> np.ndarray:
        return self.predict(inputs)


def score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Whole-set F1, precision, recall at 0.5 and at the F1-best threshold, AUC and loss."""
    report = binary_report(labels, probs, 0.5)
    threshold, best_f1 = best_f1_threshold(labels, probs) if len(np.unique(labels)) > 1 else (0.5, 0.0)
    return {"auc": report["auc"], "loss": log_loss(labels, probs), "f1": report["f1"],
            "precision": report["precision"], "recall": report["recall"], "f1_best": best_f1,
            "threshold_best": threshold}


class TweetModel:
    """One kind of tweet model. `settings` is the run's TweetSettings; `train` its engine.TrainSettings
    (None when only predicting)."""

    defaults: dict[str, Any] = RNN_DEFAULTS  # training settings of this kind (the command line overrides them)

    def __init__(self, settings, train: engine.TrainSettings | None = None):
        self.settings, self.train = settings, train

    def prepare(self, corpus: Corpus, device: torch.device, log) -> dict[str, Any]:
        """Run-wide work before the folds; returns facts for summary.json."""
        return {}

    def fit_fold(self, corpus: Corpus, fold_dir: Path, train_rows: np.ndarray, val_rows: np.ndarray, *,
                 resume: bool, log, soft: Callable[[list[str], list[str]], np.ndarray] | None = None) -> np.ndarray:
        """Train one fold into `fold_dir`; return the best model's probabilities for `val_rows` (none: a refit on
        every row, the last epoch kept). `soft` (RNNs
        only) gives a teacher's probabilities for raw tweets and keywords (distil.py)."""
        raise NotImplementedError

    def inputs(self, corpus: Corpus, device: torch.device) -> Any:
        """What every fold model reads, computed once per batch of tweets."""
        return corpus

    def load_fold(self, fold_dir: Path, device: torch.device) -> FoldModel:
        raise NotImplementedError

    def _fit_on_engine(self, fold_dir: Path, model: torch.nn.Module, batches, train_data, val_data,
                       n_train: int, n_val: int, *, resume: bool, log, **task_options) -> np.ndarray:
        """Train a network on the engine; `batches(data, batch_size, device, seed=, shard=)` yields its
        batches from `train_data` or `val_data`. `task_options` go to engine.Task (extra, start_epoch,
        precision, anneal)."""
        train = self.train
        world = engine.join_world(train.device)
        device = engine.pick_device(train.device, world)

        def train_batches(epoch: int, rank: int, world_size: int):
            return batches(train_data, train.batch_size, device, seed=train.seed * 100_003 + epoch,
                           shard=(rank, world_size))

        def val_batches(rank: int, world_size: int):
            return batches(val_data, 256, device, shard=(rank, world_size))

        refit = n_val == 0  # every labelled row trains: no validation, the last epoch is the model
        task = engine.Task(
            model=model, train_batches=train_batches, val_batches=None if refit else val_batches, score=score,
            main_metric="auc",
            steps_per_epoch=lambda world_size: engine.shard_steps(n_train, train.batch_size, world_size),
            settings={"tweets": asdict(self.settings), "val_size": n_val, "train_size": n_train}, **task_options)
        fitted = engine.fit(task, train, fold_dir, kind=KIND, resume=resume, log=log)
        if world.main:
            plots.training_curves(fold_dir / "metrics.csv", fold_dir / "history.png",
                                  [("loss", "loss"), ("auc", "ROC AUC"), ("f1", "F1 at 0.5")])
        if refit:
            return np.zeros(0)
        # The validation predictions in the precision the fold was trained and validated in.
        probs, _ = engine.predict_probs(model, val_batches(0, 1), device, fitted["precision"])  # every rank, in order
        return probs


def _load_network(fold_dir: Path, device: torch.device, build: Callable[[dict], torch.nn.Module]):
    """A fold's best checkpoint in the network `build(ckpt)` makes, on `device`, with its precision."""
    ckpt = engine.load_checkpoint(fold_dir / "best.pt", KIND)
    model = build(ckpt)
    model.load_state_dict(ckpt["model"])
    return ckpt, model.to(device), engine.pick_precision(device, ckpt["settings"]["precision"])


# ---------------------------------------------------------------- GloVe RNNs: bigru, seed-gru

@dataclass
class Encoded:
    """Token ids padded to one length, real lengths, keyword ids and targets of a set of tweets."""

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


def iterate_batches(data: Encoded, batch_size: int, device: torch.device, seed: int | None = None,
                    shard: tuple[int, int] = (0, 1)) -> Iterator[tuple[tuple[torch.Tensor, ...], torch.Tensor]]:
    """Batches of ((ids, lengths, keywords), targets); shuffled from `seed` for training, where every rank
    takes the same number of steps."""
    order = np.arange(len(data.ids)) if seed is None else np.random.default_rng(seed).permutation(len(data.ids))
    for rows in engine.shard_batches(order, batch_size, shard, even=seed is not None):
        inputs = tuple(torch.from_numpy(a[rows]).to(device) for a in (data.ids, data.lengths, data.keywords))
        yield inputs, torch.from_numpy(data.targets[rows]).to(device)


class GloveRNN(TweetModel):
    """`bigru` and `seed-gru`: a vocabulary from each fold's training rows, GloVe rows for it, the RNN."""

    def __init__(self, settings, train=None):
        super().__init__(settings, train)
        self.network = RNN_MODELS[settings.model]
        self.glove = None

    def prepare(self, corpus: Corpus, device: torch.device, log) -> dict[str, Any]:
        self.glove = load_glove(self.settings.embeddings)
        words = self.glove[0]
        if self.settings.teacher:
            self.augmenter = distil.Augmenter(distil.glove_neighbours(words, self.glove[1],
                                                                      distil.plain_words(corpus.raw)))
        cover = {"raw": coverage([tokenize(t) for t in corpus.raw], words),
                 "normalised": coverage(corpus.tokens, words)}
        log(f"GloVe coverage of the training vocabulary: {cover['raw']['vocabulary']:.1%} of words before "
            f"normalisation, {cover['normalised']['vocabulary']:.1%} after "
            f"({cover['normalised']['tokens']:.1%} of running tokens)")
        return {"glove_coverage": cover}

    def fit_fold(self, corpus, fold_dir, train_rows, val_rows, *, resume, log, soft=None):
        tokens = [corpus.tokens[i] for i in train_rows]
        keywords = [corpus.keywords[i] for i in train_rows]
        targets = corpus.targets[train_rows].astype(np.float32)
        if soft is not None:
            tokens, keywords, targets = self._transfer_set(corpus, train_rows, tokens, keywords, targets, soft, log)
        vocab = Vocabulary.build(tokens, max_size=self.network.max_vocabulary)
        keyword_list = sorted(set(keywords) - {""})
        words, vectors = self.glove
        matrix = torch.from_numpy(embedding_matrix(vocab, words, vectors, seed=self.train.seed))
        model = create_rnn(self.settings.model, matrix, len(keyword_list))
        length = self.network.sequence_length
        train_data = encode(tokens, keywords, vocab, keyword_list, length, targets)
        val_data = encode([corpus.tokens[i] for i in val_rows], [corpus.keywords[i] for i in val_rows], vocab,
                          keyword_list, length, corpus.targets[val_rows]) if len(val_rows) else None

        def start_epoch(epoch: int) -> None:
            if self.settings.model != "seed-gru":  # the write-up's model keeps GloVe frozen
                model.embedding.weight.requires_grad_(epoch >= self.settings.unfreeze_epoch)

        # A small GRU gains nothing from bf16, and cuDNN prefers fp32.
        return self._fit_on_engine(fold_dir, model, iterate_batches, train_data, val_data,
                                   len(tokens), len(val_rows), resume=resume, log=log, start_epoch=start_epoch,
                                   precision="fp32",
                                   extra={"vocab": vocab.tokens[2:], "keywords": keyword_list, "length": length})

    def _transfer_set(self, corpus: Corpus, train_rows: np.ndarray, tokens, keywords, hard, soft, log):
        """The fold's tweets (`tokens`, `keywords`, labels `hard`) with targets mixing the teacher's probabilities
        and the labels, plus augmented copies labelled by the teacher alone: (tokens, keywords, targets)."""
        settings = self.settings
        raw = [corpus.raw[i] for i in train_rows]
        mixed = settings.soft_weight * soft(raw, keywords) + (1 - settings.soft_weight) * hard
        copies, source = self.augmenter.copies(raw, settings.transfer_copies, seed=self.train.seed * 7919 + len(raw))
        copy_keywords = [keywords[i] for i in source]
        copy_corpus = Corpus.build(copies, copy_keywords, NormaliseOptions(**settings.normalise))
        copy_soft = soft(copies, copy_keywords) if copies else np.zeros(0)
        log(f"distillation: {len(raw)} tweets at {settings.soft_weight:g} teacher + {1 - settings.soft_weight:g} "
            f"label, {len(copies)} augmented copies labelled by the teacher (mean {copy_soft.mean() if copies else 0:.3f})")
        return tokens + copy_corpus.tokens, keywords + copy_keywords, np.concatenate([mixed, copy_soft]).astype(np.float32)

    def load_fold(self, fold_dir, device):
        def build(ckpt: dict) -> torch.nn.Module:
            return create_rnn(self.settings.model, torch.zeros_like(ckpt["model"]["embedding.weight"]),
                              len(ckpt["keywords"]))

        ckpt, model, precision = _load_network(fold_dir, device, build)
        vocab, keyword_list, length = Vocabulary(ckpt["vocab"]), ckpt["keywords"], ckpt["length"]

        def predict(corpus: Corpus) -> np.ndarray:
            data = encode(corpus.tokens, corpus.keywords, vocab, keyword_list, length)
            return engine.predict_probs(model, iterate_batches(data, 512, device), device, precision)[0]

        def attributions(text: str, keyword: str, options) -> dict:
            return rnn_attributions(model, vocab, keyword_list, length, text, keyword, options)

        return FoldModel(predict, attributions)


# ---------------------------------------------------------------- TF-IDF and logistic regression

class TfidfModel(TweetModel):
    """`tfidf`: hashed word and character n-grams, logistic regression (no engine, no epochs)."""

    def prepare(self, corpus, device, log):
        self.features = tfidf.counts(corpus.texts, corpus.keywords)
        return {}

    def fit_fold(self, corpus, fold_dir, train_rows, val_rows, *, resume, log, soft=None):
        world = engine.join_world(self.train.device)
        return tfidf.train_fold(fold_dir, self.features, corpus.targets, train_rows, val_rows,
                                seed=self.train.seed, write=world.main)

    def inputs(self, corpus, device):
        return tfidf.counts(corpus.texts, corpus.keywords)

    def load_fold(self, fold_dir, device):
        fold = tfidf.load_fold(fold_dir)
        return FoldModel(lambda features: tfidf.predict(features, fold),
                         lambda text, keyword, options: tfidf.contributions(fold, text, keyword, options))


# ---------------------------------------------------------------- transformer fine-tuned (MiniLM by default)

class TransformerModel(TweetModel):
    """`transformer` (any encoder of encoders.py, `--encoder`) and `minilm` (all-MiniLM-L6-v2): the encoder
    fine-tuned with a linear head on (tweet, keyword) pairs. The run records its encoder (name, folder,
    weights sha256); prediction refuses an encoder whose weights changed."""

    # Fine-tuning a transformer: few epochs, a small peak rate with linear warm-up and decay.
    defaults = {"epochs": 3, "batch_size": 32, "lr": 5e-5, "weight_decay": 0.01}

    def __init__(self, settings, train=None):
        super().__init__(settings, train)
        self.encoder_name = settings.encoder or "minilm"
        self.folder: Path | None = None

    def prepare(self, corpus, device, log):
        self.encoder = encoders.describe(self.encoder_name)
        self.folder = Path(self.encoder["folder"])
        log(f"encoder {self.encoder_name}: {self.folder} (weights sha256 {self.encoder['sha256'][:12]}...)")
        self.tokens = self._tokenize(corpus, corpus.targets)
        return {"encoder": self.encoder}

    def _tokenize(self, corpus, targets=None) -> minilm.Tokens:
        return minilm.tokenize_pairs(minilm.load_tokenizer(self.folder), corpus.texts, corpus.keywords, targets,
                                     max_tokens=self.settings.max_tokens)

    def fit_fold(self, corpus, fold_dir, train_rows, val_rows, *, resume, log, soft=None):
        model = minilm.TransformerClassifier(minilm.load_encoder(folder=self.folder), pooling=self.settings.pooling)
        return self._fit_on_engine(fold_dir, model, minilm.iterate_batches, self.tokens.take(train_rows),
                                   self.tokens.take(val_rows), len(train_rows), len(val_rows), resume=resume,
                                   log=log, anneal="linear", extra={"encoder": self.encoder})

    def inputs(self, corpus, device):
        """Tokens sorted by length (little padding per batch) and that order."""
        return self._tokenize(corpus).by_length()

    def load_fold(self, fold_dir, device):
        def build(ckpt: dict) -> torch.nn.Module:
            # Runs made before encoders were recorded used the packaged MiniLM.
            recorded = ckpt.get("encoder")
            self.folder = encoders.check_same(recorded, fold_dir) if recorded else None
            return minilm.TransformerClassifier(minilm.load_encoder(with_weights=False, folder=self.folder),
                                                pooling=self.settings.pooling)

        _, model, precision = _load_network(fold_dir, device, build)

        def predict(inputs: tuple[np.ndarray, minilm.Tokens]) -> np.ndarray:
            order, tokens = inputs
            probs, _ = engine.predict_probs(model, minilm.iterate_batches(tokens, 256, device), device, precision)
            probs[order] = probs.copy()  # back to the rows' own order
            return probs

        tokenizer = minilm.load_tokenizer(self.folder)

        def attributions(text: str, keyword: str, options) -> dict:
            return minilm_attributions(model, tokenizer, text, keyword, options,
                                               max_tokens=self.settings.max_tokens)

        return FoldModel(predict, attributions)


# ---------------------------------------------------------------- MiniLM frozen, head on cached embeddings

def embedding_batches(data: tuple[np.ndarray, np.ndarray], batch_size: int, device: torch.device,
                      seed: int | None = None, shard: tuple[int, int] = (0, 1)):
    """Batches of (sentence embeddings, targets)."""
    embeddings, targets = data
    order = np.arange(len(targets)) if seed is None else np.random.default_rng(seed).permutation(len(targets))
    for rows in engine.shard_batches(order, batch_size, shard, even=seed is not None):
        yield torch.from_numpy(embeddings[rows]).to(device), torch.from_numpy(targets[rows]).to(device)


class FrozenMiniLMModel(TweetModel):
    """`minilm-frozen`: each tweet embedded once by the frozen MiniLM (cached), a small MLP head trained."""

    defaults = {"epochs": 40, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.01, "patience": 6}

    def __init__(self, settings, train=None):
        super().__init__(settings, train)
        self.embedder: minilm.SentenceEncoder | None = None  # loaded with the first fold, for prediction

    def prepare(self, corpus, device, log):
        # One rank per node embeds and writes the cache; the node's others read it.
        world = engine.join_world(self.train.device)
        self.vectors = engine.node_first(world, lambda: minilm.sentence_embeddings(corpus.texts, corpus.keywords,
                                                                                  device, log=log))
        return {}

    def fit_fold(self, corpus, fold_dir, train_rows, val_rows, *, resume, log, soft=None):
        def rows_of(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self.vectors[rows], corpus.targets[rows].astype(np.float32)

        return self._fit_on_engine(fold_dir, minilm.EmbeddingHead(self.vectors.shape[1]), embedding_batches,
                                   rows_of(train_rows), rows_of(val_rows), len(train_rows), len(val_rows),
                                   resume=resume, log=log, precision="fp32")

    def inputs(self, corpus, device):
        return self.embedder(corpus.texts, corpus.keywords)

    def load_fold(self, fold_dir, device):
        _, model, precision = _load_network(fold_dir, device, lambda ckpt: minilm.EmbeddingHead(
            ckpt["model"]["net.1.weight"].shape[1]))
        if self.embedder is None:  # one MiniLM for every fold and every request; new tweets are not cached
            self.embedder = minilm.SentenceEncoder(device)

        def predict(vectors: np.ndarray) -> np.ndarray:
            targets = np.zeros(len(vectors), np.float32)
            return engine.predict_probs(model, embedding_batches((vectors, targets), 1024, device), device,
                                        precision)[0]

        return FoldModel(predict)  # sentence vectors are cached whole: no word attributions


class SentenceLogistic(TweetModel):
    """`sentence-lr` (and `blend-minilm`'s third member): each tweet embedded once by a frozen encoder
    (`--encoder`, default MiniLM; cached, as for `minilm-frozen`), a logistic regression per fold
    (sentence_lr.py). No engine, no epochs."""

    def __init__(self, settings, train=None):
        super().__init__(settings, train)
        self.embedder: minilm.SentenceEncoder | None = None  # loaded with the first fold, for prediction

    def prepare(self, corpus, device, log):
        world = engine.join_world(self.train.device)
        self.encoder = encoders.describe(self.settings.encoder or "minilm")
        self.vectors = engine.node_first(world, lambda: minilm.sentence_embeddings(
            corpus.texts, corpus.keywords, device, log=log, encoder=self.encoder))
        return {"encoder": self.encoder}

    def fit_fold(self, corpus, fold_dir, train_rows, val_rows, *, resume, log, soft=None):
        world = engine.join_world(self.train.device)
        return sentence_lr.train_fold(fold_dir, self.vectors, corpus.targets, train_rows, val_rows, self.encoder,
                                      seed=self.train.seed, write=world.main)

    def inputs(self, corpus, device):
        return self.embedder(corpus.texts, corpus.keywords)

    def load_fold(self, fold_dir, device):
        fold = sentence_lr.load_fold(fold_dir)
        folder = encoders.check_same(fold.encoder, fold_dir)
        if self.embedder is None:  # one encoder for every fold
            self.embedder = minilm.SentenceEncoder(device, folder)
        return FoldModel(fold.predict)  # one vector per tweet: no word attributions


# ---------------------------------------------------------------- blends: models per fold, averaged

class BlendModel(TweetModel):
    """`blend`: in each fold the BiGRU (distilled when the run has a teacher) and TF-IDF models are trained side
    by side, in the fold's `bigru/` and `tfidf/` folders, and their probabilities averaged. Measured on 5-fold CV
    to beat either alone (README); explanations are the mean of the two models' word attributions (both in
    logit units)."""

    members = ("bigru", "tfidf")
    method = "mean of the BiGRU's integrated gradients and TF-IDF's linear contributions"

    def __init__(self, settings, train=None):
        super().__init__(settings, train)
        makers = {"bigru": lambda: GloveRNN(replace(settings, model="bigru"), train),
                  "tfidf": lambda: TfidfModel(replace(settings, model="tfidf", teacher=None), train),
                  "minilm": lambda: SentenceLogistic(replace(settings, teacher=None, encoder=None), train)}
        self.parts = {name: makers[name]() for name in self.members}

    def prepare(self, corpus, device, log):
        return {k: v for part in self.parts.values() for k, v in part.prepare(corpus, device, log).items()}

    def fit_fold(self, corpus, fold_dir, train_rows, val_rows, *, resume, log, soft=None):
        return np.mean([part.fit_fold(corpus, fold_dir / name, train_rows, val_rows, resume=resume, log=log,
                                      soft=soft if name == "bigru" else None)
                        for name, part in self.parts.items()], axis=0)

    def inputs(self, corpus, device):
        return {name: part.inputs(corpus, device) for name, part in self.parts.items()}

    def load_fold(self, fold_dir, device):
        folds = {name: part.load_fold(fold_dir / name, device) for name, part in self.parts.items()}
        explained = [fold for fold in folds.values() if fold.explain is not None]

        def attributions(text: str, keyword: str, options) -> dict:
            mean = explain.mean_explanations([fold.explain(text, keyword, options) for fold in explained])
            return {**mean, "method": self.method}

        return FoldModel(lambda inputs: np.mean([fold(inputs[name]) for name, fold in folds.items()], axis=0),
                         attributions)


class MiniLMBlendModel(BlendModel):
    """`blend-minilm`, the default where MiniLM is installed: `blend` plus a logistic regression on frozen MiniLM
    sentence embeddings (in each fold's `minilm/`), the three probabilities averaged with equal weights (nothing
    is tuned on a fold's validation rows). Explanations: the BiGRU's and TF-IDF's, as `blend`'s; the MiniLM
    member has none (one vector per tweet)."""

    members = ("bigru", "tfidf", "minilm")
    method = BlendModel.method + " (the MiniLM member has no word attributions)"


MODELS: dict[str, type[TweetModel]] = {"blend-minilm": MiniLMBlendModel, "blend": BlendModel, "bigru": GloveRNN,
                                       "seed-gru": GloveRNN, "tfidf": TfidfModel, "minilm": TransformerModel,
                                       "transformer": TransformerModel, "minilm-frozen": FrozenMiniLMModel,
                                       "sentence-lr": SentenceLogistic}


def create(settings, train: engine.TrainSettings | None = None) -> TweetModel:
    """The adapter of `settings.model`."""
    return MODELS[settings.model](settings, train)
