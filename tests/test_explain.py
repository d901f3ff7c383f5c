"""Explanations with known answers: Grad-CAM on pasted tumour, exact TF-IDF contributions, integrated gradients."""
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

import serve_runs
from spotter import explain, runs
from spotter.histo.task import load_run as load_histo_run
from spotter.tweets import attributions, tfidf
from spotter.tweets.task import load_run as load_tweets_run
from spotter.tweets.text import NormaliseOptions, normalise, tokenize


@pytest.fixture(scope="session")
def histo(tmp_path_factory):
    serve_runs.need_shared_data()
    run = serve_runs.histo_run(tmp_path_factory)
    data = serve_runs.histo_data(tmp_path_factory)
    labels = pd.read_csv(data / "train_labels.csv", dtype={"id": str}).set_index("id")["label"]
    val_ids = runs.open_run(run).validation_ids().tolist()
    pixels = np.stack([np.asarray(Image.open(data / "train" / f"{i}.tif")) for i in val_ids])
    predictor = load_histo_run(run, "cpu")
    return predictor, pixels, labels[val_ids].to_numpy(), predictor.predict_proba(pixels)


def test_grad_cam_finds_pasted_tumour_and_stays_quiet_on_normal_tissue(histo):
    predictor, pixels, labels, probs = histo
    tumours = np.flatnonzero(labels == 1)[np.argsort(-probs[labels == 1])][:5]
    normals = np.flatnonzero(labels == 0)[np.argsort(probs[labels == 0])][:5]
    assert probs[tumours].min() > 0.9 and probs[normals].max() < 0.1  # the model has learned something

    # Confident normal patches: near zero on the absolute scale.
    normal_maps = predictor.grad_cam(pixels[normals])
    assert normal_maps.mean() < 0.2, normal_maps.mean(axis=(1, 2))  # logits: 2.5 % of the colour scale

    # The centre 48x48 of a confident tumour patch pasted into a confident normal one.
    a, b = 24, 72
    composites = pixels[normals].copy()
    composites[:, a:b, a:b] = pixels[tumours][:, a:b, a:b]
    maps = predictor.grad_cam(composites)
    inside = maps[:, a:b, a:b].sum((1, 2)) / maps.sum((1, 2))
    # The square is 36 % of the 80x80 crop the model sees; a map that ignored it would put about that there.
    assert (inside > 0.5).all(), inside
    assert (predictor.predict_proba(composites) > probs[normals]).all()  # pasted tumour raises the probability
    assert maps.mean() > 5 * normal_maps.mean()


def test_grad_cam_units_are_logits_for_a_pooled_head(histo):
    """For a global-average-pooled linear head, the map's mean is the logit less the bias, exactly."""
    predictor, pixels, _, _ = histo
    x = next(predictor._batches(pixels[:8]))[0]
    maps, logits = explain.grad_cam(predictor.model, x)
    layer_out = predictor.model.stages(predictor.model.stem(x.float()))
    raw = torch.einsum("c,nchw->nhw", predictor.model.head[-1].weight[0], layer_out).detach()
    torch.testing.assert_close(maps, raw.relu())
    torch.testing.assert_close(raw.mean((1, 2)) + predictor.model.head[-1].bias, logits, atol=1e-4, rtol=1e-4)


def test_overlay_png_marks_the_centre(histo):
    predictor, pixels, _, probs = histo
    png = explain.overlay_png(pixels[0], predictor.grad_cam(pixels[:1])[0], float(probs[0]))
    import io
    image = np.asarray(Image.open(io.BytesIO(png)))
    assert image.shape == (288, 288, 3)
    assert tuple(image[96, 150]) == (0, 230, 255)  # the cyan outline of the centre 32x32 (x3)


def test_align_to_words():
    pieces = ["forest", "fire", "near", "user", "http", "number"]
    scores = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    words = explain.align_to_words("Forest fire near @bob http://t.co/x 2015", pieces, scores,
                                   lambda w: tokenize(normalise(w, NormaliseOptions())))
    assert [(w["text"], w["attribution"]) for w in words] == [
        ("Forest", 1), ("fire", 2), ("near", 3), ("@bob", 4), ("http://t.co/x", 5), ("2015", 6)]
    # a piece no word claims goes to the word before it; the total is kept
    words = explain.align_to_words("a b", ["a", "zz", "b"], np.array([1.0, 2.0, 4.0]), lambda w: [w])
    assert [w["attribution"] for w in words] == [3, 4]


@pytest.fixture(scope="session")
def tfidf_run(tmp_path_factory):
    serve_runs.need_shared_data()
    run = serve_runs.tweets_run(tmp_path_factory, "tfidf")
    return load_tweets_run(run, "cpu"), [tfidf.load_fold(run / f"fold{k}") for k in range(2)]


def test_tfidf_contributions_are_exact(tfidf_run, tmp_path_factory):
    test = pd.read_csv(serve_runs.tweets_data(tmp_path_factory) / "test.csv", keep_default_na=False).head(20)
    tfidf_run, folds = tfidf_run
    fold = folds[0]
    for text, keyword in zip(test["text"], test["keyword"]):
        from spotter.tweets.text import keyword_text
        e = tfidf.contributions(fold, text, keyword_text(keyword), NormaliseOptions())
        total = sum(w["attribution"] for w in e["words"]) + (e["keyword"] or 0)
        assert total == pytest.approx(e["logit"] - e["baseline_logit"], abs=1e-9)
        assert [w["text"] for w in e["words"]] == text.split()
    # the logit is the model's own
    probs = tfidf_run.predict_proba(test["text"].tolist(), test["keyword"].tolist())
    logits = [np.mean([tfidf.contributions(f, t, keyword_text(k), NormaliseOptions())["logit"]
                       for f in folds]) for t, k in zip(test["text"], test["keyword"])]
    fold_probs = [np.mean([1 / (1 + np.exp(-tfidf.contributions(f, t, keyword_text(k), NormaliseOptions())["logit"]))
                           for f in folds]) for t, k in zip(test["text"], test["keyword"])]
    np.testing.assert_allclose(fold_probs, probs, atol=1e-9)
    assert np.corrcoef(logits, probs)[0, 1] > 0.9


def test_minilm_integrated_gradients_are_complete_and_on_the_words():
    pytest.importorskip("transformers")
    from spotter.tweets import minilm
    torch.manual_seed(0)
    model = minilm.TransformerClassifier(minilm.load_encoder()).eval()
    tokenizer = minilm.load_tokenizer()
    text = "Forest fire near La Ronge Sask. Canada #wildfire http://t.co/abc"
    e = attributions.minilm_attributions(model, tokenizer, text, "wildfire", NormaliseOptions(), steps=64)
    assert [w["text"] for w in e["words"]] == text.split()
    total = sum(w["attribution"] for w in e["words"]) + e["keyword"]
    assert total == pytest.approx(e["logit"] - e["baseline_logit"], abs=0.05 * abs(e["logit"] - e["baseline_logit"]) + 0.01)
    assert not any(w["attribution"] == 0 for w in e["words"][:7])  # every word got a share


def test_histo_explain_command(tmp_path_factory, tmp_path):
    serve_runs.need_shared_data()
    from spotter.cli import main
    run, test_dir = serve_runs.histo_run(tmp_path_factory), serve_runs.histo_data(tmp_path_factory) / "test"
    assert main(["histo", "explain", run, "--images", test_dir, "--out", tmp_path / "cams", "--device", "cpu"]) == 0
    table = pd.read_csv(tmp_path / "cams" / "explanations.csv", dtype={"id": str})
    assert sorted(table["id"]) == sorted(p.stem for p in test_dir.glob("*.tif"))
    assert table["probability"].between(0, 1).all() and (table["max_logit"] >= 0).all()
    assert Image.open(tmp_path / "cams" / f"{table['id'][0]}.png").size == (288, 288)
    assert main(["histo", "explain", run, "--images", tmp_path / "nothing", "--out", tmp_path / "x"]) == 2
