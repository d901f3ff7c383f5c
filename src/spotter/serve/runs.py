"""Loading runs for serving: which task a folder holds, and its predictor (`histo.task.load_run` or
`tweets.task.load_run`). What the server uses of a predictor:
  both:    .threshold, .name (the model kind shown, e.g. "resnet", "bigru", "ensemble")
  histo:   .predict_proba(uint8 N x 96 x 96 x 3, tta=False), .grad_cam(pixels) -> (N, 96, 96) logit-unit maps;
           .settings.crop
  tweets:  .predict_proba(texts, keywords=None), .explain(texts, keywords) -> one dict per text
           (raises explain.NotExplainable where there are none)
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import engine, ensemble
from ..histo import task as histo_task
from ..tweets import task as tweets_task


# ---------------------------------------------------------------- either task

def task_of(run_dir: Path) -> str:
    """'histo' or 'tweets', from what the folder holds; a clear error when it is neither."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise engine.CheckpointError(f"{run_dir}: no such run folder")
    if ensemble.is_ensemble(run_dir):
        return json.loads((run_dir / ensemble.FILE).read_text()).get("task", "?")
    if (run_dir / "summary.json").exists():
        return "tweets"
    if (run_dir / "best.pt").exists():
        return "histo"
    raise engine.CheckpointError(f"{run_dir}: not a finished Spotter run (no best.pt, summary.json or ensemble.json)")


def load_model(run_dir: Path, device: str = "auto"):
    task = task_of(run_dir)
    if task == "histo":
        return task, histo_task.load_run(Path(run_dir), device)
    if task == "tweets":
        return task, tweets_task.load_run(Path(run_dir), device)
    raise engine.CheckpointError(f"{run_dir}: unknown task {task!r}")
