"""Histology stages of `spotter bench`: packing, training (pipeline, ceiling, end to end, per-file loader),
inference with and without TTA, and the pretrained EfficientNet default."""
from __future__ import annotations

import itertools
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from .. import engine
from ..histo.data import find_sources, pack, pack_folder
from ..histo.models import create_model
from ..histo.preprocess import Augment, dihedral_views, preprocess
from ..histo.task import PRETRAINED_DEFAULT, SCRATCH_DEFAULT, HistoSettings, iterate_batches, train_defaults
from ..histo.tiff import read_patch
from .timing import (WARMUP_STEPS, auto_precision, disk_write_mb_per_s, matmul_gflops, median_rate, no_step,
                     timed_steps, trainer)


def stage_pack(data: str, quick: bool) -> dict[str, Any]:
    source = find_sources(Path(data))["train"]
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))
        packs: list[Any] = []

        def pack_once() -> int:
            packs.append(pack(source, Path(tmp) / str(next(counter)), progress=False))
            return len(packs[-1])

        rate = median_rate(pack_once, repeats=1 if quick else 3)
        pack_bytes = (packs[-1].path / "pixels.npy").stat().st_size
        disk = disk_write_mb_per_s(Path(tmp), pack_bytes, repeats=1 if quick else 3)
    pack_mb = rate * pack_bytes / len(packs[-1]) / 1e6
    paths = source.paths[: 500 if quick else 2000]
    pil = median_rate(lambda: sum(1 for p in paths if np.asarray(Image.open(p).convert("RGB")) is not None), 1)
    out = {"pack_files_per_s": rate, "pack_mb_per_s": pack_mb, "pack_mb": pack_bytes / 1e6,
           "disk_write_fsync_mb_per_s": disk, "pack_over_disk": pack_mb / disk, "pil_files_per_s": pil,
           "reader_files_per_s": median_rate(lambda: sum(1 for p in paths if read_patch(p) is not None), 1)}
    try:
        import tifffile
        out["tifffile_files_per_s"] = median_rate(lambda: sum(1 for p in paths if tifffile.imread(p) is not None), 1)
    except ImportError:
        pass  # the table says "not installed"
    return out


def default_cnn():
    """The settings of `histo train`'s from-scratch default: model, crop and augmentation (the pretrained
    default, EfficientNet-Lite1, is the same network family as the EfficientNet stage's)."""
    return HistoSettings(model=SCRATCH_DEFAULT)


def setup_histo(data: str, device: str):
    return engine.pick_device(device), pack_folder(Path(data), progress=False)["train"]


def stage_histo_train(data: str, quick: bool, device: str) -> dict[str, Any]:
    """Data pipeline alone, compute ceiling, end to end, and a per-file DataLoader, on the default model."""
    dev, packed = setup_histo(data, device)
    default = default_cnn()
    batch, steps, crop = 128, 6 if quick else 15, default.crop
    rows = np.arange(len(packed))
    model = create_model(default.model).to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings())
    augment = Augment(default.crop_jitter, default.colour_jitter)

    def batches(seed: int):
        return iterate_batches(packed, rows, batch, dev, crop, seed=seed, augment=augment, drop_last=True)

    precision, why = auto_precision(dev, model, lambda: next(batches(0)))
    step = trainer(model, optimizer, dev, precision)
    timed_steps(step, batches(1), WARMUP_STEPS, dev)  # shared by the ceiling and end to end: same model, shape

    pipeline = statistics.median(timed_steps(no_step, batches(seed), steps, dev) for seed in (2, 3, 4))
    ceilings, e2es = [], []
    for seed in (5, 6, 7):  # alternate the two, so both see the same machine state
        in_memory = list(itertools.islice(batches(seed), steps))  # the very batches end to end is about to read
        ceilings.append(timed_steps(step, in_memory, steps, dev))
        del in_memory
        e2es.append(timed_steps(step, batches(seed), steps, dev))
    ceiling, e2e = statistics.median(ceilings), statistics.median(e2es)

    x, y = next(batches(0))
    with FlopCounterMode(display=False) as counter:
        step(x, y)
    gflop_per_image = counter.get_total_flops() / batch / 1e9
    matmul = {p: matmul_gflops(dev, dtype, repeats=3 if quick else 5)
              for p, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    perfile = perfile_loader_rate(data, step, batch, steps, dev, crop, augment)
    return {"pipeline_img_per_s": pipeline, "train_ceiling_img_per_s": ceiling, "train_e2e_img_per_s": e2e,
            "train_ceilings": ceilings, "train_e2es": e2es, "e2e_over_ceiling": e2e / ceiling,
            "train_perfile_img_per_s": perfile, "e2e_over_perfile": e2e / perfile,
            "matmul_gflops": matmul[precision], "matmul_fp32_gflops": matmul["fp32"],
            "matmul_bf16_gflops": matmul["bf16"], "train_gflops": ceiling * gflop_per_image,
            "ceiling_over_matmul": ceiling * gflop_per_image / matmul[precision],
            "train_gflop_per_image": gflop_per_image, "precision": precision, "precision_reason": why,
            "device": str(dev), "model": default.model, "crop": crop, "batch": batch, "steps": steps}


class PerFileImages(torch.utils.data.Dataset):
    """Decodes one TIFF per item with PIL, as the write-up's generator did."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return torch.from_numpy(np.array(Image.open(self.paths[i]).convert("RGB"))), float(self.labels[i])


def perfile_loader_rate(data: str, step, batch: int, steps: int, dev, crop: int, augment) -> float:
    """The usual approach (and the write-up's): decode each TIFF in a DataLoader every epoch."""
    source = find_sources(Path(data))["train"]
    loader = DataLoader(PerFileImages(source.paths, source.labels), batch_size=batch, shuffle=True, num_workers=2,
                        drop_last=True, generator=torch.Generator().manual_seed(0))

    def preprocessed():
        for i, (pixels, labels) in enumerate(loader):
            yield (preprocess(pixels.to(dev), crop, augment=augment,
                              generator=torch.Generator(device=dev).manual_seed(i)), labels.float().to(dev))

    return statistics.median(timed_steps(step, preprocessed(), steps, dev) for _ in range(2))


def stage_histo_infer(data: str, quick: bool, device: str) -> dict[str, Any]:
    dev, packed = setup_histo(data, device)
    rows = np.arange(min(len(packed), 1024 if quick else 4096))
    default = default_cnn()
    model = create_model(default.model).to(dev, memory_format=torch.channels_last)
    precision, why = auto_precision(dev, model, lambda: next(iterate_batches(packed, rows, 256, dev, default.crop)),
                                    train=False)

    def infer(tta: bool) -> int:
        probs, _ = engine.predict_probs(model, iterate_batches(packed, rows, 256, dev, default.crop), dev, precision,
                                        transform=dihedral_views if tta else None)
        return len(probs)

    return {"infer_img_per_s": median_rate(lambda: infer(False), 3),
            "infer_tta_img_per_s": median_rate(lambda: infer(True), 1 if quick else 2),
            "infer_precision": precision, "infer_precision_reason": why}


def stage_effnet(data: str, quick: bool, device: str) -> dict[str, Any]:
    """The pretrained default (EfficientNet-Lite1) at its own batch size and learning rate: training end to end
    (real pack, augmentation) and inference, with and without TTA."""
    name = PRETRAINED_DEFAULT
    dev, packed = setup_histo(data, device)
    model = create_model(name).to(dev, memory_format=torch.channels_last)
    train_settings = engine.TrainSettings(**train_defaults(name))  # its learning rate, decay and batch size
    optimizer = engine.make_optimizer(model, train_settings)
    settings, batch = HistoSettings(model=name), train_settings.batch_size
    rows, crop, steps = np.arange(len(packed)), settings.crop, 4 if quick else 10
    augment = Augment(settings.crop_jitter, settings.colour_jitter)

    def batches(seed: int):
        return iterate_batches(packed, rows, batch, dev, crop, seed=seed, augment=augment, model=name)

    precision, why = auto_precision(dev, model, lambda: next(batches(0)))
    step = trainer(model, optimizer, dev, precision)
    model.train()
    timed_steps(step, batches(1), 2, dev)  # warm-up
    train = statistics.median(timed_steps(step, batches(s), steps, dev) for s in range(2, 3 if quick else 5))
    infer_rows = rows[:1024 if quick else 2048]
    infer_batches = lambda: iterate_batches(packed, infer_rows, 256, dev, crop, model=name)  # noqa: E731
    infer_precision, infer_why = auto_precision(dev, model, lambda: next(infer_batches()), train=False)

    def infer(tta: bool) -> int:
        probs, _ = engine.predict_probs(model, infer_batches(), dev, infer_precision,
                                        transform=dihedral_views if tta else None)
        return len(probs)

    return {"effnet_train_img_per_s": train, "effnet_infer_img_per_s": median_rate(lambda: infer(False), 2),
            "effnet_infer_tta_img_per_s": median_rate(lambda: infer(True), 1), "effnet_crop": crop,
            "effnet_model": name, "effnet_batch": batch,
            "effnet_precision": precision, "effnet_precision_reason": why,
            "effnet_infer_precision": infer_precision, "effnet_infer_precision_reason": infer_why}
