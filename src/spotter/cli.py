"""Command line: parses arguments and calls the task functions; nothing else."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import backends, config, engine, extras, runs
from .errors import BadInput, UserError
from .histo.settings import HistoSettings, train_defaults as histo_defaults
from .histo.slide_eval import EvalSettings
from .serve.limits import Limits
from .tweets.settings import TweetSettings

EPILOG = "Data layouts and examples: see README.md."
DEVICE = config.same_as(engine.TrainSettings, "device")  # --device of the commands that do not train
REPACK = "pack again even if the files' names, sizes and times match"
OVERWRITE = "replace the run that --out holds (without it, a folder holding a run is refused)"
BACKEND = dict(choices=backends.CHOICES, default="auto",
               help="inference backend; auto: the fastest measured for this model and machine whose setup (compiling, "
                    "exporting) pays back within the job, else eager (see docs/histology.md)")


def _add_train_command(cmds, name: str, help: str, settings: type) -> argparse.ArgumentParser:
    """`<task> train`: the task's settings and the training loop's, as generated options (config.py)."""
    p = cmds.add_parser(name, help=help)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    p.add_argument("--config", type=Path, metavar="SETTINGS",
                   help="train a run again: its settings.json (or a tweets run's run.json, or its folder); "
                        "options given here override them")
    config.add_options(p, settings)
    config.add_options(p, engine.TrainSettings)
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    return p


def _settings(args: argparse.Namespace, cls: type, kind: str, model_defaults, implied: dict | None = None):
    """(task settings, training settings) of `train`: the dataclass defaults, the model's own training
    defaults, the saved settings of --config, `implied` values, then the flags given (later ones win)."""
    saved_train, saved_task = config.saved_settings(args.config, kind) if args.config else ({}, {})
    if args.config:  # settings the run saved before they existed had the value it ran with
        saved_task = {**getattr(cls, "saved_before", {}), **saved_task}
    where = f"--config {args.config}" if args.config else "the command line"
    task_settings = config.build(cls, saved_task, config.given(args, cls), where=where)
    train = config.build(engine.TrainSettings, model_defaults(task_settings.model), saved_train, implied or {},
                         config.given(args, engine.TrainSettings), where=where)
    return task_settings, train


def build_parser() -> argparse.ArgumentParser:
    # Long but flat: one declarative block per command, read top to bottom like the --help it makes.
    parser = argparse.ArgumentParser(prog="spotter", description="Train, evaluate and serve two binary detectors: "
                                     "tumour in histopathology patches (CNN) and disaster tweets (RNN).",
                                     epilog=EPILOG)
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{histo,tweets,serve,demo,bench}")

    histo = tasks.add_parser("histo", help="histopathologic cancer detection (Kaggle / PatchCamelyon patches)")
    cmds = histo.add_subparsers(dest="command", required=True)
    p = cmds.add_parser("pack", help="pack the patches once into a memory-mapped array (train does this too)")
    p.add_argument("--data", type=Path, required=True, help=config.same_as(HistoSettings, "data")["help"])
    p.add_argument("--pack-dir", type=Path, **config.same_as(HistoSettings, "pack_root"))
    p.add_argument("--workers", type=int, help="decoding processes (default: one per core)")
    p.add_argument("--skip-bad", action="store_true", **config.same_as(HistoSettings, "skip_bad"))
    p.add_argument("--repack", action="store_true", help=REPACK)

    p = _add_train_command(cmds, "train", "train a CNN; writes checkpoints, metrics.csv and plots to --out",
                           HistoSettings)
    p.add_argument("--repack", action="store_true", help=REPACK)

    p = cmds.add_parser("evaluate", help="ROC AUC, accuracy and confusion matrix of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, help="labelled folder (default: the run's own validation split)")
    p.add_argument("--split", choices=["train", "valid", "test"],
                   help="with --data: which set (default: test for a PatchCamelyon folder, train for Kaggle's)")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations and reflections")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--out", type=Path, help="folder for evaluation[_tta].json and roc[_tta].png (default: the run's "
                                            "own, where they are its validation score unless --data)")
    p.add_argument("--device", **DEVICE)
    p.add_argument("--backend", **BACKEND)

    p = cmds.add_parser("predict", help="write a Kaggle submission (id,label) for a folder of .tif patches")
    p.add_argument("run", type=Path)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--device", **DEVICE)
    p.add_argument("--backend", **BACKEND)
    p.add_argument("--skip-bad", action="store_true")

    p = cmds.add_parser("ensemble", help="calibrate and average finished runs into a new run folder")
    p.add_argument("runs", type=Path, nargs="+", help="finished runs sharing data, seed and validation split")
    p.add_argument("--out", type=Path, required=True, help="ensemble run folder")
    p.add_argument("--tta", action="store_true", help="calibrate on 8x TTA validation predictions")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.add_argument("--device", **DEVICE)

    # whole slides and exports (histo/slide.py, histo/export.py)
    p = cmds.add_parser("slide", help="tumour heatmap, tissue mask, QuPath GeoJSON and WSInfer CSV of whole slides")
    p.add_argument("run", type=Path, help="histo run or ensemble folder")
    p.add_argument("--image", required=True,
                   help="slide (pyramidal TIFF, SVS, OME-TIFF, PNG, JPEG), or a folder or glob of slides")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder (many slides: one subfolder each, ranked in slides.csv)")
    p.add_argument("--mpp", type=float, help="µm per level-0 pixel; overrides the file's, needed when it has none")
    p.add_argument("--stride", type=int, default=32,
                   help="model pixels between patch centres: 32 (default) scores every labelled 32x32 centre, "
                        "96 is a 9x faster coarse pass, 16 or 8 average overlapping centres")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations and reflections (8x slower)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--threshold", type=float, default=0.5, help="probability that makes a cell tumour")
    p.add_argument("--level", type=int, help="pyramid level to read (default: the coarsest not coarser than "
                                             "the model's µm/px)")
    p.add_argument("--workers", type=int, help="slide-reading processes (default: half the cores; 0 on 2 cores or fewer)")
    p.add_argument("--tissue-threshold", type=float, default=0.0,
                   help="fraction of a patch that must be on tissue for it to be scored (default 0: any tissue; "
                        "higher is faster on fragmented tissue and may miss pale tissue)")
    p.add_argument("--no-tissue-mask", action="store_true",
                   help="score every patch, glass included (slowest; misses nothing)")
    p.add_argument("--backend", **BACKEND)
    p.add_argument("--device", **DEVICE)

    p = cmds.add_parser("slide-eval", help="slide-level ROC AUC and lesion-level FROC of slide outputs against "
                                           "annotations (Camelyon16's rules)")
    p.add_argument("outputs", type=Path, nargs="+", help="`histo slide` output folders (or folders of them)")
    p.add_argument("--annotations", type=Path, required=True,
                   help="folder of <slide name>.geojson (QuPath export) or .xml (Camelyon16); a slide without "
                        "one is normal")
    p.add_argument("--out", type=Path, required=True, help="folder for report.json, slides.csv, froc.png, roc.png")
    config.add_options(p, EvalSettings)

    p = cmds.add_parser("export", help="a run as a WSInfer/QuPath model folder, TorchScript or ONNX")
    p.add_argument("run", type=Path, help="histo run or ensemble folder")
    p.add_argument("--format", choices=["wsinfer", "torchscript", "onnx"], default="wsinfer")
    p.add_argument("--out", type=Path, required=True, help="folder (wsinfer) or file (torchscript, onnx)")

    histo_cmds = cmds
    p = cmds.add_parser("explain", help="Grad-CAM overlays (PNG) and a CSV for a folder of patches")
    p.add_argument("run", type=Path)
    p.add_argument("--images", type=Path, required=True, help="folder of patches (.tif, .png, .jpg)")
    p.add_argument("--out", type=Path, required=True, help="folder for <id>.png overlays and explanations.csv")
    p.add_argument("--tta", action="store_true", help="probabilities averaged over the 8 rotations and reflections "
                                                      "(the maps stay those of the patch as it is)")
    p.add_argument("--device", **DEVICE)

    tweets = tasks.add_parser("tweets", help="disaster tweets (Kaggle NLP with Disaster Tweets)")
    cmds = tweets.add_subparsers(dest="command", required=True)
    # --model has no `choices`: TweetSettings refuses an unknown name with the list of known ones.
    _add_train_command(cmds, "train", "train a tweet classifier; writes folds, summary.json and plots to --out",
                       TweetSettings)

    p = cmds.add_parser("evaluate", help="F1, precision, recall, AUC of a run on a labelled CSV")
    p.add_argument("run", type=Path)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--device", **DEVICE)
    p.add_argument("--skip-bad", action="store_true", help="replace undecodable bytes, drop unusable rows")

    p = cmds.add_parser("predict", help="write a Kaggle submission (id,target) for a CSV of tweets")
    p.add_argument("run", type=Path)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--proba", action="store_true", help="add the probability column")
    p.add_argument("--device", **DEVICE)
    p.add_argument("--skip-bad", action="store_true", help="replace undecodable bytes instead of stopping")

    p = cmds.add_parser("ensemble", help="calibrate and average finished runs; tunes the F1 threshold")
    p.add_argument("runs", type=Path, nargs="+", help="finished runs sharing train.csv, seed and folds")
    p.add_argument("--out", type=Path, required=True, help="ensemble run folder")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)

    _add_report_commands(histo_cmds, cmds)
    p = tasks.add_parser("serve", help="serve runs through a JSON API and a web page, with explanations")
    p.add_argument("runs", type=Path, nargs="+", help="run or ensemble folders (each is named by its folder)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (non-loopback needs --token)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--token", help="require 'Authorization: Bearer TOKEN' on every /api call")
    for name, kind in (("max_upload_mb", float), ("max_slide_tiles", int), ("max_jobs", int), ("job_ttl_s", float)):
        declared = Limits.__dataclass_fields__[name]
        p.add_argument(config.flag_of(declared), dest=name, type=kind, metavar=declared.metadata.get("metavar"),
                       **config.same_as(Limits, name))
    p.add_argument("--backend", **BACKEND)
    p.add_argument("--device", **DEVICE)

    p = tasks.add_parser("bench", help="measure every stage's throughput; prints a table, writes JSON")
    p.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    p.add_argument("--device", **DEVICE)
    p.add_argument("--histo-data", type=Path, help="Kaggle-layout folder (default ../shared/data/histopathology)")
    p.add_argument("--tweets-data", type=Path, help="folder with train.csv (default ../shared/data/disaster-tweets)")
    p.add_argument("--scale", action="store_true", help="also train from a 220,025-patch (6 GB) synthetic pack")
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    p.add_argument("--stage-timeout", type=float, default=1800, metavar="S",
                   help="a stage with no result after S seconds is stopped and reported as failed")
    p.add_argument("--inference-models", metavar="M,M", type=lambda text: [m for m in text.split(",") if m],
                   help="the inference table's models (default: seed, resnet-plain, resnet, effnet-lite0 and, with "
                        "its weights, effnet-lite1); '' skips the table and the JPEG slides")

    p = tasks.add_parser("demo", help="make a small synthetic dataset and run every stage on it")
    p.add_argument("--out", type=Path, default=Path("spotter-demo"), help="folder for data and runs")
    p.add_argument("--device", **DEVICE)
    return parser


# ---------------------------------------------------------------- reports: explore the data, look at the mistakes

def _add_report_commands(histo_cmds, tweets_cmds) -> None:
    """`explore` and `errors` for both tasks; each writes PNGs, report.json and a self-contained report.html."""
    p = histo_cmds.add_parser("explore", help="report on the patches: balance, samples, colour, background, duplicates")
    p.add_argument("--data", type=Path, required=True, help=config.same_as(HistoSettings, "data")["help"])
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html and PNGs)")
    p.add_argument("--pack-dir", type=Path, **config.same_as(HistoSettings, "pack_root"))
    p = histo_cmds.add_parser("errors", help="report on a run's most confident mistakes, ROC, calibration, strata")
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, help="labelled folder (default: the run's own validation split)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html and PNGs)")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations and reflections")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--top", type=int, default=16, help="mistakes shown of each kind")
    p.add_argument("--no-grad-cam", action="store_true", help="draw no Grad-CAM overlay on the mistakes")
    p.add_argument("--device", **DEVICE)
    p = tweets_cmds.add_parser("explore", help="report on the tweets: balance, lengths, keywords, duplicates, words")
    p.add_argument("--data", type=Path, required=True, help="folder with Kaggle's train.csv, or a labelled CSV")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html and PNGs)")
    p = tweets_cmds.add_parser("errors", help="report on a run's most confident mistakes, threshold, calibration")
    p.add_argument("run", type=Path)
    p.add_argument("--csv", type=Path, help="labelled CSV (default: the run's out-of-fold validation predictions)")
    p.add_argument("--out", type=Path, required=True, help="report folder (report.html and PNGs)")
    p.add_argument("--top", type=int, default=20, help="mistakes shown of each kind")
    p.add_argument("--min-keyword-rows", type=int, default=10, help="keywords with fewer rows get no error rate")
    p.add_argument("--device", **DEVICE)


def _run_report(args: argparse.Namespace) -> None:
    if args.task == "histo":
        from .reports import histo as report
        if args.command == "explore":
            from .histo.data import pack_folder
            packed = pack_folder(args.data, pack_root=args.pack_dir)
            if "train" not in packed:
                raise BadInput(f"{args.data}: no labelled patches to explore (train/ with train_labels.csv)")
            result = report.explore(packed["train"], name=str(args.data))
        else:
            result = report.errors(args.run, args.data, tta=args.tta, threshold=args.threshold, top=args.top,
                                   grad_cam=not args.no_grad_cam,
                                   device=args.device)
    else:
        from .reports import tweets as report
        from .tweets.text import read_tweets
        if args.command == "explore":
            csv = args.data / "train.csv" if args.data.is_dir() else args.data
            result = report.explore(read_tweets(csv, labelled=True), name=str(csv))
        else:
            result = report.errors(args.run, args.csv, top=args.top, device=args.device,
                                   min_keyword_rows=args.min_keyword_rows)
    print(f"wrote {len(result.pictures)} pictures and the report {result.write(args.out)}")


def run(args: argparse.Namespace) -> None:
    if getattr(args, "command", None) in ("explore", "errors"):
        _run_report(args)
    elif args.task == "histo":
        _run_histo(args)
    elif args.task == "tweets":
        _run_tweets(args)
    elif args.task == "serve":
        extras.require("serve", what="spotter serve")
        from .serve import app
        app.serve(args.runs, host=args.host, port=args.port, token=args.token, device=args.device,
                  backend=args.backend,
                  limits=Limits(max_upload_mb=args.max_upload_mb, max_slide_tiles=args.max_slide_tiles,
                                max_jobs=args.max_jobs, job_ttl_s=args.job_ttl_s))
    elif args.task == "bench":
        from . import bench
        bench.run(args.histo_data, args.tweets_data, quick=args.quick, device=args.device, out=args.out,
                  scale=args.scale, stage_timeout_s=args.stage_timeout, inference_models=args.inference_models)
    elif args.task == "demo":
        from . import demo
        demo.run(args.out, device=args.device)


def _run_histo(args: argparse.Namespace) -> None:
    from .histo import data as histo_data, refit, task as histo
    if args.command == "pack":
        for name, packed in histo_data.pack_folder(args.data, pack_root=args.pack_dir, workers=args.workers,
                                                   skip_bad=args.skip_bad, repack=args.repack).items():
            print(f"{name}: {len(packed)} patches in {packed.path}")
    elif args.command == "train":
        # --time-budget plans the epochs; the cap is 1000 unless --epochs is given.
        implied = {"epochs": 1000} if "time_budget_min" in args and "epochs" not in args else {}
        settings, train = _settings(args, HistoSettings, histo.KIND, histo_defaults, implied)
        train, schedule_from = refit.schedule(settings, train, given=config.given(args, engine.TrainSettings),
                                              config=args.config,
                                              resuming=args.resume and (args.out / runs.SETTINGS).exists())
        result = histo.train(settings, train, args.out, resume=args.resume, overwrite=args.overwrite,
                             repack=args.repack, schedule_from=schedule_from)
        if "best_epoch" in result:
            print(f"best epoch {result['best_epoch']}: validation AUC {result['val_auc']:.4f}; run in {args.out}")
        else:
            print(f"refit: the last epoch ({result['epoch']}) is the model, trained on every labelled patch; "
                  f"run in {args.out}")
    elif args.command == "evaluate":
        histo.evaluate(args.run, args.data, split=args.split, tta=args.tta, threshold=args.threshold,
                       device=args.device, backend=args.backend, out=args.out)
    elif args.command == "predict":
        histo.predict(args.run, args.images, args.out, tta=args.tta, device=args.device, skip_bad=args.skip_bad,
                      backend=args.backend)
    elif args.command == "ensemble":
        histo.build_ensemble(args.runs, args.out, tta=args.tta, device=args.device, overwrite=args.overwrite)
    elif args.command == "slide":
        from .histo import slide
        options = dict(mpp=args.mpp, stride=args.stride, tta=args.tta, batch_size=args.batch_size,
                       threshold=args.threshold, level=args.level, workers=args.workers,
                       tissue_threshold=args.tissue_threshold, tissue_mask=not args.no_tissue_mask,
                       backend=args.backend)
        if Path(args.image).is_file():
            slide.slide(args.run, args.image, args.out, device=args.device, **options)
        else:
            slide.slides(args.run, args.image, args.out, device=args.device, **options)
    elif args.command == "slide-eval":
        from .histo import slide_eval
        slide_eval.evaluate(args.outputs, args.annotations, args.out,
                            config.build(EvalSettings, config.given(args, EvalSettings)))
    elif args.command == "export":
        from .histo import export
        export.export(args.run, args.format, args.out)
    elif args.command == "explain":
        from .histo import gradcam
        gradcam.explain_folder(args.run, args.images, args.out, tta=args.tta, device=args.device)


def _run_tweets(args: argparse.Namespace) -> None:
    from .tweets import refit, task as tweets
    if args.command == "train":
        settings, train = _settings(args, TweetSettings, tweets.KIND, tweets.train_defaults)
        record = None
        if not (args.resume and (args.out / runs.SETTINGS).exists()):  # a resumed run keeps its own
            train, record = refit.schedule(settings, train, given=config.given(args, engine.TrainSettings),
                                           config=args.config)
        tweets.train(settings, train, args.out, resume=args.resume, overwrite=args.overwrite, refit_record=record)
    elif args.command == "evaluate":
        tweets.evaluate(args.run, args.csv, device=args.device, skip_bad=args.skip_bad)
    elif args.command == "predict":
        tweets.predict(args.run, args.csv, args.out, proba=args.proba, device=args.device, skip_bad=args.skip_bad)
    elif args.command == "ensemble":
        tweets.build_ensemble(args.runs, args.out, overwrite=args.overwrite)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    try:
        run(args)
    except UserError as err:  # a mistake the user can fix: one line; anything else is a bug: its traceback
        print(f"spotter: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("spotter: interrupted; the last complete epoch is in the run folder (use --resume)", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
