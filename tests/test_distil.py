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


def test_student_learns_from_a_teacher_on_its_folds(demo_tweets, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["tweets", "train", "--data", demo_tweets, "--out", teacher, "--model", "tfidf", "--folds", "3"]) == 0
    student = tmp_path / "student"
    assert main(["tweets", "train", "--data", demo_tweets, "--out", student, "--folds", "3", "--epochs", "4",
                 "--unfreeze-epoch", "2", "--teacher", teacher, "--transfer-copies", "1", "--device", "cpu"]) == 0
    summary = json.loads((student / "summary.json").read_text())
    assert summary["teacher"]["model"] == "tfidf"
    assert summary["auc"] > 0.8, summary["auc"]  # random weights: about 0.5; the demo's label noise caps it near 0.92
    # The teacher's folds were matched, not assumed: a student on other folds or another seed is refused.
    for other in (["--folds", "2"], ["--folds", "3", "--seed", "1"]):
        assert main(["tweets", "train", "--data", demo_tweets, "--out", tmp_path / "refused", "--teacher", teacher,
                     "--epochs", "1", *other]) == 2
    other_tweets = demo.make_tweets_dataset(tmp_path / "other", n_train=300, n_test=2)
    assert main(["tweets", "train", "--data", other_tweets, "--out", tmp_path / "refused", "--teacher", teacher,
                 "--folds", "3", "--epochs", "1"]) == 2  # a teacher of other tweets
    assert main(["tweets", "train", "--data", demo_tweets, "--out", tmp_path / "refused", "--model", "tfidf",
                 "--teacher", teacher]) == 2  # only the RNNs learn from a teacher


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
    # A teacher that trained on the student's validation patches is refused.
    assert main(["histo", "train", "--out", tmp_path / "refused", "--teacher", teacher, "--epochs", "1",
                 "--seed", "1", *common]) == 2
