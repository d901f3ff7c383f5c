"""`tweets train --refit --config RUN`: the final model of a cross-validated recipe, one model (per blend member)
trained on every labelled tweet for the median of RUN's folds' best epochs, at RUN's out-of-fold threshold; every
command that takes a run either works on it or refuses it in one line."""
import json

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

import conftest
from spotter.cli import main
from spotter.serve import app as serve_app

# 2 folds of the blend (BiGRU and TF-IDF) on 700 real tweets; 300 other real tweets held out.
CV = ["--model", "blend", "--folds", "2", "--epochs", "4", "--patience", "2", "--device", "cpu"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = conftest.tweets_slice(tmp_path_factory.mktemp("tweets-refit") / "tweets", 1000)
    rows = pd.read_csv(folder / "train.csv")
    rows.iloc[700:].to_csv(folder / "holdout.csv", index=False)
    rows.iloc[:700].to_csv(folder / "train.csv", index=False)
    return folder


@pytest.fixture(scope="module")
def validated(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("validated") / "run"
    assert main(["tweets", "train", "--data", data, "--out", run, *CV]) == 0
    return run


@pytest.fixture(scope="module")
def refitted(validated, tmp_path_factory):
    run = tmp_path_factory.mktemp("refitted") / "run"
    assert main(["tweets", "train", "--refit", "--config", validated, "--out", run]) == 0
    return run


def one_line_error(capsys, text):
    err = capsys.readouterr().err.strip()
    assert text in err and "\n" not in err, err


def best_epochs(run):
    return [int(m.loc[m["val_auc"].idxmax(), "epoch"])
            for m in (pd.read_csv(run / f"fold{k}" / "bigru" / "metrics.csv") for k in range(2))]


def test_refit_trains_every_row_for_the_folds_median_best_epoch_at_their_threshold(refitted, validated):
    summary, source = json.loads((refitted / "summary.json").read_text()), str(validated.resolve())
    cv = json.loads((validated / "summary.json").read_text())
    epochs = int(np.ceil(np.median(best_epochs(validated))))
    assert summary["refit"] and summary["schedule_from"] == source and summary["threshold_from"] == source
    assert summary["threshold"] == cv["threshold"] and summary["epochs"] == epochs
    assert summary["fold_best_epochs"] == best_epochs(validated) and summary["folds"] == 1
    assert summary["tweets"] == 700 and summary["model"] == "blend"
    saved = json.loads((refitted / "settings.json").read_text())
    assert saved["task"]["tweets"]["refit"] and saved["refit"]["schedule_from"] == source
    assert saved["train"]["epochs"] == epochs and saved["train"]["patience"] is None
    # every row trains, nothing validates; the last epoch is the model
    metrics = pd.read_csv(refitted / "fold0" / "bigru" / "metrics.csv")
    assert list(metrics["epoch"]) == list(range(1, epochs + 1)) and not any(c.startswith("val_") for c in metrics)
    best = torch.load(refitted / "fold0" / "bigru" / "best.pt", weights_only=True)
    assert best["settings"]["task"]["train_size"] == 700 and best["settings"]["task"]["val_size"] == 0
    assert best["state"]["epoch"] == epochs
    assert (refitted / "fold0" / "tfidf" / "best.pt").exists() and not (refitted / "fold1").exists()
    for name in ("validation_predictions.csv", "folds.csv"):
        assert not (refitted / name).exists(), name


def test_refit_learns_and_predict_evaluate_serve_take_it(refitted, data, tmp_path):
    """On 300 held-out real tweets, the refit's AUC is well above the 0.5 random weights reach."""
    assert main(["tweets", "evaluate", refitted, "--csv", data / "holdout.csv", "--device", "cpu"]) == 0
    report = json.loads((refitted / "evaluation.json").read_text())
    assert report["tweets"] == 300 and report["auc"] > 0.7, report["auc"]
    out = tmp_path / "submission.csv"
    assert main(["tweets", "predict", refitted, "--csv", data / "test.csv", "--out", out, "--proba"]) == 0
    submission = pd.read_csv(out)
    assert len(submission) == 60 and set(submission["target"]) <= {0, 1}
    threshold = json.loads((refitted / "summary.json").read_text())["threshold"]
    assert ((submission["proba"] >= threshold).astype(int) == submission["target"]).all()

    assert main(["tweets", "errors", refitted, "--csv", data / "holdout.csv", "--out", tmp_path / "errors",
                 "--device", "cpu"]) == 0

    with TestClient(serve_app.create_app([refitted], device="cpu", log=lambda message: None)) as client:
        body = client.post("/api/tweets/run/predict", json={"texts": ["Forest fire near La Ronge"], "explain": True})
        assert body.status_code == 200, body.text
        result = body.json()["results"][0]
        model = client.get("/api/models").json()["models"][0]
    assert model["validation"] == {} and model["threshold"] == threshold  # no out-of-fold scores to show
    assert 0 <= result["probability"] <= 1 and result["explanation"]["words"]


def test_a_finished_refit_resumes_to_the_same_summary(refitted, validated, tmp_path):
    before = json.loads((refitted / "summary.json").read_text())
    assert main(["tweets", "train", "--refit", "--config", validated, "--out", refitted, "--resume"]) == 0
    summary = json.loads((refitted / "summary.json").read_text())
    assert {k: v for k, v in summary.items() if k != "seconds"} == {k: v for k, v in before.items() if k != "seconds"}


def test_epochs_given_beside_config_win(validated, tmp_path):
    run = tmp_path / "run"
    assert main(["tweets", "train", "--refit", "--config", validated, "--epochs", "1", "--model", "bigru",
                 "--out", run]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["epochs"] == 1 and summary["schedule_from"] is None
    assert summary["threshold_from"] == str(validated.resolve())
    assert list(pd.read_csv(run / "fold0" / "metrics.csv")["epoch"]) == [1]


def test_refusals_are_one_line(data, validated, refitted, tmp_path, capsys):
    assert main(["tweets", "train", "--refit", "--data", data, "--out", tmp_path / "a", "--model", "tfidf"]) == 2
    one_line_error(capsys, "--refit needs --config RUN")
    assert main(["tweets", "train", "--refit", "--data", data, "--out", tmp_path / "a", "--epochs", "2"]) == 2
    one_line_error(capsys, "--refit needs --config RUN")
    assert main(["tweets", "train", "--refit", "--config", validated, "--out", tmp_path / "b", "--patience", "2"]) == 2
    one_line_error(capsys, "--patience stops on a validation score")
    assert main(["tweets", "train", "--refit", "--config", refitted, "--out", tmp_path / "c"]) == 2
    one_line_error(capsys, "a refit run has no folds to copy a schedule and threshold from")
    assert main(["tweets", "ensemble", validated, refitted, "--out", tmp_path / "ens"]) == 2
    one_line_error(capsys, "a refit run has no out-of-fold predictions to calibrate an ensemble on")
    assert main(["tweets", "train", "--data", data, "--out", tmp_path / "student", *CV, "--teacher", refitted]) == 2
    one_line_error(capsys, "a refit run has no folds to teach")
    assert main(["tweets", "train", "--refit", "--config", validated, "--out", tmp_path / "d",
                 "--teacher", validated]) == 2
    one_line_error(capsys, "--refit has no folds")
    assert main(["tweets", "errors", refitted, "--out", tmp_path / "e"]) == 2
    one_line_error(capsys, "a refit run has no validation predictions")
    for name in "abcd":
        assert not (tmp_path / name).exists(), name


def test_blend_minilm_refits(data, tmp_path):
    pytest.importorskip("transformers")
    run, refit = tmp_path / "cv", tmp_path / "refit"
    assert main(["tweets", "train", "--data", data, "--out", run, "--model", "blend-minilm", "--folds", "2",
                 "--epochs", "2", "--device", "cpu"]) == 0
    assert main(["tweets", "train", "--refit", "--config", run, "--out", refit]) == 0
    assert sorted(p.name for p in (refit / "fold0").iterdir()) == ["bigru", "minilm", "tfidf"]
    assert main(["tweets", "evaluate", refit, "--csv", data / "holdout.csv", "--device", "cpu"]) == 0
    assert json.loads((refit / "evaluation.json").read_text())["auc"] > 0.7
