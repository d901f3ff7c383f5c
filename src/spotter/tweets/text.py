"""Tweet text: reading Kaggle's CSVs, normalisation (one function for train and predict), tokens, vocabulary."""
from __future__ import annotations

import html
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable
from urllib.parse import unquote

import numpy as np
import pandas as pd

from ..errors import UserError

PAD, UNK = 0, 1

# The Kaggle file holds UTF-8 punctuation that was once decoded as Mac Roman and lost its first byte
# (e.g. "\x89Û_" was "…"). No general fixer can undo that, so the common sequences are mapped back.
MOJIBAKE = {
    "\x89Û_": "...", "\x89Ûª": "'", "\x89Û÷": "'", "\x89ÛÏ": '"', "\x89Û\x9d": '"', "\x89ÛÒ": "-",
    "\x89ÛÓ": "-", "\x89Û¢": "-", "\x89Û¡": "'", "\x89Û": "", "åÊ": " ", "å¨": " ", "åÈ": " ", "å_": " ",
    "Ì©": "e", "Ì¼": "u", "Ì¤": "c", "Ì_": "a", "Ì¢": "a", "Ì¡": "a", "ÌÑ": "n",
}
_MOJIBAKE_RE = re.compile("|".join(re.escape(k) for k in sorted(MOJIBAKE, key=len, reverse=True)))
_URL_RE = re.compile(r"(?:https?://|www\.)\S+", re.I)
_MENTION_RE = re.compile(r"@\w+")
_HASHTAG_RE = re.compile(r"#(\w+)")
_NUMBER_RE = re.compile(r"\b\d+(?:[.,:]\d+)*\b")
_CAMEL_RE = re.compile(r"(?<=[a-z])(?=[A-Z])")
_TOKEN_RE = re.compile(r"[a-z]+(?=n't\b)|n't\b|'[a-z]+\b|[a-z0-9]+|[!?]")


@dataclass
class NormaliseOptions:
    """Each normalisation step can be switched off (`--no-<step>` on the command line)."""

    html: bool = True  # &amp; -> &
    mojibake: bool = True  # repair the file's broken punctuation, drop other control junk
    urls: bool = True  # any link -> "http"
    mentions: bool = True  # @name -> "user"
    hashtags: bool = True  # #HurricaneSandy -> "hurricane sandy" (the word is kept)
    numbers: bool = True  # 2015, 3.5 -> "number"
    lower: bool = True  # GloVe 6B is lower-case


def normalise(text: str, options: NormaliseOptions = NormaliseOptions()) -> str:
    """The one text normalisation, used by training and prediction alike."""
    if options.html:
        text = html.unescape(html.unescape(text))  # some tweets are escaped twice (&amp;amp;)
    if options.mojibake:
        text = _MOJIBAKE_RE.sub(lambda m: MOJIBAKE[m.group()], text)
        text = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in text)
    if options.urls:
        text = _URL_RE.sub(" http ", text)
    if options.mentions:
        text = _MENTION_RE.sub(" user ", text)
    if options.hashtags:
        text = _HASHTAG_RE.sub(lambda m: " " + _CAMEL_RE.sub(" ", m.group(1)) + " ", text)
    if options.numbers:
        text = _NUMBER_RE.sub(" number ", text)
    if options.lower:
        text = text.lower()
    return " ".join(text.split())


def tokenize(text: str) -> list[str]:
    """Words, GloVe-style contractions ("don't" -> "do", "n't") and the ! and ? marks."""
    return _TOKEN_RE.findall(text.lower())


def keyword_text(keyword: object) -> str:
    """Kaggle keywords are URL-quoted ("airplane%20accident"); missing ones are empty."""
    return "" if not isinstance(keyword, str) else unquote(keyword).strip().lower()


@dataclass
class Corpus:
    """Tweets prepared once for every fold model: the one preprocessing path of train, evaluate and predict."""

    raw: list[str]  # the tweets as given
    texts: list[str]  # normalised
    tokens: list[list[str]]  # of the normalised texts
    keywords: list[str]  # keyword_text of each tweet's keyword ("" when none)
    targets: np.ndarray  # int; zeros when unlabelled

    @classmethod
    def build(cls, texts: Iterable[str], keywords: Iterable[object], options: NormaliseOptions,
              targets: np.ndarray | None = None) -> "Corpus":
        raw = list(texts)
        normalised = [normalise(t, options) for t in raw]
        targets = np.zeros(len(raw), np.int64) if targets is None else np.asarray(targets)
        return cls(raw, normalised, [tokenize(t) for t in normalised], [keyword_text(k) for k in keywords],
                   targets)

    def __len__(self) -> int:
        return len(self.texts)


class Vocabulary:
    """Token -> id, built from training text only. 0 is padding, 1 unknown."""

    def __init__(self, tokens: list[str]):
        self.tokens = ["<pad>", "<unk>", *tokens]
        self.index = {t: i for i, t in enumerate(self.tokens)}

    @classmethod
    def build(cls, texts: list[list[str]], max_size: int | None = None, min_count: int = 1) -> "Vocabulary":
        counts = Counter(t for tokens in texts for t in tokens)
        ranked = sorted((t for t, c in counts.items() if c >= min_count), key=lambda t: (-counts[t], t))
        return cls(ranked[: max_size - 2] if max_size else ranked)

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, tokens: list[str], length: int) -> tuple[np.ndarray, int]:
        """Ids padded (at the end) or cut to `length`, and the number of real tokens (at least 1)."""
        ids = [self.index.get(t, UNK) for t in tokens[:length]] or [UNK]
        out = np.zeros(length, np.int64)
        out[: len(ids)] = ids
        return out, len(ids)


def encode_texts(vocab: Vocabulary, token_lists: list[list[str]], length: int) -> tuple[np.ndarray, np.ndarray]:
    pairs = [vocab.encode(t, length) for t in token_lists]
    return np.stack([p[0] for p in pairs]), np.array([p[1] for p in pairs], np.int64)


# ---------------------------------------------------------------- reading

class TweetDataError(UserError, ValueError):
    pass


def read_tweets(path: Path, *, labelled: bool, skip_bad: bool = False) -> pd.DataFrame:
    """Kaggle's CSV as it is: UTF-8 (a BOM is fine), quoted newlines, empty keyword and location.

    Checks the encoding, the columns, the ids, empty texts and (if `labelled`) the targets, naming the row.
    With `skip_bad`, undecodable bytes are replaced and unusable training rows dropped; what was done is
    listed in `df.attrs["skipped"]`. (Long, but one checklist in file order, each check naming its row.)
    """
    import io
    import sys

    path = Path(path)
    if not path.exists():
        raise TweetDataError(f"{path}: no such file")
    raw = path.read_bytes()
    skipped: list[str] = []
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw[:err.start].count(b"\n") + 1
        if not skip_bad:
            raise TweetDataError(f"{path}: not valid UTF-8 (line {line}: bytes {raw[err.start:err.end + 3]!r}); "
                                 "re-save it as UTF-8, or pass --skip-bad to replace undecodable bytes") from None
        text = raw.decode("utf-8-sig", errors="replace")
        skipped.append(f"undecodable bytes replaced, first on line {line}")
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise TweetDataError(f"{path}: empty file; expected Kaggle's columns id,keyword,location,text") from None
    except pd.errors.ParserError as err:
        raise TweetDataError(f"{path}: not a readable CSV ({err})") from None
    df.columns = [c.strip().lower() for c in df.columns]
    needed = ["id", "text"] + (["target"] if labelled else [])
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise TweetDataError(f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(df.columns)}")
    if df.empty:
        raise TweetDataError(f"{path}: has a header but no rows")
    for column in ("keyword", "location"):
        if column not in df:
            df[column] = ""
    dupes = df["id"][df["id"].duplicated()]
    if len(dupes):
        raise TweetDataError(f"{path}: {len(dupes)} ids appear more than once, e.g. {dupes.iloc[0]!r}; "
                             "ids must be unique")
    bad = pd.Series(False, index=df.index)
    if labelled:
        target = pd.to_numeric(df["target"].str.strip(), errors="coerce")
        not_binary = ~target.isin([0, 1])
        if not_binary.any() and not skip_bad:
            row = df.index[not_binary][0]
            raise TweetDataError(f"{path}: {not_binary.sum()} targets are not 0 or 1, e.g. id {df['id'][row]!r} "
                                 f"has {df['target'][row]!r}; fix them or pass --skip-bad")
        skipped += [f"id {i}: target {t!r} is not 0 or 1" for i, t in zip(df["id"][not_binary], df["target"][not_binary])]
        bad |= not_binary
        df["target"] = target.fillna(-1).astype(int)
    empty = df["text"].str.strip() == ""
    if empty.any():
        if labelled and not skip_bad:
            raise TweetDataError(f"{path}: {empty.sum()} tweets have no text, e.g. id {df['id'][empty].iloc[0]!r}; "
                                 "remove them or pass --skip-bad")
        if labelled:
            skipped += [f"id {i}: empty text" for i in df["id"][empty]]
            bad |= empty
        else:
            print(f"spotter: warning: {empty.sum()} tweets in {path} have no text (e.g. id "
                  f"{df['id'][empty].iloc[0]!r}); they are predicted from their keyword alone", file=sys.stderr)
    df = df[~bad].reset_index(drop=True)
    if df.empty:
        raise TweetDataError(f"{path}: no usable rows left")
    df.attrs["skipped"] = skipped
    if skipped:
        print(f"spotter: warning: {path}: {len(skipped)} problems skipped (--skip-bad), e.g. "
              f"{'; '.join(skipped[:3])}{'; ...' if len(skipped) > 3 else ''} (a training run lists them all in "
              "skipped.txt)",
              file=sys.stderr)
    return df


def resolve_conflicting_duplicates(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Give every copy of a duplicated text its group's majority target (ties go to 1, the rarer class).

    Returns the data and how many rows changed label.
    """
    majority = df.groupby("text")["target"].transform("mean")
    resolved = (majority >= 0.5).astype(int)
    changed = int((resolved != df["target"]).sum())
    return df.assign(target=resolved), changed
