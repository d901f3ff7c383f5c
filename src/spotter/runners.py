"""The inference backends themselves: a model as torch.compile (inductor, frozen weights) or onnxruntime
sees it, each an `nn.Module` taking and returning what the eager model does, so that `engine.predict_probs`
runs any of them alike. backends.py chooses between them.
"""
from __future__ import annotations

import contextlib
import io
import logging
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import compiled, extras
from .files import atomic_path

BACKENDS = ("eager", "compiled", "onnx")
ONNX_MAX_BATCH = 4096


class FixedBatch(nn.Module):
    """Calls `compiled` on batches of exactly `rows` rows, channels_last, as it was compiled for: a short batch
    (a job's last) is padded and its padding dropped, a long one split, so the graph is never compiled again.
    Rows do not see each other in inference (BatchNorm uses its running statistics), so padding changes nothing."""

    def __init__(self, compiled_model: nn.Module, rows: int):
        super().__init__()
        self.compiled, self.rows = compiled_model, rows

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs = []
        for part in x.split(self.rows):
            n = len(part)
            if n < self.rows:
                part = torch.cat([part, part.new_zeros((self.rows - n, *part.shape[1:]))])
            outputs.append(self.compiled(part.contiguous(memory_format=torch.channels_last))[:n])
        return torch.cat(outputs)


def compile_frozen(model: nn.Module, rows: int) -> nn.Module:
    """`model` compiled by inductor for inference, its weights frozen into the graph as constants (oneDNN can then
    prepack them and fold BatchNorm), for batches of `rows`. The eager model is left as it is."""
    compiled.use_spotter_cache()  # a second process compiles the same graph from the cache, in a fraction of the time
    return FixedBatch(torch.compile(model, dynamic=False, options={"freezing": True}), rows)


class OnnxModel(nn.Module):
    """An onnxruntime session on the CPU, called like the model it was exported from (fp32 in, fp32 out)."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(None, {self.input_name: x.float().contiguous().cpu().numpy()})
        return torch.from_numpy(np.ascontiguousarray(logits)).to(x.device)


def write_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> None:
    """Export `module` (one tensor in, one out) to ONNX with a dynamic batch size; `histo export` and the onnx
    backend both export through here."""
    batch = torch.export.Dim("batch", min=1, max=ONNX_MAX_BATCH)
    with atomic_path(path, suffix=".tmp.onnx") as tmp:
        torch.onnx.export(module, (example,), str(tmp), input_names=["image"], output_names=["logit"],
                          dynamic_shapes=({0: batch},), dynamo=True, external_data=False, verbose=False)


def onnx_session(model: nn.Module, example: torch.Tensor) -> nn.Module:
    """`model` (fp32, on the CPU) exported to ONNX and opened in onnxruntime with torch's thread count."""
    extras.require("export", "onnx", "onnxscript", "onnxruntime", what="--backend onnx")
    import onnxruntime  # an optional extra: imported only once it is known to be there

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as folder, _quiet_export():
        path = Path(folder) / "model.onnx"
        write_onnx(model, example.float().cpu(), path)
        session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return OnnxModel(session)


@contextlib.contextmanager
def _quiet_export():
    """The exporter's progress lines and warnings (e.g. about torchvision operators) are no concern of a user who
    only asked for predictions."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
