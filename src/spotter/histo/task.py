"""Histopathology: train, evaluate and predict, built on the shared engine.

Inference goes through `predictor.HistoPredictor` (a run, or an ensemble's members, loaded once): `evaluate`,
`predict`, the ensemble builder and distillation teachers all use it.
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from sklearn.model_selection import train_test_split

from .. import compiled, engine, ensemble, files, plots, runs
from ..metrics import binary_report, confusion_text, interval_text, intervals, log_loss, roc_auc
from ..errors import BadInput
from .data import DataError, PackedSet, folder_source, pack, pack_dir_for, pack_folder
from .models import count_parameters, create_model, normalisation
from .predictor import HistoPredictor, load_run  # noqa: F401 (the prediction API, used by tests and reports)
from .preprocess import Augment, preprocess
from .settings import (FLIPS_ONLY, PRETRAINED_DEFAULT, SCRATCH_DEFAULT,  # noqa: F401 (others import them from here)
                       HistoSettings, default_model, train_defaults)

KIND = "histo"


# ---------------------------------------------------------------- batches

def iterate_batches(pack: PackedSet, indices: np.ndarray, batch_size: int, device: torch.device, crop: int, *,
                    seed: int | None = None, augment: Augment | None = None, drop_last: bool = False,
                    shard: tuple[int, int] = (0, 1), model: str = "resnet", mixup: float = 0.0,
                    targets: np.ndarray | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of (preprocessed images, labels) on `device`, shuffled and augmented when `seed` is given.
    `targets` (one per pack row, e.g. a teacher's soft labels) replace the pack's labels.
    With `mixup` > 0 each batch is blended with a shuffled copy of itself, images and labels alike, by a
    weight drawn from Beta(mixup, mixup) (Zhang et al. 2018); the labels become soft.

    With `shard=(rank, world)` this rank gets its `batch_size` slice of each global batch of
    `batch_size * world` rows, so the ranks together step through exactly the single-process order.
    Pixels are normalised as `model` expects.
    """
    norm = normalisation(model)
    targets = pack.labels if targets is None else targets
    order = np.asarray(indices)
    generator = None
    if seed is not None:
        order = np.random.default_rng(seed).permutation(order)
        generator = torch.Generator(device=device).manual_seed(seed * 1009 + shard[0])
        mixing = np.random.default_rng([seed, shard[0]])
    for rows in engine.shard_batches(order, batch_size, shard, drop_last=drop_last, even=seed is not None):
        rows = np.sort(rows)  # sorted rows read the file sequentially; order inside a batch does not matter
        pixels = torch.from_numpy(pack.read(rows))
        labels = torch.from_numpy(targets[rows].astype(np.float32))
        if device.type == "cuda":
            pixels, labels = pixels.pin_memory(), labels.pin_memory()
        pixels = pixels.to(device, non_blocking=True)
        labels = labels.to(device, non_blocking=True)
        x = preprocess(pixels, crop, augment=augment, generator=generator, norm=norm)
        if mixup > 0 and seed is not None:
            weight, partner = mixing.beta(mixup, mixup), torch.from_numpy(mixing.permutation(len(rows))).to(device)
            x, labels = x * weight + x[partner] * (1 - weight), labels * weight + labels[partner] * (1 - weight)
        yield x, labels


def split_train_val(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified, seeded split of row indices."""
    rows = np.arange(len(labels))
    train, val = train_test_split(rows, test_size=fraction, stratify=labels, random_state=seed)
    return np.sort(train), np.sort(val)


def score(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    return {"auc": roc_auc(labels, probs), "loss": log_loss(labels, probs),
            "accuracy": float(((probs >= 0.5) == labels).mean())}


# ---------------------------------------------------------------- train

def train(histo: HistoSettings, settings: engine.TrainSettings, run_dir: Path, *, resume: bool = False,
          overwrite: bool = False, repack: bool = False, schedule_from: str | None = None, log=print) -> dict:
    """Train a run into `run_dir`. `schedule_from`: a refit's record of the run whose trained epochs it copied."""
    run_dir = Path(run_dir)
    # rank 0 alone judges the folder (under torchrun the others follow it)
    runs.claim(run_dir, resume=resume or not engine.join_world(settings.device).main, overwrite=overwrite)
    if resume and (run_dir / runs.SETTINGS).exists():
        # A resumed run keeps the settings it started with; only the device may change.
        saved, where = runs.open_run(run_dir, KIND), run_dir / runs.SETTINGS
        histo = engine.settings_from(HistoSettings, saved.settings, where)
        settings = engine.settings_from(engine.TrainSettings, {**saved.train, "device": settings.device}, where)
        schedule_from = json.loads(where.read_text()).get("task", {}).get("schedule_from")
    engine.seed_everything(settings.seed)
    world = engine.join_world(settings.device)
    log = log if world.main else engine.quiet
    engine.check_shared_folder(world, run_dir)
    # Each node's local rank 0 packs into its cache; the node's other ranks then find the pack ready.
    packed = engine.node_first(world, lambda: pack_folder(Path(histo.data), pack_root=_root(histo),
                                                          skip_bad=histo.skip_bad, progress=world.local_rank == 0,
                                                          repack=repack and world.local_rank == 0))
    if not resume and not histo.refit and "valid" in packed and packed["valid"].labelled:
        histo = replace(histo, val_split="valid")
    data, train_rows, val_data, val_rows = _split(packed, histo, settings.seed)
    device = engine.pick_device(settings.device, world)
    targets, settings = _distilled(histo, settings, data, train_rows, val_data.ids[val_rows], device, resume, log)
    model = create_model(histo.model).to(memory_format=torch.channels_last)
    if histo.compile is None:
        histo.compile = compiled.default_for(histo.model, settings.time_budget_min, device.type, world.size)
    if histo.compile:
        compiled.compile_in_place(model)
    augment = Augment(histo.crop_jitter, histo.colour_jitter, histo.rescan) if histo.augment else None
    bs = settings.batch_size
    split = ("refit: every labelled patch, no validation" if histo.refit else
             "PatchCamelyon valid split" if histo.val_split == "valid" else "random split")
    log(f"{len(train_rows)} training and {len(val_rows)} validation patches ({split}); model {histo.model} "
        f"({count_parameters(model):,} parameters), crop {histo.crop}, device {device}"
        f"{', compiled (the first steps take longer)' if histo.compile else ''}")
    run_dir.mkdir(parents=True, exist_ok=True)
    if world.main:
        if not histo.refit:  # a refit has no validation split
            write_folds(run_dir, val_data.ids[val_rows])
        if (data.path / "skipped.txt").exists():  # provenance: what this run was trained without
            shutil.copyfile(data.path / "skipped.txt", run_dir / "skipped.txt")

    task = engine.Task(
        model=model,
        train_batches=lambda epoch, rank, world: iterate_batches(
            data, train_rows, bs, device, histo.crop, seed=settings.seed * 100_003 + epoch, augment=augment,
            drop_last=True, shard=(rank, world), model=histo.model, mixup=histo.mixup, targets=targets),
        val_batches=None if histo.refit else lambda rank, world: iterate_batches(
            val_data, val_rows[rank::world], bs * 2, device, histo.crop, model=histo.model),
        score=score, main_metric="auc",
        steps_per_epoch=lambda world: engine.shard_steps(len(train_rows), bs, world, drop_last=True),
        settings={"histo": asdict(histo), "val_size": len(val_rows), "train_size": len(train_rows),
                  **({"schedule_from": schedule_from} if histo.refit else {})},
    )
    if histo.compile:
        settings = compiled.warm_up(task, settings, device, log)
    result = engine.fit(task, settings, run_dir, kind=KIND, resume=resume, log=log)
    if world.main:
        refit = {"refit": True, "schedule_from": schedule_from} if histo.refit else {}
        files.write_text_atomic(run_dir / runs.SUMMARY, json.dumps({"model": histo.model, **refit, **result},
                                                                   indent=2))
        plots.training_curves(run_dir / "metrics.csv", run_dir / "history.png",
                              [("loss", "loss"), ("auc", "ROC AUC")])
    return result


def _distilled(histo: HistoSettings, settings: engine.TrainSettings, data: PackedSet, train_rows: np.ndarray,
               val_ids: np.ndarray, device: torch.device, resume: bool,
               log) -> tuple[np.ndarray | None, engine.TrainSettings]:
    """The teacher's training targets (None without a teacher), and the training settings with the labelling
    time taken from the time budget (once: a resumed run's saved budget already paid it)."""
    if not histo.teacher:
        return None, settings
    start = time.perf_counter()
    targets = teacher_targets(histo, data, train_rows, val_ids, device)
    seconds = time.perf_counter() - start
    log(f"teacher {histo.teacher} labelled {len(train_rows)} training patches in {seconds:.0f} s"
        f"{' (taken from the time budget)' if settings.time_budget_min else ''}; soft weight {histo.soft_weight}")
    if settings.time_budget_min and not resume:
        settings = replace(settings, time_budget_min=round(settings.time_budget_min - seconds / 60, 2))
    return targets, settings


def teacher_targets(histo: HistoSettings, data: PackedSet, train_rows: np.ndarray, val_ids: np.ndarray,
                    device: torch.device) -> np.ndarray:
    """Each pack row's training target: its label blended with the teacher's probability (training rows only).
    The teacher must not have trained on this run's validation patches, or validation would flatter the student:
    it must be a run on the same data and split (same --seed and --val-fraction)."""
    teacher = runs.open_run(Path(histo.teacher), KIND)
    if not histo.refit and any(r.settings.get("refit") for r in teacher.runs()):
        raise BadInput(f"{teacher.path}: a refit teacher trained on every patch, this run's validation patches too; "
                       "distil from a run trained with a validation split (or train this one with --refit)")
    # Eager, whatever backends.json holds: a resumed run labels again and must train on the very same targets.
    predictor = load_run(teacher, str(device), backend="eager")
    # A refit student has no validation patches the teacher could have seen.
    if predictor.settings.data != histo.data or not histo.refit and set(teacher.validation_ids()) != set(val_ids):
        raise BadInput(f"{teacher}: the teacher was trained on another split (data {predictor.settings.data}); "
                       "it would have seen this run's validation patches. Train the student with the teacher's "
                       "--data, --seed and --val-fraction")
    soft = predictor.predict_pack(data, train_rows)
    targets = data.labels.astype(np.float32)
    targets[train_rows] = (1 - histo.soft_weight) * targets[train_rows] + histo.soft_weight * soft
    return targets


def _split(packed: dict[str, PackedSet], histo: HistoSettings, seed: int):
    """(training pack, its rows, validation pack, its rows), as `histo.val_split` says; a refit trains on every
    row of the training pack and has no validation rows."""
    if "train" not in packed or not packed["train"].labelled:
        raise DataError(f"{histo.data}: no labelled training set (train/ with train_labels.csv, or PCam train split)")
    data = packed["train"]
    if histo.refit:
        return data, np.arange(len(data)), data, np.zeros(0, dtype=np.int64)
    if histo.val_split == "valid":
        if "valid" not in packed or not packed["valid"].labelled:
            raise DataError(f"{histo.data}: the run validates on PatchCamelyon's valid split, which is not there")
        return data, np.arange(len(data)), packed["valid"], np.arange(len(packed["valid"]))
    train_rows, val_rows = split_train_val(data.labels, histo.val_fraction, seed)
    return data, train_rows, data, val_rows


def _root(histo: HistoSettings) -> Path | None:
    return Path(histo.pack_root) if histo.pack_root else None


# ---------------------------------------------------------------- evaluate, predict, ensembles

def write_folds(run_dir: Path, val_ids: np.ndarray) -> None:
    """The run's validation split as `folds.csv` (one fold: 0)."""
    files.write_csv_atomic(pd.DataFrame({"id": val_ids, "fold": 0}), Path(run_dir) / runs.FOLDS)


def validation_rows(run: runs.Run, histo: HistoSettings) -> tuple[PackedSet, np.ndarray]:
    """The run's own validation split: its pack and the rows of its validation ids, every one of them."""
    if histo.refit:
        raise BadInput(f"{run.path}: a refit run has no validation split; give --data")
    packed = pack_folder(Path(histo.data), pack_root=_root(histo), skip_bad=histo.skip_bad)
    data = packed["valid" if histo.val_split == "valid" else "train"]
    wanted = set(run.validation_ids())
    rows = np.flatnonzero([i in wanted for i in data.ids])
    if len(rows) != len(wanted):
        missing = sorted(wanted - set(data.ids[rows]))
        raise DataError(f"{histo.data}: {len(missing)} of the {len(wanted)} validation ids of {run.path} are not "
                        f"in its training set any more (e.g. {missing[0]}); the data changed since training")
    return data, rows


def build_ensemble(members: list[Path], out: Path, *, tta: bool = False, device: str = "auto",
                   overwrite: bool = False, log=print) -> dict:
    """Calibrate and average finished histo runs or ensembles (for example the ResNet and EfficientNet) on their
    shared validation split."""
    def validation(path: Path) -> ensemble.Validation:
        run = runs.open_run(path, KIND)
        if run.is_ensemble:
            return run.validation_predictions()
        if run.settings.get("refit"):
            raise BadInput(f"{path}: a refit run has no validation split to calibrate an ensemble on; ensemble runs "
                           "trained with one")
        predictor = load_run(run, device)
        data, rows = validation_rows(run, predictor.settings)
        return data.ids[rows], data.labels[rows].astype(np.float32), predictor.predict_pack(data, rows, tta)

    return ensemble.build(KIND, members, out, validation, score, "auc", log=log, record={"tta": tta},
                          overwrite=overwrite)


def evaluate(run_dir: Path, data_dir: Path | None = None, *, split: str | None = None, tta: bool = False,
             threshold: float = 0.5, device: str = "auto", backend: str = "auto", out: Path | None = None,
             log=print) -> dict:
    """Score a run (or an ensemble) on a labelled folder, or on its own validation split when `data_dir` is None.
    `split` picks the folder's labelled set: by default `test` for a PatchCamelyon folder, `train` for Kaggle's.
    `backend`: auto (chosen per model and job, measured) or eager, compiled, onnx. The report and ROC plot go to
    `out` (default: the run's folder)."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir
    predictor = load_run(run_dir, device, backend=backend, log=log)
    histo = predictor.settings
    if data_dir is None:
        data, rows = validation_rows(predictor.run, histo)
        where = f"validation split of {histo.data}"
    else:
        packed = pack_folder(Path(data_dir), pack_root=_root(histo))
        labelled = [name for name, part in packed.items() if part.labelled]
        split = split or ("test" if "test" in labelled else "train")  # PCam's test is labelled, Kaggle's not
        if split not in labelled:
            raise DataError(f"{data_dir}: no labelled '{split}' set to evaluate (labelled: "
                            f"{', '.join(labelled) or 'none'}; Kaggle's layout needs train/ and train_labels.csv)")
        data, where = packed[split], f"{data_dir} ({split})"
        rows = np.arange(len(data))
    start = time.perf_counter()
    probs = predictor.predict_pack(data, rows, tta)
    labels = data.labels[rows].astype(np.float32)
    seconds = time.perf_counter() - start
    report = {**binary_report(labels, probs, threshold), **intervals(labels, probs, probs >= threshold),
              "images": len(labels), "tta": tta, "data": where, "images_per_s": len(labels) / seconds,
              "backend": predictor.describe()["backend"]}
    suffix = "_tta" if tta else ""
    out.mkdir(parents=True, exist_ok=True)
    files.write_text_atomic(out / f"evaluation{suffix}.json", json.dumps(report, indent=2))
    plots.roc_curve(labels, probs, out / f"roc{suffix}.png",
                    title=f"ROC on {len(labels)} patches{' (8x TTA)' if tta else ''}")
    log(f"{where}: {len(labels)} patches  AUC {report['auc']:.4f} {interval_text(report['auc_ci95'])}  "
        f"accuracy {report['accuracy']:.4f}  F1 {report['f1']:.4f} {interval_text(report['f1_ci95'])} "
        f"at threshold {threshold:g}{'  (8x TTA)' if tta else ''}")
    log(confusion_text(report))
    return report


def predict(run_dir: Path, images: Path, out: Path, *, tta: bool = False, device: str = "auto",
            skip_bad: bool = False, backend: str = "auto", log=print) -> pd.DataFrame:
    """Write Kaggle's submission (`id,label`, label = probability of tumour) for every .tif in `images`."""
    predictor = load_run(Path(run_dir), device, backend=backend, log=log)
    source = folder_source(Path(images), "images")
    data = pack(source, pack_dir_for(Path(images), _root(predictor.settings)), skip_bad=skip_bad)
    submission = pd.DataFrame({"id": data.ids, "label": predictor.predict_pack(data, tta=tta).astype(np.float64)})
    files.write_csv_atomic(submission, out)
    if (data.path / "skipped.txt").exists():
        skipped = Path(str(out) + ".skipped.txt")
        skipped.write_text((data.path / "skipped.txt").read_text())
        log(f"warning: unreadable images have no row in the submission; they are listed in {skipped}")
    log(f"wrote {len(submission)} predictions to {out}")
    return submission
