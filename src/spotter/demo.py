"""`spotter demo`: builds small, clearly synthetic datasets in the Kaggle layouts and shows the product on them:
train, evaluate and predict for both tasks, a heatmap of a small demo slide, the explore reports, and the
command that serves both runs.

The histology patches are drawn, not real: pink eosin background with small purple nuclei everywhere,
and for label 1 a cluster of large, dark, crowded "tumour" nuclei that reaches into the centre 32x32
(negatives may carry such a cluster only away from the centre, as in the Kaggle label rule).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from . import engine
from .histo import data as histo_data, slide as histo_slide, task as histo, wsi
from .mosaic import mosaic_image, write_mosaic
from .histo.tiff import PATCH_SIZE
from .reports import histo as histo_report, tweets as tweets_report
from .tweets import task as tweets
from .tweets.text import read_tweets

SYNTHETIC_NOTE = ("SYNTHETIC DEMO DATA made by `spotter demo`: drawn H&E-like patches, not real tissue. "
                  "Scores on it say nothing about real performance.\n")


def _smooth_noise(rng: np.random.Generator, size: int, scale: int) -> np.ndarray:
    coarse = rng.normal(size=(size // scale + 2, size // scale + 2))
    return np.kron(coarse, np.ones((scale, scale)))[:size, :size]


def synthetic_patch(rng: np.random.Generator, tumour_in_centre: bool, size: int = 96) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    texture = _smooth_noise(rng, size, 8)[..., None] * 12
    image = np.array([232, 180, 215], float) + rng.normal(0, 6, 3) + texture
    hematoxylin = np.array([105, 60, 150], float)

    def nuclei(centres: np.ndarray, radius: tuple[float, float], darkness: tuple[float, float]) -> None:
        nonlocal image
        for cy, cx in centres:
            r = rng.uniform(*radius)
            stretch = rng.uniform(0.7, 1.3)
            d = ((yy - cy) / r) ** 2 + ((xx - cx) * stretch / r) ** 2
            alpha = np.clip(1.2 - d, 0, 1)[..., None] * rng.uniform(*darkness)
            image = image * (1 - alpha) + hematoxylin * 0.8 * alpha

    nuclei(rng.uniform(0, size, (rng.integers(15, 30), 2)), (1.5, 3.0), (0.5, 0.8))
    has_cluster = tumour_in_centre or rng.random() < 0.4
    if has_cluster:
        if tumour_in_centre:
            centre = rng.uniform(size / 2 - 14, size / 2 + 14, 2)
        else:  # away from the centre square: the centre decides the label
            corner = rng.integers(0, 2, 2)
            centre = np.where(corner, rng.uniform(size - 14, size - 4, 2), rng.uniform(4, 14, 2))
        cluster = centre + rng.normal(0, 6, (rng.integers(8, 16), 2))
        nuclei(cluster, (3.0, 5.5), (0.8, 1.0))
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def make_histo_dataset(folder: Path, n_train: int = 1200, n_test: int = 40, seed: int = 0) -> Path:
    """Kaggle layout: train/<id>.tif, train_labels.csv, test/<id>.tif, sample_submission.csv."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    (folder / "train").mkdir(parents=True, exist_ok=True)
    (folder / "test").mkdir(exist_ok=True)
    (folder / "README.txt").write_text(SYNTHETIC_NOTE)
    rows = []
    for split, n in (("train", n_train), ("test", n_test)):
        for i in range(n):
            label = int(rng.random() < 0.4)
            patch_id = f"synthetic{split}{i:05d}"
            Image.fromarray(synthetic_patch(rng, bool(label))).save(folder / split / f"{patch_id}.tif", format="TIFF")
            rows.append((split, patch_id, label))
    df = pd.DataFrame(rows, columns=["split", "id", "label"])
    df[df.split == "train"][["id", "label"]].to_csv(folder / "train_labels.csv", index=False)
    df[df.split == "test"][["id"]].assign(label=0).to_csv(folder / "sample_submission.csv", index=False)
    return folder


# A small corpus written for the demo: each keyword appears in real-emergency templates and in
# figurative ones ("this song is fire"), which is the hard part of the Kaggle task.
_PLACES = ["California", "Texas", "the city centre", "Jakarta", "our town", "the highway", "Manila", "Nepal",
           "the coast", "downtown", "the valley", "Ohio", "the border", "Sydney", "the old bridge"]
_DISASTER = [
    "Forest {k} near {p}, residents told to evacuate now",
    "{K} hits {p}: {n} dead and hundreds injured, rescue teams on the way",
    "Breaking: {k} reported in {p}, emergency services responding http://t.co/x{n}",
    "Officials confirm {n} people missing after the {k} in {p} #news",
    "Huge {k} at {p} tonight, roads closed and families evacuated",
    "Pray for {p}. The {k} destroyed {n} homes this morning",
    "@news_desk {K} warning issued for {p} until further notice",
    "Police: {k} in {p} leaves {n} injured, hospital on alert",
]
_EVERYDAY = [
    "This new album is pure {k}, I can't stop listening lol",
    "My hair today is a total {k} haha",
    "That exam was a {k}. Never again &amp; I mean it",
    "Watching a movie about a {k} with popcorn, so good",
    "@bestie you are {k} in that dress!!! {n}/10",
    "My kitchen after cooking looks like a {k} zone lmao",
    "Just bought the {K} video game, playing all night",
    "Feeling like a {k} on monday mornings #mood",
]
_KEYWORDS = ["fire", "flood", "earthquake", "explosion", "storm", "wildfire", "hurricane", "collapse", "crash",
             "disaster", "inferno", "tornado"]


def make_tweets_dataset(folder: Path, n_train: int = 600, n_test: int = 150, seed: int = 0) -> Path:
    """Kaggle layout: train.csv (id,keyword,location,text,target) and test.csv."""
    rng = np.random.default_rng(seed)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "README.txt").write_text(SYNTHETIC_NOTE.replace("H&E-like patches, not real tissue",
                                                              "tweets from templates, not real tweets"))
    rows = []
    for i in range(n_train + n_test):
        target = int(rng.random() < 0.43)
        keyword = str(rng.choice(_KEYWORDS))
        template = str(rng.choice(_DISASTER if target else _EVERYDAY))
        text = template.format(k=keyword, K=keyword.capitalize(), p=rng.choice(_PLACES), n=rng.integers(2, 90))
        if rng.random() < 0.08:  # crowd-sourced labels are noisy; so are these
            target = 1 - target
        rows.append({"id": i + 1, "keyword": keyword if rng.random() < 0.9 else "",
                     "location": str(rng.choice(_PLACES)) if rng.random() < 0.5 else "", "text": text,
                     "target": target})
    df = pd.DataFrame(rows)
    df.iloc[:n_train].to_csv(folder / "train.csv", index=False)
    df.iloc[n_train:].drop(columns="target").to_csv(folder / "test.csv", index=False)
    df.iloc[n_train:].to_csv(folder / "test_labels.csv", index=False)
    return folder


def make_demo_slide(path: Path, rows: int = 12, cols: int = 16, seed: int = 1) -> Path:
    """A small tiled pyramidal TIFF: an oval of synthetic tissue on white glass with a tumour region off its
    centre, one drawn patch per 96x96 cell (level 0 at half the patches' 0.972 µm/px, as a 20x scan)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:rows, :cols] + 0.5
    tissue = ((yy - rows / 2) / (rows * 0.45)) ** 2 + ((xx - cols / 2) / (cols * 0.45)) ** 2 <= 1
    tumour = ((yy - rows * 0.4) / (rows * 0.2)) ** 2 + ((xx - cols * 0.62) / (cols * 0.16)) ** 2 <= 1
    glass = np.full((PATCH_SIZE, PATCH_SIZE, 3), wsi.WHITE, np.uint8)
    patches = [synthetic_patch(rng, bool(t)) if on else glass for on, t in zip(tissue.ravel(), tumour.ravel())]
    # A margin of one whole patch keeps the patches on the stride-96 grid of `histo slide`.
    write_mosaic(Path(path), mosaic_image(np.stack(patches), rows, cols, margin=PATCH_SIZE))
    return Path(path)


def _histo_demo(out: Path, device: str) -> tuple[histo_data.PackedSet, Path]:
    print(f"== histopathology demo (synthetic patches) in {out}")
    data_dir = make_histo_dataset(out / "histo-data")
    packed = histo_data.pack_folder(data_dir, pack_root=out / "packs")
    print(f"packed {len(packed['train'])} training and {len(packed['test'])} test patches")
    run_dir = out / "histo-run"
    # The from-scratch default: it learns these synthetic patches in seconds (the pretrained default takes minutes).
    settings = histo.HistoSettings(data=str(data_dir), pack_root=str(out / "packs"), model=histo.SCRATCH_DEFAULT)
    # The demo owns its folder: a second `make demo` trains its runs afresh (overwrite), as it remakes the data.
    histo.train(settings, engine.TrainSettings(epochs=8, lr=3e-3, device=device), run_dir, overwrite=True)
    histo.evaluate(run_dir, tta=True, device=device)
    histo.predict(run_dir, data_dir / "test", out / "histo-submission.csv", tta=True, device=device)
    return packed["train"], run_dir


def _tweets_demo(out: Path, device: str) -> tuple[Path, Path]:
    print(f"\n== disaster tweets demo (synthetic corpus) in {out}")
    data_dir = make_tweets_dataset(out / "tweets-data")
    run_dir = out / "tweets-run"
    # blend without MiniLM, like the histology demo's from-scratch model: it learns these tweets in seconds.
    tweets.train(tweets.TweetSettings(data=str(data_dir), folds=3, model="blend"),
                 engine.TrainSettings(epochs=6, batch_size=64, lr=3e-3, weight_decay=0.01, patience=3,
                                      device=device), run_dir, overwrite=True)
    tweets.evaluate(run_dir, data_dir / "test_labels.csv", device=device)
    tweets.predict(run_dir, data_dir / "test.csv", out / "tweets-submission.csv", device=device)
    return data_dir, run_dir


def _slide_demo(out: Path, run_dir: Path, device: str) -> Path:
    print("\n== whole slide: a tumour heatmap of a small demo slide")
    image = make_demo_slide(out / "demo-slide.tif")
    slide_dir = out / "slide"
    # Stride 96: one cell per drawn patch, whose label is its own centre's.
    histo_slide.slide(run_dir, image, slide_dir, stride=96, device=device)
    return slide_dir


def _explore_demo(out: Path, histo_train: histo_data.PackedSet, tweets_data_dir: Path) -> tuple[Path, Path]:
    print("\n== explore reports on the demo data")
    histo_page = histo_report.explore(histo_train, name=str(out / "histo-data"), progress=False).write(
        out / "reports" / "histo-explore")
    csv = tweets_data_dir / "train.csv"
    tweets_page = tweets_report.explore(read_tweets(csv, labelled=True), name=str(csv)).write(
        out / "reports" / "tweets-explore")
    return histo_page, tweets_page


def run(out: Path, device: str = "auto") -> None:
    out = Path(out)
    start = time.perf_counter()
    histo_train, histo_run = _histo_demo(out, device)
    tweets_data_dir, tweets_run = _tweets_demo(out, device)
    slide_dir = _slide_demo(out, histo_run, device)
    reports = _explore_demo(out, histo_train, tweets_data_dir)

    print(f"\nhistology run:  {histo_run}/ (metrics.csv, history.png, roc_tta.png, best.pt, last.pt, settings.json)")
    print(f"tweets run:     {tweets_run}/ (summary.json, precision_recall.png, fold*/history.png, fold*/best.pt)")
    print(f"submissions:    {out / 'histo-submission.csv'}, {out / 'tweets-submission.csv'}")
    print(f"slide heatmap:  {slide_dir / 'heatmap.png'} and {slide_dir / 'overlay.png'} "
          f"(QuPath: {slide_dir / 'regions.geojson'})")
    print(f"explore:        {reports[0]}\n                {reports[1]}")
    print(f"demo finished in {time.perf_counter() - start:.0f} s")
    print(f"\nserve both demo runs (web page and JSON API at http://127.0.0.1:8000/):\n"
          f"    spotter serve {histo_run} {tweets_run}")
