"""`histo train --refit`: the final model of a chosen recipe, trained on every labelled patch with the schedule a
validated run found (or --epochs / --time-budget), its last epoch kept; and every command that takes a run
either works on it or refuses it in one line."""
import json

import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

import conftest
from spotter import demo, engine, mosaic
from spotter.cli import main
from spotter.serve import app as serve_app

# The cheap model of test_cli_histo.py: 160 patches, of which a validated run trains on 120.
TRAIN = ["--model", "resnet", "--epochs", "3", "--batch-size", "32", "--crop", "64", "--device", "cpu",
         "--precision", "fp32"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return conftest.histo_slice(tmp_path_factory.mktemp("refit") / "histo", 160)


@pytest.fixture(scope="module")
def validated(data, tmp_path_factory):
    """A validated run of 3 epochs whose settings say it planned 1000 epochs within 15 minutes with patience 2,
    as a --time-budget run that stopped early saves them: a refit must copy the 3 it trained."""
    run = tmp_path_factory.mktemp("validated") / "run"
    assert main(["histo", "train", "--data", data, "--out", run, *TRAIN, "--val-fraction", "0.25"]) == 0
    saved = json.loads((run / "settings.json").read_text())
    saved["train"].update(epochs=1000, time_budget_min=15.0, patience=2)
    (run / "settings.json").write_text(json.dumps(saved))
    return run


@pytest.fixture(scope="module")
def refitted(data, validated, tmp_path_factory):
    run = tmp_path_factory.mktemp("refitted") / "run"
    assert main(["histo", "train", "--data", data, "--out", run, "--refit", "--config", validated]) == 0
    return run


def one_line_error(capsys, text):
    err = capsys.readouterr().err.strip()
    assert text in err and "\n" not in err, err


def test_refit_trains_every_row_for_the_epochs_the_config_run_trained(refitted, validated):
    saved = json.loads((refitted / "settings.json").read_text())
    assert saved["task"]["histo"]["refit"] and saved["task"]["schedule_from"] == str(validated.resolve())
    assert saved["train"]["epochs"] == 3 and saved["train"]["time_budget_min"] is None
    assert saved["train"]["patience"] is None
    assert (saved["task"]["train_size"], saved["task"]["val_size"]) == (160, 0)
    # every row: 160 // 32 = 5 steps an epoch, where the validated run took 120 // 32 = 3
    last = torch.load(refitted / "last.pt", weights_only=True)
    assert last["scheduler"]["total_steps"] == 3 * 5
    assert torch.load(validated / "last.pt", weights_only=True)["scheduler"]["total_steps"] == 3 * 3
    summary = json.loads((refitted / "summary.json").read_text())
    assert summary["refit"] and summary["schedule_from"] == str(validated.resolve()) and summary["epoch"] == 3
    assert "best_epoch" not in summary and not any(k.startswith("val_") for k in summary)


def test_refit_ships_the_last_epoch_with_training_metrics_only(refitted):
    metrics = pd.read_csv(refitted / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3] and metrics["train_loss"].notna().all()
    assert "train_auc" in metrics and not [c for c in metrics if c.startswith("val_")]
    best, last = (torch.load(refitted / name, weights_only=True) for name in ("best.pt", "last.pt"))
    assert best["state"]["epoch"] == last["state"]["epoch"] == 3
    for key in last["model"]:
        torch.testing.assert_close(best["model"][key], last["model"][key], rtol=0, atol=0, msg=key)
    assert (refitted / "history.png").exists() and not (refitted / "folds.csv").exists()


def test_commands_that_need_no_validation_work_on_a_refit_run(refitted, data, tmp_path):
    assert main(["histo", "evaluate", refitted, "--data", data, "--device", "cpu"]) == 0
    report = json.loads((refitted / "evaluation.json").read_text())
    assert report["images"] == 160 and 0 <= report["auc"] <= 1

    out = tmp_path / "submission.csv"
    assert main(["histo", "predict", refitted, "--images", data / "test", "--out", out, "--device", "cpu"]) == 0
    assert len(pd.read_csv(out)) == 5

    patches = mosaic.read_patches(data / "train", sorted(p.stem for p in (data / "train").iterdir())[:9])
    Image.fromarray(mosaic.mosaic_image(patches, 3, 3, 96)).save(tmp_path / "slide.png")
    assert main(["histo", "slide", refitted, "--image", tmp_path / "slide.png", "--out", tmp_path / "slide",
                 "--mpp", "0.972", "--stride", "96", "--workers", "0", "--device", "cpu"]) == 0
    assert (tmp_path / "slide" / "slide.json").exists()

    assert main(["histo", "explain", refitted, "--images", data / "test", "--out", tmp_path / "cams",
                 "--device", "cpu"]) == 0
    assert len(pd.read_csv(tmp_path / "cams" / "explanations.csv")) == 5
    assert main(["histo", "errors", refitted, "--data", data, "--out", tmp_path / "errors", "--no-grad-cam",
                 "--device", "cpu"]) == 0

    assert main(["histo", "export", refitted, "--format", "torchscript", "--out", tmp_path / "model.pt"]) == 0
    assert (tmp_path / "model.pt").exists()

    with TestClient(serve_app.create_app([refitted], device="cpu", log=lambda message: None)) as client:
        model = client.get("/api/models").json()["models"][0]
    assert model["settings"]["refit"] and model["validation"] == {}


def test_commands_that_need_a_validation_split_refuse_a_refit_run(refitted, validated, data, tmp_path, capsys):
    assert main(["histo", "evaluate", refitted, "--device", "cpu"]) == 2
    one_line_error(capsys, "a refit run has no validation split; give --data")
    assert main(["histo", "errors", refitted, "--out", tmp_path / "errors", "--device", "cpu"]) == 2
    one_line_error(capsys, "a refit run has no validation split; give --data")
    assert main(["histo", "ensemble", validated, refitted, "--out", tmp_path / "ens", "--device", "cpu"]) == 2
    one_line_error(capsys, "a refit run has no validation split to calibrate an ensemble on")
    # a refit teacher saw the student's validation patches
    assert main(["histo", "train", "--data", data, "--out", tmp_path / "student", *TRAIN, "--val-fraction", "0.25",
                 "--teacher", refitted]) == 2
    one_line_error(capsys, "a refit teacher trained on every patch")


def test_a_schedule_given_on_the_command_line_wins_over_the_config_run(data, validated, tmp_path):
    """--epochs beside --config: that many epochs, and neither the run's epochs nor its time budget (with --ema
    the model shipped is the weight average); --time-budget alone: planned over every patch."""
    run = tmp_path / "epochs"
    assert main(["histo", "train", "--data", data, "--out", run, "--refit", "--config", validated, "--epochs", "1",
                 "--ema", "0.9"]) == 0
    saved = json.loads((run / "settings.json").read_text())
    assert saved["train"]["epochs"] == 1 and saved["train"]["time_budget_min"] is None
    assert saved["task"]["schedule_from"] is None and list(pd.read_csv(run / "metrics.csv")["epoch"]) == [1]
    best = torch.load(run / "best.pt", weights_only=True)
    assert any(not torch.equal(best["model"][k], best["trained_model"][k]) for k in best["model"])  # the average
    run = tmp_path / "budget"
    assert main(["histo", "train", "--data", data, "--out", run, "--refit", *TRAIN, "--time-budget", "0.05"]) == 0
    saved = json.loads((run / "settings.json").read_text())
    assert saved["train"]["time_budget_min"] == 0.05 and saved["task"]["train_size"] == 160
    assert len(pd.read_csv(run / "metrics.csv")) >= 1


def test_refit_without_a_schedule_or_with_patience_is_refused(data, tmp_path, capsys):
    assert main(["histo", "train", "--data", data, "--out", tmp_path / "a", "--model", "resnet", "--refit"]) == 2
    one_line_error(capsys, "--refit needs a schedule: --config RUN")
    assert main(["histo", "train", "--data", data, "--out", tmp_path / "b", *TRAIN, "--refit", "--patience", "2"]) == 2
    one_line_error(capsys, "--patience stops on a validation score")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_refit_run_resumes_to_the_same_weights(refitted, validated, data, tmp_path, monkeypatch):
    """Interrupted in its second epoch, then resumed: the same weights and metrics as the uninterrupted run."""
    real_step, steps = engine.train_step, []

    def interrupted_step(*args, **kwargs):
        steps.append(1)
        if len(steps) == 5 + 2:  # the second step of epoch 2
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    run = tmp_path / "run"
    monkeypatch.setattr(engine, "train_step", interrupted_step)
    assert main(["histo", "train", "--data", data, "--out", run, "--refit", "--config", validated]) == 130
    monkeypatch.setattr(engine, "train_step", real_step)
    assert torch.load(run / "last.pt", weights_only=True)["state"]["epoch"] == 1
    assert main(["histo", "train", "--data", data, "--out", run, "--resume", "--device", "cpu"]) == 0
    assert json.loads((run / "settings.json").read_text())["task"]["schedule_from"] == str(validated.resolve())
    a, b = (torch.load(r / "last.pt", weights_only=True)["model"] for r in (refitted, run))
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    pd.testing.assert_frame_equal(pd.read_csv(refitted / "metrics.csv").drop(columns=["seconds", "per_s"]),
                                  pd.read_csv(run / "metrics.csv").drop(columns=["seconds", "per_s"]))


def test_a_refit_run_learns(tmp_path):
    """On the demo data (a model that learns scores near 1, random weights about 0.5), a refit from --epochs
    scores above 0.9 AUC on patches it never saw."""
    train = demo.make_histo_dataset(tmp_path / "train", n_train=240, n_test=1, seed=0)
    unseen = demo.make_histo_dataset(tmp_path / "unseen", n_train=80, n_test=1, seed=1)
    run = tmp_path / "run"
    assert main(["histo", "train", "--data", train, "--out", run, "--refit", *TRAIN, "--epochs", "4"]) == 0
    assert main(["histo", "evaluate", run, "--data", unseen, "--device", "cpu"]) == 0
    auc = json.loads((run / "evaluation.json").read_text())["auc"]
    assert auc > 0.9, f"refit AUC {auc:.3f} on unseen demo patches"
    assert json.loads((run / "settings.json").read_text())["train"]["epochs"] == 4
