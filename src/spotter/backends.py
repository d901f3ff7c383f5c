"""`--backend auto`: eager PyTorch, torch.compile (inductor, frozen weights) or onnxruntime, chosen by measurement
like the precision (precision.py), and only where it pays back within the job at hand.

Compiling or exporting costs seconds to minutes before the first patch is scored, so a backend is chosen for a job
of n patch-views (patches x TTA views) only when it is expected to take the least time in all:
    setup_b + n x t_b   against   n x t_eager        (t: seconds per patch-view, measured)
and then only when at least MIN_SPEEDUP faster than eager. A backend already built in this process has no setup
left to pay. The timings come from `<cache>/backends.json`, keyed like the precision cache (model, batch shape,
precision, device and threads, torch version, CPU model): the first time a combination meets a job big enough
for a backend to pay back its setup, that backend is built, and it and eager are timed on a few batches in
alternation; later jobs decide from the cache with no measuring at all. Before a backend was ever measured its
setup is taken as SETUP_GUESS_S and its speed-up as at most MAX_SPEEDUP, so that a job too small to pay back even
that runs eager without measuring anything. Eager's own speed, when not cached yet, is learnt from the job's first
batches (which run eager). Timings disturbed by other load are measured again by a later run (measured.py).
onnxruntime runs on the CPU and in fp32, whatever the precision.
"""
from __future__ import annotations

import importlib.metadata
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from . import extras, files, measured, runners
from .errors import BadInput, UserError
from .precision import key_fields
from .runners import BACKENDS
from .steps import autocast

CHOICES = ("auto", *BACKENDS)
MIN_SPEEDUP = 1.05  # a backend other than eager is taken only when clearly faster, not within timing noise
# The largest speed-up over eager to expect before measuring: ONNX Runtime and compiled EfficientNets on CPUs are
# typically 2-4x eager PyTorch (Spotter's bench measured 3.9x for compiled, frozen effnet-lite0).
MAX_SPEEDUP = 4.0
# A first guess of each backend's setup until it is measured on this machine: rounded down from what the small
# `resnet` took on the 2-core development machine (compiling 16 s with an empty inductor cache, ONNX export 2.6 s).
SETUP_GUESS_S = {"compiled": 10.0, "onnx": 2.0}
WARMUP_BATCHES = 2
TIMED_BATCHES = 3  # per backend, alternating between them so all see the same machine load


def cache_file() -> Path:
    return files.cache_dir("backends.json")


class BackendFailed(UserError, RuntimeError):
    """A backend asked for with --backend could not be built here."""


@dataclass
class Decision:
    """Which backend runs a model, and why (recorded in evaluation.json, slide.json and /api/models)."""

    backend: str
    reason: str
    requested: str = "auto"
    job: int | None = None  # patch-views the job had left when this was decided
    seconds_per_patch: dict[str, float] = field(default_factory=dict)  # per patch-view, measured or cached
    setup_s: dict[str, float] = field(default_factory=dict)  # compile or export, and its first batch
    measured_now: bool = False  # timed by this run (else read from the cache written by an earlier one, or explicit)
    noisy: list[str] = field(default_factory=list)

    def record(self) -> dict[str, Any]:
        return asdict(self)


def expected_seconds(job: int, seconds_per_patch: dict[str, float], setup_s: dict[str, float],
                     built: set[str] = frozenset()) -> dict[str, float]:
    """Each measured backend's expected time for a job of `job` patch-views, setup included unless built."""
    return {b: (0.0 if b == "eager" or b in built else setup_s.get(b, 0.0)) + job * t
            for b, t in seconds_per_patch.items()}


def pick(job: int, seconds_per_patch: dict[str, float], setup_s: dict[str, float],
         built: set[str] = frozenset()) -> tuple[str, dict[str, float]]:
    """The backend with the least expected total time for the job (eager unless another is MIN_SPEEDUP faster)."""
    totals = expected_seconds(job, seconds_per_patch, setup_s, built)
    best = min(totals, key=totals.get)
    if best != "eager" and totals[best] * MIN_SPEEDUP > totals["eager"]:
        best = "eager"
    return best, totals


def worth_measuring(job: int, eager_s_per_patch: float, setup_s: float) -> bool:
    """Whether a backend with this setup could pay it back within the job, at the best speed-up one gives."""
    return job * eager_s_per_patch * (1 - 1 / MAX_SPEEDUP) > setup_s


class Selector:
    """Chooses, builds and keeps the backend one (eval-mode) model runs on, job by job.

    `batch_shape` is the model batch it sees (rows, channels, crop, crop): what is compiled for and timed.
    `requested` is auto or a backend to use whatever it costs (`--backend`).
    """

    def __init__(self, model: nn.Module, batch_shape: tuple[int, ...], device: torch.device, precision: str,
                 requested: str = "auto", *, log: Callable[[str], None] | None = None, path: Path | None = None):
        if requested not in CHOICES:
            raise BadInput(f"--backend {requested}: choose one of {', '.join(CHOICES)}")
        self.model, self.batch_shape, self.device, self.precision = model, tuple(batch_shape), device, precision
        self.requested, self.log, self.path = requested, log or (lambda line: None), path or cache_file()
        self.built: dict[str, nn.Module] = {"eager": model}
        self.observed_eager: float | None = None  # seconds per patch-view seen on the job's own eager batches
        # False: decide from cached timings only. A server does: compiling inside a job would hold it (and
        # Ctrl-C) for seconds to minutes, and each backend built costs memory for the server's life.
        self.measure = True
        self._entry: dict[str, Any] | None = None
        example = torch.empty(self.batch_shape, device="meta")
        self.key = json.dumps({**key_fields(model, example, device), "mode": "infer", "precision": precision,
                               "onnxruntime": _version("onnxruntime")}, sort_keys=True)
        if requested == "onnx":  # said before any work starts
            if device.type != "cpu":
                raise BadInput("--backend onnx: onnxruntime runs on the CPU here; use --device cpu")
            extras.require("export", "onnx", "onnxscript", "onnxruntime", what="--backend onnx")
        self.decision = (Decision("eager", "no job yet") if requested == "auto" else
                         Decision(requested, "set explicitly (--backend); built on first use", requested))

    def observe_eager(self, seconds: float, patch_views: int) -> None:
        if patch_views:
            self.observed_eager = seconds / patch_views

    def runner(self, job: int) -> nn.Module:
        """The module to run the next batches on, for a job with `job` patch-views left (this call's included)."""
        if self.requested != "auto":
            if self.requested not in self.built:
                try:
                    setup = self._build(self.requested)
                except UserError:
                    raise
                except Exception as err:
                    raise BackendFailed(f"--backend {self.requested} failed here: {_first_line(err)}") from None
                self._record(Decision(self.requested, "set explicitly (--backend)", self.requested, job,
                                      setup_s={self.requested: round(setup, 2)}))
            return self.built[self.requested]
        entry = self._cached()
        eager = (entry or {}).get("seconds_per_patch", {}).get("eager", self.observed_eager)
        if eager is None:
            self._record(Decision("eager", "no timings cached for this model and machine: eager, timed on the job's "
                                           "first batches; another backend is measured only when the rest of a job "
                                           "could pay back its setup", job=job))
            return self.model
        todo = self._to_measure(job, eager, entry)
        if todo:
            entry = self._measure(todo)
        measured_now = entry is not None and entry.get("run") == measured.THIS_RUN
        timed = {b: t for b, t in (entry or {"seconds_per_patch": {"eager": eager}})["seconds_per_patch"].items()
                 if b == "eager" or not self._unavailable(b, entry)}
        setups = (entry or {}).get("setup_s", {})
        best, totals = pick(job, timed, setups, set(self.built))
        if best not in self.built:
            if not self._build_from_cache(best):
                return self.runner(job)  # decided again without it (it is now marked failed)
            setups = self._entry["setup_s"]
        for name in [b for b in self.built if b not in ("eager", best)]:
            del self.built[name]  # its memory back; it would be chosen again only by a bigger job
        self._record(Decision(best, self._why(job, best, totals, timed, setups, entry), job=job,
                              seconds_per_patch=timed, setup_s=setups, measured_now=measured_now,
                              noisy=list((entry or {}).get("noisy", []))))
        return self.built[best]

    # ------------------------------------------------------------ measuring

    def _cached(self) -> dict[str, Any] | None:
        if self._entry is None:
            self._entry = measured.read(self.path).get(self.key)
        return self._entry

    def _unavailable(self, backend: str, entry: dict[str, Any] | None = None) -> str | None:
        """Why `backend` cannot run here, or None."""
        failed = (entry or {}).get("failed", {}).get(backend)
        if failed:
            return f"it failed here before ({failed}; delete {self.path} to try again)"
        if backend == "onnx":
            if self.device.type != "cpu":
                return "onnxruntime runs on the CPU here; use --device cpu"
            if not extras.installed("export"):  # looked up, not imported: a job that stays eager pays nothing
                return "onnxruntime is not installed (pip install 'spotter[export]')"
        return None

    def _to_measure(self, job: int, eager: float, entry: dict[str, Any] | None) -> list[str]:
        """The backends not measured yet (or measured by a disturbed earlier run) that could pay back within
        the job, at the best speed-up one gives, the setup they took before (or a first guess)."""
        if not self.measure:
            return []
        stands = entry is not None and measured.reusable(entry)
        known = (entry or {}).get("seconds_per_patch", {})
        todo = []
        for b in BACKENDS[1:]:
            if self._unavailable(b, entry) or (stands and b in known):
                continue
            setup = 0.0 if b in self.built else (entry or {}).get("setup_s", {}).get(b, SETUP_GUESS_S[b])
            if worth_measuring(job, eager, setup):
                todo.append(b)
        return todo

    def _measure(self, todo: list[str]) -> dict[str, Any]:
        self.log(f"backend auto: timing eager against {' and '.join(todo)} (once for this model, batch shape and "
                 f"machine; cached in {self.path})")
        entry = dict(self._cached() or {})
        setups, failed = dict(entry.get("setup_s", {})), dict(entry.get("failed", {}))
        for b in todo:
            try:
                setups[b] = round(self._build(b), 2)
            except UserError:
                raise
            except Exception as err:  # e.g. no C++ compiler for inductor, an operator ONNX lacks
                failed[b] = _first_line(err)
                self.log(f"backend auto: {b} failed here ({failed[b]}); not used on this machine")
        timed = ["eager", *(b for b in todo if b not in failed)]
        samples = measured.time_alternating(timed, self._timer(), TIMED_BATCHES)
        noisy = set(entry.get("noisy", [])) - set(timed) | set(measured.disturbed(samples))
        entry = measured.stamp({**entry, "seconds_per_patch": {**entry.get("seconds_per_patch", {}),
                                                               **measured.medians(samples)},
                                "setup_s": setups, "failed": failed}, sorted(noisy))
        measured.update(self.path, self.key, entry)
        self._entry = entry
        return entry

    def _build_from_cache(self, backend: str) -> bool:
        """Build a backend the cache chose; its setup this time (a compile from a warm inductor cache is quicker)
        is remembered for the next decision. One that fails is remembered too, and eager runs instead."""
        entry = dict(self._cached() or {})
        try:
            entry["setup_s"] = {**entry.get("setup_s", {}), backend: round(self._build(backend), 2)}
        except UserError:
            raise
        except Exception as err:
            entry["failed"] = {**entry.get("failed", {}), backend: _first_line(err)}
            self.log(f"backend auto: {backend} failed here ({entry['failed'][backend]}); choosing without it")
        measured.update(self.path, self.key, entry)
        self._entry = entry
        return backend in self.built

    def _timer(self) -> Callable[[str], list[float]]:
        """A function timing one batch of a built backend, in seconds per patch-view, warming it up first."""
        example, warmed = self._example(), set()

        def time_batch(backend: str) -> list[float]:
            if backend not in warmed:
                for _ in range(WARMUP_BATCHES):
                    self._call(self.built[backend], example)
                warmed.add(backend)
            start = time.perf_counter()
            self._call(self.built[backend], example)
            return [(time.perf_counter() - start) / self.batch_shape[0]]

        return time_batch

    def _build(self, backend: str) -> float:
        """Build `backend` and run its first batch (which compiles); returns the seconds that took."""
        start = time.perf_counter()
        example = self._example()
        if backend == "compiled":
            module = runners.compile_frozen(self.model, self.batch_shape[0])
        else:
            module = runners.onnx_session(self.model, example)
        self._call(module, example)  # compiles; kept only once it ran
        self.built[backend] = module
        return time.perf_counter() - start

    def _example(self) -> torch.Tensor:
        """A batch of the model's shape, drawn without moving any random stream the caller uses."""
        example = torch.randn(self.batch_shape, generator=torch.Generator().manual_seed(0))
        return example.to(self.device, memory_format=torch.channels_last)

    @torch.no_grad()
    def _call(self, module: nn.Module, x: torch.Tensor) -> None:
        with autocast(self.device, self.precision):
            module(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    # ------------------------------------------------------------ recording

    def _record(self, decision: Decision) -> None:
        """Keep the decision that picked the backend in use (with its job size), not each later confirmation."""
        if decision.backend != self.decision.backend or not self.decision.seconds_per_patch:
            self.decision = decision

    def _why(self, job: int, best: str, totals: dict[str, float], timed: dict[str, float],
             setups: dict[str, float], entry: dict[str, Any] | None) -> str:
        parts = [f"{b} {totals[b]:.1f} s" + ("" if b == "eager" else " (set up already)" if b in self.built else
                                             f" (of which setup {setups.get(b, 0):.1f} s)") for b in timed]
        source = ("timed by this run" if entry and entry.get("run") == measured.THIS_RUN else
                  f"timings cached in {self.path}" if entry else "eager timed on the job's first batches")
        why = f"expected for {job:,} patch-views: {', '.join(parts)} ({source})"
        if len(timed) == 1:
            least = min(SETUP_GUESS_S.values())
            why += f"; too short for any backend's setup (>= {least:g} s until measured) to pay back"
        if best == "onnx" and self.precision != "fp32":
            why += "; onnxruntime runs in fp32"
        if entry and entry.get("noisy"):
            why += "; " + measured.noisy_note(entry["noisy"])
        for b, error in (entry or {}).get("failed", {}).items():
            why += f"; {b} failed here ({error})"
        return why


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None
