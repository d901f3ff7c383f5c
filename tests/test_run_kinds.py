"""Every run kind through every command: a plain run, an ensemble, an ensemble of ensembles and a TTA-calibrated
ensemble, each opened by spotter.runs and scored by its task's one predictor, agree with `predict` wherever they
are used (evaluate, whole slides, exports, the server, the errors report). Run folders written before the
current layout (tests/data/legacy_runs, made by the previous release) still open and predict exactly as then."""
import json
import shutil
from pathlib import Path

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from conftest import HISTO, TWEETS, histo_slice, require, tweets_slice
from spotter import runs
from spotter.cli import main
from spotter import mosaic
from spotter.histo.predictor import load_run as load_histo
from spotter.serve.app import create_app
from spotter.tweets.predictor import load_run as load_tweets

LEGACY = Path(__file__).parent / "data" / "legacy_runs"


@pytest.fixture(scope="module")
def histo_kinds(tmp_path_factory):
    """Two cheap runs on one split, their ensemble, an ensemble of that ensemble and a run, and a TTA ensemble."""
    root = tmp_path_factory.mktemp("kinds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPOTTER_CACHE", str(root / "cache"))
        data = histo_slice(root / "data", 200, seed=3, n_test=29)
        for name, lr in (("a", "2e-3"), ("b", "1e-3")):
            assert main(["histo", "train", "--data", data, "--out", root / name, "--model", "seed", "--epochs", "2",
                         "--lr", lr, "--precision", "fp32", "--device", "cpu", "--val-fraction", "0.2"]) == 0
        assert main(["histo", "ensemble", root / "a", root / "b", "--out", root / "ens", "--device", "cpu"]) == 0
        assert main(["histo", "ensemble", root / "ens", root / "a", "--out", root / "ens2", "--device", "cpu"]) == 0
        assert main(["histo", "ensemble", root / "a", root / "b", "--out", root / "ens-tta", "--tta",
                     "--device", "cpu"]) == 0
    return root, data


KINDS = [("a", "run", False), ("ens", "ensemble", False), ("ens2", "ensemble", False), ("ens-tta", "ensemble", True)]


@pytest.mark.parametrize("name,kind,tta", KINDS)
def test_histo_run_kinds_agree_with_predict_everywhere(histo_kinds, name, kind, tta, tmp_path, monkeypatch):
    root, data = histo_kinds
    monkeypatch.setenv("SPOTTER_CACHE", str(root / "cache"))
    run = runs.open_run(root / name)
    assert (run.task, run.kind) == ("histo", kind) and run.runs()[0].settings["model"] == "seed"
    assert set(run.validation_ids()) == set(runs.open_run(root / "a").validation_ids())
    flag = ["--tta"] if tta else []
    assert main(["histo", "predict", root / name, "--images", data / "test", "--out", tmp_path / "p.csv",
                 "--device", "cpu", *flag]) == 0
    submission = pd.read_csv(tmp_path / "p.csv")
    ids = submission["id"].tolist()
    pixels = mosaic.read_patches(data / "test", ids)
    predictor = load_histo(root / name, "cpu")
    np.testing.assert_allclose(predictor.predict_proba(pixels, tta), submission["label"], atol=1e-6)

    # evaluate, and the errors report on the same validation split, give the same AUC
    assert main(["histo", "evaluate", root / name, "--device", "cpu", *flag]) == 0
    auc = json.loads((root / name / f"evaluation{'_tta' if tta else ''}.json").read_text())["auc"]
    assert main(["histo", "errors", root / name, "--out", tmp_path / "errors", "--device", "cpu", *flag]) == 0
    assert json.loads((tmp_path / "errors" / "report.json").read_text())["auc"] == pytest.approx(auc, abs=1e-9)

    # a whole slide: the test patches laid out on the stride-96 grid score exactly as predict scores them
    image = mosaic.mosaic_image(pixels[:25], 5, 5, 192)
    mosaic.write_mosaic(tmp_path / "slide.tif", image)
    assert main(["histo", "slide", root / name, "--image", tmp_path / "slide.tif", "--out", tmp_path / "slide",
                 "--stride", "96", "--workers", "0", "--device", "cpu", *flag]) == 0
    heat = np.load(tmp_path / "slide" / "heatmap.npy").astype(np.float64)[2:7, 2:7].ravel()
    on = ~np.isnan(heat)
    assert on.sum() >= 20
    np.testing.assert_allclose(heat[on], submission["label"].to_numpy()[:25][on], atol=1e-3)  # float16 map

    if not tta:  # exports compute the plain predictions, in fp32
        fp32 = load_histo(root / name, "cpu", precision="fp32").predict_proba(pixels)
        x = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
        for fmt in ("torchscript", "onnx"):
            out = tmp_path / f"model.{fmt}"
            assert main(["histo", "export", root / name, "--format", fmt, "--out", out]) == 0
            if fmt == "torchscript":
                logits = torch.jit.load(str(out))(x).detach().numpy()[:, 0]
            else:
                session = onnxruntime.InferenceSession(str(out))
                logits = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0][:, 0]
            assert np.abs(1 / (1 + np.exp(-logits.astype(np.float64))) - fp32).max() < 1e-5

    # the server answers as predict does; a TTA mismatch is a clear 422, not a 500
    with TestClient(create_app([root / name], device="cpu", log=lambda *_: None)) as client:
        files = [("files", (f"{i}.tif", (data / "test" / f"{i}.tif").read_bytes(), "image/tiff")) for i in ids[:8]]
        answer = client.post(f"/api/histo/{name}/predict", files=files, data={"tta": str(tta).lower()})
        assert answer.status_code == 200, answer.text
        got = [r["probability"] for r in answer.json()["results"]]
        np.testing.assert_allclose(got, submission["label"][:8], atol=1e-6)
        if tta:
            wrong = client.post(f"/api/histo/{name}/predict", files=files, data={"tta": "false"})
            assert wrong.status_code == 422 and "--tta" in wrong.json()["detail"]


def test_a_tta_mismatch_is_refused_up_front_by_every_command(histo_kinds, tmp_path, capsys):
    root, data = histo_kinds
    image = mosaic.mosaic_image(mosaic.read_patches(data / "test", [p.stem for p in (data / "test").glob("*.tif")][:4]),
                                2, 2, 192)
    mosaic.write_mosaic(tmp_path / "slide.tif", image)
    for argv in (["histo", "predict", root / "ens-tta", "--images", data / "test", "--out", tmp_path / "p.csv"],
                 ["histo", "evaluate", root / "ens-tta"],
                 ["histo", "slide", root / "ens-tta", "--image", tmp_path / "slide.tif", "--out", tmp_path / "s"]):
        assert main([*argv, "--device", "cpu"]) == 2
        assert "calibrated on predictions with 8x TTA" in capsys.readouterr().err
    assert not (tmp_path / "s" / "slide.json").exists() and not (tmp_path / "p.csv").exists()


@pytest.fixture(scope="module")
def tweets_kinds(tmp_path_factory):
    root = tmp_path_factory.mktemp("tweet-kinds")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SPOTTER_CACHE", str(root / "cache"))
        data = tweets_slice(root / "data", 500, seed=2)
        for name, c in (("tfidf", "tfidf"), ("gru", "seed-gru")):
            assert main(["tweets", "train", "--data", data, "--out", root / name, "--model", c, "--folds", "2",
                         "--epochs", "2", "--device", "cpu", "--precision", "fp32"]) == 0
        assert main(["tweets", "ensemble", root / "tfidf", root / "gru", "--out", root / "ens"]) == 0
        assert main(["tweets", "ensemble", root / "ens", root / "tfidf", "--out", root / "ens2"]) == 0
    return root, data


@pytest.mark.parametrize("name,kind", [("tfidf", "run"), ("ens", "ensemble"), ("ens2", "ensemble")])
def test_tweets_run_kinds_agree_with_predict_everywhere(tweets_kinds, name, kind, tmp_path):
    root, data = tweets_kinds
    run = runs.open_run(root / name)
    assert (run.task, run.kind) == ("tweets", kind)
    folds = run.folds()
    assert sorted(folds["fold"].unique()) == [0, 1] and folds["id"].is_unique
    assert main(["tweets", "predict", root / name, "--csv", data / "test.csv", "--out", tmp_path / "p.csv",
                 "--proba", "--device", "cpu"]) == 0
    submission = pd.read_csv(tmp_path / "p.csv")
    test = pd.read_csv(data / "test.csv")
    predictor = load_tweets(root / name, "cpu")
    probs = predictor.predict_proba(test["text"].tolist(), test["keyword"].fillna("").tolist())
    np.testing.assert_allclose(probs, submission["proba"], atol=1e-6)
    assert (submission["target"] == (probs >= run.threshold)).all()
    assert main(["tweets", "errors", root / name, "--out", tmp_path / "errors", "--device", "cpu"]) == 0
    with TestClient(create_app([root / name], device="cpu", log=lambda *_: None)) as client:
        texts, keywords = test["text"].tolist()[:10], test["keyword"].fillna("").tolist()[:10]
        answer = client.post(f"/api/tweets/{name}/predict", json={"texts": texts, "keywords": keywords})
        assert answer.status_code == 200, answer.text
        np.testing.assert_allclose([r["probability"] for r in answer.json()["results"]], probs[:10], atol=1e-6)


@pytest.mark.parametrize("name", ["ens", "ens2"])
def test_a_tweets_ensemble_also_scores_f1_at_thresholds_its_scored_fold_did_not_choose(tweets_kinds, name):
    from spotter.metrics import best_f1_threshold, f1_score

    root, _ = tweets_kinds
    validation = json.loads((root / name / "summary.json").read_text())["validation"]
    oof = pd.read_csv(root / name / "validation_predictions.csv", dtype={"id": str}).merge(
        runs.open_run(root / name).folds(), on="id")
    decisions = np.zeros(len(oof), bool)
    for k in (0, 1):  # fold k cut at the best threshold of the other fold
        other = oof[oof["fold"] != k]
        cut, _ = best_f1_threshold(other["target"].to_numpy(), other["prob"].to_numpy())
        decisions[oof["fold"] == k] = oof["prob"][oof["fold"] == k] >= cut
    assert validation["f1_cross_fitted"] == pytest.approx(f1_score(oof["target"].to_numpy(), decisions))
    low, high = validation["f1_cross_fitted_ci95"]
    assert low <= validation["f1_cross_fitted"] <= high


def test_a_tweets_run_records_its_folds_and_a_teacher_is_matched_by_them(tweets_kinds, tmp_path):
    """The student's folds are found in the teacher's folds.csv (no re-derivation), and a student trained on other
    folds is refused with the reason."""
    root, data = tweets_kinds
    assert main(["tweets", "train", "--data", data, "--out", tmp_path / "student", "--model", "seed-gru", "--folds",
                 "2", "--epochs", "1", "--teacher", root / "tfidf", "--device", "cpu"]) == 0
    pd.testing.assert_frame_equal(runs.open_run(tmp_path / "student").folds(), runs.open_run(root / "tfidf").folds())
    assert main(["tweets", "train", "--data", data, "--out", tmp_path / "other", "--model", "seed-gru", "--folds",
                 "2", "--seed", "7", "--epochs", "1", "--teacher", root / "tfidf", "--device", "cpu"]) == 2


@pytest.mark.parametrize("name", ["histo-seed", "tweets-seedgru"])
def test_runs_in_the_previous_layout_open_and_predict_as_they_did(name, tmp_path):
    """histo-seed: settings.json + val_ids.txt and no summary; tweets-seedgru: run.json, no folds.csv."""
    require(HISTO)
    require(TWEETS)
    run = runs.open_run(LEGACY / name)
    expected = pd.read_csv(LEGACY / name / "expected_predict.csv")
    out = tmp_path / "p.csv"
    if name == "histo-seed":
        assert run.task == "histo" and run.settings["model"] == "seed" and len(run.validation_ids()) == 12
        assert main(["histo", "predict", LEGACY / name, "--images", HISTO / "test", "--out", out, "--device",
                     "cpu"]) == 0
    else:
        assert run.task == "tweets" and run.settings["model"] == "seed-gru" and not (LEGACY / name / "folds.csv").exists()
        csv = tmp_path / "test.csv"
        pd.read_csv(TWEETS / "test.csv").head(20).to_csv(csv, index=False)
        assert main(["tweets", "predict", LEGACY / name, "--csv", csv, "--out", out, "--proba", "--device",
                     "cpu"]) == 0
    assert out.read_bytes() == (LEGACY / name / "expected_predict.csv").read_bytes(), expected.head()


def test_a_folder_that_is_no_run_is_refused_with_the_reason(tmp_path, histo_kinds):
    root, _ = histo_kinds
    (tmp_path / "empty").mkdir()
    with pytest.raises(runs.RunError, match="not a finished Spotter run"):
        runs.open_run(tmp_path / "empty")
    with pytest.raises(runs.RunError, match="this is a histo run, not a tweets one"):
        runs.open_run(root / "a", "tweets")
    copy = tmp_path / "copy"
    shutil.copytree(root / "a", copy)
    (copy / "folds.csv").unlink()
    with pytest.raises(runs.RunError, match="no folds.csv"):
        runs.open_run(copy).folds()
