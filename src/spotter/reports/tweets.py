"""Tweets reports: `explore` looks at a labelled CSV, `errors` at a run's mistakes.

Both are plain functions over a DataFrame as `read_tweets` returns it, and use the task's own
normalisation and tokeniser, so what they count is what the models see.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.feature_extraction.text import CountVectorizer
from sklearn.linear_model import LogisticRegression

from .. import runs
from ..errors import BadInput
from ..metrics import binary_report
from ..tweets.text import (_HASHTAG_RE, _MENTION_RE, _NUMBER_RE, _URL_RE, NormaliseOptions, keyword_text, normalise,
                           read_tweets, tokenize)
from ..tweets.predictor import load_run
from . import figures
from .common import Report, confident_mistakes
from .figures import CLASS_COLOURS, plt, png
from .html import Page

CLASS_NAMES = ("not a disaster (0)", "disaster (1)")
MIN_KEYWORD_ROWS = 10  # keyword rates are shown only for keywords with at least this many rows
FEATURES = {"links": _URL_RE, "mentions": _MENTION_RE, "hashtags": _HASHTAG_RE, "numbers": _NUMBER_RE}


def duplicate_groups(df: pd.DataFrame, key: pd.Series) -> pd.DataFrame:
    """Groups of rows sharing `key` (two or more rows), with their target counts; conflicting first."""
    groups = df.assign(key=key).groupby("key").agg(rows=("id", "size"), disaster=("target", "sum"),
                                                   texts=("text", "nunique"), example=("text", "first"),
                                                   ids=("id", lambda s: ", ".join(map(str, s))))
    groups = groups[groups["rows"] > 1].reset_index()
    groups["conflicting"] = (groups["disaster"] > 0) & (groups["disaster"] < groups["rows"])
    return groups.sort_values(["conflicting", "rows", "key"], ascending=[False, False, True]).reset_index(drop=True)


def keyword_rates(df: pd.DataFrame) -> pd.DataFrame:
    """Rows and disaster rate of each keyword (missing keywords left out), most rows first."""
    kw = df["keyword"].map(keyword_text)
    table = df[kw != ""].groupby(kw[kw != ""])["target"].agg(rows="size", disaster_rate="mean").reset_index()
    table.columns = ["keyword", "rows", "disaster_rate"]
    return table.sort_values(["rows", "keyword"], ascending=[False, True]).reset_index(drop=True)


def indicative_ngrams(texts: list[str], targets: np.ndarray, top: int = 15, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Word 1-2-grams with the largest logistic-regression weights towards each class (binary features
    seen in at least 3 tweets, L2 penalty): a quick look at what separates the classes."""
    vectoriser = CountVectorizer(ngram_range=(1, 2), min_df=3, binary=True, token_pattern=r"(?u)\b\w+\b")
    x = vectoriser.fit_transform(texts)
    model = LogisticRegression(C=0.5, max_iter=2000, random_state=seed).fit(x, targets)
    words = np.array(vectoriser.get_feature_names_out())
    order = np.argsort(model.coef_[0])
    seen = np.asarray(x.sum(0)).ravel()
    pick = lambda rows: pd.DataFrame({"n-gram": words[rows], "weight": model.coef_[0][rows], "tweets": seen[rows]})
    return {"1": pick(order[::-1][:top]), "0": pick(order[:top])}


# ---------------------------------------------------------------- explore

def explore(df: pd.DataFrame, *, name: str = "", options: NormaliseOptions = NormaliseOptions(),
            glove: tuple[dict, np.ndarray] | None = None) -> Report:
    """Balance, token lengths, keyword rates, duplicates and near-duplicates with conflicting labels, links,
    mentions, hashtags and numbers, GloVe coverage and the most indicative n-grams of a labelled tweets CSV.

    `glove` (word -> row, vectors) for the coverage defaults to GloVe 6B 50-d from its package."""
    from ..tweets.embeddings import coverage, load_glove

    targets = df["target"].to_numpy().astype(int)
    counts = [int((targets == k).sum()) for k in (0, 1)]
    texts = [normalise(t, options) for t in df["text"]]
    tokens = [tokenize(t) for t in texts]
    lengths = np.array([len(t) for t in tokens])
    keywords = keyword_rates(df)
    frequent = keywords[keywords["rows"] >= MIN_KEYWORD_ROWS].sort_values(["disaster_rate", "keyword"],
                                                                           ascending=[False, True])
    exact = duplicate_groups(df, df["text"])
    # Near-duplicates: different texts that read the same once links, mentions, numbers and case are normalised.
    near = duplicate_groups(df, pd.Series(texts, index=df.index))
    near = near[near["texts"] > 1].reset_index(drop=True)
    features = {f: np.array([bool(rx.search(t)) for t in df["text"]]) for f, rx in FEATURES.items()}
    words, _ = glove if glove is not None else load_glove()
    raw_cover = coverage([tokenize(t) for t in df["text"]], words)
    cover = coverage(tokens, words)
    indicative = indicative_ngrams(texts, targets)
    numbers = {
        "rows": len(df), "count": {"0": counts[0], "1": counts[1]}, "positive_share": counts[1] / len(df),
        "tokens": {str(k): {"median": float(np.median(lengths[targets == k])), "mean": float(lengths[targets == k].mean()),
                            "max": int(lengths[targets == k].max())} for k in (0, 1) if counts[k]},
        "missing_keyword": int((df["keyword"].map(keyword_text) == "").sum()),
        "missing_location": int((df["location"].fillna("").str.strip() == "").sum()),
        "keywords": len(keywords),
        "keyword_rates": {r.keyword: {"rows": int(r.rows), "disaster_rate": float(r.disaster_rate)}
                          for r in keywords.itertuples()},
        "duplicate_groups": len(exact), "duplicate_rows": int(exact["rows"].sum()),
        "conflicting_duplicate_groups": int(exact["conflicting"].sum()),
        "conflicting_duplicates": exact[exact["conflicting"]][["key", "rows", "disaster", "ids"]].to_dict("records"),
        "near_duplicate_groups": len(near), "conflicting_near_duplicate_groups": int(near["conflicting"].sum()),
        "conflicting_near_duplicates": near[near["conflicting"]][["key", "rows", "disaster", "ids"]].to_dict("records"),
        "feature_share": {f: {str(k): float(v[targets == k].mean()) for k in (0, 1) if counts[k]}
                          for f, v in features.items()},
        "glove_coverage": {"raw": raw_cover, "normalised": cover},
        "indicative": {k: v.to_dict("records") for k, v in indicative.items()},
    }
    pictures = {"lengths.png": _lengths_figure(lengths, targets), "keywords.png": _keywords_figure(frequent),
                "features.png": _features_figure(numbers["feature_share"]),
                "indicative.png": _indicative_figure(indicative)}

    page = _explore_page(f"Tweets data: {name or 'train.csv'}", numbers, pictures, exact, near, len(frequent))
    return Report(numbers, pictures, page)


def _explore_page(title: str, numbers: dict, pictures: dict, exact: pd.DataFrame, near: pd.DataFrame,
                  frequent: int) -> Page:
    """The explore report's page: `exact` and `near` are the duplicate groups, `frequent` the number of
    keywords with enough tweets to rate."""
    counts = [numbers["count"]["0"], numbers["count"]["1"]]
    page = Page(title, f"{numbers['rows']:,} labelled tweets")
    sec = page.section("Counts and balance")
    sec.facts({"tweets": numbers["rows"], CLASS_NAMES[0]: counts[0], CLASS_NAMES[1]: counts[1],
               "disaster share": f"{numbers['positive_share']:.1%}",
               "no keyword": numbers["missing_keyword"], "no location": numbers["missing_location"]})
    sec = page.section("Length, links, mentions, hashtags, numbers")
    sec.text("Tokens per tweet after normalisation, and the share of tweets with at least one link, @mention, "
             "#hashtag or number, per class.")
    sec.images((pictures["lengths.png"], "token length per class"),
               (pictures["features.png"], "share of tweets with links, mentions, hashtags, numbers"))
    sec = page.section("Keywords")
    sec.text(f"{numbers['keywords']} distinct keywords; {numbers['missing_keyword']:,} tweets have none. Disaster "
             f"rate of the keywords with at least {MIN_KEYWORD_ROWS} tweets ({frequent} of them):")
    sec.image(pictures["keywords.png"], "keywords with the highest and lowest disaster rates")
    sec = page.section("Duplicates with conflicting labels")
    sec.facts({"duplicated texts": len(exact), "rows in them": numbers["duplicate_rows"],
               "with both labels": numbers["conflicting_duplicate_groups"],
               "near-duplicate groups": len(near), "near-duplicates with both labels": numbers["conflicting_near_duplicate_groups"]})
    sec.text("Identical texts labelled both ways (training gives each group its majority label):")
    _group_table(sec, exact[exact["conflicting"]], empty="No identical texts carry both labels.", limit=25)
    sec.text("Near-duplicates: different texts that become identical once links, mentions, numbers, hashtags and case "
             "are normalised, labelled both ways:")
    _group_table(sec, near[near["conflicting"]], empty="No near-duplicates carry both labels.")
    sec = page.section("GloVe coverage")
    sec.text("Share of distinct words (and of all running tokens) that have a GloVe 6B vector, before and after "
             "normalisation.")
    sec.table(pd.DataFrame([{"text": label, "distinct words": c["distinct_words"], "words covered": f"{c['vocabulary']:.1%}",
                             "tokens covered": f"{c['tokens']:.1%}"}
                            for label, c in numbers["glove_coverage"].items()]))
    sec = page.section("Most indicative words and n-grams")
    sec.text("Weights of a logistic regression on binary word 1-2-gram features (seen in at least 3 tweets) of the "
             "normalised text.")
    sec.image(pictures["indicative.png"], "most indicative n-grams per class")
    return page


def _group_table(sec, groups: pd.DataFrame, empty: str, limit: int = 15) -> None:
    """The largest groups (one text shown), and how many more there are (report.json lists the exact ones)."""
    shown = groups.head(limit)
    sec.table(pd.DataFrame({"text (one of the group)": shown["example"].str.slice(0, 160), "rows": shown["rows"],
                            "disaster": shown["disaster"], "not": shown["rows"] - shown["disaster"],
                            "ids": shown["ids"]}), empty=empty)
    if len(groups) > limit:
        sec.note(f"... and {len(groups) - limit} more groups.")


def _lengths_figure(lengths: np.ndarray, targets: np.ndarray) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 3.4))
    edges = np.arange(0, max(int(lengths.max()), 1) + 2) - 0.5
    for k in (0, 1):
        of = lengths[targets == k]
        ax.hist(of, edges, color=CLASS_COLOURS[k], histtype="step", lw=1.8, weights=np.full(len(of), 1 / max(len(of), 1)),
                label=f"{CLASS_NAMES[k]}: median {np.median(of):.0f}" if len(of) else CLASS_NAMES[k])
    longest = int(lengths.max())
    ax.set(xlabel="tokens per tweet", ylabel="share of the class's tweets", title="tweet length per class",
           xlim=(-0.5, min(longest, np.percentile(lengths, 99.9) + 3) + 0.5))
    if longest > ax.get_xlim()[1]:
        ax.text(0.99, 0.6, f"(axis cut; longest {longest} tokens)", transform=ax.transAxes, ha="right", fontsize=8)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def _keywords_figure(frequent: pd.DataFrame, top: int = 15) -> bytes:
    """Two panels (highest, lowest) when there are more than 2 * top keywords; else one with them all."""
    if len(frequent) > 2 * top:
        panels = [(frequent.head(top), "highest disaster rate"), (frequent.tail(top).iloc[::-1], "lowest disaster rate")]
    else:
        panels = [(frequent, "disaster rate")]
    rows = max(len(panels[0][0]), 3)
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 0.3 * rows + 1.3), squeeze=False)
    for ax, (part, title) in zip(axes[0], panels):
        y = np.arange(len(part))[::-1]
        ax.barh(y, part["disaster_rate"], color=CLASS_COLOURS[1], alpha=0.8)
        ax.set_yticks(y, [f"{k} ({n})" for k, n in zip(part["keyword"], part["rows"])], fontsize=8)
        for yi, rate in zip(y, part["disaster_rate"]):
            ax.text(rate + 0.01, yi, f"{rate:.0%}", va="center", fontsize=8)
        ax.set(xlim=(0, 1.12), title=f"{title} (keyword, tweets)", xlabel="share of the keyword's tweets that are disasters")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return png(fig)


def _features_figure(shares: dict) -> bytes:
    fig, ax = plt.subplots(figsize=(7, 3.2))
    names = list(shares)
    x = np.arange(len(names))
    for k in (0, 1):
        values = [shares[f].get(str(k), np.nan) for f in names]
        bars = ax.bar(x + (k - 0.5) * 0.38, values, 0.38, color=CLASS_COLOURS[k], label=CLASS_NAMES[k])
        ax.bar_label(bars, [f"{v:.0%}" for v in values], fontsize=8, padding=2)
    ax.set_xticks(x, names)
    ax.set(ylabel="share of tweets", ylim=(0, 1), title="tweets with at least one")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return png(fig)


def _indicative_figure(indicative: dict[str, pd.DataFrame]) -> bytes:
    n = max(len(v) for v in indicative.values())
    fig, axes = plt.subplots(1, 2, figsize=(12, 0.3 * n + 1.3))
    for ax, k in zip(axes, ("1", "0")):
        table = indicative[k]
        y = np.arange(len(table))[::-1]
        ax.barh(y, table["weight"].abs(), color=CLASS_COLOURS[int(k)], alpha=0.8)
        ax.set_yticks(y, [f"{w} ({c})" for w, c in zip(table["n-gram"], table["tweets"])], fontsize=8)
        ax.set(title=f"towards {CLASS_NAMES[int(k)]} (n-gram, tweets)", xlabel="|weight|")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return png(fig)


# ---------------------------------------------------------------- errors

def run_data(run: runs.Run) -> Path:
    """The train.csv a run (or an ensemble's first run) was trained on."""
    return Path(run.settings.get("data", "")) / "train.csv"


def validation_frame(run_dir: Path) -> pd.DataFrame:
    """The run's out-of-fold predictions (validation_predictions.csv: id, target, prob) joined with the
    text, keyword and location of its train.csv. `target` is the label the run was scored against (after
    conflicting duplicates took their group's majority)."""
    run = runs.open_run(Path(run_dir), "tweets")
    ids, targets, probs = run.validation_predictions()
    preds = pd.DataFrame({"id": ids, "target": targets, "prob": probs})
    source = run_data(run)
    df = read_tweets(source, labelled=True, skip_bad=True).drop(columns="target")
    merged = preds.merge(df, on="id", how="left", validate="one_to_one")
    if merged["text"].isna().any():
        raise BadInput(f"{source}: holds no row for {int(merged['text'].isna().sum())} of the run's validation ids "
                         "(the file changed since training?)")
    return merged


def errors(run_dir: Path, csv: Path | None = None, *, top: int = 20, device: str = "auto",
           min_keyword_rows: int = MIN_KEYWORD_ROWS, options: NormaliseOptions | None = None) -> Report:
    """The most confident false positives and negatives of a run with their text, F1 / precision / recall
    against the threshold, a reliability diagram and per-keyword error rates; on the run's out-of-fold
    predictions, or on a labelled `csv` (predicted with the run's models, as `evaluate` does)."""
    run_dir = Path(run_dir)
    run = runs.open_run(run_dir, "tweets")
    threshold = run.threshold
    if csv is None:
        df = validation_frame(run_dir)
        probs = df["prob"].to_numpy(np.float64)
        where = "out-of-fold validation predictions of " + str(run_data(run))
    else:
        df = read_tweets(Path(csv), labelled=True)
        probs = load_run(run, device).predict_proba(df["text"].tolist(), df["keyword"].tolist())
        probs = probs.astype(np.float64)
        where = str(csv)
    if options is None:
        options = _run_options(run)
    labels = df["target"].to_numpy().astype(int)
    ids = df["id"].astype(str).to_numpy()
    fp, fn = confident_mistakes(ids, labels, probs, threshold, top)
    called = probs >= threshold
    report = binary_report(labels, probs, threshold)
    calibration = figures.reliability(labels, probs)
    sweep = threshold_sweep(labels, probs)
    keywords = keyword_errors(df, labels, called, min_keyword_rows)
    mistake = lambda i: {"id": ids[i], "prob": float(probs[i]), "keyword": keyword_text(df["keyword"].iloc[i]),
                         "text": df["text"].iloc[i], "normalised": normalise(df["text"].iloc[i], options)}
    numbers = {
        "run": str(run_dir), "data": where, "tweets": len(df), "threshold": threshold,
        **{k: report[k] for k in ("f1", "precision", "recall", "auc", "accuracy", "tp", "fp", "fn", "tn")},
        "top_false_positives": [mistake(i) for i in fp], "top_false_negatives": [mistake(i) for i in fn],
        "ece": calibration["ece"], "calibration": calibration,
        "keyword_errors": keywords.to_dict("records"),
    }
    pictures = {"threshold.png": _threshold_figure(sweep, threshold, report),
                "calibration.png": figures.reliability_figure(calibration, f"calibration on {len(df):,} tweets")}
    if not keywords.empty:
        pictures["keyword_errors.png"] = _keyword_errors_figure(keywords, float((called != labels).mean()))

    page = _errors_page(run_dir, numbers, pictures, keywords, min_keyword_rows)
    return Report(numbers, pictures, page)


def _errors_page(run_dir: Path, numbers: dict, pictures: dict, keywords: pd.DataFrame, min_keyword_rows: int) -> Page:
    """The errors report's page."""
    page = Page(f"Tweets errors: {run_dir.name}", f"{run_dir} on {numbers['data']}")
    threshold = numbers["threshold"]
    sec = page.section("Summary")
    sec.facts({"tweets": numbers["tweets"], "threshold": f"{threshold:.3f}", "F1": f"{numbers['f1']:.4f}",
               "precision": f"{numbers['precision']:.4f}", "recall": f"{numbers['recall']:.4f}",
               "ROC AUC": f"{numbers['auc']:.4f}", "false positives": numbers["fp"],
               "false negatives": numbers["fn"]})
    for title, key in (("Most confident false positives", "top_false_positives"),
                       ("Most confident false negatives", "top_false_negatives")):
        sec = page.section(title)
        sec.text("Probability of 'disaster' from the run; the original text and what the model read after normalisation.")
        sec.table(pd.DataFrame([{"prob": m["prob"], "keyword": m["keyword"], "text": m["text"],
                                 "normalised": m["normalised"], "id": m["id"]} for m in numbers[key]]),
                  empty="None at this threshold.")
    sec = page.section("Threshold and calibration")
    sec.images((pictures["threshold.png"], "F1, precision and recall against the threshold"),
               (pictures["calibration.png"], "reliability diagram"))
    sec = page.section("Error rate per keyword")
    sec.text(f"Keywords with at least {min_keyword_rows} tweets here, the highest error rates first.")
    if "keyword_errors.png" in pictures:
        sec.image(pictures["keyword_errors.png"], "error rate per keyword")
    sec.table(pd.DataFrame({"keyword": keywords["keyword"], "tweets": keywords["rows"],
                            "disaster rate": keywords["disaster_rate"].map("{:.0%}".format),
                            "false positives": keywords["false_positives"],
                            "false negatives": keywords["false_negatives"],
                            "error rate": keywords["error_rate"].map("{:.0%}".format)}).head(25),
              empty=f"No keyword has {min_keyword_rows} tweets here.")
    return page


def _run_options(run: runs.Run) -> NormaliseOptions:
    """The normalisation the run used (shown beside each mistake's text)."""
    try:
        return NormaliseOptions(**run.settings["normalise"])
    except (KeyError, TypeError):
        return NormaliseOptions()


def threshold_sweep(labels: np.ndarray, probs: np.ndarray, steps: int = 99) -> pd.DataFrame:
    """F1, precision and recall at thresholds 0.01 ... 0.99 (precision NaN where no tweet is called positive)."""
    rows = []
    for t in np.linspace(0.01, 0.99, steps):
        r = binary_report(labels, probs, float(t))
        # precision is undefined (not 0) where nothing is called a disaster
        precision = r["precision"] if r["tp"] + r["fp"] else float("nan")
        rows.append({"threshold": float(t), "f1": r["f1"], "precision": precision, "recall": r["recall"]})
    return pd.DataFrame(rows)


def keyword_errors(df: pd.DataFrame, labels: np.ndarray, called: np.ndarray,
                   min_rows: int = MIN_KEYWORD_ROWS) -> pd.DataFrame:
    """Per keyword with at least `min_rows` rows: rows, disaster rate, false positives and negatives and
    the error rate, highest error rate first."""
    table = pd.DataFrame({"keyword": df["keyword"].map(keyword_text).to_numpy(), "target": labels,
                          "fp": called & (labels == 0), "fn": ~called & (labels == 1)})
    table = table[table["keyword"] != ""]
    out = table.groupby("keyword").agg(rows=("target", "size"), disaster_rate=("target", "mean"),
                                       false_positives=("fp", "sum"), false_negatives=("fn", "sum")).reset_index()
    out["error_rate"] = (out["false_positives"] + out["false_negatives"]) / out["rows"]
    out = out[out["rows"] >= min_rows]
    return out.sort_values(["error_rate", "rows", "keyword"], ascending=[False, False, True]).reset_index(drop=True)


def _threshold_figure(sweep: pd.DataFrame, threshold: float, report: dict) -> bytes:
    fig, ax = plt.subplots(figsize=(5.6, 5.2))
    for key, colour in (("f1", "k"), ("precision", "C0"), ("recall", "C2")):
        ax.plot(sweep["threshold"], sweep[key], color=colour, lw=1.6 if key == "f1" else 1.2, label=key.capitalize()
                if key != "f1" else "F1")
    ax.axvline(threshold, color="C3", ls="--", lw=1)
    ax.text(threshold + 0.01, 0.05, f"run's threshold {threshold:.3f}\nF1 {report['f1']:.3f}, P {report['precision']:.3f}, "
            f"R {report['recall']:.3f}", color="C3", fontsize=8)
    ax.set(xlabel="threshold (a disaster when probability >= threshold)", ylabel="score", xlim=(0, 1),
           ylim=(0, 1.02), title="F1, precision and recall\nagainst the threshold")
    ax.legend(loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def _keyword_errors_figure(keywords: pd.DataFrame, overall: float, top: int = 20) -> bytes:
    part = keywords.head(top)
    fig, ax = plt.subplots(figsize=(8, 0.3 * max(len(part), 3) + 1.3))
    y = np.arange(len(part))[::-1]
    ax.barh(y, part["false_positives"] / part["rows"], color=CLASS_COLOURS[0], label="false positives")
    ax.barh(y, part["false_negatives"] / part["rows"], left=part["false_positives"] / part["rows"],
            color=CLASS_COLOURS[1], label="false negatives")
    ax.set_yticks(y, [f"{k} ({n})" for k, n in zip(part["keyword"], part["rows"])], fontsize=8)
    ax.axvline(overall, color="k", ls="--", lw=1, label=f"all tweets: {overall:.1%}")
    ax.set(xlabel="share of the keyword's tweets the model gets wrong", title="highest error rates (keyword, tweets)",
           xlim=(0, min(1, max(part["error_rate"].max(), overall) * 1.15 + 0.02)))
    ax.legend(loc="lower right", fontsize=8)
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return png(fig)
