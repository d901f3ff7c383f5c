"""Pictures shared by the reports: PNG bytes from a figure, reliability diagrams, patch grids."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

CLASS_COLOURS = ("#3b7dd8", "#d8553b")  # label 0, label 1: the same two colours in every report


def png(fig: plt.Figure, dpi: int = 100) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)
    return buffer.getvalue()


def reliability(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> dict:
    """Equal-width bins of predicted probability: mean prediction, observed rate and count per bin, and the
    expected calibration error (the count-weighted mean of |observed - predicted|)."""
    labels, probs = np.asarray(labels, float), np.asarray(probs, float)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    count = np.bincount(which, minlength=bins)
    predicted = np.bincount(which, probs, minlength=bins) / np.maximum(count, 1)
    observed = np.bincount(which, labels, minlength=bins) / np.maximum(count, 1)
    ece = float(np.sum(count * np.abs(observed - predicted)) / max(len(probs), 1))
    return {"bins": bins, "count": count.tolist(), "predicted": predicted.tolist(), "observed": observed.tolist(),
            "ece": ece}


def reliability_figure(table: dict, title: str) -> bytes:
    count = np.array(table["count"])
    used = count > 0
    edges = np.linspace(0, 1, table["bins"] + 1)
    fig, (ax, hist) = plt.subplots(2, 1, figsize=(5.2, 5.6), height_ratios=[3, 1], sharex=True)
    ax.plot([0, 1], [0, 1], "--", color="grey", lw=0.8, label="perfectly calibrated")
    ax.plot(np.array(table["predicted"])[used], np.array(table["observed"])[used], "o-", color="C0",
            label="this model", clip_on=False)
    ax.set(ylabel="observed share positive", xlim=(0, 1), ylim=(-0.02, 1.02),
           title=f"{title}\nexpected calibration error {table['ece']:.3f}")
    ax.legend(loc="upper left")
    ax.grid(alpha=0.3)
    hist.bar(edges[:-1], count, width=np.diff(edges), align="edge", color="C0", alpha=0.6, edgecolor="white")
    hist.set(xlabel="predicted probability", ylabel="count")
    hist.grid(alpha=0.3)
    fig.tight_layout()
    return png(fig)


def patch_grid(pixels: np.ndarray, captions: list[str], title: str, *, columns: int = 8,
               heat: np.ndarray | None = None, box_colour: str = "#00e0ff") -> bytes:
    """96x96 patches in a grid, the labelled centre 32x32 outlined, one caption under each.

    `heat` (N, 96, 96) in [0, 1], when given, is drawn over each patch (for explanations such as Grad-CAM).
    """
    n = len(pixels)
    if n == 0:
        fig, ax = plt.subplots(figsize=(6, 0.8))
        ax.text(0.5, 0.5, f"{title}: none", ha="center", va="center")
        ax.axis("off")
        return png(fig)
    columns = max(min(columns, n), 4)  # at least 4 slots wide, so the title fits above a short row
    rows = -(-n // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.45 * columns, 1.62 * rows + 0.45), squeeze=False)
    size = pixels.shape[1]
    for i, ax in enumerate(axes.ravel()):
        ax.axis("off")
        if i >= n:
            continue
        ax.imshow(pixels[i], interpolation="nearest")
        if heat is not None:
            # Opacity follows the map: no evidence leaves the tissue as it is (a colour map at a fixed
            # alpha would tint every patch, the one that shows nothing too).
            overlay = plt.get_cmap("YlOrRd")(heat[i])
            overlay[..., 3] = 0.7 * heat[i]
            ax.imshow(overlay, interpolation="bilinear")
        c = (size - 32) / 2 - 0.5
        ax.add_patch(Rectangle((c, c), 32, 32, fill=False, edgecolor=box_colour, lw=1.2))
        ax.set_title(captions[i], fontsize=8, pad=2)
    fig.suptitle(title, fontsize=11, x=0.01, ha="left")
    fig.tight_layout(pad=0.3, h_pad=0.6, w_pad=0.3)
    return png(fig)
