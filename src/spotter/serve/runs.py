"""Loading runs for serving: any run folder (spotter.runs) and its task's one predictor. What the server uses
of a predictor:
  both:    .threshold, .name (the model kind shown, e.g. "resnet", "bigru", "ensemble"), .run (spotter.runs.Run)
  histo:   .predict_proba(uint8 N x 96 x 96 x 3, tta=False), .grad_cam(pixels) -> (N, 96, 96) logit-unit maps;
           .crop, .check_tta(tta)
  tweets:  .predict_proba(texts, keywords=None), .explain(texts, keywords) -> one dict per text
           (raises explain.NotExplainable where there are none)
"""
from __future__ import annotations

from pathlib import Path

from .. import runs
from ..histo import predictor as histo_predictor
from ..tweets import predictor as tweets_predictor


def never_measuring(predictor):
    """A served histology predictor decides its backend from timings earlier jobs cached, never timing
    backends itself (backends.Selector.measure)."""
    for leaf in predictor.leaves():
        leaf.backend.measure = False
    return predictor


def load_model(run_dir: Path, device: str = "auto", backend: str = "auto"):
    """(task, predictor) of a run or ensemble folder; `backend` is the histology models' (backends.py)."""
    run = runs.open_run(Path(run_dir))
    if run.task == "histo":
        return run.task, never_measuring(histo_predictor.load_run(run, device, backend=backend))
    return run.task, tweets_predictor.load_run(run, device)
