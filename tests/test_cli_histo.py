"""End to end: the real CLI on a slice of the real Kaggle patches."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from spotter.cli import main

# resnet: the cheap model, as the model is not what these tests are about.
TRAIN = ["--model", "resnet", "--epochs", "3", "--batch-size", "32", "--crop", "64", "--device", "cpu", "--val-fraction", "0.25"]


def spotter(*args):
    return subprocess.run([sys.executable, "-m", "spotter", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def weights(run):
    return torch.load(run / "last.pt", weights_only=True)["model"]


def test_train_evaluate_predict(real_histo, tmp_path):
    run = tmp_path / "run"
    assert main(["histo", "train", "--data", real_histo, "--out", run, *TRAIN]) == 0
    for name in ("best.pt", "last.pt", "metrics.csv", "settings.json", "history.png", "folds.csv", "summary.json"):
        assert (run / name).exists(), name
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3] and metrics["val_auc"].between(0, 1).all()
    settings = json.loads((run / "settings.json").read_text())
    assert settings["task"]["histo"]["crop"] == 64 and settings["train"]["epochs"] == 3

    assert main(["histo", "evaluate", run, "--tta"]) == 0
    report = json.loads((run / "evaluation_tta.json").read_text())
    assert report["images"] == 40 and 0 <= report["auc"] <= 1 and report["tp"] + report["fn"] == 20
    assert (run / "roc_tta.png").exists()

    out = tmp_path / "sub" / "submission.csv"
    assert main(["histo", "predict", run, "--images", real_histo / "test", "--out", out]) == 0
    sub = pd.read_csv(out, dtype={"id": str})
    assert list(sub.columns) == ["id", "label"]
    assert sorted(sub["id"]) == sorted(p.stem for p in (real_histo / "test").iterdir())
    assert sub["label"].between(0, 1).all() and sub["label"].nunique() > 1


def test_seed_model_trains_at_full_size(real_histo, tmp_path):
    run = tmp_path / "seed"
    assert main(["histo", "train", "--data", real_histo, "--out", run, "--model", "seed", "--epochs", "1",
                 "--crop", "96", "--batch-size", "32"]) == 0
    assert pd.read_csv(run / "metrics.csv")["val_auc"].notna().all()


@pytest.mark.slow
def test_resume_after_kill_ends_with_the_same_weights(real_histo, tmp_path):
    straight = tmp_path / "straight"
    assert main(["histo", "train", "--data", real_histo, "--out", straight, *TRAIN]) == 0
    total_steps = torch.load(straight / "last.pt", weights_only=True)["scheduler"]["total_steps"]  # one-cycle's
    assert total_steps % 3 == 0
    steps_per_epoch = total_steps // 3

    # SIGKILLed as the second step of epoch 2 begins: mid-epoch, epoch 1 saved, epoch 2 lost.
    killed = tmp_path / "killed"
    kill_at = steps_per_epoch + 2
    result = subprocess.run([sys.executable, str(Path(__file__).parent / "kill_at_step.py"), str(kill_at), "histo",
                             "train", "--data", str(real_histo), "--out", str(killed), *TRAIN],
                            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert torch.load(killed / "last.pt", weights_only=True)["state"]["epoch"] == 1
    assert list(pd.read_csv(killed / "metrics.csv")["epoch"]) == [1]

    resumed = spotter("histo", "train", "--data", real_histo, "--out", killed, "--resume", "--device", "cpu")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "after epoch 1 of 3" in resumed.stdout and "epoch   1/3" not in resumed.stdout
    assert list(pd.read_csv(killed / "metrics.csv")["epoch"]) == [1, 2, 3]  # epoch 2 once, not twice
    a, b = weights(straight), weights(killed)
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    pd.testing.assert_frame_equal(pd.read_csv(straight / "metrics.csv").drop(columns=["seconds", "per_s"]),
                                  pd.read_csv(killed / "metrics.csv").drop(columns=["seconds", "per_s"]))


def test_training_into_a_finished_run_with_overwrite_starts_afresh(real_histo, tmp_path):
    """With --overwrite an existing run folder is trained anew: a new metrics.csv and new checkpoints, not
    the old run's rows or epochs carried on (without it, or --resume, the folder is refused: test_hardening)."""
    run = tmp_path / "run"
    common = ["histo", "train", "--data", real_histo, "--out", run, "--model", "seed", "--batch-size", "32",
              "--device", "cpu"]
    assert main([*common, "--epochs", "2"]) == 0
    assert main([*common, "--epochs", "1", "--seed", "1", "--overwrite"]) == 0
    assert list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1]
    for name in ("last.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)["state"]
        assert (state["epoch"], state["epochs"]) == (1, 1), name
    saved = json.loads((run / "settings.json").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["seed"] == 1


def test_time_budget_plans_epochs(real_histo, tmp_path):
    """A 6-second budget: the plan cuts the default 1000 epochs to what fits, and training time stays
    inside the budget (plus the one step that crosses the deadline)."""
    run = tmp_path / "budget"
    assert main(["histo", "train", "--data", real_histo, "--out", run, "--time-budget", "0.1", "--model", "resnet",
                 "--batch-size", "32", "--crop", "64"]) == 0
    state = torch.load(run / "last.pt", weights_only=True)["state"]
    metrics = pd.read_csv(run / "metrics.csv")
    assert state["epochs"] < 100 and len(metrics) == state["epoch"] <= state["epochs"]
    assert metrics["seconds"].sum() < 6 + metrics["seconds"].max() / 3


def test_cli_errors_are_one_clear_line(tmp_path):
    result = spotter("histo", "train", "--data", tmp_path, "--out", tmp_path / "run")
    assert result.returncode == 2
    assert "not the Kaggle layout" in result.stderr and "Traceback" not in result.stderr
    result = spotter("histo", "predict", tmp_path / "norun", "--images", tmp_path, "--out", tmp_path / "x.csv")
    assert result.returncode == 2 and "no checkpoint" in result.stderr


def test_help_lists_the_commands():
    result = spotter("histo", "--help")
    assert result.returncode == 0
    for command in ("pack", "train", "evaluate", "predict"):
        assert command in result.stdout


def test_a_run_of_the_other_task_is_named(real_histo, tmp_path, capsys):
    run = tmp_path / "cnn"
    assert main(["histo", "train", "--data", real_histo, "--out", run, "--model", "seed", "--epochs", "1",
                 "--batch-size", "32"]) == 0
    (tmp_path / "t.csv").write_text("id,text\n1,fire\n")
    assert main(["tweets", "predict", run, "--csv", tmp_path / "t.csv", "--out", tmp_path / "o.csv"]) == 2
    assert "histo run, not a tweets one" in capsys.readouterr().err
    (tmp_path / "rnn").mkdir()
    (tmp_path / "rnn" / "summary.json").write_text("{}")
    assert main(["histo", "predict", tmp_path / "rnn", "--images", real_histo / "test", "--out", tmp_path / "s.csv"]) == 2
    assert "tweets run, not a histo one" in capsys.readouterr().err


def test_ids_are_values_never_paths(real_histo, tmp_path):
    """An id such as ../../x in the labels CSV is only looked up among the images, never opened as a path."""
    with open(real_histo / "train_labels.csv", "a") as f:
        f.write("../../etc/passwd,1\n")
    result = spotter("histo", "pack", "--data", real_histo)
    assert result.returncode == 2 and "../../etc/passwd.tif" in result.stderr
