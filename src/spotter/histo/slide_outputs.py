"""What a slide run leaves behind: arrays, pictures for a pathologist, and files QuPath and WSInfer read.

Every file is written to a temporary name and renamed, so a killed run never leaves a half file. All
coordinates are level-0 pixels of the slide; cell (i, j) covers x in [xedge[j], xedge[j+1]) and y in
[yedge[i], yedge[i+1]) (`Grid.edges`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
from scipy import ndimage

from ..files import atomic_path

CLASS = {"name": "Tumor", "color": [200, 0, 0]}  # QuPath's built-in tumour class and colour


def write_all(out: Path, heat: np.ndarray, grid, thumb: np.ndarray, thumb_scale: float, mask: np.ndarray,
              mpp: float, summary: dict, threshold: float) -> None:
    xs, ys = grid.edges(grid.cols), grid.edges(grid.rows)
    _atomic(out / "heatmap.npy", lambda f: np.save(f, heat))
    tiles = tile_table(heat, xs, ys)
    _atomic(out / "tiles.csv", lambda f: tiles.to_csv(f, index=False, float_format="%.6f"), text=True)
    _atomic(out / "tiles.geojson", lambda f: _dump(tiles_geojson(tiles), f), text=True)
    _atomic(out / "regions.geojson", lambda f: _dump(regions_geojson(heat, xs, ys, mpp, threshold), f), text=True)
    pictures(out, heat, xs, ys, thumb, thumb_scale, mask, mpp, summary, threshold)


def _atomic(path: Path, write: Callable, text: bool = False) -> None:
    with atomic_path(path) as tmp, open(tmp, "w" if text else "wb") as f:
        write(f)


def _dump(obj: dict, f) -> None:
    json.dump(obj, f, separators=(",", ":"))


# ---------------------------------------------------------------- tables and GeoJSON

def tile_table(heat: np.ndarray, xs: np.ndarray, ys: np.ndarray) -> pd.DataFrame:
    """WSInfer's schema: one row per scored cell, `minx,miny,width,height,prob_tumor` in level-0 pixels."""
    i, j = np.nonzero(~np.isnan(heat))
    return pd.DataFrame({"minx": xs[j], "miny": ys[i], "width": xs[j + 1] - xs[j], "height": ys[i + 1] - ys[i],
                         "prob_tumor": heat[i, j].astype(np.float64)})


def _box(x0: float, y0: float, x1: float, y1: float) -> list:
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def tiles_geojson(tiles: pd.DataFrame) -> dict:
    """QuPath tile objects with a `prob_tumor` measurement (as WSInfer writes them)."""
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": _box(x, y, x + w, y + h)},
                 "properties": {"objectType": "tile", "isLocked": True, "measurements": {"prob_tumor": round(p, 6)}}}
                for x, y, w, h, p in zip(tiles["minx"].tolist(), tiles["miny"].tolist(), tiles["width"].tolist(),
                                         tiles["height"].tolist(), tiles["prob_tumor"].tolist())]
    return {"type": "FeatureCollection", "features": features}


def regions_geojson(heat: np.ndarray, xs: np.ndarray, ys: np.ndarray, mpp: float, threshold: float) -> dict:
    """Connected regions (4-neighbours, so each is one valid polygon) of cells at or above `threshold`, as
    QuPath annotations of class Tumor with their area in mm² and their maximum and mean probability."""
    import shapely
    from shapely.geometry import box, mapping

    hot = np.nan_to_num(heat.astype(np.float32), nan=0.0) >= threshold
    labels, n = ndimage.label(hot)
    features = []
    for k, where in enumerate(ndimage.find_objects(labels), start=1):
        part = labels[where] == k
        boxes = []
        for r, row in enumerate(part):  # one box per horizontal run of cells: far fewer than one per cell
            padded = np.diff(np.concatenate([[0], row.astype(np.int8), [0]]))
            for a, b in zip(np.flatnonzero(padded == 1), np.flatnonzero(padded == -1)):
                i, j0, j1 = where[0].start + r, where[1].start + a, where[1].start + b
                boxes.append(box(xs[j0], ys[i], xs[j1], ys[i + 1]))
        polygon = shapely.union_all(boxes)
        probs = heat[where][part].astype(np.float64)
        area = polygon.area * (mpp / 1000) ** 2
        features.append({"type": "Feature", "geometry": mapping(polygon),
                         "properties": {"objectType": "annotation", "classification": CLASS,
                                        "measurements": {"area_mm2": round(area, 6),
                                                         "max_prob_tumor": round(float(probs.max()), 6),
                                                         "mean_prob_tumor": round(float(probs.mean()), 6)}}})
    features.sort(key=lambda f: -f["properties"]["measurements"]["area_mm2"])
    for rank, feature in enumerate(features, start=1):
        feature["properties"]["name"] = f"Tumour region {rank}"
    return {"type": "FeatureCollection", "features": features}


# ---------------------------------------------------------------- pictures

def pictures(out: Path, heat: np.ndarray, xs: np.ndarray, ys: np.ndarray, thumb: np.ndarray, thumb_scale: float,
             mask: np.ndarray, mpp: float, summary: dict, threshold: float) -> None:
    """heatmap.png, overlay.png and tissue.png, in millimetres with a scale bar."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    mm = mpp / 1000  # mm per level-0 pixel
    shown_side = 1200  # about the axes' width in pixels: matplotlib resamples what it shows in floats
    if max(thumb.shape[:2]) > shown_side:
        from PIL import Image

        k = max(thumb.shape[:2]) / shown_side
        size = (max(1, round(thumb.shape[1] / k)), max(1, round(thumb.shape[0] / k)))
        thumb_extent_px = (thumb.shape[1] * thumb_scale, thumb.shape[0] * thumb_scale)
        thumb = np.asarray(Image.fromarray(thumb).resize(size, Image.BOX))
        mask = np.asarray(Image.fromarray(mask).resize(size, Image.NEAREST))
        thumb_scale = thumb_extent_px[0] / thumb.shape[1]
    thumb_extent = (0, thumb.shape[1] * thumb_scale * mm, thumb.shape[0] * thumb_scale * mm, 0)
    heat_extent = (0, xs[-1] * mm, ys[-1] * mm, 0)
    title = (f"{Path(summary['file']).name}: max probability {summary['max_prob']:.2f}, "
             f"tumour {summary['tumour_area_mm2']:.2f} mm² (p ≥ {threshold:g})")
    cmap = plt.get_cmap("inferno").with_extremes(bad="#d9d9d9")

    fig, ax = _figure(plt, heat_extent)
    shown = ax.imshow(heat.astype(np.float32), cmap=cmap, vmin=0, vmax=1, extent=heat_extent,
                      interpolation="nearest")
    _finish(fig, ax, shown, "tumour probability (grey: not tissue, not scored)", title, heat_extent, out / "heatmap.png")

    fig, ax = _figure(plt, thumb_extent)
    ax.imshow(thumb, extent=thumb_extent, interpolation="nearest")
    hot = np.ma.masked_where(~(np.nan_to_num(heat.astype(np.float32), nan=0) >= threshold), heat.astype(np.float32))
    shown = ax.imshow(hot, cmap="YlOrRd", vmin=threshold, vmax=1, alpha=0.5, extent=heat_extent,
                      interpolation="nearest")
    _finish(fig, ax, shown, f"tumour probability (cells below {threshold:g} not drawn)", title, thumb_extent,
            out / "overlay.png")

    fig, ax = _figure(plt, thumb_extent)
    shaded = np.where(mask[..., None], thumb, (thumb * 0.55 + np.array([31, 59, 115]) * 0.45).astype(np.uint8))
    ax.imshow(shaded, extent=thumb_extent, interpolation="nearest")  # background shaded blue, in one image
    ax.contour(mask.astype(np.float32), levels=[0.5], colors="#00a651", linewidths=1.0,
               extent=(thumb_extent[0], thumb_extent[1], thumb_extent[3], thumb_extent[2]), origin="upper")
    _finish(fig, ax, None, "", f"{Path(summary['file']).name}: tissue {summary['tissue_area_mm2']:.2f} mm² "
            "(green outline; background shaded blue)", thumb_extent, out / "tissue.png")


def _figure(plt, extent):
    width, height = extent[1] - extent[0], extent[2] - extent[3]
    aspect = height / max(width, 1e-9)
    fig_w = 10.0  # the colour bar takes about 1.4 in of it; the title and margins about 0.6 in of height
    fig, ax = plt.subplots(figsize=(fig_w, min(max((fig_w - 1.4) * aspect, 3.0), 14.0) + 0.6), dpi=150)
    return fig, ax


def _finish(fig, ax, shown, label: str, title: str, extent, path: Path) -> None:
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    ax.set_xlim(extent[0], extent[1])
    ax.set_ylim(extent[2], extent[3])
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=10)
    length = _nice_length((extent[1] - extent[0]) / 5)
    ax.add_artist(AnchoredSizeBar(ax.transData, length, f"{length:g} mm", "lower left", pad=0.5, sep=4,
                                  color="black", frameon=True, size_vertical=(extent[2] - extent[3]) / 150))
    if shown is not None:
        bar = fig.colorbar(shown, ax=ax, fraction=0.035, pad=0.02)
        bar.set_label(label)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    import matplotlib.pyplot as plt

    plt.close(fig)


def _nice_length(target: float) -> float:
    """1, 2 or 5 times a power of ten, at most `target` (mm)."""
    power = 10 ** np.floor(np.log10(max(target, 1e-6)))
    return float(max(m * power for m in (1, 2, 5) if m * power <= target) if target >= power else power)
