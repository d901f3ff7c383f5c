"""Evaluation honesty: folds grouped by normalised text, thresholds never tuned on the rows they score,
bootstrap intervals on every reported AUC / F1."""
import json

import numpy as np
import pandas as pd
import pytest

from spotter import metrics
from spotter.cli import main
from spotter.tweets import task
from spotter.tweets.text import Corpus, NormaliseOptions


def test_tweets_differing_only_in_links_and_mentions_share_a_fold():
    base = [f"forest fire near the town of {''.join(chr(97 + int(d)) for d in str(i))}ville" for i in range(40)]
    # Three copies of each tweet that differ only in their link and @mention, as retweets do.
    texts = [*(f"@amy {t} http://t.co/a{i}" for i, t in enumerate(base)),
             *(f"@bob {t} https://t.co/b{i}" for i, t in enumerate(base)),
             *(f"@cat {t} http://bit.ly/c{i}" for i, t in enumerate(base))]
    targets = np.array([i % 2 for i in range(40)] * 3)
    corpus = Corpus.build(texts, [""] * len(texts), NormaliseOptions(), targets)
    for grouping, straddles in (("normalised", False), ("raw", True)):
        settings = task.TweetSettings(folds=5, fold_groups=grouping)
        fold_of = np.empty(len(texts), int)
        for k, (_, val) in enumerate(task.fold_splits(corpus, settings, seed=0)):
            fold_of[val] = k
        copies_apart = any(len({fold_of[i], fold_of[i + 40], fold_of[i + 80]}) > 1 for i in range(40))
        assert copies_apart == straddles, grouping


def test_cross_fitted_thresholds_come_from_the_other_parts_only():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 300)
    probs = np.clip(labels * 0.3 + rng.random(300) * 0.7, 0, 1)
    parts = np.array_split(rng.permutation(300), 3)
    decisions, thresholds = metrics.cross_fitted_decisions(labels, probs, parts)
    for part, threshold in zip(parts, thresholds):
        others = np.setdiff1d(np.arange(300), part)
        assert threshold == metrics.best_f1_threshold(labels[others], probs[others])[0]
        assert np.array_equal(decisions[part], probs[part] >= threshold)
    # Tuning on the scored rows themselves can only do as well or better: that is the optimism removed.
    tuned_on_all = metrics.best_f1_threshold(labels, probs)[1]
    assert metrics.f1_score(labels, decisions) <= tuned_on_all + 1e-12


def test_bootstrap_intervals_are_seeded_and_shrink_with_more_rows():
    rng = np.random.default_rng(1)

    def interval(n):
        labels = rng.integers(0, 2, n)
        probs = np.clip(labels * 0.4 + rng.random(n) * 0.6, 0, 1)
        out = metrics.intervals(labels, probs, probs >= 0.5)
        auc = metrics.roc_auc(labels, probs)
        assert out["auc_ci95"][0] < auc < out["auc_ci95"][1]
        assert out == metrics.intervals(labels, probs, probs >= 0.5)  # same seed, same interval
        return out["auc_ci95"][1] - out["auc_ci95"][0], out["f1_ci95"][1] - out["f1_ci95"][0]

    small, large = interval(200), interval(5000)
    assert large[0] < small[0] / 3 and large[1] < small[1] / 3  # width ~ 1/sqrt(n): 5x narrower


def test_tweets_summary_states_what_is_tuned_on_what(tmp_path):
    import conftest
    data = conftest.tweets_slice(tmp_path / "tweets", 200, n_test=5)
    run = tmp_path / "run"
    assert main(["tweets", "train", "--data", data, "--out", run, "--model", "tfidf", "--folds", "3"]) == 0
    s = json.loads((run / "summary.json").read_text())
    assert s["fold_groups"] == "normalised" and set(s["tuned_on"]) >= {"threshold", "best_epoch", "shipped_model"}
    assert len(s["fold_thresholds"]) == 3 and s["f1_ci95"][0] <= s["f1"] <= s["f1_ci95"][1]
    assert s["auc_ci95"][0] <= s["auc"] <= s["auc_ci95"][1]
    # The reported F1 is recomputed from the saved out-of-fold predictions and the per-fold thresholds.
    oof = pd.read_csv(run / "validation_predictions.csv")
    assert s["validation_at_threshold"]["f1"] >= s["f1"] - 1e-9
    assert main(["tweets", "evaluate", run, "--csv", data / "train.csv"]) == 0
    report = json.loads((run / "evaluation.json").read_text())
    assert report["auc_ci95"][0] <= report["auc"] <= report["auc_ci95"][1] and len(oof) == 200
