"""`spotter bench`: throughput of every stage, measured side by side in one run, as a table and JSON.

Each stage runs in a fresh process so that its peak resident memory is its own. Rates are medians over
repeats, with warm-up steps left out.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from .files import shared_data  # noqa: E402 (kept beside its one use)
SHARED_HISTO = shared_data("histopathology")
SHARED_TWEETS = SHARED_HISTO.parent / "disaster-tweets"


def _median_rate(fn: Callable[[], int], repeats: int, warmup: int = 1) -> float:
    """Median of items/s over `repeats` calls of `fn` (which returns how many items it did)."""
    rates = []
    for i in range(warmup + repeats):
        start = time.perf_counter()
        n = fn()
        if i >= warmup:
            rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


# ---------------------------------------------------------------- stages (each runs in its own process)

def stage_pack(data: str, quick: bool) -> dict[str, float]:
    from PIL import Image

    from .histo.data import find_sources, pack
    from .histo.tiff import read_patch

    source = find_sources(Path(data))["train"]
    with tempfile.TemporaryDirectory() as tmp:
        counter = iter(range(100))
        rate = _median_rate(lambda: len(pack(source, Path(tmp) / str(next(counter)), progress=False)),
                            repeats=1 if quick else 3)
    paths = source.paths[: 500 if quick else 2000]
    pil = _median_rate(lambda: sum(1 for p in paths if np.asarray(Image.open(p).convert("RGB")) is not None), 1)
    out = {"pack_files_per_s": rate, "pil_files_per_s": pil,
           "reader_files_per_s": _median_rate(lambda: sum(1 for p in paths if read_patch(p) is not None), 1)}
    try:
        import tifffile
        out["tifffile_files_per_s"] = _median_rate(lambda: sum(1 for p in paths if tifffile.imread(p) is not None), 1)
    except ImportError:
        pass
    return out


def _default_crop() -> int:
    from .histo.task import HistoSettings
    return HistoSettings().crop


def _setup_histo(data: str, device: str):
    from . import engine
    from .histo.data import pack_folder

    dev = engine.pick_device(device)
    packed = pack_folder(Path(data), progress=False)["train"]
    return dev, engine.pick_precision(dev), packed


def stage_histo_train(data: str, quick: bool, device: str) -> dict[str, Any]:
    """Data pipeline alone, compute ceiling, end to end, and a per-file DataLoader, on the default model."""
    from torch.utils.flop_counter import FlopCounterMode

    from . import engine
    from .histo.models import create_model
    from .histo.preprocess import Augment
    from .histo.task import iterate_batches

    dev, precision, packed = _setup_histo(data, device)
    batch, steps, crop = 128, 6 if quick else 15, _default_crop()
    rows = np.arange(len(packed))
    model = create_model("resnet").to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings())

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def step(x, y):
        engine.train_step(model, x, y, optimizer, dev, precision)

    def run(batches, do_step=True) -> int:
        n = 0
        for i, (x, y) in enumerate(batches):
            if do_step:
                step(x, y)
            n += len(y)
            if i + 1 >= steps:
                break
        sync()
        return n

    pipeline = _median_rate(lambda: run(iterate_batches(packed, rows, batch, dev, crop, seed=1, augment=Augment()),
                                        do_step=False), 3)
    x, y = next(iterate_batches(packed, rows, batch, dev, crop, seed=0, augment=Augment()))
    ceilings, e2es = [], []
    for r in range(3):  # alternate the two, so both see the same machine state
        ceilings.append(_median_rate(lambda: run(((x, y) for _ in range(steps))), 1))
        e2es.append(_median_rate(lambda: run(iterate_batches(packed, rows, batch, dev, crop, seed=r + 2,
                                                             augment=Augment())), 1, warmup=0))
    ceiling, e2e = statistics.median(ceilings), statistics.median(e2es)

    with FlopCounterMode(display=False) as counter:
        step(x, y)
    flops_per_image = counter.get_total_flops() / batch

    size = 2048
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)

    def matmul() -> int:
        with engine.autocast(dev, precision):
            for _ in range(5):
                torch.mm(a, b)
        sync()
        return 5

    matmul_gflops = _median_rate(matmul, 5) * 2 * size ** 3 / 1e9
    perfile = _perfile_loader_rate(data, step, batch, steps, dev, crop)
    return {"pipeline_img_per_s": pipeline, "train_ceiling_img_per_s": ceiling, "train_e2e_img_per_s": e2e,
            "e2e_over_ceiling": e2e / ceiling, "train_perfile_img_per_s": perfile,
            "e2e_over_perfile": e2e / perfile, "matmul_gflops": matmul_gflops,
            "train_gflops": ceiling * flops_per_image / 1e9, "ceiling_over_matmul": ceiling * flops_per_image / 1e9 / matmul_gflops,
            "train_gflop_per_image": flops_per_image / 1e9, "precision": precision, "device": str(dev), "crop": crop}


class PerFileImages(torch.utils.data.Dataset):
    """Decodes one TIFF per item with PIL, as the write-up's generator did."""

    def __init__(self, paths, labels):
        self.paths, self.labels = paths, labels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        return torch.from_numpy(np.array(Image.open(self.paths[i]).convert("RGB"))), float(self.labels[i])


def _perfile_loader_rate(data: str, step, batch: int, steps: int, dev, crop: int) -> float:
    """The usual approach (and the write-up's): decode each TIFF in a DataLoader every epoch."""
    from torch.utils.data import DataLoader

    from .histo.data import find_sources
    from .histo.preprocess import Augment, preprocess

    source = find_sources(Path(data))["train"]
    loader = DataLoader(PerFileImages(source.paths, source.labels), batch_size=batch, shuffle=True, num_workers=2,
                        drop_last=True, generator=torch.Generator().manual_seed(0))
    augment = Augment()

    def run() -> int:
        n = 0
        for i, (pixels, labels) in enumerate(loader):
            x = preprocess(pixels.to(dev), crop, augment=augment,
                           generator=torch.Generator(device=dev).manual_seed(i))
            step(x, labels.float().to(dev))
            n += len(labels)
            if i + 1 >= steps:
                break
        return n

    return _median_rate(run, 2)


def stage_histo_infer(data: str, quick: bool, device: str) -> dict[str, float]:
    from . import engine
    from .histo.models import create_model
    from .histo.preprocess import dihedral_views
    from .histo.task import iterate_batches

    dev, precision, packed = _setup_histo(data, device)
    rows = np.arange(min(len(packed), 1024 if quick else 4096))
    model = create_model("resnet").to(dev, memory_format=torch.channels_last)

    def infer(tta: bool) -> int:
        probs, _ = engine.predict_probs(model, iterate_batches(packed, rows, 256, dev, _default_crop()), dev, precision,
                                        transform=dihedral_views if tta else None)
        return len(probs)

    return {"infer_img_per_s": _median_rate(lambda: infer(False), 3),
            "infer_tta_img_per_s": _median_rate(lambda: infer(True), 1 if quick else 2)}


def stage_tweets(data: str, quick: bool, device: str) -> dict[str, float]:
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
    optimizer = engine.make_optimizer(model, engine.TrainSettings())

    def train_epoch() -> int:
        model.train()
        for inputs, y in tweets.iterate_batches(data_enc, 64, dev, seed=0):
            engine.train_step(model, inputs, y, optimizer, dev, "fp32")
        return len(df)

    def infer() -> int:
        probs, _ = engine.predict_probs(model, tweets.iterate_batches(data_enc, 512, dev), dev, "fp32")
        return len(probs)

    return {"tweets_train_per_s": _median_rate(train_epoch, 1 if quick else 3),
            "tweets_infer_per_s": _median_rate(infer, 3)}


def stage_effnet(data: str, quick: bool, device: str) -> dict[str, float]:
    """EfficientNet-Lite0: training end to end (real pack, augmentation) and inference, with and without TTA."""
    from . import engine
    from .histo.models import create_model
    from .histo.preprocess import Augment, dihedral_views
    from .histo.task import iterate_batches

    dev, precision, packed = _setup_histo(data, device)
    model = create_model("effnet-lite0").to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings(lr=1e-3))
    rows, crop, steps = np.arange(len(packed)), _default_crop(), 4 if quick else 10

    def train(seed: int) -> int:
        n = 0
        model.train()
        for i, (x, y) in enumerate(iterate_batches(packed, rows, 128, dev, crop, seed=seed, augment=Augment(),
                                                   model="effnet-lite0")):
            engine.train_step(model, x, y, optimizer, dev, precision)
            n += len(y)
            if i + 1 >= steps:
                break
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return n

    seeds = iter(range(100))
    infer_rows = rows[:1024 if quick else 2048]

    def infer(tta: bool) -> int:
        batches = iterate_batches(packed, infer_rows, 256, dev, crop, model="effnet-lite0")
        probs, _ = engine.predict_probs(model, batches, dev, precision, transform=dihedral_views if tta else None)
        return len(probs)

    return {"effnet_train_img_per_s": _median_rate(lambda: train(next(seeds)), 1 if quick else 3),
            "effnet_infer_img_per_s": _median_rate(lambda: infer(False), 2),
            "effnet_infer_tta_img_per_s": _median_rate(lambda: infer(True), 1)}


def stage_minilm(data: str, quick: bool, device: str) -> dict[str, float]:
    """MiniLM on the real tweets: fine-tuning (batches of 32, cut to their longest tweet) and inference
    (sorted by length, batches of 256), which is also the cost of `minilm-frozen`'s one embedding pass."""
    from . import engine
    from .tweets import minilm
    from .tweets import task as tweets
    from .tweets.text import NormaliseOptions, keyword_text, read_tweets

    dev = engine.pick_device(device)
    precision = engine.pick_precision(dev)
    df = read_tweets(Path(data) / "train.csv", labelled=True)
    texts, _ = tweets.prepare(df, NormaliseOptions())
    keywords = [keyword_text(k) for k in df["keyword"]]
    data_tokens = minilm.tokenize_pairs(minilm.load_tokenizer(), texts, keywords, df["target"].to_numpy())
    model = minilm.TransformerClassifier(minilm.load_encoder()).to(dev)
    optimizer = engine.make_optimizer(model, engine.TrainSettings(lr=5e-5))
    steps = 4 if quick else 12
    seeds = iter(range(100))

    def train() -> int:
        n = 0
        model.train()
        for i, (inputs, y) in enumerate(minilm.iterate_batches(data_tokens, 32, dev, seed=next(seeds))):
            engine.train_step(model, inputs, y, optimizer, dev, precision)
            n += len(y)
            if i + 1 >= steps:
                break
        return n

    _, ordered = data_tokens.by_length()
    ordered = ordered.take(np.arange(1024)) if quick else ordered

    def infer() -> int:
        probs, _ = engine.predict_probs(model, minilm.iterate_batches(ordered, 256, dev), dev, precision)
        return len(probs)

    return {"minilm_train_per_s": _median_rate(train, 1 if quick else 3),
            "minilm_infer_per_s": _median_rate(infer, 1 if quick else 2)}


def stage_make_scale_pack(data: str, folder: str, patches: int = 220_025) -> dict[str, Any]:
    """A pack of 220,025 patches (the full Kaggle training set's size, 6 GB), tiled from the real ones."""
    from .histo.data import pack_folder

    real = pack_folder(Path(data), progress=False)["train"]
    pixels = np.lib.format.open_memmap(Path(folder) / "pixels.npy", mode="w+", dtype=np.uint8,
                                       shape=(patches, 96, 96, 3))
    for start in range(0, patches, len(real)):
        pixels[start:start + len(real)] = real.pixels[:patches - start]
    pixels.flush()
    np.savez(Path(folder) / "index.npz", ids=np.arange(patches).astype(str), labels=np.resize(real.labels, patches))
    return {"scale_patches": patches, "scale_pack_gb": (Path(folder) / "pixels.npy").stat().st_size / 1e9}


def stage_scale(folder: str, quick: bool, device: str) -> dict[str, Any]:
    """Train from the large pack: throughput per window of steps through the epoch; this process's peak
    RSS shows whether memory stays bounded while the memory map streams."""
    from . import engine
    from .histo.data import load_pack
    from .histo.models import create_model
    from .histo.preprocess import Augment
    from .histo.task import iterate_batches

    dev = engine.pick_device(device)
    precision = engine.pick_precision(dev)
    packed = load_pack(Path(folder))
    model = create_model("resnet").to(dev, memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model, engine.TrainSettings())
    window, windows, steps = 25, [], (100 if quick else 600)
    start = time.perf_counter()
    batches = iterate_batches(packed, np.arange(len(packed)), 128, dev, _default_crop(), seed=0, augment=Augment())
    for i, (x, y) in enumerate(batches):
        engine.train_step(model, x, y, optimizer, dev, precision)
        if (i + 1) % window == 0:
            now = time.perf_counter()
            windows.append(window * 128 / (now - start))
            start = now
        if i + 1 >= steps:
            break
    return {"scale_img_per_s_windows": windows, "scale_img_per_s": statistics.median(windows[1:] or windows),
            "scale_steps": steps}


def _in_child(queue, fn, args):
    try:
        torch.manual_seed(0)
        result = fn(*args)
        result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        queue.put(result)
    except BaseException:
        import traceback
        queue.put({"error": traceback.format_exc()})


def _isolated(fn, *args) -> dict[str, Any]:
    """Run one stage in a fresh process; its peak RSS is then its own."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_in_child, args=(queue, fn, args))
    process.start()
    result = queue.get()
    process.join()
    if "error" in result:
        raise RuntimeError(f"benchmark stage {fn.__name__} failed:\n{result['error']}")
    return result


def run(histo_data: Path | None = None, tweets_data: Path | None = None, *, quick: bool = False,
        device: str = "auto", out: Path | None = None, scale: bool = False) -> dict[str, Any]:
    histo_data = histo_data or SHARED_HISTO
    tweets_data = tweets_data or SHARED_TWEETS
    with tempfile.TemporaryDirectory() as tmp:
        if not histo_data.exists() or not tweets_data.exists():
            from .demo import make_histo_dataset, make_tweets_dataset
            print("shared data not found: benchmarking on synthetic demo data")
            histo_data = make_histo_dataset(Path(tmp) / "histo", n_train=2000, n_test=10)
            tweets_data = make_tweets_dataset(Path(tmp) / "tweets", n_train=3000, n_test=10)
        stages = {"pack": _isolated(stage_pack, str(histo_data), quick),
                  "histo_train": _isolated(stage_histo_train, str(histo_data), quick, device),
                  "histo_infer": _isolated(stage_histo_infer, str(histo_data), quick, device),
                  "tweets": _isolated(stage_tweets, str(tweets_data), quick, device)}
        try:
            from . import pretrained
            pretrained.efficientnet_lite0_file(), pretrained.minilm_dir()
            stages["effnet"] = _isolated(stage_effnet, str(histo_data), quick, device)
            stages["minilm"] = _isolated(stage_minilm, str(tweets_data), quick, device)
        except pretrained.MissingWeights as err:
            print(f"pretrained models skipped: {err}")
        if scale:
            with tempfile.TemporaryDirectory(dir=Path.home()) as big:  # 6 GB: not on a small /tmp
                made = _isolated(stage_make_scale_pack, str(histo_data), big)
                stages["scale"] = {**made, **_isolated(stage_scale, big, quick, device)}
    result: dict[str, Any] = {}
    for stage in stages.values():
        result.update({k: v for k, v in stage.items() if k != "peak_rss_mb"})
    result["peak_rss_mb"] = max(s["peak_rss_mb"] for s in stages.values())
    result["stage_peak_rss_mb"] = {name: s["peak_rss_mb"] for name, s in stages.items()}
    result.update(cpu_threads=torch.get_num_threads(), torch=torch.__version__, quick=quick,
                  histo_data=str(histo_data), tweets_data=str(tweets_data))
    print(format_table(result))
    if out:
        Path(out).write_text(json.dumps(result, indent=2))
        print(f"wrote {out}")
    return result


def format_table(r: dict[str, Any]) -> str:
    rss = r["stage_peak_rss_mb"]
    rows = [
        ("packing (Kaggle TIFFs -> memory map)", f"{r['pack_files_per_s']:,.0f} files/s", rss["pack"]),
        ("  plain PIL loop, same files", f"{r['pil_files_per_s']:,.0f} files/s", None),
        ("  tifffile loop, same files", f"{r.get('tifffile_files_per_s', float('nan')):,.0f} files/s", None),
        ("data pipeline alone (with augmentation)", f"{r['pipeline_img_per_s']:,.0f} img/s", None),
        ("matmul rate", f"{r['matmul_gflops']:,.0f} GFLOP/s", None),
        ("training ceiling (in-memory batch)", f"{r['train_ceiling_img_per_s']:,.0f} img/s "
         f"({r['train_gflops']:,.0f} GFLOP/s, {r['ceiling_over_matmul']:.0%} of matmul)", rss["histo_train"]),
        ("training end to end", f"{r['train_e2e_img_per_s']:,.0f} img/s ({r['e2e_over_ceiling']:.0%} of ceiling)", None),
        ("training, per-file DataLoader", f"{r['train_perfile_img_per_s']:,.0f} img/s "
         f"(end to end is {r['e2e_over_perfile']:.1f}x)", None),
        ("inference", f"{r['infer_img_per_s']:,.0f} img/s", rss["histo_infer"]),
        ("inference, 8x TTA", f"{r['infer_tta_img_per_s']:,.0f} img/s", None),
        ("tweets training (bigru)", f"{r['tweets_train_per_s']:,.0f} tweets/s", rss["tweets"]),
        ("tweets inference", f"{r['tweets_infer_per_s']:,.0f} tweets/s", None),
    ]
    if "effnet_train_img_per_s" in r:
        rows += [
            ("effnet-lite0 training end to end", f"{r['effnet_train_img_per_s']:,.0f} img/s", rss["effnet"]),
            ("effnet-lite0 inference", f"{r['effnet_infer_img_per_s']:,.0f} img/s", None),
            ("effnet-lite0 inference, 8x TTA", f"{r['effnet_infer_tta_img_per_s']:,.0f} img/s", None),
            ("MiniLM fine-tuning", f"{r['minilm_train_per_s']:,.0f} tweets/s", rss["minilm"]),
            ("MiniLM inference (= minilm-frozen's embedding pass)", f"{r['minilm_infer_per_s']:,.0f} tweets/s",
             None),
        ]
    lines = [f"device {r['device']}, precision {r['precision']}, {r['cpu_threads']} CPU threads, torch {r['torch']}",
             "", "| stage | rate | peak RSS |", "|---|---|---|"]
    if "scale_img_per_s" in r:
        w = r["scale_img_per_s_windows"]
        rows.append((f"training from a {r['scale_patches']:,}-patch pack ({r['scale_pack_gb']:.1f} GB)",
                     f"{r['scale_img_per_s']:,.0f} img/s (windows {min(w):,.0f}-{max(w):,.0f})", rss["scale"]))
    lines += [f"| {name} | {rate} | {'' if mb is None else f'{mb:,.0f} MB'} |" for name, rate, mb in rows]
    return "\n".join(lines)
