"""Find the patches (Kaggle folders or PatchCamelyon HDF5), check them, and pack them once into a
memory-mapped uint8 array so that training never decodes a TIFF again.

A pack is a folder holding `pixels.npy` (N x 96 x 96 x 3 uint8, opened with mmap), `index.npz` (ids and
labels, -1 where unknown) and `manifest.json`, written last, which records the source's fingerprint:
packing again is a no-op while the source is unchanged.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import shutil
import socket
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm import tqdm

from ..errors import UserError
from ..files import atomic_path, cache_dir
from .tiff import PATCH_SHAPE, BadImage, read_patch

PACK_FORMAT = 1
PCAM_NAME = "camelyonpatch_level_2_split_{split}_{xy}.h5"


class DataError(UserError, ValueError):
    """Input that cannot be used as it is; the message says which file and what to do."""


@dataclass
class Source:
    """One set of patches to pack: a folder of TIFFs (with labels or not) or a PCam HDF5 split."""

    name: str  # train, test, valid
    kind: str  # "tiff" or "h5"
    paths: list[Path]  # tiff: one per patch; h5: [x_file, y_file or nothing]
    ids: list[str]
    labels: np.ndarray  # int8, -1 where unknown
    skipped: list[str] = field(default_factory=list)  # problems found before decoding, left out with --skip-bad

    def fingerprint(self) -> str:
        """Name, size and modification time of every file, and the labels: cheap enough to check on every
        run, but blind to a file rewritten in place with the same size and time (use --repack then)."""
        h = hashlib.sha1(f"{PACK_FORMAT}:{self.kind}".encode())
        for p in self.paths:
            st = p.stat()
            h.update(f"{p.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        h.update(self.labels.tobytes())
        return h.hexdigest()


@dataclass
class PackedSet:
    ids: np.ndarray
    labels: np.ndarray  # int8, -1 where unknown
    pixels: np.ndarray  # (N, 96, 96, 3) uint8, memory-mapped
    path: Path
    _file: object = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """The pixels of `rows` (sorted for sequential reads), copied with pread rather than through the
        memory map: pages read that way stay in the page cache, not in this process, so resident memory
        stays flat however large the pack (220,025 patches are 6 GB)."""
        if not isinstance(self.pixels, np.memmap):
            return np.asarray(self.pixels[rows])
        if self._file is None:
            self._file = open(self.pixels.filename, "rb", buffering=0)
        out = np.empty((len(rows), *PATCH_SHAPE), np.uint8)
        row_bytes = out[0].nbytes
        for i, row in enumerate(rows):
            got = os.preadv(self._file.fileno(), [out[i].reshape(-1)], self.pixels.offset + int(row) * row_bytes)
            if got != row_bytes:
                raise DataError(f"{self.path}: pack is truncated at row {row}; delete it to pack again")
        return out

    @property
    def labelled(self) -> bool:
        return bool(len(self.labels)) and bool((self.labels >= 0).all())


# ---------------------------------------------------------------- finding the sources

def find_sources(data_dir: Path, skip_bad: bool = False) -> dict[str, Source]:
    """The packable sets in `data_dir`: Kaggle `train` (+ `test`), or PCam HDF5 splits."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: no such folder")
    sources: dict[str, Source] = {}
    for split in ("train", "valid", "test"):
        x = data_dir / PCAM_NAME.format(split=split, xy="x")
        if x.exists():
            sources[split] = _pcam_source(split, x, data_dir / PCAM_NAME.format(split=split, xy="y"))
    if sources:
        return sources
    labels_csv, train_dir, test_dir = data_dir / "train_labels.csv", data_dir / "train", data_dir / "test"
    if labels_csv.exists() and train_dir.is_dir():
        sources["train"] = _labelled_folder_source(train_dir, labels_csv, skip_bad)
    if test_dir.is_dir():
        sources["test"] = folder_source(test_dir, "test")
    if not sources:
        raise DataError(f"{data_dir}: not the Kaggle layout (train/<id>.tif with train_labels.csv, or test/) "
                        f"and no PatchCamelyon files ({PCAM_NAME.format(split='train', xy='x')})")
    return sources


def folder_source(folder: Path, name: str) -> Source:
    """Every .tif in `folder`, unlabelled, sorted by id."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff"))
    if not paths:
        raise DataError(f"{folder}: no .tif images in it")
    return Source(name, "tiff", paths, [p.stem for p in paths], np.full(len(paths), -1, np.int8))


def read_labels_csv(path: Path) -> pd.DataFrame:
    """Kaggle's `id,label` CSV, checked: columns present, ids unique, labels 0 or 1."""
    try:
        df = pd.read_csv(path, dtype={"id": str}, encoding="utf-8-sig")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: empty file; expected a header 'id,label' and one row per image") from None
    df.columns = [str(c).strip().lower() for c in df.columns]
    if not {"id", "label"} <= set(df.columns):
        raise DataError(f"{path}: columns are {list(df.columns)}, expected 'id' and 'label'")
    if df.empty:
        raise DataError(f"{path}: has a header but no rows")
    df["id"] = df["id"].astype(str).str.strip()
    dupes = df["id"][df["id"].duplicated()].unique()
    if len(dupes):
        raise DataError(f"{path}: {len(dupes)} ids appear more than once, e.g. {dupes[0]!r}")
    labels = pd.to_numeric(df["label"], errors="coerce")
    bad = df.index[~labels.isin([0, 1])]
    if len(bad):
        row = bad[0]
        raise DataError(f"{path}: {len(bad)} labels are not 0 or 1, e.g. line {row + 2}: "
                        f"id {df['id'][row]!r} has label {df['label'][row]!r}")
    df["label"] = labels.astype(np.int8)
    return df


def _labelled_folder_source(folder: Path, labels_csv: Path, skip_bad: bool = False) -> Source:
    df = read_labels_csv(labels_csv)
    on_disk = {p.stem: p for p in folder.iterdir() if p.suffix.lower() in (".tif", ".tiff")}
    has_image = df["id"].isin(on_disk.keys())
    missing = list(df["id"][~has_image])
    if missing and not skip_bad:
        raise DataError(f"{labels_csv}: {len(missing)} ids have no image in {folder}, e.g. {missing[0]}.tif; "
                        "download the missing files, remove those rows, or pass --skip-bad to leave them out")
    df = df[has_image]
    skipped = [f"{folder / i}.tif: listed in {labels_csv.name} but missing" for i in missing]
    unlabelled = sorted(set(on_disk) - set(df["id"]) - set(missing))
    if unlabelled:
        print(f"spotter: warning: {len(unlabelled)} images in {folder} have no label in {labels_csv.name} "
              f"(e.g. {unlabelled[0]}.tif); they are not used for training", file=sys.stderr)
    return Source("train", "tiff", [on_disk[i] for i in df["id"]], list(df["id"]), df["label"].to_numpy(), skipped)


def _pcam_source(split: str, x_path: Path, y_path: Path) -> Source:
    import h5py

    try:
        with h5py.File(x_path, "r") as f:
            x = f["x"]
            if x.ndim != 4 or x.shape[1:] != PATCH_SHAPE or x.dtype != np.uint8:
                raise DataError(f"{x_path}: dataset 'x' is {x.shape} {x.dtype}, expected (N, 96, 96, 3) uint8")
            n = x.shape[0]
        labels = np.full(n, -1, np.int8)
        if y_path.exists():
            with h5py.File(y_path, "r") as f:
                y = np.asarray(f["y"]).reshape(-1)
            if len(y) != n:
                raise DataError(f"{y_path}: {len(y)} labels for {n} images in {x_path.name}")
            if not np.isin(y, [0, 1]).all():
                raise DataError(f"{y_path}: labels must be 0 or 1")
            labels = y.astype(np.int8)
    except (OSError, KeyError) as err:
        raise DataError(f"{x_path}: not a readable PatchCamelyon HDF5 file ({err})") from None
    paths = [x_path] + ([y_path] if y_path.exists() else [])
    return Source(split, "h5", paths, [f"{split}_{i}" for i in range(n)], labels)


# ---------------------------------------------------------------- packing

def default_pack_root() -> Path:
    return cache_dir("packs")


def pack_dir_for(data_dir: Path, pack_root: Path | None = None) -> Path:
    """Packs live outside the data folder (which may be read-only), one folder per data folder."""
    data_dir = Path(data_dir).resolve()
    digest = hashlib.sha1(str(data_dir).encode()).hexdigest()[:10]
    return (pack_root or default_pack_root()) / f"{data_dir.name}-{digest}"


def pack(source: Source, out_dir: Path, *, workers: int | None = None, skip_bad: bool = False,
         progress: bool = True, repack: bool = False) -> PackedSet:
    """Pack `source` into `out_dir/<name>/`, unless an identical pack is already there (`repack`: pack
    again all the same)."""
    target = Path(out_dir) / source.name
    fingerprint = source.fingerprint()
    manifest = target / "manifest.json"
    if not repack and _matches(manifest, fingerprint):
        return load_pack(target)
    # A partial folder of this process's own: packers on other nodes sharing the cache cannot delete it.
    tmp = target.with_name(f"{target.name}.partial-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n = len(source.ids)
    pixels = np.lib.format.open_memmap(tmp / "pixels.npy", mode="w+", dtype=np.uint8, shape=(n, *PATCH_SHAPE))
    del pixels  # workers write through their own maps
    if source.kind == "h5":
        bad: list[tuple[int, str]] = []
        _copy_h5(source.paths[0], tmp / "pixels.npy", n, progress)
    else:
        bad = _decode_tiffs(source.paths, tmp / "pixels.npy", workers, progress)
    keep = np.ones(n, bool)
    if bad and not skip_bad:
        shutil.rmtree(tmp, ignore_errors=True)
        report = "\n".join(msg for _, msg in bad)
        raise DataError(f"{len(bad)} of {n} images cannot be used:\n{_first_lines(report)}\n"
                        "fix or remove them, or pass --skip-bad to leave them out")
    if bad or source.skipped:
        left_out = source.skipped + [msg for _, msg in bad]
        (tmp / "skipped.txt").write_text("\n".join(left_out) + "\n")
        print(f"spotter: warning: left out {len(left_out)} images (--skip-bad):\n{_first_lines(chr(10).join(left_out), 3)}"
              f"\nthe list is in {target / 'skipped.txt'} (and in the run folder of a training run)", file=sys.stderr)
    if bad:
        keep[[i for i, _ in bad]] = False
        _compact(tmp / "pixels.npy", keep)
    with open(tmp / "pixels.npy", "rb+") as f:
        os.fsync(f.fileno())  # the pixels are on disk before the manifest says the pack is complete
    ids = np.asarray(source.ids)[keep]
    np.savez(tmp / "index.npz", ids=ids, labels=source.labels[keep])
    (tmp / "manifest.json").write_text(json.dumps(
        {"fingerprint": fingerprint, "format": PACK_FORMAT, "count": int(keep.sum()), "skipped": len(bad),
         "source": str(source.paths[0].parent)}, indent=2))
    if not repack and _matches(manifest, fingerprint):  # another process finished the same pack meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return load_pack(target)
    shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(tmp, target)
    except OSError:  # another process renamed its pack there in between
        shutil.rmtree(tmp, ignore_errors=True)
    return load_pack(target)


def _matches(manifest: Path, fingerprint: str) -> bool:
    try:
        return json.loads(manifest.read_text()).get("fingerprint") == fingerprint
    except (ValueError, OSError):
        return False  # missing or damaged: pack again


def load_pack(folder: Path) -> PackedSet:
    index = np.load(folder / "index.npz")
    pixels = np.load(folder / "pixels.npy", mmap_mode="r")
    return PackedSet(index["ids"], index["labels"].astype(np.int8), pixels, Path(folder))


def _first_lines(text: str, n: int = 10) -> str:
    lines = text.splitlines()
    return "\n".join(lines[:n] + ([f"... and {len(lines) - n} more"] if len(lines) > n else []))


def _decode_chunk(args: tuple[list[str], str, int]) -> list[tuple[int, str]]:
    paths, out_path, start = args
    out = np.load(out_path, mmap_mode="r+")
    bad = []
    for i, path in enumerate(paths, start):
        try:
            out[i] = read_patch(path)
        except BadImage as err:
            bad.append((i, str(err)))
    return bad  # no flush: the page cache is shared, and the parent syncs the whole file once


def _decode_tiffs(paths: list[Path], out_path: Path, workers: int | None, progress: bool) -> list[tuple[int, str]]:
    """Decode in parallel processes, each writing its chunk straight into the memory map."""
    workers = workers or os.cpu_count() or 1
    chunk = max(64, min(2048, len(paths) // (workers * 4) + 1))
    names = [str(p) for p in paths]
    jobs = [(names[i:i + chunk], str(out_path), i) for i in range(0, len(names), chunk)]
    bad: list[tuple[int, str]] = []
    bar = tqdm(total=len(paths), desc=f"pack {out_path.parent.name.split('.partial')[0]}", unit="file",
               disable=None if progress else True)
    if workers == 1 or len(jobs) == 1:
        for job in jobs:
            bad += _decode_chunk(job)
            bar.update(len(job[0]))
    else:
        # fork: workers start in milliseconds and need nothing from the parent but these arguments.
        context = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else None
        with ProcessPoolExecutor(workers, mp_context=context) as pool:
            for job, result in zip(jobs, pool.map(_decode_chunk, jobs)):
                bad += result
                bar.update(len(job[0]))
    bar.close()
    return sorted(bad)


def _copy_h5(x_path: Path, out_path: Path, n: int, progress: bool) -> None:
    import h5py

    out = np.load(out_path, mmap_mode="r+")
    with h5py.File(x_path, "r") as f:
        x = f["x"]
        for start in tqdm(range(0, n, 4096), desc="pack h5", unit="chunk", disable=None if progress else True):
            out[start:start + 4096] = x[start:start + 4096]
    out.flush()


def _compact(pixels_path: Path, keep: np.ndarray) -> None:
    """Drop the rows of skipped images, rewriting the array in place."""
    src = np.load(pixels_path, mmap_mode="r")
    with atomic_path(pixels_path, suffix=".tmp.npy") as tmp:
        kept = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(int(keep.sum()), *PATCH_SHAPE))
        kept[:] = src[keep]
        kept.flush()
        del src, kept


def pack_folder(data_dir: Path, *, pack_root: Path | None = None, workers: int | None = None,
                skip_bad: bool = False, progress: bool = True, repack: bool = False) -> dict[str, PackedSet]:
    """Pack every set found in `data_dir`; returns them by name."""
    out = pack_dir_for(data_dir, pack_root)
    return {name: pack(src, out, workers=workers, skip_bad=skip_bad, progress=progress, repack=repack)
            for name, src in find_sources(data_dir, skip_bad).items()}
