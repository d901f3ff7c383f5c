"""Settings of the histology task (the training loop's own are in engine.TrainSettings), and its defaults."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .. import pretrained
from ..errors import BadInput
from .models import PRETRAINED

KAGGLE_MPP = 0.972  # µm per pixel of Kaggle / PatchCamelyon patches (Camelyon16 at 10x)


# The default is the best model 15 CPU minutes train (README "Histology recipes", 2-core AMD EPYC, two splits):
# EfficientNet-Lite1 fine-tuned from ImageNet, +0.01 AUC over the best from scratch; where its weights are not
# installed, the best from scratch: a plain ResNet (no stem max-pool) on whole 96-px patches, dihedral flips only.
PRETRAINED_DEFAULT = "effnet-lite1"
SCRATCH_DEFAULT = "resnet-plain"


def default_model() -> str:
    """The model `histo train` trains when none is named (see above)."""
    installed = pretrained.efficientnet_lite_installed(PRETRAINED_DEFAULT.removeprefix("effnet-"))
    return PRETRAINED_DEFAULT if installed else SCRATCH_DEFAULT


FLIPS_ONLY = ("resnet-plain", *PRETRAINED)  # trained on whole patches without stain jitter


@dataclass
class HistoSettings:
    """Settings of the histology task (the training loop's own are in engine.TrainSettings)."""

    data: str = ""
    model: str = field(default_factory=default_model)
    crop: int | None = None  # centre crop fed to the model (None: 96 for seed and FLIPS_ONLY, else 80)
    crop_jitter: int = 8  # random shift of the crop in training (only when crop < 96)
    colour_jitter: float | None = None  # stain variation strength (None: 0 for FLIPS_ONLY, else 0.1)
    mixup: float = 0.0  # Beta(a, a) of mixup in training (0: off; measured +0.006 and -0.011 AUC: README)
    # Distillation: a finished run (or ensemble) trained on this run's split labels the training patches; its
    # probability is blended with the label at `soft_weight`.
    teacher: str | None = None
    soft_weight: float = 0.5
    val_fraction: float = 0.1
    pack_root: str | None = None
    skip_bad: bool = False
    augment: bool = True
    compile: bool | None = None  # torch.compile the model for training (None: where measured to pay, compiled.py)
    # "random": a stratified random split of the training patches (Kaggle's layout has no slide ids, so
    # patches of one slide land on both sides: optimistic). "valid": PatchCamelyon's slide-disjoint valid
    # split, chosen by `train` whenever the folder has one.
    val_split: str = "random"
    mpp: float = KAGGLE_MPP  # µm per pixel of the training patches (Kaggle / PCam: Camelyon16 at 10x); slides are read at it

    def __post_init__(self):
        if self.crop is None:
            # The label depends only on the centre 32x32; `resnet`'s 80-pixel crop keeps context around it and,
            # shifted by up to 8 pixels, adds translations. The default and the EfficientNets scored higher on
            # whole patches with flips only (measured: see README).
            self.crop = 96 if self.model == "seed" or self.model in FLIPS_ONLY else 80
        if self.colour_jitter is None:
            self.colour_jitter = 0.0 if self.model in FLIPS_ONLY else 0.1
        if self.model == "seed" and self.crop != 96:
            raise BadInput("the seed CNN's dense layer takes whole 96x96 patches: use --crop 96")
        if not 32 <= self.crop <= 96:
            raise BadInput(f"crop must be between 32 and 96 pixels, got {self.crop}")
        # Stored absolute, so that evaluate finds the data from any folder.
        self.data = str(Path(self.data).resolve()) if self.data else self.data
        self.pack_root = str(Path(self.pack_root).resolve()) if self.pack_root else self.pack_root
        if self.mixup < 0:
            raise BadInput(f"mixup must be 0 (off) or a positive Beta parameter, got {self.mixup}")
        if not 0 < self.val_fraction < 1:
            raise BadInput(f"val_fraction must be between 0 and 1, got {self.val_fraction}")
        if not 0 <= self.soft_weight <= 1:
            raise BadInput(f"soft_weight must be between 0 and 1, got {self.soft_weight}")
        self.teacher = str(Path(self.teacher).resolve()) if self.teacher else self.teacher


def train_defaults(model: str) -> dict:
    """Training settings of a model (the command line overrides them). The EfficientNets' are those of a
    plain fine-tune that beat Spotter's earlier ones (batch 128, peak 1e-3, decay 0.05, stain jitter) within
    the same 6 CPU minutes, plus a weight average, which lifted them in 15 minutes on two splits: the fine-tune
    overfits after a few epochs and the average smooths that out (README, "Histology recipes")."""
    if model in PRETRAINED:
        return {"lr": 2e-3, "batch_size": 64, "weight_decay": 1e-2, "ema": 0.998}
    return {"lr": 3e-3}
