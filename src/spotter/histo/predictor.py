"""The one inference path for histology: a run, an ensemble, or an ensemble of ensembles, loaded once.

`predict`, `evaluate`, ensembles, whole slides, exports, the server, explanations, reports and distillation
teachers all score patches through `HistoPredictor`. A plain run's predictor holds its model, crop,
normalisation, precision and inference backend (eager, compiled or onnx: backends.py chooses per job); an
ensemble's holds its members' predictors (plain or ensembles again, each choosing its own backend) and the
calibration fitted on their validation predictions, so every consumer handles every run kind alike.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from .. import backends, engine, ensemble, explain, runs
from ..errors import BadInput
from .data import PackedSet
from .models import create_model, normalisation
from .preprocess import dihedral_views, preprocess
from .settings import HistoSettings

TTA_VIEWS = 8  # dihedral_views: 4 rotations, each also transposed


class HistoPredictor:
    """Scores uint8 RGB patches (N, 96, 96, 3): the probability of tumour in each centre 32x32.

    `settings` are the run's (an ensemble's: its first run's; members share data and split), `threshold` 0.5
    unless the run says otherwise. A plain run has `model` (run on `backend`: auto, eager, compiled or onnx);
    an ensemble has `members` and `calibration`.
    """

    batch_size = 256  # model rows per call, with or without TTA (then 32 patches x 8 views): one compiled shape

    def __init__(self, run: runs.Run, settings: HistoSettings, *, model: torch.nn.Module | None = None,
                 device: torch.device | None = None, precision: str = "fp32",
                 members: list["HistoPredictor"] = (), backend: str = "auto",
                 log: Callable[[str], None] | None = None):
        self.run, self.settings, self.threshold = run, settings, run.threshold
        self.model, self.precision = model, precision
        self.members = list(members)
        self.device = device if device is not None else self.members[0].device
        self.backend = None if model is None else backends.Selector(
            model, (self.batch_size, 3, settings.crop, settings.crop), self.device, precision, backend, log=log)
        self.calibration, self.tta = run.calibration, run.tta
        if self.members and len({m.mpp for m in self.members}) > 1:
            raise BadInput(f"{run.path}: the ensemble's members were trained at different resolutions")

    @property
    def name(self) -> str:
        """The model kind ("resnet", "effnet-lite1", ...) or "ensemble"."""
        return "ensemble" if self.members else self.settings.model

    @property
    def mpp(self) -> float:
        """µm per pixel of the patches the models were trained on."""
        return float(self.members[0].mpp if self.members else self.settings.mpp)

    @property
    def crop(self) -> int:
        return self.settings.crop

    @property
    def norm(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        return normalisation(self.settings.model)

    def check_tta(self, tta: bool) -> None:
        """An ensemble calibrated on predictions with (or without) TTA must be used the same way."""
        if self.tta is not None and tta != self.tta:
            raise BadInput(f"this ensemble was calibrated on predictions {'with' if self.tta else 'without'} "
                           f"8x TTA; predict {'with --tta' if self.tta else 'without --tta'}, or rebuild it")
        for m in self.members:
            m.check_tta(tta)

    def predict_proba(self, images: np.ndarray, tta: bool = False, job: int | None = None) -> np.ndarray:
        """Probability of tumour in the centre of each patch; `tta` averages the 8 rotations and reflections.
        `job`: the patches left in the whole job these images start (default: just these), which decides
        whether a faster backend's setup pays back (backends.py)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1:] != (96, 96, 3):
            raise ValueError(f"expected uint8 patches of shape (N, 96, 96, 3), got {images.dtype} {images.shape}")
        self.check_tta(tta)
        return self._probs(images, tta, (len(images) if job is None else job) * (TTA_VIEWS if tta else 1))

    def _probs(self, images: np.ndarray, tta: bool, patch_views: int) -> np.ndarray:
        if self.members:
            return ensemble.combine([m._probs(images, tta, patch_views) for m in self.members], self.calibration)
        runner = self.backend.runner(patch_views)
        start = time.perf_counter()
        probs, _ = engine.predict_probs(runner, self._batches(images, tta), self.device, self.precision,
                                        transform=dihedral_views if tta else None, max_rows=self.batch_size)
        if runner is self.model:  # eager's speed on real work tells whether measuring the others could pay
            self.backend.observe_eager(time.perf_counter() - start, len(probs) * (TTA_VIEWS if tta else 1))
        return probs

    def predict_pack(self, data: PackedSet, rows: np.ndarray | None = None, tta: bool = False) -> np.ndarray:
        """`predict_proba` over `rows` of a pack (all by default), read a few thousand patches at a time."""
        rows = np.arange(len(data)) if rows is None else np.asarray(rows)
        chunk = self.batch_size * 8
        parts = [self.predict_proba(data.read(rows[i:i + chunk]), tta, job=len(rows) - i)
                 for i in range(0, len(rows), chunk)]
        return np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def grad_cam(self, images: np.ndarray) -> np.ndarray:
        """(N, 96, 96) Grad-CAM maps in logit units (explain.py); an ensemble's is its members' mean."""
        if self.members:
            return np.mean([m.grad_cam(images) for m in self.members], axis=0)
        return np.concatenate([explain.patch_cam(self.model, x, self.crop) for x, _ in self._batches(images)])

    def _batches(self, images: np.ndarray, tta: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Preprocessed batches; with `tta`, of batch_size / 8 patches, whose 8 views make one model batch."""
        norm, size = self.norm, self.batch_size // TTA_VIEWS if tta else self.batch_size
        for start in range(0, len(images), size):
            pixels = torch.from_numpy(images[start:start + size]).to(self.device)
            yield preprocess(pixels, self.crop, norm=norm), torch.zeros(len(pixels))

    def describe(self) -> dict:
        """What a slide's or an evaluation's summary records about the model."""
        leaves = self.leaves()
        return {"run": str(self.run.path.resolve()), "models": [m.name for m in leaves],
                "crop": [m.crop for m in leaves], "precision": leaves[0].precision,
                "ensemble": bool(self.members), "model_mpp": self.mpp, "device": str(self.device),
                "backend": [m.backend.decision.record() for m in leaves]}

    def leaves(self) -> list["HistoPredictor"]:
        """The plain runs' predictors under this one, depth first."""
        return [leaf for m in self.members for leaf in m.leaves()] if self.members else [self]


def load_run(run: Path | runs.Run, device: str = "auto", precision: str | None = None, backend: str = "auto",
             log: Callable[[str], None] | None = None) -> HistoPredictor:
    """A finished run's best model, or every member of an ensemble (nested too), loaded once.
    `precision` overrides the runs' own (e.g. "fp32" for exports); `backend` is auto (each model chooses per
    job, measured: backends.py) or the one to use; `log` hears when a backend is measured."""
    run = run if isinstance(run, runs.Run) else runs.open_run(Path(run), "histo")
    if run.is_ensemble:
        members = [load_run(m, device, precision, backend, log) for m in run.members]
        return HistoPredictor(run, members[0].settings, members=members)
    ckpt = engine.load_checkpoint(run.path / "best.pt", "histo")
    settings = engine.settings_from(HistoSettings, ckpt["settings"]["task"]["histo"], run.path / "best.pt")
    model = create_model(settings.model, pretrained=False)
    model.load_state_dict(ckpt["model"])
    dev = engine.pick_device(device)
    model = model.to(dev, memory_format=torch.channels_last).eval()
    if precision is None:
        # `auto` times inference on a batch of predict's shape (once per model and machine; see precision.py).
        example = (torch.randn(256, 3, settings.crop, settings.crop, device=dev).to(memory_format=torch.channels_last),
                   torch.zeros(256, device=dev))
        precision = engine.pick_precision(dev, ckpt["settings"]["train"].get("precision", "auto"), model=model,
                                          batch=example, train=False)
    return HistoPredictor(run, settings, model=model, device=dev, precision=precision, backend=backend, log=log)
