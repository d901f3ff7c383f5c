"""Every model learns: on the synthetic demo data (built so that a model that learns scores near 1) each
reaches a stated validation AUC in seconds of training, and on slices of the real data each task clears a
stated floor. Random weights score about 0.5 on both, so none of these pass without learning."""
import json

import pandas as pd
import pytest

from spotter import demo
from spotter.cli import main
from spotter.tweets.predictor import load_run

import conftest

HISTO_DEMO_AUC = 0.9
# The demo flips 8 % of its tweet labels on purpose (crowd-sourced labels are noisy), which caps AUC near
# 0.92; random weights score about 0.5 (+- 0.07 on its 81 validation tweets).
TWEETS_DEMO_AUC = 0.8


@pytest.fixture(scope="module")
def demo_histo(tmp_path_factory):
    return demo.make_histo_dataset(tmp_path_factory.mktemp("demo") / "histo", n_train=320, n_test=4)


@pytest.fixture(scope="module")
def demo_tweets(tmp_path_factory):
    return demo.make_tweets_dataset(tmp_path_factory.mktemp("demo") / "tweets", n_train=400, n_test=4)


@pytest.mark.parametrize("model,extra", [("resnet", ["--epochs", "4", "--crop", "64"]),
                                         pytest.param("seed", ["--epochs", "6"], marks=pytest.mark.slow),
                                         pytest.param("effnet-lite0", ["--epochs", "2", "--crop", "64"],
                                                      marks=pytest.mark.slow)])
def test_histo_models_learn_the_demo_data(demo_histo, tmp_path, model, extra):
    run = tmp_path / model
    assert main(["histo", "train", "--data", demo_histo, "--out", run, "--model", model, "--batch-size", "32",
                 "--val-fraction", "0.25", "--device", "cpu", *extra]) == 0
    auc = pd.read_csv(run / "metrics.csv")["val_auc"].max()
    assert auc > HISTO_DEMO_AUC, f"{model}: validation AUC {auc:.3f}"


# blend (the default: BiGRU and TF-IDF) stays in the fast set; bigru alone, as part of blend, need not.
@pytest.mark.parametrize("model,extra", [("blend", ["--epochs", "4", "--unfreeze-epoch", "2"]),
                                         pytest.param("bigru", ["--epochs", "4", "--unfreeze-epoch", "2"],
                                                      marks=pytest.mark.slow),
                                         pytest.param("seed-gru", ["--epochs", "6", "--lr", "3e-3"],
                                                      marks=pytest.mark.slow),
                                         ("tfidf", []), ("sentence-lr", []),
                                         pytest.param("minilm-frozen", ["--epochs", "10"], marks=pytest.mark.slow),
                                         pytest.param("minilm", ["--epochs", "1", "--batch-size", "16"],
                                                      marks=pytest.mark.slow)])
def test_tweet_models_learn_the_demo_data(demo_tweets, tmp_path, model, extra):
    run = tmp_path / model
    assert main(["tweets", "train", "--data", demo_tweets, "--out", run, "--model", model, "--device", "cpu",
                 "--folds", "1", *extra]) == 0
    auc = json.loads((run / "summary.json").read_text())["auc"]
    assert auc > TWEETS_DEMO_AUC, f"{model}: validation AUC {auc:.3f}"


@pytest.mark.slow
def test_histo_learns_real_patches(tmp_path):
    data = conftest.histo_slice(tmp_path / "histo", 480, n_test=1)
    run = tmp_path / "run"
    assert main(["histo", "train", "--data", data, "--out", run, "--model", "resnet-plain", "--epochs", "5",
                 "--batch-size", "32", "--crop", "64", "--val-fraction", "0.25", "--device", "cpu"]) == 0
    auc = pd.read_csv(run / "metrics.csv")["val_auc"].max()
    assert auc > 0.75, f"validation AUC {auc:.3f} on 120 real patches, from scratch"


def test_tweets_learn_real_tweets(tmp_path):
    data = conftest.tweets_slice(tmp_path / "tweets", 1500, n_test=1)
    run = tmp_path / "run"
    assert main(["tweets", "train", "--data", data, "--out", run, "--model", "tfidf", "--folds", "3"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["auc"] > 0.78 and summary["f1"] > 0.6, summary


def test_default_tweets_recipe_learns_real_tweets(tmp_path, own_cache):
    """`tweets train` with no --model (blend-minilm where MiniLM is installed: BiGRU, TF-IDF and a logistic
    regression on frozen MiniLM embeddings) learns 400 real tweets in 2 folds and 2 epochs: out-of-fold AUC
    0.77 when written; random weights score 0.5 +- 0.03 here."""
    data = conftest.tweets_slice(tmp_path / "tweets", 400, n_test=1)
    run = tmp_path / "run"
    assert main(["tweets", "train", "--data", data, "--out", run, "--folds", "2", "--epochs", "2",
                 "--device", "cpu"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["model"] == "blend-minilm" and summary["encoder"]["name"] == "minilm"
    assert summary["auc"] > 0.7 and summary["f1"] > 0.55, summary
    assert sorted(p.name for p in (run / "fold0").iterdir()) == ["bigru", "minilm", "tfidf", "val_probs.npy"]
    # The shipped predictor averages the three members; explanations come from the two that have word attributions.
    predictor = load_run(run, "cpu")
    probs = predictor.predict_proba(["forest fire near la ronge", "i love my cat"], ["wildfire", ""])
    assert probs.shape == (2,) and ((0 < probs) & (probs < 1)).all()
    explained = predictor.explain(["forest fire near la ronge"], ["wildfire"])[0]
    assert [w["text"] for w in explained["words"]] == "forest fire near la ronge".split()
    assert "MiniLM member has no word attributions" in explained["method"]


def test_ci_fails_loudly_without_the_shared_data(monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true but the shared data is missing"):
        conftest.require(tmp_path / "missing")
    monkeypatch.setenv("CI", "")
    with pytest.raises(pytest.skip.Exception):
        conftest.require(tmp_path / "missing")
