"""Files and places: atomic writes, the cache folder, and where the shared Kaggle data lives.

Every file a reader may open while Spotter writes it (checkpoints, summaries, submissions, caches) goes
through `atomic_path`: written beside its target, then renamed over it, so nobody sees half a file.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: Path | str, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block succeeds, rename it over `path`, else delete it.

    `suffix` lets writers that insist on an extension (`np.save` adds `.npy`) keep theirs.
    """
    path = Path(path)
    tmp = path.with_name(path.name + suffix)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path | str, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_csv_atomic(table, path: Path | str) -> None:
    """A pandas table to CSV through a temporary file: readers never see half a submission."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")


def cache_dir(*parts: str) -> Path:
    """Spotter's cache (`SPOTTER_CACHE`, default ~/.cache/spotter), or a folder inside it."""
    return Path(os.environ.get("SPOTTER_CACHE", Path.home() / ".cache" / "spotter")).joinpath(*parts)


def shared_data(name: str = "") -> Path:
    """The shared Kaggle data (`../shared/data` beside the repository, or `SPOTTER_SHARED_DATA`), or one
    data set in it: `histopathology` or `disaster-tweets`. Tests and `spotter bench` read it; nothing
    writes there."""
    default = Path(__file__).resolve().parents[3] / "shared" / "data"
    return Path(os.environ.get("SPOTTER_SHARED_DATA", default)) / name
