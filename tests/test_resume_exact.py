"""--resume ends exactly where an uninterrupted run ends, for models that draw random numbers in training
(dropout, stochastic depth, fold-model initialisation): killed mid-epoch, and for tweets mid-fold.

Each trains three times in fresh processes, so only the BiGRU's runs in the fast set."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import conftest

HERE = Path(__file__).parent


def spotter(*args, kill_at=None):
    prefix = [str(HERE / "kill_at_step.py"), str(kill_at)] if kill_at else ["-m", "spotter"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    return subprocess.run([sys.executable, *prefix, *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


def same_weights(a: Path, b: Path) -> None:
    wa, wb = (torch.load(p, weights_only=True)["model"] for p in (a, b))
    for key in wa:
        torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)


def same_metrics(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(a).drop(columns=["seconds", "per_s"]),
                                  pd.read_csv(b).drop(columns=["seconds", "per_s"]))


def killed_then_resumed(args: list, kill_at: int, out: Path) -> None:
    killed = spotter(*args, "--out", out, kill_at=kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]  # SIGKILL, mid-run
    resumed = spotter(*args, "--out", out, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout


@pytest.mark.slow
def test_effnet_resumes_exactly(tmp_path):
    data = conftest.histo_slice(tmp_path / "histo", 64)
    # 48 training patches in batches of 16: 3 steps an epoch; step 5 is inside epoch 2.
    args = ["histo", "train", "--data", data, "--model", "effnet-lite0", "--epochs", "3", "--batch-size", "16",
            "--val-fraction", "0.25", "--device", "cpu", "--crop", "64"]
    assert spotter(*args, "--out", tmp_path / "straight").returncode == 0
    killed_then_resumed(args, 5, tmp_path / "killed")
    same_weights(tmp_path / "straight" / "last.pt", tmp_path / "killed" / "last.pt")
    same_metrics(tmp_path / "straight" / "metrics.csv", tmp_path / "killed" / "metrics.csv")


@pytest.mark.slow
def test_weight_average_resumes_exactly(tmp_path):
    data = conftest.histo_slice(tmp_path / "histo", 64)
    args = ["histo", "train", "--data", data, "--model", "resnet-plain", "--ema", "0.9", "--epochs", "3",
            "--batch-size", "16", "--val-fraction", "0.25", "--device", "cpu", "--crop", "64"]
    assert spotter(*args, "--out", tmp_path / "straight").returncode == 0
    killed_then_resumed(args, 5, tmp_path / "killed")
    for name in ("model", "trained_model"):
        wa, wb = (torch.load(p / "last.pt", weights_only=True)[name] for p in (tmp_path / "straight", tmp_path / "killed"))
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=0, atol=0, msg=key)
    same_metrics(tmp_path / "straight" / "metrics.csv", tmp_path / "killed" / "metrics.csv")
    saved = torch.load(tmp_path / "straight" / "last.pt", weights_only=True)
    # The average is not the trained weights: it was really averaged.
    assert not torch.equal(saved["model"]["head.3.weight"], saved["trained_model"]["head.3.weight"])


@pytest.mark.parametrize("model,rows,kill_at", [("bigru", 120, 14),
                                                pytest.param("seed-gru", 120, 14, marks=pytest.mark.slow),
                                                pytest.param("minilm", 60, 8, marks=pytest.mark.slow)])
def test_tweets_model_resumes_exactly(tmp_path, model, rows, kill_at):
    data = conftest.tweets_slice(tmp_path / "tweets", rows, n_test=5)
    # Two folds of two epochs in batches of 16: the kill lands in the second fold's second epoch.
    args = ["tweets", "train", "--data", data, "--model", model, "--folds", "2", "--epochs", "2",
            "--batch-size", "16", "--unfreeze-epoch", "2", "--device", "cpu"]
    assert spotter(*args, "--out", tmp_path / "straight").returncode == 0
    killed_then_resumed(args, kill_at, tmp_path / "killed")
    a, b = tmp_path / "straight", tmp_path / "killed"
    for fold in ("fold0", "fold1"):
        same_weights(a / fold / "last.pt", b / fold / "last.pt")
        same_metrics(a / fold / "metrics.csv", b / fold / "metrics.csv")
    pd.testing.assert_frame_equal(pd.read_csv(a / "validation_predictions.csv"),
                                  pd.read_csv(b / "validation_predictions.csv"))
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert sa["threshold"] == sb["threshold"] and sa["fold_f1"] == sb["fold_f1"]
    assert np.isfinite(sa["fold_f1"]).all()
