"""Distillation (`tweets train --teacher RUN`, `histo train --teacher RUN`): the augmentation rules, the split
checks that keep the students' validation honest, and students that learn from a teacher on the demo data."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from spotter import demo
from spotter.cli import main
from spotter.histo import task as histo
from spotter.tweets.distil import Augmenter, glove_neighbours


def test_glove_neighbours_are_the_nearest_other_words():
    words = {"flood": 0, "flooding": 1, "storm": 2, "banana": 3}
    vectors = np.array([[1, 0], [0.95, 0.1], [0.7, 0.7], [-1, 0.1]], np.float32)
    near = glove_neighbours(words, vectors, {"flood", "unknownword"}, k=2)
    assert near == {"flood": ["flooding", "storm"]}  # itself left out; words GloVe lacks get none


def test_augmenter_drops_swaps_and_cuts_reproducibly():
    augment = Augmenter({"fire": ["blaze"]}, p_drop=0.0, p_swap=1.0, p_ngram=0.0)
    assert augment("Forest fire near @user", np.random.default_rng(0)) == "Forest blaze near @user"
    cut = Augmenter({}, p_drop=0.0, p_swap=0.0, p_ngram=1.0)
    words = "one two three four five six seven eight".split()
    piece = cut(" ".join(words), np.random.default_rng(1)).split()
    assert 1 <= len(piece) <= 5 and " ".join(piece) in " ".join(words)
    a = Augmenter({}, p_drop=0.3)
    texts = ["a b c d e f g h", "x y z"]
    assert a.copies(texts, 3, seed=4)[0] == a.copies(texts, 3, seed=4)[0]
    copies, source = a.copies(texts, 3, seed=4)
    assert list(source) == [0, 0, 0, 1, 1, 1] and all(copies)


@pytest.fixture(scope="module")
def demo_tweets(tmp_path_factory):
    return demo.make_tweets_dataset(tmp_path_factory.mktemp("demo") / "tweets", n_train=400, n_test=4)


@pytest.fixture(scope="module")
def tfidf_teacher(demo_tweets, tmp_path_factory):
    """A 3-fold TF-IDF run (seconds): a teacher for the RNNs."""
    teacher = tmp_path_factory.mktemp("tweets-teacher") / "teacher"
    assert main(["tweets", "train", "--data", demo_tweets, "--out", teacher, "--model", "tfidf", "--folds", "3"]) == 0
    return teacher


@pytest.mark.slow
def test_student_learns_from_a_teacher_on_its_folds(demo_tweets, tfidf_teacher, tmp_path):
    student = tmp_path / "student"
    assert main(["tweets", "train", "--data", demo_tweets, "--out", student, "--folds", "3", "--epochs", "4",
                 "--unfreeze-epoch", "2", "--teacher", tfidf_teacher, "--transfer-copies", "1", "--device", "cpu"]) == 0
    summary = json.loads((student / "summary.json").read_text())
    assert summary["teacher"]["model"] == "tfidf"
    assert summary["auc"] > 0.8, summary["auc"]  # random weights: about 0.5; the demo's label noise caps it near 0.92


def refused(args, out, capsys) -> str:
    """Run `args` into its own `out`; it must be refused (exit 2) before training anything there."""
    capsys.readouterr()
    assert main([*args, "--out", out]) == 2
    assert not (out / "summary.json").exists() and not list(out.glob("**/*.pt"))
    return capsys.readouterr().err


@pytest.mark.parametrize("case", ["fewer folds", "another seed", "other tweets", "not an RNN"])
def test_tweets_refusals_name_their_reason(demo_tweets, tfidf_teacher, tmp_path, capsys, case):
    """The teacher's folds are matched, not assumed: a student on other folds, another seed or other tweets
    is refused, and only the RNNs learn from a teacher."""
    data, extra, message = {
        "fewer folds": (demo_tweets, ["--folds", "2"], "the teacher's folds are not the student's (teacher: 3 folds"),
        "another seed": (demo_tweets, ["--folds", "3", "--seed", "1"], "the teacher's folds are not the student's"),
        "other tweets": (demo.make_tweets_dataset(tmp_path / "other", n_train=300, n_test=2), ["--folds", "3"],
                         "the teacher was trained on other tweets (400 rows against the student's 300)"),
        "not an RNN": (demo_tweets, ["--model", "tfidf"], "--teacher distils into an RNN"),
    }[case]
    err = refused(["tweets", "train", "--data", data, "--teacher", tfidf_teacher, "--epochs", "1", *extra],
                  tmp_path / "refused", capsys)
    assert message in err, err


@pytest.mark.slow
def test_histo_student_learns_only_from_its_teacher(tmp_path):
    data = demo.make_histo_dataset(tmp_path / "histo", n_train=320, n_test=2)
    common = ["--data", data, "--batch-size", "32", "--crop", "64", "--val-fraction", "0.25", "--device", "cpu"]
    teacher = tmp_path / "teacher"
    assert main(["histo", "train", "--out", teacher, "--model", "resnet", "--epochs", "4", *common]) == 0
    # Soft weight 1: the student never sees a label, only the teacher's probabilities.
    student = tmp_path / "student"
    assert main(["histo", "train", "--out", student, "--model", "resnet", "--epochs", "4", "--teacher", teacher,
                 "--soft-weight", "1", *common]) == 0
    auc = pd.read_csv(student / "metrics.csv")["val_auc"].max()
    assert auc > 0.9, auc  # random weights: about 0.5 (the teacher's own is near 1 on the demo patches)
    saved = json.loads((student / "settings.json").read_text())["task"]["histo"]
    assert saved["teacher"] == str(teacher.resolve()) and saved["soft_weight"] == 1

    # The targets: labels on every row the student does not train on, the blend on the rest.
    settings = histo.HistoSettings(data=str(data), model="resnet", teacher=str(teacher), soft_weight=0.25)
    pack = histo.pack_folder(data)["train"]
    train_rows, val_rows = histo.split_train_val(pack.labels, 0.25, 0)
    targets = histo.teacher_targets(settings, pack, train_rows, pack.ids[val_rows], torch.device("cpu"))
    teacher_probs = histo.load_run(teacher, "cpu").predict_pack(pack, train_rows)
    np.testing.assert_allclose(targets[train_rows], 0.75 * pack.labels[train_rows] + 0.25 * teacher_probs, atol=1e-6)
    np.testing.assert_array_equal(targets[val_rows], pack.labels[val_rows])


@pytest.mark.parametrize("case", ["another split", "not a finished run"])
def test_histo_refusals_name_their_reason(tmp_path, capsys, case):
    """A teacher that trained on the student's validation patches (another --seed: another split), or a
    folder that is no finished run, is refused."""
    data = demo.make_histo_dataset(tmp_path / "histo", n_train=64, n_test=2)
    common = ["--data", data, "--model", "resnet", "--batch-size", "32", "--crop", "64", "--val-fraction", "0.25",
              "--device", "cpu", "--epochs", "1"]
    teacher = tmp_path / "teacher"
    if case == "another split":
        assert main(["histo", "train", "--out", teacher, *common]) == 0
        extra, message = ["--seed", "1"], "the teacher was trained on another split"
    else:
        teacher.mkdir()
        extra, message = [], "not a finished Spotter run"
    err = refused(["histo", "train", *common, "--teacher", teacher, *extra], tmp_path / "refused", capsys)
    assert message in err, err
