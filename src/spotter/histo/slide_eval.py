"""Score `histo slide` outputs against pathologists' annotations by Camelyon16's rules.

Two questions, as Camelyon16 asks them (Bejnordi et al., JAMA 2017; its evaluation code,
github.com/computationalpathologygroup/Camelyon16, Evaluation_FROC.py):

- **Is there tumour on the slide?** A slide is tumour when its annotation file holds tumour (`annotations`);
  a slide without a file is normal. Its score is its highest tile probability. Slide-level ROC AUC, with a
  95 % bootstrap interval over slides.
- **Where is it?** Lesions: the tumour annotations grown by 75 µm (about five tumour cells), holes filled,
  and each connected part one lesion; a lesion whose annotated tumour is under 200 µm across (its longest
  diameter) is isolated tumour cells (ITC), which is neither required nor a false positive. Detections: points
  with a confidence, found by greedy non-maximum suppression on the tiles: the most probable tile at or above
  `min_prob` becomes a detection at its centre, every tile whose centre lies within `nms_radius_um` of it is
  suppressed, and so on. A detection inside a lesion is a true positive for it (a lesion counts once, with its
  most confident detection; its other detections are neither TP nor FP); one outside every lesion is a false
  positive. FROC: over every confidence threshold, the fraction of lesions detected against the mean number of
  false positives per slide; the score is the mean of the sensitivities at 1/4, 1/2, 1, 2, 4 and 8 false
  positives per slide, each the best sensitivity of the thresholds whose false positives stay at or under
  that rate (a step, never an interpolation between thresholds).

Camelyon16's code gives a missed lesion the confidence 0 and skips the lowest threshold so that it is not
counted; here a missed lesion simply has no detection. Its masks are rasters at level 5 (about 7.8 µm/px);
here lesions are polygons in level-0 pixels, with 4-neighbour-style connectivity (parts touching at a single
corner stay separate before the growing merges them).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np
import pandas as pd
import shapely
from sklearn.metrics import roc_curve

from .. import files, metrics
from ..config import setting
from ..errors import BadInput
from . import annotations as annotation_files, froc as rules

SLIDE_SCORE = "max tile probability"


@dataclass(frozen=True)
class EvalSettings:
    classes: str = setting("Tumor", help="annotation classes that mark tumour, comma-separated (default Tumor; "
                                         "annotations with no class and Camelyon16's groups _0 and _1 count too)")
    dilate_um: float = setting(75.0, help="annotations are grown by this many µm before lesions are joined "
                                          "(Camelyon16: 75, about five tumour cells)", metavar="UM")
    itc_um: float = setting(200.0, help="lesions under this longest diameter (µm) are isolated tumour cells: "
                                        "neither counted nor false positives (Camelyon16: 200; 0 counts all)",
                            metavar="UM")
    nms_radius_um: float = setting(200.0, help="a detection suppresses the tiles whose centres lie within this "
                                               "radius (µm; default 200)", metavar="UM")
    min_prob: float = setting(0.05, help="tiles below this probability never become detections (default 0.05)",
                             metavar="P")
    bootstrap: int = setting(2000, help="bootstrap resamples of the slides for the AUC's 95 %% interval "
                                        "(default 2000)", metavar="N")

    def __post_init__(self):
        if min(self.dilate_um, self.itc_um) < 0 or self.nms_radius_um <= 0:
            raise BadInput("--dilate-um and --itc-um must be >= 0, --nms-radius-um > 0")
        if not 0 < self.min_prob < 1:
            raise BadInput(f"--min-prob {self.min_prob}: use a probability between 0 and 1")
        if self.bootstrap < 1:
            raise BadInput(f"--bootstrap {self.bootstrap}: use 1 or more")
        if not self.tumour_classes:
            raise BadInput("--classes: name at least one class")

    @property
    def tumour_classes(self) -> tuple[str, ...]:
        return tuple(c.strip() for c in self.classes.split(",") if c.strip())


# ---------------------------------------------------------------- one slide

@dataclass
class Slide:
    """One `histo slide` output folder and its annotations."""

    name: str
    folder: Path
    mpp: float
    tiles: pd.DataFrame
    annotation: annotation_files.Annotations | None

    @property
    def score(self) -> float:
        return float(self.tiles["prob_tumor"].max()) if len(self.tiles) else 0.0


def find_outputs(paths: list[Path]) -> list[Path]:
    """Output folders (holding slide.json) given directly or as the subfolders of a many-slide output."""
    found = []
    for path in map(Path, paths):
        if (path / "slide.json").is_file():
            found.append(path)
            continue
        inside = sorted(p.parent for p in path.glob("*/slide.json"))
        if not inside:
            what = "has tiles.csv but no slide.json (an unfinished run)" if (path / "tiles.csv").exists() \
                else "holds no slide output (slide.json)"
            raise BadInput(f"{path}: {what}")
        found.extend(inside)
    return found


def load_slide(folder: Path, annotations: Path, classes: tuple[str, ...]) -> Slide:
    try:
        summary = json.loads((folder / "slide.json").read_text())
        tiles = pd.read_csv(folder / "tiles.csv")
        mpp = float(summary["mpp"])
    except (OSError, ValueError, KeyError) as err:
        raise BadInput(f"{folder}: not a complete `histo slide` output ({err})") from None
    missing = {"minx", "miny", "width", "height", "prob_tumor"} - set(tiles.columns)
    if missing:
        raise BadInput(f"{folder / 'tiles.csv'}: no column {', '.join(sorted(missing))}")
    file_name = Path(summary.get("file", folder.name)).name
    name = file_name.split(".")[0]  # as `histo slide` names a slide's folder
    path = annotation_files.find(annotations, [name, file_name, folder.name])
    annotation = annotation_files.read(path, classes) if path else None
    if annotation is not None and not annotation.tumour.is_empty and "level0_size" in summary:
        width, height = summary["level0_size"]
        if not annotation.tumour.intersects(shapely.box(0, 0, width, height)):
            raise BadInput(f"{path}: its annotations lie outside the {width}x{height} slide {file_name}; "
                           "are they in level-0 pixels?")
    return Slide(name, folder, mpp, tiles, annotation)


def _score(s: Slide, settings: EvalSettings) -> tuple[dict, pd.DataFrame, np.ndarray]:
    """A slide's row of slides.csv, its detections with their outcomes, and its counted lesions' confidences."""
    tumour = s.annotation.tumour if s.annotation else None
    lesion_list = rules.lesions(tumour, s.mpp, settings.dilate_um, settings.itc_um)
    found = rules.detections(s.tiles, s.mpp, settings.nms_radius_um, settings.min_prob)
    best, outcome = rules.match(found, lesion_list)
    counted = np.array([not lesion.itc for lesion in lesion_list], bool)
    row = {"slide": s.name, "output": str(s.folder), "annotation": str(s.annotation.path) if s.annotation else "",
           "tumour": int(tumour is not None and not tumour.is_empty), "score": s.score, "tiles": len(s.tiles),
           "annotated_mm2": float(tumour.area * (s.mpp / 1000) ** 2) if tumour is not None else 0.0,
           "lesions": int(counted.sum()), "itc_lesions": int((~counted).sum()),
           "lesions_detected": int(np.sum(~np.isnan(best[counted]))), "detections": len(found),
           "false_positives": outcome.count("FP")}
    return row, found.assign(slide=s.name, outcome=outcome), best[counted]


# ---------------------------------------------------------------- the whole set

def evaluate(outputs: list[Path], annotations: Path, out: Path, settings: EvalSettings = EvalSettings(),
             log=print) -> dict:
    """Score the slide outputs against the annotation folder; write report.json, slides.csv, detections.csv,
    froc.png and roc.png to `out`; return the report."""
    annotations = Path(annotations)
    if not annotations.is_dir():
        raise BadInput(f"--annotations {annotations}: not a folder")
    folders = find_outputs(outputs)
    slides = [load_slide(f, annotations, settings.tumour_classes) for f in folders]
    names = [s.name for s in slides]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise BadInput(f"several outputs of slides named {', '.join(repeated)}: one annotation file cannot "
                       "tell them apart; evaluate them separately")

    rows, found_rows, lesion_probs, fp_probs = [], [], [], []
    for s in slides:
        row, found, counted_probs = _score(s, settings)
        rows.append(row)
        found_rows.append(found)
        lesion_probs.extend(counted_probs)
        fp_probs.extend(found.loc[found["outcome"] == "FP", "prob"])
    table = pd.DataFrame(rows)
    report = _summarise(table, np.array(lesion_probs), np.array(fp_probs), settings)
    report["unused_annotations"] = _unused(annotations, [s.annotation for s in slides])

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files.write_csv_atomic(table, out / "slides.csv")
    detected = pd.concat(found_rows, ignore_index=True) if found_rows else pd.DataFrame()
    files.write_csv_atomic(detected[["slide", "x", "y", "prob", "outcome"]] if len(detected) else
                           pd.DataFrame(columns=["slide", "x", "y", "prob", "outcome"]), out / "detections.csv")
    curve = pd.DataFrame(report["froc"]["curve"])
    _plots(out, curve, report, table)
    files.write_text_atomic(out / "report.json", json.dumps(report, indent=2))
    _log_summary(report, out, log)
    return report


def _summarise(table: pd.DataFrame, lesion_probs: np.ndarray, fp_probs: np.ndarray, settings: EvalSettings) -> dict:
    labels, scores = table["tumour"].to_numpy(), table["score"].to_numpy(np.float64)
    auc = metrics.roc_auc(labels, scores)
    ci = metrics.bootstrap_interval(lambda rows: metrics.roc_auc(labels[rows], scores[rows]), len(table),
                                    resamples=settings.bootstrap) if np.isfinite(auc) else [np.nan, np.nan]
    curve = rules.froc(lesion_probs, fp_probs, len(table))
    at = {f"{r:g}": rules.sensitivity_at(curve, r) for r in rules.FP_RATES} if len(lesion_probs) else {}
    return _finite({
        "settings": {**{f.name: getattr(settings, f.name) for f in fields(settings)}, "slide_score": SLIDE_SCORE,
                     "fp_rates": list(rules.FP_RATES), "classes": list(settings.tumour_classes)},
        "slides": len(table), "tumour_slides": int(labels.sum()), "normal_slides": int(len(table) - labels.sum()),
        "slide_auc": auc, "slide_auc_ci95": ci,
        "lesions": len(lesion_probs), "lesions_detected": int(np.sum(~np.isnan(lesion_probs))),
        "itc_lesions": int(table["itc_lesions"].sum()), "false_positives": len(fp_probs),
        "froc": {"sensitivity_at_fps": at, "average_sensitivity": float(np.mean(list(at.values()))) if at else None,
                 "curve": curve.to_dict("records")},  # the first threshold, infinity, becomes null
        "per_slide": table.to_dict("records"),
    })


def _finite(value):
    """NaN (an AUC with one class, an empty FROC) as null, which JSON has and NaN is not."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _unused(folder: Path, used: list) -> list[str]:
    taken = {a.path.resolve() for a in used if a is not None}
    return sorted(p.name for p in folder.iterdir() if p.suffix.lower() in annotation_files.EXTENSIONS
                  and p.resolve() not in taken)


def _log_summary(report: dict, out: Path, log) -> None:
    auc, ci = report["slide_auc"], report["slide_auc_ci95"]
    auc_text = f"{auc:.3f} [95 % CI {ci[0]:.3f}-{ci[1]:.3f}]" if auc is not None else "undefined (one class)"
    log(f"{report['slides']} slides ({report['tumour_slides']} tumour, {report['normal_slides']} normal): "
        f"slide AUC {auc_text}")
    average = report["froc"]["average_sensitivity"]
    if average is not None:
        log(f"{report['lesions']} lesions ({report['itc_lesions']} ITC not counted): FROC average sensitivity "
            f"{average:.3f} ({', '.join(f'{v:.2f} at {k}' for k, v in report['froc']['sensitivity_at_fps'].items())} "
            "FPs per slide)")
    if report["unused_annotations"]:
        log(f"annotations matching no slide output: {', '.join(report['unused_annotations'])}")
    log(f"report in {out / 'report.json'}")


# ---------------------------------------------------------------- pictures

def _plots(out: Path, curve: pd.DataFrame, report: dict, table: pd.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5), dpi=120)
    if report["lesions"]:
        ax.step(np.maximum(curve["fps_per_slide"], 1 / 16), curve["sensitivity"], where="post", color="black")
        last = curve.iloc[-1]  # the lowest confidence (min_prob): more false positives buy nothing more
        ax.plot([max(last["fps_per_slide"], 1 / 16), 16], [last["sensitivity"]] * 2, ":", color="black")
        at = report["froc"]["sensitivity_at_fps"]
        ax.plot(rules.FP_RATES, [at[f"{r:g}"] for r in rules.FP_RATES], "o", color="#c00000",
                label=f"average at 1/4..8 FPs: {report['froc']['average_sensitivity']:.3f}")
        ax.legend(loc="lower right")
    else:
        ax.text(0.5, 0.5, "no lesions to detect", ha="center", transform=ax.transAxes)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_xticks(rules.FP_RATES, ["1/4", "1/2", "1", "2", "4", "8"])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean false positives per slide")
    ax.set_ylabel("lesions detected (sensitivity)")
    ax.set_title(f"FROC: {report['lesions']} lesions on {report['slides']} slides", fontsize=10)
    ax.grid(alpha=0.3)
    _save(plt, fig, out / "froc.png")

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    if report["slide_auc"] is not None:
        fpr, tpr, _ = roc_curve(table["tumour"], table["score"])
        ci = report["slide_auc_ci95"]
        ax.plot(fpr, tpr, color="black", label=f"AUC {report['slide_auc']:.3f} [{ci[0]:.3f}-{ci[1]:.3f}]")
        ax.legend(loc="lower right")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set_xlabel("normal slides called tumour")
    ax.set_ylabel("tumour slides called tumour")
    ax.set_title(f"slides: {report['tumour_slides']} tumour, {report['normal_slides']} normal "
                 f"(score: {SLIDE_SCORE})", fontsize=9)
    _save(plt, fig, out / "roc.png")


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with files.atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
