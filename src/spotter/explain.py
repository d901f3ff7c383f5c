"""Explanations a person can check: Grad-CAM for the histology CNNs, attributions for the tweet models.

Plain functions of (loaded model, inputs), used by `spotter serve`, `spotter histo explain` and the task adapters.

- Grad-CAM on the CNN's last convolutional stage, in *logit units*: each channel is weighted by the summed
  gradient of the logit over the map (for a global-average-pooled head that is exactly the head's weight), so
  a location's value is the logit (less the bias) the patch would get if every location looked like it.
  Maps are therefore comparable across patches and models; they are drawn on one fixed scale
  (`CAM_SCALE` logits = full colour), never min-max scaled per image, and faded when the probability is low.
  The hook is removed after every call (pytorch-grad-cam#195/#483 leaked them).
- Tweets: integrated gradients (captum's `LayerIntegratedGradients`) on the token embeddings of the RNNs and
  MiniLM, from an all-padding baseline; the exact per-feature contributions (x_j * coef_j) of the TF-IDF
  logistic regression. Token scores are summed onto the words of the original text.
"""
from __future__ import annotations

import io
import re
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from .errors import UserError

# Logit units drawn at full colour (a location that alone would make p = 0.9997). Chosen so that strong evidence
# rarely saturates: on a trained ResNet's validation tumour patches the per-patch maximum was 4.4 logits at the
# median and 7.1 at the 99th percentile (4 logits, tried first, turned whole tumour patches one flat colour).
CAM_SCALE = 8.0
IG_STEPS = 32
PATCH = 96
CENTRE = (32, 64)  # the labelled centre 32x32 of a 96x96 patch


class NotExplainable(UserError, ValueError):
    """This model has no explanation of the kind asked for (the message says which it has)."""


# ---------------------------------------------------------------- Grad-CAM

def cam_layer(model: nn.Module) -> nn.Module:
    """The last convolutional stage of each histology CNN."""
    if hasattr(model, "stages"):  # ResNet
        return model.stages
    if hasattr(model, "_features"):  # EfficientNet-Lite: the activated head convolution, which is pooled
        return model._features
    if hasattr(model, "features"):  # the write-up's CNN
        return model.features
    raise NotExplainable(f"no Grad-CAM layer known for {type(model).__name__}")


def grad_cam(model: nn.Module, x: torch.Tensor, layer: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(maps (N, h, w) in logit units, logits (N,)) for a preprocessed batch `x`."""
    layer = cam_layer(model) if layer is None else layer
    captured: list[torch.Tensor] = []
    handle = layer.register_forward_hook(lambda module, inputs, output: captured.append(output))
    try:
        with torch.enable_grad():
            logits = model(x.float())
            grads, = torch.autograd.grad(logits.sum(), captured[0])
    finally:
        handle.remove()
    activations = captured[0].detach()
    weights = grads.sum((2, 3), keepdim=True)  # = the head's weight per channel under global average pooling
    return (weights * activations).sum(1).relu(), logits.detach()


def patch_cam(model: nn.Module, x: torch.Tensor, crop: int) -> np.ndarray:
    """Grad-CAM of a batch of centre crops, upsampled and placed on the whole 96x96 patch: (N, 96, 96)."""
    maps, _ = grad_cam(model, x)
    up = F.interpolate(maps[:, None].float(), size=(crop, crop), mode="bilinear", align_corners=False)[:, 0]
    out = torch.zeros(len(maps), PATCH, PATCH)
    start = (PATCH - crop) // 2
    out[:, start:start + crop, start:start + crop] = up.cpu()
    return out.numpy()


def cam_intensity(cam: np.ndarray, scale: float = CAM_SCALE) -> np.ndarray:
    """A map in logit units -> [0, 1] on the fixed scale."""
    return np.clip(cam / scale, 0, 1)


def overlay_png(pixels: np.ndarray, cam: np.ndarray, prob: float, *, scale: float = CAM_SCALE, size: int = 288) -> bytes:
    """The patch with its map blended in (more opaque where stronger, faded when `prob` is low) and the
    labelled centre 32x32 outlined; a PNG of `size` pixels a side."""
    from PIL import Image, ImageDraw

    intensity = cam_intensity(cam, scale)
    colour = _colours(intensity)
    # at most 60 % opaque, so the tissue under the strongest evidence stays visible
    alpha = (0.6 * intensity * (0.2 + 0.8 * float(prob)))[..., None]
    blended = (pixels.astype(np.float32) * (1 - alpha) + colour * alpha).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(blended).resize((size, size), Image.NEAREST)
    k = size / PATCH
    ImageDraw.Draw(image).rectangle([CENTRE[0] * k, CENTRE[0] * k, CENTRE[1] * k - 1, CENTRE[1] * k - 1],
                                    outline=(0, 230, 255), width=max(1, round(k * 0.7)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _colours(intensity: np.ndarray) -> np.ndarray:
    """Yellow-green through orange to dark red: the upper half of 'turbo', apart from H&E's pinks and purples."""
    from matplotlib import colormaps

    return colormaps["turbo"](0.55 + 0.45 * intensity)[..., :3] * 255


def colour_scale_png(width: int = 256, height: int = 14) -> bytes:
    """The legend: 0 to CAM_SCALE logits in the overlay's colours."""
    from PIL import Image

    ramp = _colours(np.linspace(0, 1, width))
    image = Image.fromarray(np.repeat(ramp[None].astype(np.uint8), height, 0))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


# ---------------------------------------------------------------- tweets: words of the original text

def align_to_words(original: str, pieces: list[str], scores: np.ndarray,
                   pieces_of: Callable[[str], list[str]]) -> list[dict]:
    """Sum the scores of the model's token `pieces` onto the whitespace-separated words of the `original`
    text. `pieces_of(word)` gives the pieces one original word becomes; they are matched in order, and a
    piece no word claims (normalisation rarely splits or merges across words) goes to the word before it."""
    words = original.split()
    owner = [-1] * len(pieces)
    pos = 0
    for w, word in enumerate(words):
        for piece in pieces_of(word):
            for j in range(pos, min(pos + 4, len(pieces))):
                if pieces[j] == piece:
                    owner[j], pos = w, j + 1
                    break
    last = next((o for o in owner if o >= 0), 0)
    totals = np.zeros(len(words))
    for j, o in enumerate(owner):
        last = o if o >= 0 else last
        if words:
            totals[last] += float(scores[j])
    return [{"text": word, "attribution": float(t)} for word, t in zip(words, totals)]


def mean_explanations(parts: list[dict]) -> dict:
    """The mean of several fold models' explanations of one tweet (their words are the same)."""
    first = parts[0]
    words = [{"text": w["text"], "attribution": float(np.mean([p["words"][i]["attribution"] for p in parts]))}
             for i, w in enumerate(first["words"])]
    keyword = None if first["keyword"] is None else float(np.mean([p["keyword"] for p in parts]))
    return {"words": words, "keyword": keyword, "method": first["method"], "models": len(parts),
            **{k: float(np.mean([p[k] for p in parts])) for k in ("logit", "baseline_logit")}}


def _ig(forward, layers, inputs: tuple, baselines: tuple, extra: tuple, steps: int):
    from captum.attr import LayerIntegratedGradients

    with warnings.catch_warnings():  # "several layers": the word and keyword embeddings are independent
        warnings.simplefilter("ignore", UserWarning)
        ig = LayerIntegratedGradients(forward, layers if len(layers) > 1 else layers[0])
    # cuDNN's RNN has no backward pass in eval mode; the plain kernels give the same numbers.
    with torch.backends.cudnn.flags(enabled=False):
        attributions = ig.attribute(inputs, baselines=baselines, additional_forward_args=extra, n_steps=steps,
                                    internal_batch_size=steps)
    return attributions if isinstance(attributions, list) else [attributions]


def rnn_attributions(model: nn.Module, vocab, keyword_list: list[str], length: int, text: str, keyword: str,
                     options, steps: int = IG_STEPS) -> dict:
    """Integrated gradients of a tweet RNN's logit on its word embeddings (and keyword embedding)."""
    from .tweets.text import normalise, tokenize

    device = next(model.parameters()).device
    tokens = tokenize(normalise(text, options))
    ids, n = vocab.encode(tokens, length)
    index = {k: i + 1 for i, k in enumerate(keyword_list)}
    ids_t = torch.from_numpy(ids)[None].to(device)
    kw_t = torch.tensor([index.get(keyword, 0)], device=device)
    lengths = torch.tensor([n])
    layers = [model.embedding] + ([model.keyword] if hasattr(model, "keyword") else [])
    forward = lambda ids, kw, lengths: model(ids, lengths, kw)  # noqa: E731
    parts = _ig(forward, layers, (ids_t, kw_t), (torch.zeros_like(ids_t), torch.zeros_like(kw_t)), (lengths,), steps)
    scores = parts[0][0, :n].sum(-1).detach().cpu().numpy()
    with torch.no_grad():
        logit = float(model(ids_t, lengths, kw_t))
        base = float(model(torch.zeros_like(ids_t), lengths, torch.zeros_like(kw_t)))
    pieces = tokens[:length]
    words = align_to_words(text, pieces, scores[:len(pieces)], lambda w: tokenize(normalise(w, options)))
    keyword_score = float(parts[1].sum()) if len(parts) > 1 and keyword else None
    return {"words": words, "keyword": keyword_score, "logit": logit, "baseline_logit": base,
            "method": f"integrated gradients on the word embeddings ({steps} steps, padding baseline)"}


def minilm_attributions(model: nn.Module, tokenizer, text: str, keyword: str, options,
                        steps: int = IG_STEPS, max_tokens: int | None = None) -> dict:
    """Integrated gradients of a fine-tuned transformer's logit (MiniLM or any `--encoder`) on its word-piece
    embeddings; special tokens stay as they are in the baseline, every other piece becomes padding."""
    from .tweets.minilm import MAX_TOKENS
    from .tweets.text import normalise

    device = next(model.parameters()).device
    enc = tokenizer([normalise(text, options)], [keyword], truncation="only_first",
                    max_length=max_tokens or MAX_TOKENS, return_tensors="pt")
    ids, mask = enc["input_ids"].to(device), enc["attention_mask"].to(device)
    segments = enc["token_type_ids"].to(device) if "token_type_ids" in enc else torch.zeros_like(ids)
    special = torch.tensor(tokenizer.get_special_tokens_mask(ids[0].tolist(), already_has_special_tokens=True),
                           device=device).bool()[None]
    baseline = torch.where(special, ids, torch.full_like(ids, tokenizer.pad_token_id))
    forward = lambda ids, mask, segments: model(ids, mask, segments)  # noqa: E731
    layer = model.encoder.get_input_embeddings()
    scores = _ig(forward, [layer], (ids,), (baseline,), (mask, segments), steps)[0][0].sum(-1).detach().cpu().numpy()
    with torch.no_grad():
        logit, base = float(model(ids, mask, segments)), float(model(baseline, mask, segments))
    pieces = tokenizer.convert_ids_to_tokens(ids[0].tolist())
    # Which text each piece belongs to: 0 the tweet, 1 the keyword (also for encoders without segment ids).
    sequence = np.array([-1 if i is None else i for i in enc.sequence_ids(0)])
    is_special = special[0].cpu().numpy()
    in_text = (sequence == 0) & ~is_special
    in_keyword = (sequence == 1) & ~is_special
    words = align_to_words(text, [p for p, t in zip(pieces, in_text) if t], scores[in_text],
                           lambda w: tokenizer.tokenize(normalise(w, options)))
    return {"words": words, "keyword": float(scores[in_keyword].sum()) if keyword else None,
            "logit": logit, "baseline_logit": base,
            "method": f"integrated gradients on the word-piece embeddings ({steps} steps, [PAD] baseline)"}


def tfidf_contributions(fold: tuple[np.ndarray, np.ndarray, float], text: str, keyword: str, options) -> dict:
    """The exact decomposition of the TF-IDF model's logit: feature j adds x_j * coef_j, shared equally by
    its occurrences; a word gets its unigram, half of each word bigram it is in, and its character n-grams.
    `fold` is a fold's (idf, coefficients, intercept), as `tfidf.load_fold` returns it."""
    from sklearn.utils import murmurhash3_32

    from .tweets import tfidf
    from .tweets.text import normalise

    normalised = normalise(text, options)
    doc = f"{keyword} {normalised}" if keyword else normalised
    lower = tfidf._WORDS.build_preprocessor()(doc)
    doc_words = lower.split(" ")
    n_features = tfidf._WORDS.n_features
    occurrences: list[tuple[int, list[int]]] = []  # (feature column, doc words it belongs to)

    def column(gram: str, offset: int) -> int:
        return offset + abs(murmurhash3_32(gram, seed=0)) % n_features

    tokens = [(m.group(), lower[:m.start()].count(" ")) for m in re.finditer(tfidf._WORDS.token_pattern, lower)]
    for gram, w in tokens:
        occurrences.append((column(gram, 0), [w]))
    for (a, wa), (b, wb) in zip(tokens, tokens[1:]):
        occurrences.append((column(f"{a} {b}", 0), [wa, wb]))
    chars = tfidf._CHARS.build_analyzer()
    for w, word in enumerate(doc_words):
        for gram in chars(word):
            occurrences.append((column(gram, n_features), [w]))

    counts = tfidf.counts([normalised], [keyword])
    mine = np.bincount([c for c, _ in occurrences], minlength=counts.shape[1])
    if not np.array_equal(mine, counts.toarray()[0]):  # would mean sklearn changed how it hashes
        raise RuntimeError("TF-IDF contributions: n-gram enumeration does not match the vectorizer")
    idf, coef, intercept = fold
    x = tfidf._tfidf(counts, idf).toarray()[0]
    per_occurrence = np.divide(x * coef, np.maximum(mine, 1))
    per_word = np.zeros(len(doc_words))
    for col, owners in occurrences:
        for w in owners:
            per_word[w] += per_occurrence[col] / len(owners)
    n_kw = len(keyword.split()) if keyword else 0
    text_scores = per_word[n_kw:]
    words = align_to_words(text, normalised.split(), text_scores, lambda w: normalise(w, options).split())
    return {"words": words, "keyword": float(per_word[:n_kw].sum()) if keyword else None,
            "logit": float(x @ coef + intercept), "baseline_logit": float(intercept),
            "method": "exact TF-IDF contributions (feature value x coefficient)"}


# ---------------------------------------------------------------- a folder of patches, without the server

def explain_folder(run_dir, images, out, *, device: str = "auto", batch_size: int = 64, log=print):
    """`spotter histo explain`: `<id>.png` overlays and `explanations.csv` (probability, strongest location
    in logits, share of the map on the labelled centre) for every patch in `images`."""
    from pathlib import Path

    import pandas as pd
    from tqdm import tqdm

    from .histo.data import DataError
    from .histo.task import load_run
    from .serve import uploads

    images, out = Path(images), Path(out)
    paths = sorted(p for p in images.iterdir() if p.suffix.lower() in (".tif", ".tiff", ".png", ".jpg", ".jpeg")) \
        if images.is_dir() else []
    if not paths:
        raise DataError(f"{images}: no .tif, .png or .jpg patches there")
    predictor = load_run(Path(run_dir), device)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for start in tqdm(range(0, len(paths), batch_size), desc="explain", unit="batch", disable=len(paths) <= batch_size):
        chunk = paths[start:start + batch_size]
        try:
            pixels = np.stack([uploads.decode_patch(p.read_bytes(), str(p), 10**8)[0] for p in chunk])
        except uploads.UploadError as err:
            raise DataError(str(err)) from None
        probs = predictor.predict_proba(pixels)
        cams = predictor.grad_cam(pixels)
        for path, px, cam, p in zip(chunk, pixels, cams, probs):
            (out / f"{path.stem}.png").write_bytes(overlay_png(px, cam, float(p)))
            rows.append({"id": path.stem, "probability": float(p), "max_logit": float(cam.max()),
                         "centre_share": float(cam[32:64, 32:64].sum() / max(cam.sum(), 1e-12))})
    pd.DataFrame(rows).to_csv(out / "explanations.csv", index=False, float_format="%.6f")
    log(f"wrote {len(rows)} Grad-CAM overlays and explanations.csv to {out} (colour: 0 to {CAM_SCALE:g} logits, "
        "faded by probability; the cyan square is the labelled centre 32x32)")
    return rows
