"""The one inference path for tweets: a run's fold models, an ensemble, or an ensemble of ensembles, loaded once.

`predict`, `evaluate`, ensembles, the server, explanations, reports and distillation teachers all score tweets
through `TweetsPredictor`; `Teacher` is a predictor seen fold by fold, for a student trained on the same folds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .. import engine, ensemble, explain, runs
from ..errors import BadInput
from . import adapters
from .data import corpus_of, fold_splits, training_rows
from .settings import TweetSettings
from .text import Corpus, NormaliseOptions, keyword_text


def run_settings(run: runs.Run, device: str = "auto") -> tuple[TweetSettings, engine.TrainSettings]:
    """A plain run's settings (a resumed run keeps them; only the device may change). Settings a run saved
    before they existed take the value it ran with."""
    where = run.path / runs.SETTINGS
    return (engine.settings_from(TweetSettings, {**TweetSettings.saved_before, **run.settings}, where),
            engine.settings_from(engine.TrainSettings, {**run.train, "device": device}, where))


class TweetsPredictor:
    """A finished run's fold models (or an ensemble's members), loaded once, scoring raw tweets.

    `predict_proba` normalises the tweets once, prepares them once for the model kind, and averages the
    fold models' probabilities (an ensemble: its members' calibrated ones). `threshold` is the run's
    decision threshold for F1.
    """

    def __init__(self, run: runs.Run, *, adapter: adapters.TweetModel | None = None,
                 folds: list[adapters.FoldModel] = (), options: NormaliseOptions | None = None, device=None,
                 members: list["TweetsPredictor"] = (), use_keyword: bool = True):
        self.run, self.threshold = run, run.threshold
        self.use_keyword = use_keyword
        self.adapter, self.folds, self.options, self.device = adapter, list(folds), options, device
        self.members, self.calibration = list(members), run.calibration
        self.name = "ensemble" if self.members else adapter.settings.model

    def fold(self, k: int) -> "TweetsPredictor":
        """This run's fold-k model alone (a distillation teacher's view)."""
        return TweetsPredictor(self.run, adapter=self.adapter, folds=[self.folds[k]], options=self.options,
                               device=self.device, use_keyword=self.use_keyword)

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
        models (tweets/attributions.py says how each kind is explained)."""
        if self.members:
            raise explain.NotExplainable("an ensemble has no single set of attributions; explain one of its members")
        if self.folds[0].explain is None:
            raise explain.NotExplainable(f"{self.name} has no word attributions; bigru, seed-gru, tfidf, minilm and "
                                         "transformer runs have")
        keywords = self._keywords(texts, keywords)
        return [explain.mean_explanations([fold.explain(text, keyword_text(keyword), self.options)
                                           for fold in self.folds])
                for text, keyword in zip(texts, keywords)]


def load_run(run: Path | runs.Run, device: str = "auto") -> TweetsPredictor:
    """Every fold model of a finished run, or every member of an ensemble (nested too), loaded once."""
    run = run if isinstance(run, runs.Run) else runs.open_run(Path(run), "tweets")
    if not run.summary:
        raise runs.RunError(f"{run.path}: no finished tweets run there (summary.json missing); train it first")
    if run.is_ensemble:
        return TweetsPredictor(run, members=[load_run(m, device) for m in run.members])
    settings = run_settings(run)[0]
    adapter, dev = adapters.create(settings), engine.pick_device(device)
    folds = [adapter.load_fold(run.path / f"fold{k}", dev) for k in range(run.summary["folds"])]
    return TweetsPredictor(run, adapter=adapter, folds=folds, options=NormaliseOptions(**settings.normalise),
                           device=dev, use_keyword=settings.keyword)


class Teacher:
    """A finished tweets run whose folds are the student's; `fold_probs(k, texts, keywords)` scores tweets with
    the teacher model that never saw the student's fold-k validation rows (distil.py)."""

    def __init__(self, run_dir: Path, splits: list[tuple[np.ndarray, np.ndarray]], ids: np.ndarray,
                 texts: list[str], device: str):
        run = runs.open_run(Path(run_dir), "tweets")
        if run.is_ensemble:
            raise BadInput(f"{run_dir}: an ensemble cannot teach (its members' folds are not one model's); "
                           "use one of its runs")
        if run.summary.get("refit"):
            raise BadInput(f"{run_dir}: a refit run has no folds to teach fold by fold (it saw every tweet); use "
                           f"the cross-validated run it was refitted from ({run.summary.get('threshold_from')})")
        teacher_settings, teacher_train = run_settings(run)
        teacher_rows, _ = training_rows(teacher_settings)
        if teacher_rows["text"].tolist() != list(texts):
            raise BadInput(f"{run_dir}: the teacher was trained on other tweets ({len(teacher_rows)} rows against "
                           f"the student's {len(texts)}); both must use the same train.csv")
        teacher_folds = _validation_ids(run, teacher_rows, teacher_settings, teacher_train.seed)
        by_val = {frozenset(fold_ids): k for k, fold_ids in enumerate(teacher_folds)}
        ids = np.asarray(ids).astype(str)
        self.fold_of = [by_val.get(frozenset(ids[val])) for _, val in splits]
        if None in self.fold_of:
            raise BadInput(f"{run_dir}: the teacher's folds are not the student's (teacher: {len(teacher_folds)} "
                           f"folds, seed {teacher_train.seed}, {teacher_settings.fold_groups} grouping); train the "
                           "student with the teacher's --folds and --seed, or the teacher with the student's")
        self.run, self.summary = run, run.summary
        self._predictor = load_run(run, device)

    def fold_probs(self, k: int, texts: list[str], keywords: list[str]) -> np.ndarray:
        return self._predictor.fold(self.fold_of[k]).predict_proba(texts, keywords)

    def describe(self) -> dict:
        return {"run": str(self.run.path.resolve()), "model": self.summary.get("model"),
                "f1": self.summary.get("f1"), "auc": self.summary.get("auc")}


def _validation_ids(run: runs.Run, rows, settings: TweetSettings, seed: int) -> list[np.ndarray]:
    """The ids of each fold's validation rows: as the run recorded them, or (runs made before folds.csv)
    split again the way it split them."""
    if (run.path / runs.FOLDS).exists():
        folds = run.folds()
        return [group["id"].to_numpy() for _, group in folds.groupby("fold", sort=True)]
    ids = rows["id"].astype(str).to_numpy()
    return [ids[val] for _, val in fold_splits(corpus_of(rows, settings), settings, seed)]
