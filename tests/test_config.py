"""Settings said once: the `train` options are generated from the settings dataclasses, keep their old names
and defaults, and a run's saved settings train the same run again (`--config`)."""
import argparse
import json
from dataclasses import fields

import pandas as pd
import pytest
import torch

from spotter import cli, config, engine
from spotter.cli import main
from spotter.histo.settings import HistoSettings, train_defaults as histo_defaults
from spotter.tweets import adapters, settings as tweet_settings
from spotter.tweets.settings import MODEL_NAMES, TweetSettings

import conftest


def train_parser(task: str) -> argparse.ArgumentParser:
    def commands(parser):
        return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    return commands(commands(cli.build_parser())[task])["train"]


def parse(*argv):
    return cli.build_parser().parse_args(list(map(str, argv)))


def histo_settings(*flags):
    args = parse("histo", "train", "--data", "d", "--out", "o", *flags)
    implied = {"epochs": 1000} if "time_budget_min" in args and "epochs" not in args else {}
    return cli._settings(args, HistoSettings, "histo", histo_defaults, implied)


def tweets_settings(*flags):
    return cli._settings(parse("tweets", "train", "--data", "d", "--out", "o", *flags), TweetSettings, "tweets",
                         lambda model: adapters.MODELS[model].defaults)


@pytest.mark.parametrize("task, classes", [("histo", (HistoSettings, engine.TrainSettings)),
                                           ("tweets", (TweetSettings, engine.TrainSettings))])
def test_every_setting_is_an_option_with_its_dataclass_default(task, classes):
    parser = train_parser(task)
    options = parser._option_string_actions
    for cls in classes:
        for f in fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
            if "steps" in f.metadata:
                for step in fields(f.metadata["steps"]):
                    assert options[f"--no-{step.name}"].dest == f"{f.name}.{step.name}"
            else:
                assert options[config.flag_of(f)].dest == f.name, f.name
        # A flag left out is left out of `args`, so the setting keeps its dataclass default.
        args = parser.parse_args(["--data", "d", "--out", "o", "--model", "seed" if task == "histo" else "blend"])
        built = config.build(cls, config.given(args, cls))
        reference = cls(data="d", model=args.model) if cls is not engine.TrainSettings else cls()
        assert built == reference
        for f in fields(cls):
            # given, or resolved per model in __post_init__
            if f.name not in ("data", "model", "crop", "colour_jitter", "rescan"):
                assert getattr(built, f.name) == config.default_of(f), f.name


def test_old_flags_keep_their_meaning():
    histo, train = histo_settings("--model", "seed", "--no-augment", "--time-budget", "5", "--pack-dir", "p",
                                  "--compile", "--mixup", "0.2", "--teacher", "t", "--soft-weight", "0.3",
                                  "--colour-jitter", "0.05", "--val-fraction", "0.2", "--mpp", "0.5", "--skip-bad",
                                  "--seed", "3", "--device", "cpu", "--precision", "fp32", "--batch-size", "16")
    assert (histo.augment, histo.compile, histo.mixup, histo.soft_weight, histo.colour_jitter) == (
        False, True, 0.2, 0.3, 0.05)
    assert (histo.val_fraction, histo.mpp, histo.skip_bad, histo.crop) == (0.2, 0.5, True, 96)
    assert histo.pack_root.endswith("/p") and histo.teacher.endswith("/t")
    assert (train.time_budget_min, train.epochs, train.seed, train.device, train.precision, train.batch_size) == (
        5.0, 1000, 3, "cpu", "fp32", 16)
    assert train.lr == histo_defaults("seed")["lr"]  # the model's own, not the dataclass's
    assert histo_settings("--model", "seed", "--no-compile")[0].compile is False
    assert histo_settings("--model", "seed", "--time-budget", "5", "--epochs", "7")[1].epochs == 7

    tweets, train = tweets_settings("--model", "tfidf", "--keep-conflicting-duplicates", "--no-keyword", "--no-urls",
                                    "--no-lower", "--folds", "3", "--max-tokens", "64", "--pooling", "cls",
                                    "--unfreeze-epoch", "2", "--transfer-copies", "1", "--lr", "0.5")
    assert (tweets.resolve_duplicates, tweets.keyword, tweets.folds, tweets.max_tokens, tweets.pooling) == (
        False, False, 3, 64, "cls")
    assert (tweets.unfreeze_epoch, tweets.transfer_copies, train.lr) == (2, 1, 0.5)
    assert {step for step, on in tweets.normalise.items() if not on} == {"urls", "lower"}
    assert train.epochs == adapters.MODELS["tfidf"].defaults.get("epochs", engine.TrainSettings.epochs)


def test_model_defaults_apply_unless_a_flag_is_given():
    _, train = histo_settings("--model", "effnet-lite1")
    assert (train.lr, train.batch_size, train.weight_decay, train.ema) == (2e-3, 64, 1e-2, 0.998)
    _, train = histo_settings("--model", "effnet-lite1", "--lr", "1e-4", "--ema", "0")
    assert (train.lr, train.batch_size, train.ema) == (1e-4, 64, 0.0)
    _, train = tweets_settings("--model", "bigru")
    assert train.epochs == adapters.RNN_DEFAULTS["epochs"] and train.patience == adapters.RNN_DEFAULTS["patience"]


def test_tweet_model_names_match_the_registry():
    assert MODEL_NAMES == tuple(adapters.MODELS)


def test_tweets_default_falls_back_to_blend_without_minilm(monkeypatch):
    """The default adds frozen MiniLM embeddings to the blend; without the pretrained extra it is the plain blend,
    and says so."""
    said = []
    assert tweet_settings.default_model(log=said.append) == "blend-minilm" and not said
    monkeypatch.setattr(tweet_settings.extras, "installed", lambda extra, *modules: False)
    assert tweet_settings.default_model(log=said.append) == "blend"
    assert "MiniLM is not installed" in said[0] and "pip install" in said[0]
    settings, train = tweets_settings()
    assert settings.model == "blend" and train.epochs == adapters.RNN_DEFAULTS["epochs"]


def test_data_is_required_without_config(tmp_path, capsys):
    assert main(["histo", "train", "--out", tmp_path / "r"]) == 2
    assert "--data" in capsys.readouterr().err
    assert main(["tweets", "train", "--out", tmp_path / "r", "--config", tmp_path / "none.json"]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_config_reads_every_saved_shape(tmp_path):
    train, tweets = {"epochs": 2}, {"model": "tfidf"}
    shapes = {"run.json": {"tweets": tweets, "train": train},
              "settings.json": {"train": train, "task": {"tweets": tweets}, "device": "cpu"}}
    for name, saved in shapes.items():
        (tmp_path / name).write_text(json.dumps(saved))
        assert config.saved_settings(tmp_path / name, "tweets") == (train, tweets)
    (tmp_path / "h.json").write_text(json.dumps({"train": train, "task": {"histo": {"crop": 64}, "val_size": 4}}))
    assert config.saved_settings(tmp_path / "h.json", "histo") == (train, {"crop": 64})
    with pytest.raises(Exception, match="not the saved settings of a tweets run"):
        config.saved_settings(tmp_path / "h.json", "tweets")


def test_a_tweets_run_saved_before_fold_groups_replays_with_raw_groups(tmp_path):
    """Runs made before `fold_groups` existed grouped their folds by raw text; a replay must too."""
    (tmp_path / "run.json").write_text(json.dumps({"tweets": {"data": str(tmp_path), "model": "tfidf"},
                                                   "train": {"epochs": 2}}))
    args = parse("tweets", "train", "--config", tmp_path / "run.json", "--out", tmp_path / "again")
    tweets, train = cli._settings(args, TweetSettings, "tweets", lambda model: {})
    assert (tweets.fold_groups, tweets.model, train.epochs) == ("raw", "tfidf", 2)


def test_histo_run_replays_from_its_settings(real_histo, tmp_path):
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["histo", "train", "--data", real_histo, "--out", first, "--model", "seed", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu", "--precision", "fp32", "--seed", "4"]) == 0
    assert main(["histo", "train", "--config", first / "settings.json", "--out", again]) == 0
    assert json.loads((again / "settings.json").read_text()) == json.loads((first / "settings.json").read_text())
    scores = ["epoch", "train_loss", "val_loss", "val_auc"]
    metrics = [pd.read_csv(run / "metrics.csv")[scores] for run in (first, again)]
    pd.testing.assert_frame_equal(*metrics)
    assert (again / "folds.csv").read_text() == (first / "folds.csv").read_text()
    weights = [torch.load(run / "best.pt", weights_only=True)["model"] for run in (first, again)]
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])

    # A flag given with --config wins over the saved setting.
    other = tmp_path / "other"
    assert main(["histo", "train", "--config", first, "--out", other, "--lr", "1e-3"]) == 0
    saved = json.loads((other / "settings.json").read_text())
    assert saved["train"]["lr"] == 1e-3 and saved["task"] == json.loads((first / "settings.json").read_text())["task"]


def test_tweets_run_replays_from_its_settings(tmp_path):
    data = conftest.tweets_slice(tmp_path / "tweets", 300)
    first, again = tmp_path / "first", tmp_path / "again"
    assert main(["tweets", "train", "--data", data, "--out", first, "--model", "tfidf", "--folds", "2",
                 "--no-urls", "--device", "cpu", "--precision", "fp32", "--seed", "2"]) == 0
    saved = first / ("settings.json" if (first / "settings.json").exists() else "run.json")
    assert main(["tweets", "train", "--config", saved, "--out", again]) == 0
    assert json.loads((again / saved.name).read_text()) == json.loads(saved.read_text())
    assert (again / "validation_predictions.csv").read_text() == (first / "validation_predictions.csv").read_text()
    summaries = [json.loads((run / "summary.json").read_text()) for run in (first, again)]
    assert [{k: v for k, v in s.items() if "seconds" not in k} for s in summaries] == [
        {k: v for k, v in summaries[0].items() if "seconds" not in k}] * 2
