"""`explore` and `errors` reports on the real Kaggle files and on the demo data: their numbers against
independent computations here, their pictures, their HTML, and a headless-Chromium screenshot of each page
(saved under test-artefacts/reports/, or $SPOTTER_ARTEFACTS)."""
import base64
import hashlib
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from sklearn.metrics import roc_auc_score

import conftest
from spotter import runs
from spotter.cli import main

ARTEFACTS = Path(os.environ.get("SPOTTER_ARTEFACTS", Path(__file__).resolve().parents[1] / "test-artefacts")) / "reports"


# ---------------------------------------------------------------- checks every report gets

class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.external, self.tags = [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "img":
            self.images.append(attrs.get("src", ""))
        for key in ("src", "href"):
            if attrs.get(key) and not attrs[key].startswith("data:"):
                self.external.append(attrs[key])


def check_report(out: Path, pictures: set[str]) -> dict:
    """PNGs valid and of reasonable size, report.html self-contained and embedding exactly those PNGs,
    report.json strict JSON. Returns the numbers. (Each test takes its screenshot last, after every number
    check, so that a missing Chromium can never hide them.)"""
    assert {p.name for p in out.glob("*.png")} == pictures
    for name in pictures:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.width >= 300 and image.height >= 150, name
            assert np.asarray(image.convert("L")).std() > 5, f"{name} is blank"
    page = _Page()
    page.feed((out / "report.html").read_text(encoding="utf-8"))
    assert page.tags[0] == "html" and "script" not in page.tags and "link" not in page.tags
    assert page.external == [], "the page must not load anything"
    embedded = sorted(base64.b64decode(src.split(",", 1)[1]) for src in page.images)
    assert all(src.startswith("data:image/png;base64,") for src in page.images)
    assert embedded == sorted((out / name).read_bytes() for name in pictures)
    return json.loads((out / "report.json").read_text())  # strict: no NaN


def screenshot(page: Path, name: str) -> None:
    """The page as a person sees it, in headless Chromium, cropped below its last content."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        conftest.skip_or_fail("chromium is not installed (apt-get install chromium; .ci/run does)")
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS.parent / ".gitignore").write_text("*\n")
    shot = ARTEFACTS / f"{name}.png"
    shot.unlink(missing_ok=True)
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                    f"--screenshot={shot}", "--window-size=1280,7000", page.resolve().as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    background = pixels[-1, 0]
    used = np.flatnonzero((np.abs(pixels - background).sum(2) > 10).any(1))
    assert len(used) and used[-1] > 500, "the page rendered (almost) nothing"
    Image.fromarray(pixels[:used[-1] + 40].astype(np.uint8)).save(shot)


# ---------------------------------------------------------------- histology

@pytest.fixture(scope="module")
def histo_data(tmp_path_factory):
    """120 real patches, plus two exact copies under new ids: one relabelled (a conflict), one not."""
    root = tmp_path_factory.mktemp("histo")
    data = conftest.histo_slice(root / "data", 120)
    labels = pd.read_csv(data / "train_labels.csv")
    extra = []
    for copy_of, flip in ((labels.iloc[0], True), (labels.iloc[-1], False)):
        new_id = f"copy{len(extra)}"
        (data / "train" / f"{new_id}.tif").symlink_to(os.readlink(data / "train" / f"{copy_of['id']}.tif"))
        extra.append({"id": new_id, "label": 1 - copy_of["label"] if flip else copy_of["label"]})
    pd.concat([labels, pd.DataFrame(extra)]).to_csv(data / "train_labels.csv", index=False)
    return data, root


@pytest.fixture(scope="module")
def histo_run(histo_data):
    data, root = histo_data
    run = root / "run"
    assert main(["histo", "train", "--data", data, "--out", run, "--model", "resnet", "--epochs", "1",
                 "--batch-size", "32", "--crop", "64", "--val-fraction", "0.3", "--device", "cpu",
                 "--pack-dir", root / "packs"]) == 0
    return run


def test_histo_explore_numbers_are_the_data(histo_data, tmp_path):
    data, root = histo_data
    out = tmp_path / "explore"
    assert main(["histo", "explore", "--data", data, "--out", out, "--pack-dir", root / "packs"]) == 0
    numbers = check_report(out, {"samples_normal.png", "samples_tumour.png", "colour.png", "stain.png", "tissue.png",
                                 "duplicates.png"})
    labels = pd.read_csv(data / "train_labels.csv")
    pixels = np.stack([np.asarray(Image.open(data / "train" / f"{i}.tif").convert("RGB")) for i in labels["id"]])
    assert numbers["count"] == {"0": int((labels.label == 0).sum()), "1": int((labels.label == 1).sum())}
    assert numbers["positive_share"] == pytest.approx(labels.label.mean())
    groups = labels.groupby([hashlib.sha256(p.tobytes()).hexdigest() for p in pixels])["label"].agg(["size", "nunique"])
    groups = groups[groups["size"] > 1]
    assert numbers["duplicate_groups"] == len(groups) == 2
    assert len(numbers["conflicting_groups"]) == int((groups["nunique"] > 1).sum()) == 1
    assert "copy0" in numbers["conflicting_groups"][0]["ids"]
    scaled = pixels.reshape(-1, 3) / 255
    assert numbers["normalisation"]["mean"] == pytest.approx(scaled.mean(0), abs=1e-9)
    assert numbers["normalisation"]["std"] == pytest.approx(scaled.std(0), abs=1e-9)
    high, low = pixels.max(-1).astype(float), pixels.min(-1).astype(float)
    saturation = np.divide(high - low, high, out=np.zeros_like(high), where=high > 0)  # HSV saturation
    background = (saturation >= 0.05).mean((1, 2)) < 0.5
    for k in (0, 1):
        assert numbers["mostly_background"][str(k)] == int(background[labels.label.to_numpy() == k].sum())
    screenshot(out / "report.html", "histo_explore_real")


def test_histo_errors_lists_the_runs_top_mistakes(histo_data, histo_run, tmp_path):
    data, root = histo_data
    # The run's validation patches through `predict`, independently of the report.
    val_ids = runs.open_run(histo_run).validation_ids().tolist()
    images = tmp_path / "val_images"
    images.mkdir()
    for i in val_ids:
        (images / f"{i}.tif").symlink_to(data / "train" / f"{i}.tif")
    assert main(["histo", "predict", histo_run, "--images", images, "--out", tmp_path / "p.csv", "--device", "cpu"]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv", dtype={"id": str}).merge(
        pd.read_csv(data / "train_labels.csv", dtype={"id": str}), on="id", suffixes=("_prob", ""))
    assert len(predicted) == len(val_ids)
    # A threshold between the middle two probabilities makes mistakes of both kinds however little the tiny run
    # learned (and sits on no probability, which the last bits of a differently batched pass could move).
    middle = np.sort(predicted["label_prob"])[len(predicted) // 2 - 1:len(predicted) // 2 + 1]
    threshold = float(middle.mean())
    out = tmp_path / "errors"
    assert main(["histo", "errors", histo_run, "--out", out, "--top", "5", "--threshold", threshold,
                 "--device", "cpu"]) == 0
    numbers = check_report(out, {"false_positives.png", "false_negatives.png", "roc.png", "calibration.png",
                                 "strata.png"})
    called = predicted["label_prob"] >= threshold
    fp = predicted[called & (predicted.label == 0)].sort_values(["label_prob", "id"], ascending=[False, True]).head(5)
    fn = predicted[~called & (predicted.label == 1)].sort_values(["label_prob", "id"]).head(5)
    assert len(fp) and len(fn)
    assert [m["id"] for m in numbers["top_false_positives"]] == fp["id"].tolist()
    assert [m["id"] for m in numbers["top_false_negatives"]] == fn["id"].tolist()
    assert [m["prob"] for m in numbers["top_false_positives"]] == pytest.approx(fp["label_prob"].tolist(), abs=1e-5)
    assert numbers["auc"] == pytest.approx(roc_auc_score(predicted.label, predicted.label_prob), abs=1e-6)
    assert numbers["false_positives"] == int((called & (predicted.label == 0)).sum())
    # Expected calibration error, written out here once more.
    p, y = predicted["label_prob"].to_numpy(), predicted["label"].to_numpy()
    bins = np.minimum((p * 10).astype(int), 9)
    ece = sum(abs(y[bins == b].mean() - p[bins == b].mean()) * (bins == b).sum() for b in range(10) if (bins == b).any())
    assert numbers["ece"] == pytest.approx(ece / len(p), abs=1e-6)
    for by in ("tissue", "brightness"):  # each way of stratifying covers every patch once
        assert sum(s["patches"] for s in numbers["auc_by_stratum"] if s["by"] == by) == len(val_ids)
    screenshot(out / "report.html", "histo_errors_real")


def test_histo_explore_on_demo_data(tmp_path):
    from spotter.demo import make_histo_dataset

    data = make_histo_dataset(tmp_path / "demo", n_train=60, n_test=2)
    out = tmp_path / "explore"
    assert main(["histo", "explore", "--data", data, "--out", out, "--pack-dir", tmp_path / "packs"]) == 0
    numbers = check_report(out, {"samples_normal.png", "samples_tumour.png", "colour.png", "stain.png", "tissue.png"})
    labels = pd.read_csv(data / "train_labels.csv")
    assert numbers["patches"] == 60 and numbers["count"]["1"] == int(labels.label.sum())
    assert numbers["duplicate_groups"] == 0 and numbers["mostly_background"] == {"0": 0, "1": 0}


# ---------------------------------------------------------------- tweets
    screenshot(out / "report.html", "histo_explore_demo")


def test_tweets_explore_numbers_are_the_data(tmp_path):
    conftest.require(conftest.TWEETS)
    out = tmp_path / "explore"
    assert main(["tweets", "explore", "--data", conftest.TWEETS, "--out", out]) == 0
    numbers = check_report(out, {"lengths.png", "keywords.png", "features.png", "indicative.png"})
    df = pd.read_csv(conftest.TWEETS / "train.csv", keep_default_na=False)
    assert numbers["count"] == {"0": 4342, "1": 3271} == {str(k): int((df.target == k).sum()) for k in (0, 1)}
    assert numbers["duplicate_rows"] - numbers["duplicate_groups"] == int(df.text.duplicated().sum()) == 110
    by_text = df.groupby("text")["target"].agg(["size", "nunique"])
    assert numbers["conflicting_duplicate_groups"] == int(((by_text["size"] > 1) & (by_text["nunique"] > 1)).sum())
    listed = {row["key"] for row in numbers["conflicting_duplicates"]}
    assert listed == set(by_text.index[(by_text["size"] > 1) & (by_text["nunique"] > 1)])
    assert numbers["missing_keyword"] == int((df.keyword == "").sum())
    assert numbers["missing_location"] == int((df.location.str.strip() == "").sum())
    for keyword, raw in (("debris", "debris"), ("oil spill", "oil%20spill")):
        rows = df[df.keyword == raw]
        assert numbers["keyword_rates"][keyword] == {"rows": len(rows), "disaster_rate": pytest.approx(rows.target.mean())}
    has_link = df.text.str.contains(r"https?://|www\.", case=False)
    assert numbers["feature_share"]["links"]["1"] == pytest.approx(has_link[df.target == 1].mean())
    cover = numbers["glove_coverage"]
    assert cover["normalised"]["vocabulary"] > cover["raw"]["vocabulary"] > 0.3
    assert any(row["n-gram"] in {"fires", "earthquake", "wildfire", "storm"} for row in numbers["indicative"]["1"])
    screenshot(out / "report.html", "tweets_explore_real")


def test_tweets_explore_on_demo_data(tmp_path):
    from spotter.demo import make_tweets_dataset

    data = make_tweets_dataset(tmp_path / "demo", n_train=300, n_test=10)
    out = tmp_path / "explore"
    assert main(["tweets", "explore", "--data", data / "train.csv", "--out", out]) == 0
    numbers = check_report(out, {"lengths.png", "keywords.png", "features.png", "indicative.png"})
    df = pd.read_csv(data / "train.csv", keep_default_na=False)
    assert numbers["rows"] == 300 and numbers["count"]["1"] == int(df.target.sum())
    fire = df[df.keyword == "fire"]
    assert numbers["keyword_rates"]["fire"]["disaster_rate"] == pytest.approx(fire.target.mean())
    screenshot(out / "report.html", "tweets_explore_demo")


@pytest.fixture(scope="module")
def tweets_run(tmp_path_factory):
    """A TF-IDF run on 600 real tweets (2 folds, seconds), and 400 other real tweets it never saw."""
    root = tmp_path_factory.mktemp("tweets")
    data = conftest.tweets_slice(root / "data", 600)
    run = root / "tfidf"
    assert main(["tweets", "train", "--data", data, "--out", run, "--model", "tfidf", "--folds", "2"]) == 0
    everything = pd.read_csv(conftest.TWEETS / "train.csv")
    seen = set(pd.read_csv(data / "train.csv")["id"])
    everything[~everything["id"].isin(seen)].sample(400, random_state=1).to_csv(root / "unseen.csv", index=False)
    return data, run, root / "unseen.csv"


def _top_mistakes(frame: pd.DataFrame, prob: str, threshold: float, k: int) -> tuple[list[str], list[str]]:
    frame = frame.assign(id=frame["id"].astype(str))
    called = frame[prob] >= threshold
    fp = frame[called & (frame.target == 0)].sort_values([prob, "id"], ascending=[False, True]).head(k)
    fn = frame[~called & (frame.target == 1)].sort_values([prob, "id"]).head(k)
    return fp["id"].tolist(), fn["id"].tolist()


def test_tweets_errors_on_out_of_fold_predictions(tweets_run, tmp_path):
    data, run, _ = tweets_run
    out = tmp_path / "errors"
    assert main(["tweets", "errors", run, "--out", out, "--top", "8", "--min-keyword-rows", "4"]) == 0
    numbers = check_report(out, {"threshold.png", "calibration.png", "keyword_errors.png"})
    threshold = json.loads((run / "summary.json").read_text())["threshold"]
    oof = pd.read_csv(run / "validation_predictions.csv")
    fp, fn = _top_mistakes(oof, "prob", threshold, 8)
    assert len(fp) == len(fn) == 8
    assert [m["id"] for m in numbers["top_false_positives"]] == fp
    assert [m["id"] for m in numbers["top_false_negatives"]] == fn
    train = pd.read_csv(data / "train.csv", dtype={"id": str}).set_index("id")
    assert [m["text"] for m in numbers["top_false_positives"]] == train.loc[fp, "text"].tolist()
    called = oof.prob >= threshold
    assert numbers["fp"] == int((called & (oof.target == 0)).sum()) and numbers["tweets"] == len(oof)
    screenshot(out / "report.html", "tweets_errors_oof")


def test_tweets_errors_on_a_csv_match_predict(tweets_run, tmp_path):
    data, run, labelled = tweets_run
    assert main(["tweets", "predict", run, "--csv", labelled, "--out", tmp_path / "p.csv", "--proba"]) == 0
    predicted = pd.read_csv(tmp_path / "p.csv").merge(pd.read_csv(labelled)[["id", "target", "keyword"]], on="id",
                                                      suffixes=("_called", ""))
    out = tmp_path / "errors"
    assert main(["tweets", "errors", run, "--csv", labelled, "--out", out, "--top", "6", "--min-keyword-rows", "3"]) == 0
    numbers = check_report(out, {"threshold.png", "calibration.png", "keyword_errors.png"})
    fp, fn = _top_mistakes(predicted, "proba", numbers["threshold"], 6)
    assert len(fp) == len(fn) == 6
    assert [m["id"] for m in numbers["top_false_positives"]] == fp
    assert [m["id"] for m in numbers["top_false_negatives"]] == fn
    wrong = predicted.target_called != predicted.target
    assert numbers["fp"] + numbers["fn"] == int(wrong.sum())
    assert numbers["keyword_errors"], "some keyword has 3 rows among 400 tweets"
    for row in numbers["keyword_errors"]:
        of = predicted[predicted.keyword.fillna("").str.replace("%20", " ") == row["keyword"]]
        assert row["rows"] == len(of) and row["error_rate"] == pytest.approx(wrong[of.index].mean())
    screenshot(out / "report.html", "tweets_errors_csv")


def test_histo_errors_draws_an_explainers_heat_maps(histo_run):
    """The explainer gets exactly the shown mistakes' pixels, and its maps change the pictures (a map of
    zeros leaves them as they are); by default the run's Grad-CAM is drawn on its fixed scale, and
    `grad_cam=False` draws none."""
    from spotter.explain import CAM_SCALE
    from spotter.histo.task import HistoPredictor, load_run
    from spotter.reports import histo

    seen = []

    def explain(pixels):
        seen.append(pixels.copy())
        return pixels.mean(-1) / 255  # any map in [0, 1] will do here

    plain = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False, grad_cam=False)
    explained = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False, explain=explain)
    shown = [len(plain.numbers["top_false_positives"]), len(plain.numbers["top_false_negatives"])]
    assert any(shown)
    assert [len(p) for p in seen] == [n for n in shown if n] and all(p.shape[1:] == (96, 96, 3) for p in seen)
    nothing = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False,
                           explain=lambda pixels: np.zeros(pixels.shape[:3]))
    for name, n in zip(("false_positives.png", "false_negatives.png"), shown):
        assert (plain.pictures[name] != explained.pictures[name]) == bool(n)
        assert plain.pictures[name] == nothing.pictures[name]  # no evidence: the tissue as it is
    # The default overlay is the run's own Grad-CAM in logits over CAM_SCALE, the same scale for every patch.
    predictor = load_run(histo_run, "cpu")
    cam = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False)
    by_hand = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False,
                           explain=lambda pixels: np.clip(predictor.grad_cam(pixels) / CAM_SCALE, 0, 1))
    for name in ("false_positives.png", "false_negatives.png"):
        assert cam.pictures[name] == by_hand.pictures[name], name
    # A tiny run's maps may be near zero on these patches: the scale is checked on a map known to be drawn,
    # a gradient of 0 to 2 * CAM_SCALE logits across each patch (clipped at full colour half way).
    ramp = np.linspace(0, 2 * CAM_SCALE, 96)[None, None, :].repeat(96, 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HistoPredictor, "grad_cam", lambda self, pixels: ramp.repeat(len(pixels), 0))
        cam = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False)
    by_hand = histo.errors(histo_run, top=3, threshold=0.5, device="cpu", progress=False,
                           explain=lambda pixels: np.clip(ramp.repeat(len(pixels), 0) / CAM_SCALE, 0, 1))
    for name, n in zip(("false_positives.png", "false_negatives.png"), shown):
        assert cam.pictures[name] == by_hand.pictures[name], name
        assert (cam.pictures[name] != plain.pictures[name]) == bool(n), name


def test_report_errors_are_one_clear_line(tmp_path, capsys):
    assert main(["tweets", "errors", tmp_path / "none", "--out", tmp_path / "r"]) == 2
    assert "train it first" in capsys.readouterr().err
    assert main(["histo", "explore", "--data", tmp_path, "--out", tmp_path / "r"]) == 2
    assert "not the Kaggle layout" in capsys.readouterr().err
    assert main(["histo", "errors", tmp_path / "none", "--out", tmp_path / "r"]) == 2
    assert "no checkpoint" in capsys.readouterr().err
