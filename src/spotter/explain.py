"""Explanations a person can check: Grad-CAM for the histology CNNs, attributions for the tweet models.

Plain functions of (model, tensors): a leaf that knows no task. The tasks build on them: histology's predictor
(Grad-CAM of a run or ensemble), `histo/gradcam.py` (`spotter histo explain`), and the tweet models' word
attributions (`tweets/attributions.py`, TF-IDF's exact contributions in `tweets/tfidf.py`).

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
import warnings
from typing import Callable

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from . import extras
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


def integrated_gradients(forward, layers, inputs: tuple, baselines: tuple, extra: tuple, steps: int = IG_STEPS):
    """captum's layer integrated gradients of `forward`'s output on the outputs of `layers` (one attribution
    tensor per layer)."""
    extras.require("serve", "captum", what="word attributions (integrated gradients)")
    from captum.attr import LayerIntegratedGradients  # optional: the serve extra

    with warnings.catch_warnings():  # "several layers": the word and keyword embeddings are independent
        warnings.simplefilter("ignore", UserWarning)
        ig = LayerIntegratedGradients(forward, layers if len(layers) > 1 else layers[0])
    # cuDNN's RNN has no backward pass in eval mode; the plain kernels give the same numbers.
    with torch.backends.cudnn.flags(enabled=False):
        attributions = ig.attribute(inputs, baselines=baselines, additional_forward_args=extra, n_steps=steps,
                                    internal_batch_size=steps)
    return attributions if isinstance(attributions, list) else [attributions]
