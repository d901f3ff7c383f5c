"""End to end: the real CLI on a slice of the real Kaggle tweets."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from spotter.cli import main

import conftest


@pytest.fixture
def tweets_slice(tmp_path):
    return conftest.tweets_slice(tmp_path / "tweets", 500)


def check_submission(path, test_csv, proba=False):
    sub = pd.read_csv(path)
    test = pd.read_csv(test_csv)
    assert list(sub.columns) == ["id", "target"] + (["proba"] if proba else [])
    assert sub["id"].tolist() == test["id"].tolist()  # one row per input row, same order
    assert set(sub["target"]) <= {0, 1}
    if proba:
        assert sub["proba"].between(0, 1).all()


def test_bigru_folds_resume_evaluate_predict(tweets_slice, tmp_path):
    run = tmp_path / "run"
    args = ["tweets", "train", "--data", tweets_slice, "--out", run, "--model", "bigru", "--folds", "2",
            "--epochs", "2", "--device", "cpu"]
    assert main(args) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["folds"] == 2 and len(summary["fold_f1"]) == 2 and 0 < summary["threshold"] < 1
    assert 0.5 < summary["glove_coverage"]["normalised"]["vocabulary"] <= 1
    assert summary["glove_coverage"]["normalised"]["vocabulary"] > summary["glove_coverage"]["raw"]["vocabulary"]
    for name in ("precision_recall.png", "validation_predictions.csv", "fold0/history.png", "fold1/best.pt"):
        assert (run / name).exists(), name
    metrics = pd.read_csv(run / "fold0" / "metrics.csv")
    assert {"val_f1", "val_precision", "val_recall", "val_auc", "val_loss", "train_f1"} <= set(metrics.columns)

    # A finished run resumes to the same summary (finished folds are not retrained).
    (run / "fold1" / "val_probs.npy").unlink()
    assert main([*args, "--resume"]) == 0
    again = json.loads((run / "summary.json").read_text())
    assert again["fold_f1"] == summary["fold_f1"] and again["threshold"] == summary["threshold"]

    assert main(["tweets", "evaluate", run, "--csv", tweets_slice / "train.csv"]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert report["tweets"] == 500 and 0 <= report["f1"] <= 1

    out = tmp_path / "submission.csv"
    assert main(["tweets", "predict", run, "--csv", tweets_slice / "test.csv", "--out", out, "--proba"]) == 0
    check_submission(out, tweets_slice / "test.csv", proba=True)


@pytest.mark.parametrize("model", ["seed-gru", "tfidf"])
def test_other_models_train_and_predict(tweets_slice, tmp_path, model):
    run = tmp_path / model
    assert main(["tweets", "train", "--data", tweets_slice, "--out", run, "--model", model, "--epochs", "1",
                 "--folds", "1"]) == 0
    out = tmp_path / f"{model}.csv"
    assert main(["tweets", "predict", run, "--csv", tweets_slice / "test.csv", "--out", out]) == 0
    check_submission(out, tweets_slice / "test.csv")


def test_custom_glove_txt(tweets_slice, tmp_path):
    """The file's vectors are the ones trained with: its 3 dimensions, its words' rows in the checkpoint's
    (still frozen) embedding matrix, and the coverage of its 3 words over the tweets."""
    glove = tmp_path / "glove.txt"
    glove.write_text("fire 0.1 0.2 0.3\nflood 0.3 0.2 0.1\nthe 0 0 1\n")
    run = tmp_path / "txt"
    assert main(["tweets", "train", "--data", tweets_slice, "--out", run, "--model", "bigru", "--embeddings", glove,
                 "--epochs", "1", "--unfreeze-epoch", "2", "--folds", "1"]) == 0
    cover = json.loads((run / "summary.json").read_text())["glove_coverage"]["normalised"]
    assert cover["distinct_words"] > 100 and 0 < cover["vocabulary"] <= 3 / cover["distinct_words"]
    assert 0.01 < cover["tokens"] < 0.2  # "the" and "fire" are common, the other words are not in the file
    ckpt = torch.load(run / "fold0" / "last.pt", weights_only=True)
    matrix = ckpt["model"]["embedding.weight"].numpy()
    assert matrix.shape[1] == 3  # the file's dimension, not the packaged GloVe's 50
    for vector in ([0.1, 0.2, 0.3], [0, 0, 1]):
        assert (matrix == np.float32(vector)).all(1).any(), vector  # the word's row (and "'the"'s, if a token)


def test_predict_without_a_run_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "t.csv").write_text("id,text\n1,hi\n")
    assert main(["tweets", "predict", tmp_path / "none", "--csv", tmp_path / "t.csv", "--out", tmp_path / "o.csv"]) == 2
    assert "train it first" in capsys.readouterr().err
