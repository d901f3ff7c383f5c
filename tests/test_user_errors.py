"""Silent paths made loud: user mistakes are one-line errors of their own type; bugs keep their traceback."""
from pathlib import Path

import numpy as np
import pytest
import torch

from spotter import demo, runs
from spotter.cli import main
from spotter.errors import BadInput, UserError
from spotter.histo import task as histo
from spotter.histo.data import DataError
from spotter.histo.models import create_model


def test_a_bug_shows_its_traceback_not_a_one_line_error(monkeypatch, tmp_path):
    def broken(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(histo, "evaluate", broken)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["histo", "evaluate", tmp_path])


def test_user_mistakes_are_one_line_errors(tmp_path, capsys):
    assert main(["histo", "train", "--data", tmp_path, "--out", tmp_path / "r", "--epochs", "0"]) == 2
    assert "epochs must be at least 1" in capsys.readouterr().err
    with pytest.raises(UserError):
        histo.HistoSettings(model="seed", crop=80)


def test_validation_ids_must_all_be_found(tmp_path):
    data = demo.make_histo_dataset(tmp_path / "data", n_train=12, n_test=1)
    settings = histo.HistoSettings(data=str(data))
    ids = (data / "train_labels.csv").read_text().split()[1:4]
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "val_ids.txt").write_text("\n".join(i.split(",")[0] for i in ids) + "\n")
    _, rows = histo.validation_rows(runs.Run(tmp_path / "run", "histo"), settings)
    assert len(rows) == 3
    (tmp_path / "run" / "val_ids.txt").write_text("\n".join([*(i.split(",")[0] for i in ids), "gone"]) + "\n")
    with pytest.raises(DataError, match="1 of the 4 validation ids.*e.g. gone"):
        histo.validation_rows(runs.Run(tmp_path / "run", "histo"), settings)


def test_relative_data_paths_are_stored_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert histo.HistoSettings(data="hcd").data == str(tmp_path / "hcd")


def test_an_ensemble_refuses_predictions_made_unlike_its_calibration():
    settings = histo.HistoSettings(model="seed")
    member = histo.HistoPredictor(runs.Run(Path("a"), "histo"), settings, device=torch.device("cpu"),
                                  model=create_model("seed", pretrained=False).eval())
    spec = {"members": ["a", "a"], "calibration": [(1.0, 0.0)] * 2, "tta": True}
    both = histo.HistoPredictor(runs.Run(Path("e"), "histo", spec=spec), settings, members=[member, member])
    images = np.zeros((2, 96, 96, 3), np.uint8)
    assert both.predict_proba(images, tta=True).shape == (2,)
    with pytest.raises(BadInput, match="calibrated on predictions with 8x TTA; predict with --tta"):
        both.predict_proba(images, tta=False)
