"""Camelyon16's lesion-level rules: lesions from annotations, detections from tiles, their matching, FROC.

See `slide_eval` for the rules in words. Everything is in level-0 pixels of the slide; µm settings are
converted with the slide's µm/px.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import shapely
from scipy.spatial import cKDTree
from shapely.geometry import Polygon

FP_RATES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # false positives per slide at which Camelyon16 reads sensitivity


@dataclass
class Lesion:
    region: object  # grown and filled, in level-0 pixels: where a detection counts for it
    diameter_um: float  # longest diameter of its annotated tumour
    itc: bool


def lesions(tumour, mpp: float, dilate_um: float, itc_um: float) -> list[Lesion]:
    """Connected tumour regions (level-0 pixels at `mpp` µm/px) after growing by `dilate_um` and filling holes
    (Camelyon16's lesions); those under `itc_um` across are isolated tumour cells."""
    if tumour is None or tumour.is_empty:
        return []
    grown = tumour.buffer(dilate_um / mpp) if dilate_um > 0 else tumour
    filled = shapely.union_all([Polygon(p.exterior) for p in _parts(grown)])  # a filled ring may hold an island
    out = []
    for region in _parts(filled):
        diameter = _longest_diameter(tumour.intersection(region)) * mpp
        out.append(Lesion(region, diameter, diameter < itc_um))
    return out


def _parts(geometry) -> list:
    return [g for g in getattr(geometry, "geoms", [geometry]) if g.geom_type == "Polygon" and not g.is_empty]


def _longest_diameter(geometry) -> float:
    hull = geometry.convex_hull
    points = np.asarray(hull.exterior.coords if hull.geom_type == "Polygon" else hull.coords)
    if len(points) < 2:
        return 0.0
    return float(np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max())


def detections(tiles: pd.DataFrame, mpp: float, radius_um: float, min_prob: float) -> pd.DataFrame:
    """Greedy non-maximum suppression of the tiles at or above `min_prob`: (x, y, prob) at the centres of the
    kept tiles, most probable first; each kept tile suppresses those whose centres lie within `radius_um`."""
    hot = tiles[tiles["prob_tumor"] >= min_prob]
    hot = hot.iloc[np.argsort(-hot["prob_tumor"].to_numpy(), kind="stable")]
    xy = np.stack([hot["minx"] + hot["width"] / 2, hot["miny"] + hot["height"] / 2], axis=1).astype(np.float64)
    alive = np.ones(len(hot), bool)
    kept = []
    if len(hot):
        tree = cKDTree(xy)
        for k in range(len(hot)):
            if alive[k]:
                kept.append(k)
                alive[tree.query_ball_point(xy[k], radius_um / mpp)] = False
    return pd.DataFrame({"x": xy[kept, 0] if kept else [], "y": xy[kept, 1] if kept else [],
                         "prob": hot["prob_tumor"].to_numpy(np.float64)[kept]})


def match(found: pd.DataFrame, lesion_list: list[Lesion]) -> tuple[np.ndarray, list[str]]:
    """Each lesion's best detection confidence (NaN: missed) and each detection's outcome:
    "TP" (its lesion's best), "TP again" (a lesion already hit), "ITC" (ignored) or "FP"."""
    best = np.full(len(lesion_list), np.nan)
    outcome = ["FP"] * len(found)
    x, y = found["x"].to_numpy(), found["y"].to_numpy()
    for k, lesion in enumerate(lesion_list):
        inside = np.flatnonzero(shapely.intersects_xy(lesion.region, x, y))  # the edge counts as inside
        for n in inside:  # detections come most confident first
            if lesion.itc:
                outcome[n] = "ITC"
            elif np.isnan(best[k]):
                best[k], outcome[n] = found["prob"].iat[n], "TP"
            else:
                outcome[n] = "TP again"
    return best, outcome


# ---------------------------------------------------------------- the curve

def froc(lesion_probs: np.ndarray, fp_probs: np.ndarray, n_slides: int) -> pd.DataFrame:
    """The FROC curve: one row per confidence threshold (descending), from (0 FPs, 0 sensitivity)."""
    lesion_probs, fp_probs = np.asarray(lesion_probs, np.float64), np.asarray(fp_probs, np.float64)
    hit = np.sort(lesion_probs[~np.isnan(lesion_probs)])
    fps = np.sort(fp_probs)
    thresholds = np.unique(np.concatenate([hit, fps]))[::-1]
    detected = len(hit) - np.searchsorted(hit, thresholds, side="left")  # confidences >= threshold
    false = len(fps) - np.searchsorted(fps, thresholds, side="left")
    n_lesions = max(len(lesion_probs), 1)
    return pd.DataFrame({"threshold": np.concatenate([[np.inf], thresholds]),
                         "fps_per_slide": np.concatenate([[0.0], false / max(n_slides, 1)]),
                         "sensitivity": np.concatenate([[0.0], detected / n_lesions])})


def sensitivity_at(curve: pd.DataFrame, rate: float) -> float:
    """The best sensitivity of the thresholds with at most `rate` false positives per slide."""
    within = curve["fps_per_slide"] <= rate + 1e-12
    return float(curve.loc[within, "sensitivity"].max())
