"""Loading runs for serving: `load_run(run_dir, device)` for each task, and `load_model` that tells them apart.

STAND-IN until load_run lands: the `reshape` branch adds `spotter.tweets.task.load_run` and
`spotter.histo.task.load_run`; at merge `load_histo_run` / `load_tweets_run` here are replaced by those, and
`load_model` below stays. What the server uses of a predictor:
  both:    .threshold, .name (the model kind shown, e.g. "resnet", "bigru", "ensemble")
  histo:   .predict_proba(uint8 N x 96 x 96 x 3, tta=False) and .grad_cam(pixels) -> (N, 96, 96) logit-unit maps
           (explain.patch_cam(model, inputs, crop)); .settings.crop is shown when present
  tweets:  .predict_proba(texts, keywords=None) and .explain(texts, keywords) -> one dict per text
           (explain.rnn_attributions / minilm_attributions / tfidf_contributions, averaged by
           explain.mean_explanations; raises explain.NotExplainable where there are none)
Built on today's task functions so that probabilities equal `spotter histo predict` / `spotter tweets predict`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import engine, ensemble, explain
from ..histo import task as histo_task
from ..histo.models import create_model, normalisation
from ..histo.preprocess import dihedral_views, preprocess
from ..tweets import minilm, task as tweets_task, tfidf
from ..tweets.models import create_rnn
from ..tweets.text import NormaliseOptions, Vocabulary, keyword_text


# ---------------------------------------------------------------- histology

class HistoPredictor:
    """A histo run or ensemble, loaded once. `predict_proba(uint8 N x 96 x 96 x 3, tta=False)`."""

    def __init__(self, run_dir: Path, device: str = "auto"):
        self.run_dir = Path(run_dir)
        self.members: list[HistoPredictor] = []
        if ensemble.is_ensemble(run_dir):
            spec = ensemble.load(run_dir, histo_task.KIND)
            self.members = [HistoPredictor(Path(m), device) for m in spec["members"]]
            self.calibration = spec["calibration"]
            self.threshold = float(spec.get("threshold", 0.5))
            self.name = "ensemble"
            return
        ckpt = engine.load_checkpoint(self.run_dir / "best.pt", histo_task.KIND)
        self.settings = engine.settings_from(histo_task.HistoSettings, ckpt["settings"]["task"]["histo"],
                                             self.run_dir / "best.pt")
        self.model = create_model(self.settings.model, pretrained=False)
        self.model.load_state_dict(ckpt["model"])
        self.device = engine.pick_device(device)
        self.model = self.model.to(self.device, memory_format=torch.channels_last).eval()
        self.precision = engine.pick_precision(self.device, ckpt["settings"]["train"].get("precision", "auto"))
        self.threshold = 0.5  # histo runs are scored by AUC; `evaluate` reports accuracy at 0.5 too
        self.name = self.settings.model

    def inputs(self, pixels: np.ndarray) -> torch.Tensor:
        """The model's input for uint8 patches: the task's one preprocessing function."""
        x = torch.from_numpy(np.ascontiguousarray(pixels)).to(self.device)
        return preprocess(x, self.settings.crop, norm=normalisation(self.settings.model))

    def predict_proba(self, pixels: np.ndarray, tta: bool = False) -> np.ndarray:
        if self.members:
            return ensemble.combine([m.predict_proba(pixels, tta) for m in self.members], self.calibration)
        batches = ((self.inputs(pixels[i:i + 256]), torch.zeros(len(pixels[i:i + 256])))
                   for i in range(0, len(pixels), 256))
        probs, _ = engine.predict_probs(self.model, batches, self.device, self.precision,
                                        transform=dihedral_views if tta else None)
        return probs

    def grad_cam(self, pixels: np.ndarray) -> np.ndarray:
        """(N, 96, 96) Grad-CAM maps in logit units (see explain.grad_cam); an ensemble's is its members' mean."""
        if self.members:
            return np.mean([m.grad_cam(pixels) for m in self.members], axis=0)
        return explain.patch_cam(self.model, self.inputs(pixels), self.settings.crop)


def load_histo_run(run_dir: Path, device: str = "auto") -> HistoPredictor:
    return HistoPredictor(Path(run_dir), device)


# ---------------------------------------------------------------- tweets

@dataclass
class _Fold:
    model: object  # nn.Module, or the tfidf checkpoint dict
    vocab: Vocabulary | None = None
    keywords: list[str] = field(default_factory=list)
    length: int = 0
    precision: str = "fp32"


class TweetsPredictor:
    """A tweets run (its fold models) or ensemble, loaded once. `predict_proba(texts, keywords=None)`."""

    def __init__(self, run_dir: Path, device: str = "auto"):
        self.run_dir = Path(run_dir)
        self.members: list[TweetsPredictor] = []
        summary = tweets_task.load_summary(self.run_dir)
        self.threshold = float(summary["threshold"])
        self.device = engine.pick_device(device)
        if ensemble.is_ensemble(run_dir):
            spec = ensemble.load(run_dir, tweets_task.KIND)
            self.members = [TweetsPredictor(Path(m), device) for m in spec["members"]]
            self.calibration = spec["calibration"]
            self.name = "ensemble"
            return
        run = json.loads((self.run_dir / "run.json").read_text())
        self.settings = engine.settings_from(tweets_task.TweetSettings, run["tweets"], self.run_dir / "run.json")
        self.name = self.settings.model
        self.options = NormaliseOptions(**self.settings.normalise)
        self.tokenizer = minilm.load_tokenizer() if self.name == "minilm" else None
        self.folds = [self._load_fold(self.run_dir / f"fold{k}") for k in range(summary["folds"])]

    def _load_fold(self, fold_dir: Path) -> _Fold:
        ckpt = engine.load_checkpoint(fold_dir / "best.pt", tweets_task.KIND)
        if self.name == "tfidf":
            return _Fold(ckpt)
        precision = engine.pick_precision(self.device, ckpt["settings"]["precision"])
        if self.name == "minilm":
            model = minilm.TransformerClassifier(minilm.load_encoder(with_weights=False))
        elif self.name == "minilm-frozen":
            model = minilm.EmbeddingHead(ckpt["model"]["net.1.weight"].shape[1])
        else:
            weights = ckpt["model"]["embedding.weight"]
            model = create_rnn(self.name, torch.zeros_like(weights), len(ckpt["keywords"]))
        model.load_state_dict(ckpt["model"])
        model = model.to(self.device).eval()
        if self.name in ("minilm", "minilm-frozen"):
            return _Fold(model, precision=precision)
        return _Fold(model, Vocabulary(ckpt["vocab"]), ckpt["keywords"], ckpt["length"], precision)

    def _frame(self, texts: list[str], keywords: list[str] | None) -> pd.DataFrame:
        return pd.DataFrame({"text": list(texts), "keyword": list(keywords) if keywords else [""] * len(texts)})

    def predict_proba(self, texts: list[str], keywords: list[str] | None = None) -> np.ndarray:
        if self.members:
            return ensemble.combine([m.predict_proba(texts, keywords) for m in self.members], self.calibration)
        df = self._frame(texts, keywords)
        words = [keyword_text(k) for k in df["keyword"]]
        texts_n, tokens = tweets_task.prepare(df, self.options)
        dev = self.device
        if self.name == "minilm-frozen":
            vectors = minilm.sentence_embeddings(texts_n, words, dev, log=lambda message: None)
        elif self.name == "minilm":
            order, pairs = minilm.tokenize_pairs(self.tokenizer, texts_n, words).by_length()
        probs = []
        for fold in self.folds:
            if self.name == "tfidf":
                ckpt = fold.model
                x = tfidf._tfidf(tfidf._counts(texts_n, words), ckpt["idf"].double().numpy())
                probs.append(1 / (1 + np.exp(-(x @ ckpt["coef"].double().numpy() + ckpt["intercept"]))))
                continue
            if self.name == "minilm":
                p, _ = engine.predict_probs(fold.model, minilm.iterate_batches(pairs, 256, dev), dev, fold.precision)
                p[order] = p.copy()
            elif self.name == "minilm-frozen":
                batches = tweets_task.embedding_batches((vectors, np.zeros(len(texts_n), np.float32)), 1024, dev)
                p, _ = engine.predict_probs(fold.model, batches, dev, fold.precision)
            else:
                data = tweets_task.encode(tokens, words, fold.vocab, fold.keywords, fold.length)
                p, _ = engine.predict_probs(fold.model, tweets_task.iterate_batches(data, 512, dev), dev,
                                            fold.precision)
            probs.append(p)
        return np.mean(probs, axis=0)

    def explain(self, texts: list[str], keywords: list[str] | None = None) -> list[dict]:
        """Per tweet: attributions aligned to the original text's words, averaged over the fold models."""
        if self.members:
            raise explain.NotExplainable("an ensemble has no single set of attributions; explain one of its members")
        if self.name == "minilm-frozen":
            raise explain.NotExplainable("minilm-frozen caches sentence embeddings; word attributions are "
                                         "available for minilm, bigru, seed-gru and tfidf")
        keywords = list(keywords) if keywords else [""] * len(texts)
        out = []
        for text, keyword in zip(texts, keywords):
            per_fold = [self._explain_one(fold, text, keyword_text(keyword)) for fold in self.folds]
            out.append(explain.mean_explanations(per_fold))
        return out

    def _explain_one(self, fold: _Fold, text: str, keyword: str) -> dict:
        if self.name == "tfidf":
            return explain.tfidf_contributions(fold.model, text, keyword, self.options)
        if self.name == "minilm":
            return explain.minilm_attributions(fold.model, self.tokenizer, text, keyword, self.options)
        return explain.rnn_attributions(fold.model, fold.vocab, fold.keywords, fold.length, text, keyword,
                                        self.options)


def load_tweets_run(run_dir: Path, device: str = "auto") -> TweetsPredictor:
    return TweetsPredictor(Path(run_dir), device)


# ---------------------------------------------------------------- either task

def task_of(run_dir: Path) -> str:
    """'histo' or 'tweets', from what the folder holds; a clear error when it is neither."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise engine.CheckpointError(f"{run_dir}: no such run folder")
    if ensemble.is_ensemble(run_dir):
        return json.loads((run_dir / ensemble.FILE).read_text()).get("task", "?")
    if (run_dir / "summary.json").exists():
        return "tweets"
    if (run_dir / "best.pt").exists():
        return "histo"
    raise engine.CheckpointError(f"{run_dir}: not a finished Spotter run (no best.pt, summary.json or ensemble.json)")


def load_model(run_dir: Path, device: str = "auto"):
    task = task_of(run_dir)
    if task == "histo":
        return task, load_histo_run(run_dir, device)
    if task == "tweets":
        return task, load_tweets_run(run_dir, device)
    raise engine.CheckpointError(f"{run_dir}: unknown task {task!r}")
