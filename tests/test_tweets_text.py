import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings, strategies as st

from spotter.metrics import best_f1_threshold
from spotter.tweets.embeddings import EmbeddingError, coverage, embedding_matrix, load_glove
from spotter.tweets.models import create_rnn
from spotter.tweets.text import (NormaliseOptions, TweetDataError, Vocabulary, encode_texts, keyword_text,
                                 normalise, read_tweets, resolve_conflicting_duplicates, tokenize)

from conftest import TWEETS, require

OFF = {k: False for k in NormaliseOptions.__dataclass_fields__}


def only(step):
    return NormaliseOptions(**{**OFF, step: True})


@pytest.mark.parametrize("step,raw,expected", [
    ("html", "Fire &amp; smoke &lt;3 &amp;amp;", "Fire & smoke <3 &"),
    ("urls", "look http://t.co/abc123 and https://x.io/a?b=1 now", "look http and http now"),
    ("mentions", "@user_1 @Fire_Dept help", "user user help"),
    ("hashtags", "#HurricaneSandy #fire", "Hurricane Sandy fire"),
    ("numbers", "12 dead, 3.5 km, 2015", "number dead, number km, number"),
    ("lower", "FIRE Fire", "fire fire"),
    ("mojibake", "it\x89Ûªs gone \x89Û_ ok\x89ÛÒ yes åÊnow", "it's gone ... ok- yes now"),
])
def test_each_normalisation_step(step, raw, expected):
    assert normalise(raw, only(step)) == expected


def test_each_step_can_be_switched_off():
    raw = "#Fire @bob http://t.co/x 12 &amp; \x89Û_ BIG"
    assert normalise(raw, NormaliseOptions(**OFF)) == raw


def test_odd_bytes_of_the_real_file_are_repaired():
    require(TWEETS)
    df = read_tweets(TWEETS / "train.csv", labelled=True)
    cleaned = [normalise(t) for t in df["text"]]
    assert not any("\x89" in t or "Û" in t for t in cleaned)
    assert sum("..." in t for t in cleaned) > 300  # the truncated tweets' ellipses came back


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_normalise_and_tokenize_accept_any_text(text):
    out = normalise(text)
    assert out == out.strip() and "  " not in out
    assert all(t == t.lower() and t for t in tokenize(out))


def test_tokenizer_splits_like_glove():
    assert tokenize("Don't panic!! It's 5 o'clock?") == ["do", "n't", "panic", "!", "!", "it", "'s", "5", "o",
                                                        "'clock", "?"]


def test_keywords_are_unquoted():
    assert keyword_text("airplane%20accident") == "airplane accident" and keyword_text(float("nan")) == ""


def test_vocabulary_from_training_text_and_padding():
    vocab = Vocabulary.build([["fire", "fire", "near"], ["near", "fire"]], max_size=3)
    assert vocab.tokens == ["<pad>", "<unk>", "fire"]
    ids, lengths = encode_texts(vocab, [["fire", "zebra"], []], 4)
    assert ids.tolist() == [[2, 1, 0, 0], [1, 0, 0, 0]] and lengths.tolist() == [2, 1]


def test_glove_from_the_package():
    words, vectors = load_glove()
    assert vectors.shape == (400_000, 50) and words["the"] == 0
    assert np.isclose(vectors[words["the"]][0], 0.418, atol=1e-3)  # glove.6B.50d's first value


def test_glove_txt_file(tmp_path):
    path = tmp_path / "tiny.txt"
    path.write_text("2 3\nfire 0.1 0.2 0.3\nflood -1 0 1.5\n")
    words, vectors = load_glove(path)
    assert list(words) == ["fire", "flood"] and vectors.shape == (2, 3)
    np.testing.assert_allclose(vectors[1], [-1, 0, 1.5])
    path.write_text("fire 0.1 0.2 0.3\nflood 1 2\n")
    with pytest.raises(EmbeddingError, match="tiny.txt:2: 2 numbers, expected 3"):
        load_glove(path)
    with pytest.raises(EmbeddingError, match="no such"):
        load_glove(tmp_path / "missing.txt")


def test_unknown_words_get_distinct_nonzero_vectors_and_coverage_is_counted():
    words = {"fire": 0}
    vectors = np.array([[1.0, 2.0]], np.float32)
    vocab = Vocabulary(["fire", "zzz", "qqq"])
    matrix = embedding_matrix(vocab, words, np.concatenate([vectors, vectors * 3]))
    assert (matrix[0] == 0).all() and (matrix[2] == [1, 2]).all()
    assert np.abs(matrix[3]).sum() > 0 and not np.allclose(matrix[3], matrix[4])
    cov = coverage([["fire", "zzz", "fire"]], words)
    assert cov["vocabulary"] == 0.5 and np.isclose(cov["tokens"], 2 / 3)


@pytest.mark.parametrize("name", ["bigru", "seed-gru"])
def test_padding_never_changes_a_prediction(name):
    torch.manual_seed(0)
    model = create_rnn(name, torch.randn(30, 8), n_keywords=4).eval()
    ids = torch.tensor([[5, 6, 7, 0, 0, 0], [9, 0, 0, 0, 0, 0]])
    lengths, keywords = torch.tensor([3, 1]), torch.tensor([2, 0])
    short = model(ids[:, :3], lengths, keywords)
    long = model(torch.cat([ids, torch.zeros(2, 20, dtype=torch.long)], 1), lengths, keywords)
    torch.testing.assert_close(short, long)
    alone = model(ids[1:, :1], lengths[1:], keywords[1:])  # and batch-mates do not matter either
    torch.testing.assert_close(alone, short[1:])


def test_threshold_search_maximises_whole_set_f1():
    labels = np.array([0, 0, 1, 0, 1, 1, 1])
    probs = np.array([0.1, 0.2, 0.3, 0.35, 0.6, 0.7, 0.9])
    threshold, f1 = best_f1_threshold(labels, probs)
    assert 0.2 < threshold < 0.3  # everything from 0.3 up is positive: P 4/5, R 1 -> F1 0.889
    assert np.isclose(f1, 2 * 0.8 / 1.8)
    for t in np.linspace(0, 1, 101):
        pred = probs >= t
        tp = (pred & (labels == 1)).sum()
        f = 2 * tp / (pred.sum() + labels.sum())
        assert f <= f1 + 1e-12


def write(tmp_path, text, name="t.csv", mode="w"):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def test_reads_bom_and_quoted_newlines(tmp_path):
    raw = "\ufeffid,keyword,location,text,target\n1,,,\"line one\nline two\",1\n2,fire,,plain,0\n"
    df = read_tweets(write(tmp_path, raw), labelled=True)
    assert list(df["id"]) == ["1", "2"] and df["text"][0] == "line one\nline two" and df["target"].tolist() == [1, 0]


@pytest.mark.parametrize("bad_bytes", [b"bad \xff\xfe bytes", "caf\u00e9".encode("cp1252")])
def test_other_encodings_are_named_or_replaced_with_skip_bad(tmp_path, bad_bytes):
    raw = b"id,keyword,location,text,target\n1,,,fine,1\n2,,," + bad_bytes + b",0\n"
    with pytest.raises(TweetDataError, match="not valid UTF-8 \\(line 3.*--skip-bad"):
        read_tweets(write(tmp_path, raw), labelled=True)
    df = read_tweets(write(tmp_path, raw), labelled=True, skip_bad=True)
    assert "\ufffd" in df["text"][1] and "line 3" in df.attrs["skipped"][0]


def test_empty_texts_stop_training_or_are_skipped_and_listed(tmp_path):
    raw = "id,text,target\n1,fire!,1\n2,   ,0\n3,,1\n4,ok,0\n"
    with pytest.raises(TweetDataError, match="2 tweets have no text, e.g. id '2'"):
        read_tweets(write(tmp_path, raw), labelled=True)
    df = read_tweets(write(tmp_path, raw), labelled=True, skip_bad=True)
    assert df["id"].tolist() == ["1", "4"] and len(df.attrs["skipped"]) == 2
    test = read_tweets(write(tmp_path, "id,text\n1,\n2,hi\n"), labelled=False)  # predicting keeps every row
    assert test["id"].tolist() == ["1", "2"]


def test_a_very_long_tweet_is_fine():
    tokens = tokenize(normalise("fire " * 2000))
    assert len(tokens) == 2000


@pytest.mark.parametrize("text,message", [
    ("id,keyword,location,target\n1,,,1\n", "missing column.*text"),
    ("id,keyword,location,text\n1,,,hi\n", "missing column.*target"),
    ("id,text,target\n1,hi,2\n", "not 0 or 1"),
    ("id,text,target\n1,hi,\n", "not 0 or 1"),
    ("id,text,target\n1,hi,1\n1,ho,0\n", "appear more than once"),
    ("", "empty file"),
    ("id,text,target\n", "no rows"),
])
def test_bad_csvs_are_named(tmp_path, text, message):
    with pytest.raises(TweetDataError, match=message):
        read_tweets(write(tmp_path, text), labelled=True)


def test_conflicting_duplicates_take_the_majority():
    df = pd.DataFrame({"text": ["a", "a", "a", "b", "b", "c"], "target": [1, 1, 0, 0, 1, 0]})
    resolved, changed = resolve_conflicting_duplicates(df)
    assert resolved["target"].tolist() == [1, 1, 1, 1, 1, 0] and changed == 2


def test_a_test_csv_with_repeated_ids_is_refused(tmp_path):
    with pytest.raises(TweetDataError, match="ids must be unique"):
        read_tweets(write(tmp_path, "id,keyword,location,text\n7,,,a\n7,,,b\n"), labelled=False)
