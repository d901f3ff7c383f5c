"""Real runs for the serve tests, trained once per test session on slices of the shared Kaggle data.

Several test modules need the same runs; they call these helpers with the session's `tmp_path_factory`,
and each run is trained the first time only (a `done` marker), quickly, on CPU.
"""
from __future__ import annotations

import os
from pathlib import Path

import conftest
from spotter.cli import main


def _root(factory) -> Path:
    # SPOTTER_TEST_RUNS keeps the runs between sessions (for working on the tests; CI trains them afresh).
    root = Path(os.environ["SPOTTER_TEST_RUNS"]) if os.environ.get("SPOTTER_TEST_RUNS") else \
        factory.getbasetemp() / "serve-runs"
    root.mkdir(parents=True, exist_ok=True)
    return root


def _once(path: Path, make) -> Path:
    if not (path / ".done").exists():
        make(path)
        (path / ".done").write_text("")
    return path


def _cached(root: Path):
    # Session fixtures run outside the per-test cache fixture: keep packs and embeddings in the session folder.
    os.environ["SPOTTER_CACHE"] = str(root / "cache")


def histo_data(factory) -> Path:
    """2,000 real labelled patches (balanced) and the 29 real test patches."""
    root = _root(factory)
    folder = root / "histo"
    if not folder.exists():
        conftest.histo_slice(folder, 2000, seed=0, n_test=29)
    return folder


def histo_run(factory) -> Path:
    """A ResNet trained on `histo_data` long enough to tell tumour from normal (validation AUC about 0.87)."""
    root = _root(factory)
    data = histo_data(factory)
    _cached(root)

    def train(run: Path) -> None:
        # fp32 named: with `auto`, each process (the CLI's, the server's) would time the precision for itself,
        # and under load two timings can choose differently (bf16 and fp32 differ by ~1e-3 in probability).
        assert main(["histo", "train", "--data", data, "--out", run, "--model", "resnet-plain", "--epochs", "6",
                     "--device", "cpu", "--precision", "fp32", "--val-fraction", "0.2",
                     "--pack-dir", root / "packs"]) == 0
    return _once(root / "cnn", train)


def tweets_data(factory) -> Path:
    root = _root(factory)
    folder = root / "tweets"
    if not folder.exists():
        conftest.tweets_slice(folder, 1500, seed=0, n_test=60)
    return folder


def tweets_run(factory, model: str) -> Path:
    """A 2-fold run of `model` (bigru: 3 epochs) on `tweets_data`; the folder is named after the model."""
    root = _root(factory)
    data = tweets_data(factory)
    _cached(root)

    def train(run: Path) -> None:
        assert main(["tweets", "train", "--data", data, "--out", run, "--model", model, "--folds", "2",
                     "--epochs", "3", "--device", "cpu"]) == 0
    name = {"bigru": "rnn"}.get(model, model)
    return _once(root / name, train)


def need_shared_data() -> None:
    conftest.require(conftest.HISTO)  # skips without the shared data, fails in CI
    conftest.require(conftest.TWEETS)


def tweets_ensemble(factory) -> Path:
    """The calibrated average of the bigru and tfidf runs."""
    members = [tweets_run(factory, "bigru"), tweets_run(factory, "tfidf")]
    return _once(_root(factory) / "both", lambda out: main(["tweets", "ensemble", *members, "--out", out]))


def mosaic_png(factory, side: int) -> bytes:
    """A side x side PNG slide of 16 real training patches, tiled: tissue everywhere (for slide jobs)."""
    import io

    import numpy as np
    from PIL import Image

    pixels = [np.asarray(Image.open(p)) for p in sorted((histo_data(factory) / "train").glob("*.tif"))[:16]]
    block = np.concatenate([np.concatenate(pixels[r * 4:(r + 1) * 4], 1) for r in range(4)], 0)
    reps = -(-side // block.shape[0])
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(np.tile(block, (reps, reps, 1))[:side, :side])).save(buffer, format="PNG")
    return buffer.getvalue()
