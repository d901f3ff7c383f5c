"""Decisions measured once per machine and cached: `--precision auto` (precision.json) and `--backend auto`
(backends.json) both time their candidates here, in alternation, and keep the result in Spotter's cache.

A measurement whose timed steps varied more than NOISY_SPREAD (slowest over fastest) was disturbed by other
load. The process that made it uses it (a compile warm-up and the training after it must agree), but a later
run measures again, until a quiet measurement stands: a disturbed first measurement is not kept forever.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from . import files

NOISY_SPREAD = 1.5  # slowest over fastest timed step beyond which other load disturbed the timing
THIS_RUN = f"{os.getpid()}@{time.time_ns()}"  # names this process in the entries it measures


def time_alternating(candidates: Iterable[str], time_step: Callable[[str], list[float]],
                     rounds: int) -> dict[str, list[float]]:
    """Seconds of each candidate's timed steps, alternating between them so that a burst of load hits all."""
    candidates = list(candidates)
    samples: dict[str, list[float]] = {c: [] for c in candidates}
    for _ in range(rounds):
        for c in candidates:
            samples[c] += time_step(c)
    return samples


def medians(samples: dict[str, list[float]]) -> dict[str, float]:
    return {c: statistics.median(s) for c, s in samples.items()}


def disturbed(samples: dict[str, list[float]]) -> list[str]:
    """The candidates whose step times varied more than NOISY_SPREAD."""
    return [c for c, s in samples.items() if s and max(s) > NOISY_SPREAD * min(s)]


def noisy_note(noisy: list[str]) -> str:
    return (f"step times in {' and '.join(noisy)} varied more than {NOISY_SPREAD:g}x (other load?): "
            "measured again on a later run")


def stamp(entry: dict[str, Any], noisy: list[str]) -> dict[str, Any]:
    """`entry` marked with when and by which run it was measured, and which of its timings were disturbed."""
    return {**entry, "noisy": sorted(noisy), "run": THIS_RUN, "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def reusable(entry: dict[str, Any]) -> bool:
    """A cached entry stands when its timings were quiet, or when this very run measured it."""
    noisy = entry.get("noisy")
    if noisy is None:  # written before the flag existed: the reason said so
        noisy = "varied more than" in entry.get("reason", "")
    return not noisy or entry.get("run") == THIS_RUN


def read(path: Path) -> dict[str, Any]:
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}  # missing or damaged: measure again
    return cache if isinstance(cache, dict) else {}


def write(path: Path, cache: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with files.atomic_path(path, suffix=f".{os.getpid()}.tmp") as tmp:  # several processes may write at once
        tmp.write_text(json.dumps(cache, indent=2))


def update(path: Path, key: str, entry: dict[str, Any]) -> None:
    """Write one entry, re-reading the file first so that other keys written meanwhile are kept."""
    cache = read(path)
    cache[key] = entry
    write(path, cache)
