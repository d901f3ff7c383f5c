"""`histo train --compile`: torch.compile (inductor, gcc on the CPU) trains the same model as eager PyTorch,
and its checkpoints load into an uncompiled model."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from spotter import compiled
from spotter.cli import main

# The seed CNN compiles fastest; fp32 so both runs take the same path apart from compiling.
TRAIN = ["--model", "seed", "--epochs", "1", "--batch-size", "32", "--device", "cpu", "--val-fraction", "0.25",
         "--precision", "fp32", "--no-augment"]


@pytest.mark.slow
def test_compiled_training_matches_eager_and_loads_uncompiled(real_histo, tmp_path, own_cache):
    eager, fast = tmp_path / "eager", tmp_path / "compiled"
    assert main(["histo", "train", "--data", real_histo, "--out", eager, "--no-compile", *TRAIN]) == 0
    assert main(["histo", "train", "--data", real_histo, "--out", fast, "--compile", *TRAIN]) == 0
    assert json.loads((fast / "settings.json").read_text())["task"]["histo"]["compile"] is True
    assert json.loads((eager / "settings.json").read_text())["task"]["histo"]["compile"] is False
    a, b = pd.read_csv(eager / "metrics.csv"), pd.read_csv(fast / "metrics.csv")
    for column in ("train_loss", "val_loss"):  # same batches and initial weights; kernels differ in rounding only
        assert abs(a[column][0] - b[column][0]) < 1e-3 * a[column][0], column
    weights = torch.load(fast / "best.pt", weights_only=True)["model"]
    assert not any(k.startswith("_orig_mod") for k in weights)  # compiled in place: plain parameter names
    assert (compiled.cache_dir()).exists()  # the inductor cache is Spotter's, so later runs reuse it
    # Both runs' checkpoints predict uncompiled (predict never compiles; in the runs' fp32): the same
    # probabilities to within 1e-3 on 160 patches, as one fp32 epoch of the same batches from the same
    # weights differs in rounding only.
    probs = []
    for run in (eager, fast):
        out = tmp_path / f"{run.name}.csv"
        assert main(["histo", "predict", run, "--images", real_histo / "train", "--out", out]) == 0
        probs.append(pd.read_csv(out, dtype={"id": str}).sort_values("id")["label"].to_numpy())
    assert len(probs[0]) == len(probs[1]) == 160 and probs[0].std() > 0.01  # not a constant
    assert np.abs(probs[0] - probs[1]).max() < 1e-3


def test_compiled_by_default_only_where_measured_to_pay(monkeypatch):
    monkeypatch.setattr(compiled, "COMPILE_BY_DEFAULT", {"resnet"})  # as if measured to pay for resnet
    assert compiled.default_for("resnet", 15, "cpu", 1)
    assert not compiled.default_for("resnet", None, "cpu", 1)  # --epochs N: no budget to weigh it against
    assert not compiled.default_for("resnet", 1, "cpu", 1)  # too short to win the compile time back
    assert not compiled.default_for("resnet", 15, "cuda", 1)  # not measured there
    assert not compiled.default_for("effnet-lite0", 15, "cpu", 1)
