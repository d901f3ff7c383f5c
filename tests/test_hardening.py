"""Careless use: training into a folder that holds a run, and optional parts that are not installed."""
import sys

import pytest

from spotter.cli import main


def test_a_finished_run_is_never_overwritten_without_a_word(real_histo, tmp_path, capsys):
    run = tmp_path / "cnn"
    base = ["histo", "train", "--data", real_histo, "--out", run, "--model", "seed", "--batch-size", "32",
            "--device", "cpu", "--precision", "fp32"]
    assert main([*base, "--epochs", "2"]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert main([*base, "--epochs", "1"]) == 2
    err = capsys.readouterr().err
    assert "holds a run already" in err and "--resume" in err and "--overwrite" in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing touched
    assert main([*base, "--epochs", "1", "--overwrite"]) == 0
    assert len((run / "metrics.csv").read_text().splitlines()) == 2  # the header and the one new epoch

    assert main(["histo", "ensemble", run, run, "--out", tmp_path / "ens", "--device", "cpu"]) == 0
    assert main(["histo", "ensemble", run, run, "--out", tmp_path / "ens", "--device", "cpu"]) == 2
    assert "holds a run already" in capsys.readouterr().err
    assert main(["histo", "ensemble", run, run, "--out", tmp_path / "ens", "--device", "cpu", "--overwrite"]) == 0


def test_a_finished_tweets_run_is_never_overwritten_without_a_word(tmp_path, capsys):
    from conftest import tweets_slice

    data = tweets_slice(tmp_path / "data", 200)
    base = ["tweets", "train", "--data", data, "--out", tmp_path / "run", "--model", "tfidf", "--folds", "2"]
    assert main(base) == 0
    summary = (tmp_path / "run" / "summary.json").read_bytes()
    assert main(base) == 2
    assert "holds a run already" in capsys.readouterr().err
    assert (tmp_path / "run" / "summary.json").read_bytes() == summary
    assert main([*base, "--resume"]) == 0 and main([*base, "--overwrite"]) == 0


@pytest.mark.parametrize("module,argv,extra", [
    ("onnxscript", ["histo", "export", "RUN", "--format", "onnx", "--out", "OUT/m.onnx"], "export"),
    ("fastapi", ["serve", "RUN"], "serve"),
])
def test_a_missing_extra_names_the_install_that_brings_it(module, argv, extra, real_histo, tmp_path, capsys,
                                                            monkeypatch):
    run = tmp_path / "cnn"
    assert main(["histo", "train", "--data", real_histo, "--out", run, "--model", "seed", "--epochs", "1",
                 "--device", "cpu"]) == 0
    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import now fails, as when the package is not installed
    if module == "fastapi":
        for name in [m for m in sys.modules if m.startswith("spotter.serve")]:
            monkeypatch.delitem(sys.modules, name)
    capsys.readouterr()
    assert main([str(a).replace("RUN", str(run)).replace("OUT", str(tmp_path)) for a in argv]) == 2
    err = capsys.readouterr().err
    assert f"pip install 'spotter[{extra}]'" in err and "Traceback" not in err
