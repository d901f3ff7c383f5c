"""The fixed hold-out (issue 31): stratified, the same patches whatever the folder's order or other rows, and a
run scored on it with `histo evaluate --out` keeps its own validation score."""
import json

import pandas as pd

import serve_runs
from spotter.cli import main
from spotter.histo.holdout import holdout_mask, split_folder


def test_the_holdout_is_stratified_and_stable():
    labels = pd.DataFrame({"id": [f"patch{i:04d}" for i in range(1000)], "label": [i % 5 == 0 for i in range(1000)]})
    held = holdout_mask(labels)
    assert held.sum() == 150 and labels.label[held].sum() == 30  # 15 % of each label
    shuffled = labels.sample(frac=1, random_state=1)
    assert set(shuffled.id[holdout_mask(shuffled)]) == set(labels.id[held])
    # rows added to the folder do not move a held-out patch into training (within its label, ids hashing lower
    # may enter; none leaves unless displaced by one)
    grown = pd.concat([labels, pd.DataFrame({"id": [f"new{i}" for i in range(10)], "label": [False] * 10})])
    assert len(set(labels.id[held]) - set(grown.id[holdout_mask(grown)])) <= 10


def test_split_folder_links_disjoint_kaggle_folders(tmp_path, tmp_path_factory):
    data = serve_runs.histo_data(tmp_path_factory)
    develop, holdout = split_folder(data, tmp_path / "split")
    dev, held = (pd.read_csv(f / "train_labels.csv", dtype={"id": str}) for f in (develop, holdout))
    assert not set(dev.id) & set(held.id) and len(dev) + len(held) == len(pd.read_csv(data / "train_labels.csv"))
    assert abs(held.label.mean() - dev.label.mean()) < 0.01
    assert sorted(p.stem for p in (holdout / "train").iterdir()) == sorted(held.id)
    assert all(p.is_symlink() for p in (develop / "train").iterdir())
    assert split_folder(data, tmp_path / "split") == (develop, holdout)  # made again: the same, nothing breaks


def test_evaluate_out_keeps_the_runs_own_score(tmp_path, tmp_path_factory):
    run = serve_runs.histo_run(tmp_path_factory)
    _, holdout = split_folder(serve_runs.histo_data(tmp_path_factory), tmp_path / "split")
    own = run / "evaluation.json"
    before = own.read_text() if own.exists() else None
    assert main(["histo", "evaluate", str(run), "--data", str(holdout), "--out", str(tmp_path / "held")]) == 0
    report = json.loads((tmp_path / "held" / "evaluation.json").read_text())
    assert report["images"] == len(pd.read_csv(holdout / "train_labels.csv")) and report["auc"] > 0.75
    assert (tmp_path / "held" / "roc.png").stat().st_size > 0
    assert (own.read_text() if own.exists() else None) == before
