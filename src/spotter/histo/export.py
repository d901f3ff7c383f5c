"""Export a histo run (or ensemble) as a standalone model: TorchScript, ONNX, or a WSInfer / QuPath model folder.

The exported model takes what WSInfer's `ToTensor` gives: float RGB in [0, 1], shape (N, 3, 96, 96), at
the run's µm per pixel, and returns one logit per patch, shape (N, 1) (probability = sigmoid(logit)).
The run's centre crop and normalisation are inside the model, so they cannot drift from training; an
ensemble's members are calibrated and averaged inside too (the output is then the logit of the mean
probability; an ensemble of ensembles nests the same way). Weights are exported in fp32.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from .. import extras, files, runners
from ..errors import BadInput
from ..files import atomic_path
from .predictor import HistoPredictor, load_run
from .slide import PATCH

FORMATS = ("wsinfer", "torchscript", "onnx")
LOGIT_LIMIT = 13.815510557964274  # logit(1 - 1e-6): ensemble.combine clips probabilities there


class ExportedModel(nn.Module):
    """uint8-free, self-contained inference: [0, 1] RGB (N, 3, 96, 96) -> logits (N,)."""

    def __init__(self, predictor: HistoPredictor):
        super().__init__()
        self.model = predictor.model.float().eval() if predictor.model is not None else None
        self.members = nn.ModuleList(ExportedModel(m) for m in predictor.members)
        self.crop, self.calibration = predictor.crop, predictor.calibration
        if self.model is not None:  # a run: its crop and normalisation are inside, so they cannot drift
            self.register_buffer("mean", torch.tensor(predictor.norm[0]).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(predictor.norm[1]).view(1, 3, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is not None:
            start = (PATCH - self.crop) // 2
            return self.model((x[:, :, start:start + self.crop, start:start + self.crop] - self.mean) / self.std)
        probs = [torch.sigmoid(a * member(x).clamp(-LOGIT_LIMIT, LOGIT_LIMIT) + b)
                 for member, (a, b) in zip(self.members, self.calibration)]
        p = torch.stack(probs).mean(0).clamp(1e-7, 1 - 1e-7)
        return torch.log(p / (1 - p))


class Exported(nn.Module):
    """The file's entry point: logits of shape (N, 1), one per patch, as WSInfer expects."""

    def __init__(self, predictor: HistoPredictor):
        super().__init__()
        self.net = ExportedModel(predictor)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).unsqueeze(1)


def export(run: Path, fmt: str, out: Path, *, log=print) -> Path:
    """Write the run as `fmt` to `out` (a folder for wsinfer, a file otherwise); returns the model file."""
    if fmt not in FORMATS:
        raise BadInput(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    predictor = load_run(Path(run), "cpu", precision="fp32")
    module = Exported(predictor).eval()
    example = torch.rand(2, 3, PATCH, PATCH)
    out = Path(out)
    if fmt == "wsinfer":
        out.mkdir(parents=True, exist_ok=True)
        model_file = out / "model.pt"
        _torchscript(module, example, model_file)
        files.write_text_atomic(out / "config.json", json.dumps(wsinfer_config(predictor), indent=2))
        log(f"WSInfer model folder written to {out} (model.pt + config.json); run it with "
            f"`wsinfer run --model-path {model_file} --config {out / 'config.json'} ...` or QuPath's WSInfer extension")
        return model_file
    if fmt == "onnx":
        extras.require("export", "onnx", "onnxscript", what="histo export --format onnx")
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        _torchscript(module, example, out)
    else:
        _onnx(module, example, out)
    log(f"{fmt} model written to {out}: input float RGB in [0, 1] (N, 3, {PATCH}, {PATCH}) at "
        f"{predictor.mpp:g} µm/px, output logits (N, 1)")
    return out


def wsinfer_config(predictor: HistoPredictor) -> dict:
    """WSInfer's model configuration (spec 1.0): one output, sigmoid, class `tumor`."""
    names = "+".join(m.name for m in predictor.leaves())
    return {"spec_version": "1.0", "architecture": f"spotter-{names}", "num_classes": 1, "class_names": ["tumor"],
            "patch_size_pixels": PATCH, "spacing_um_px": predictor.mpp,
            "transform": [{"name": "Resize", "arguments": {"size": PATCH}}, {"name": "ToTensor"}]}


def _torchscript(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    with torch.no_grad():
        traced = torch.jit.trace(module, example)
    with atomic_path(path) as tmp:
        traced.save(str(tmp))


def _onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    runners.write_onnx(module, example, path)  # the same export the onnx inference backend makes
