"""`spotter bench`: throughput of every stage, measured side by side in one run, as a table and JSON.

Each stage runs in a fresh process so that its peak resident memory is its own; a stage that dies (killed
for memory) or runs past its time limit is reported as failed and the others still run. Rates are medians
over repeats, after warm-up steps. The training ceiling is measured on exactly the batches, model,
precision and warm-up of the end-to-end stage, only held in memory, so end to end can exceed it only by
noise: more than 10 % fails the bench (non-zero exit), as does any failed stage.

Stages live by family (histo, tweets, slides, scale, inference: each model on each backend), the table in
report, the process isolation in isolate; the scripts in bench/ are command lines over these stages and over
the measurements `spotter bench` does not run (torch_compile, scores, reports, serve_load).
"""
from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import torch

from .. import pretrained
from ..demo import make_histo_dataset, make_tweets_dataset
from ..files import shared_data
from ..histo.settings import default_model
from ..precision import cpu_model
from . import inference
from .histo import stage_effnet, stage_histo_infer, stage_histo_train, stage_pack
from .isolate import STAGE_TIMEOUT_S, isolated
from .report import BenchFailed, format_table, problems
from .scale import stage_make_scale_pack, stage_scale
from .slides import stage_jpeg_slide, stage_slide
from .tweets import stage_minilm, stage_tweets

__all__ = ["BenchFailed", "SHARED_HISTO", "SHARED_TWEETS", "format_table", "isolated", "problems", "run"]

SHARED_HISTO = shared_data("histopathology")
SHARED_TWEETS = shared_data("disaster-tweets")


def run(histo_data: Path | None = None, tweets_data: Path | None = None, *, quick: bool = False,
        device: str = "auto", out: Path | None = None, scale: bool = False,
        stage_timeout_s: float = STAGE_TIMEOUT_S, inference_models: list[str] | None = None) -> dict[str, Any]:
    """Run every stage, print the table, write JSON; raise BenchFailed (after writing) when a stage failed
    or end to end beat its own ceiling. `inference_models`: the inference table's models (default all;
    [] skips the table and the JPEG slides)."""
    histo_data = histo_data or SHARED_HISTO
    tweets_data = tweets_data or SHARED_TWEETS
    stage = lambda fn, *args: isolated(fn, *args, timeout_s=stage_timeout_s)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        if not histo_data.exists() or not tweets_data.exists():
            print("shared data not found: benchmarking on synthetic demo data")
            histo_data = make_histo_dataset(Path(tmp) / "histo", n_train=2000, n_test=10)
            tweets_data = make_tweets_dataset(Path(tmp) / "tweets", n_train=3000, n_test=10)
        stages = {"pack": stage(stage_pack, str(histo_data), quick),
                  "histo_train": stage(stage_histo_train, str(histo_data), quick, device),
                  "histo_infer": stage(stage_histo_infer, str(histo_data), quick, device),
                  "tweets": stage(stage_tweets, str(tweets_data), quick, device),
                  "slide": stage(stage_slide, str(histo_data), quick, device)}
        try:
            pretrained.efficientnet_lite_file(), pretrained.minilm_dir()
            stages["effnet"] = stage(stage_effnet, str(histo_data), quick, device)
            stages["minilm"] = stage(stage_minilm, str(tweets_data), quick, device)
        except pretrained.MissingWeights as err:
            print(f"pretrained models skipped: {err}")
        names = inference.models() if inference_models is None else inference_models
        rows, inference_stages = inference.measure(stage, str(histo_data), quick, device, names)
        stages.update(inference_stages)
        for model in dict.fromkeys((default_model(log=lambda line: None), "resnet") if names else ()):
            stages[f"jpeg_slide {model}"] = stage(stage_jpeg_slide, str(histo_data), quick, device, model)
        if scale:
            with tempfile.TemporaryDirectory(dir=Path.home()) as big:  # 6 GB: not on a small /tmp
                made = stage(stage_make_scale_pack, str(histo_data), big)
                stages["scale"] = {**made, **(stage(stage_scale, big, quick, device) if "failed" not in made else {})}
    result: dict[str, Any] = {}
    for values in stages.values():
        result.update({k: v for k, v in values.items() if k not in ("peak_rss_mb", "failed")})
    result["inference"] = rows
    result["stage_peak_rss_mb"] = {name: s.get("peak_rss_mb") for name, s in stages.items()}
    result["failed_stages"] = {name: s["failed"] for name, s in stages.items() if "failed" in s}
    result.update(cpu=cpu_model(), cpu_threads=torch.get_num_threads(), torch=torch.__version__, quick=quick,
                  histo_data=str(histo_data), tweets_data=str(tweets_data))
    result["problems"] = problems(result)
    print(format_table(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    if result["problems"]:
        raise BenchFailed("benchmark failed: " + "; ".join(result["problems"]))
    return result
