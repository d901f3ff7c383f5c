"""The one training loop shared by both tasks: device and precision, schedule, time budget, checkpoints,
resume, early stopping, metrics CSV.

The engine knows nothing of images or text. A task hands it a `Task`: a model, a function that yields the
training batches of an epoch, a function that yields the validation batches, and how to score them.
A task without validation batches (a final model refitted on every labelled row) trains its planned epochs
and keeps the last epoch's weights as the model (best.pt), with training metrics only.
A batch is `(inputs, targets)` on the device; `inputs` is a tensor or a tuple of tensors for the model.

Resume guarantee: checkpoints are written at the end of every epoch. `--resume` restarts from the last
complete epoch (work inside an interrupted epoch is redone). Each epoch's shuffling and augmentation are
seeded from (seed, epoch), and the checkpoint holds every rank's random-number generators (torch CPU and
CUDA, NumPy, Python), which dropout and stochastic depth draw from; so a resumed CPU run ends with the
same weights and metrics as an uninterrupted one.

Under torchrun (WORLD_SIZE > 1) the same loop runs on every rank with DistributedDataParallel.
"""
from __future__ import annotations

import copy
import csv
import functools
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import precision as precision_choice
from .config import setting
from .steps import autocast, call_model, train_step  # noqa: F401 (the engine's step API)
from .errors import BadInput, UserError
from .files import atomic_path, write_text_atomic

Batch = tuple[Any, torch.Tensor]


class CheckpointError(UserError, RuntimeError):
    """A run folder or checkpoint that cannot be used; the message says why and what to do."""


class TrainingDiverged(UserError, FloatingPointError):
    """The training loss became NaN or infinite."""


def settings_from(cls: type, values: dict[str, Any], where: Path | str) -> Any:
    """Rebuild a settings dataclass saved by a run, with a clear error if this Spotter no longer fits it."""
    unknown = set(values) - set(cls.__dataclass_fields__)
    if unknown:
        raise CheckpointError(f"{where}: made by an incompatible Spotter version (unknown settings: "
                              f"{', '.join(sorted(unknown))}); retrain the run")
    return cls(**values)


CHECKPOINT_VERSION = 1


@dataclass
class TrainSettings:
    """Settings of the training loop itself (each task adds its own)."""

    epochs: int = setting(20, help="number of epochs (with --time-budget: the most to plan)")
    batch_size: int = setting(128, help="examples per training step")
    lr: float = setting(2e-3, help="peak learning rate of the one-cycle schedule")
    weight_decay: float = setting(0.05, help="AdamW weight decay (biases, norms and embeddings have none)")
    time_budget_min: float | None = setting(None, flag="--time-budget", metavar="MIN",
                                            help="plan the schedule to end within MIN minutes")
    patience: int | None = setting(None, help="stop after this many epochs without a better validation score")
    seed: int = setting(0, help="seed of the split, the initial weights, the batch order and augmentation")
    device: str = setting("auto", help="auto (CUDA when present), cpu, cuda, cuda:N")
    precision: str = setting("auto", choices=("auto", "bf16", "fp32"),
                             help="auto: times both on first use per model and machine, keeps the faster (cached)")
    ema: float = setting(0.0, help="validate and keep an exponential moving average of the weights with this decay "
                                   "per step (0: off; default 0.998 for the EfficientNets, off for the others)")

    def __post_init__(self):
        if self.epochs < 1:
            raise BadInput(f"epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise BadInput(f"batch size must be at least 1, got {self.batch_size}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise BadInput(f"time budget must be positive, got {self.time_budget_min} min")
        if not 0 <= self.ema < 1:
            raise BadInput(f"ema must be 0 (off) or a decay below 1, got {self.ema}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise BadInput(f"precision must be auto, bf16 or fp32, got {self.precision!r}")


@dataclass
class Task:
    """What the engine needs from a task."""

    model: nn.Module
    # (epoch, rank, world) -> this rank's batches, shuffled and augmented from (seed, epoch)
    train_batches: Callable[[int, int, int], Iterator[Batch]]
    # (rank, world) -> this rank's share of validation; None: no validation, the last epoch is the model
    val_batches: Callable[[int, int], Iterator[Batch]] | None
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]]  # (labels, probs) -> metrics
    main_metric: str  # the key of `score` that picks the best epoch (higher is better)
    steps_per_epoch: Callable[[int], int] | int  # per rank, for a world of that size (or a fixed count)
    settings: dict[str, Any] = field(default_factory=dict)  # everything needed to rebuild the task
    extra: dict[str, Any] = field(default_factory=dict)  # saved in checkpoints only (e.g. a vocabulary)
    start_epoch: Callable[[int], None] | None = None  # called before each epoch (e.g. unfreeze a layer)
    precision: str | None = None  # the task's own choice when settings.precision is "auto"
    anneal: str = "cos"  # shape of the learning-rate warm-up and decay: "cos" or "linear"


# ---------------------------------------------------------------- processes, device and precision

@dataclass
class World:
    """This process's place among torchrun's processes (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def join_world(device_name: str = "auto") -> World:
    """Join torchrun's process group when launched by it (WORLD_SIZE > 1); else a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_nccl = torch.cuda.is_available() and device_name != "cpu"
        if use_nccl:
            torch.cuda.set_device(local_rank)
        dist.init_process_group("nccl" if use_nccl else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), local_rank)


def gather(world: World, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order, on every rank."""
    if world.size == 1:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    if world.size > 1:
        dist.barrier()


def node_first(world: World, work: Callable[[], Any]) -> Any:
    """Run `work` on each node's local rank 0 first, then (once every node's is done) on the other ranks:
    for work that fills a node-local cache (a pack, cached embeddings), which the others then just read."""
    result = work() if world.local_rank == 0 else None
    barrier(world)
    return work() if world.local_rank != 0 else result


def check_shared_folder(world: World, folder: Path) -> None:
    """Under torchrun, every rank must see the run folder rank 0 writes (checkpoints, finished folds):
    on several nodes that takes a filesystem they all share. Refuse clearly when one does not."""
    if world.size == 1:
        return
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / ".shared-check"
    token = os.urandom(8).hex() if world.main else None
    token = gather(world, token)[0]
    if world.main:
        probe.write_text(token)
    barrier(world)
    sees = gather(world, probe.exists() and probe.read_text() == token)
    barrier(world)
    if world.main:
        probe.unlink()
    if not all(sees):
        blind = [rank for rank, ok in enumerate(sees) if not ok]
        raise CheckpointError(f"{folder}: rank(s) {blind} cannot see the run folder rank 0 writes; a run on "
                              "several nodes needs --out on a filesystem every node shares (e.g. NFS)")


def shard_batches(order: np.ndarray, batch_size: int, shard: tuple[int, int] = (0, 1), *, drop_last: bool = False,
                  shuffle: np.random.Generator | None = None, even: bool = False) -> Iterator[np.ndarray]:
    """The one way every task cuts rows into batches across ranks.

    `order` (row indices, already shuffled or not) is cut into global batches of `batch_size * world`
    consecutive rows; with `shard=(rank, world)` this rank gets its `batch_size` slice of each, so the
    ranks together step through exactly the single-process order. `drop_last` drops a final short global
    batch (unless it is the only one); `shuffle` shuffles the order of the global batches.

    `even` (training): every rank gets the same number of batches, `shard_steps` of them, or the ranks
    with a step more would wait forever in DDP's gradient all-reduce. A final short global batch is split
    evenly over the ranks, and left out if it has fewer rows than there are ranks. Without `even`
    (validation, prediction) every row is in exactly one rank's batches.
    """
    rank, world = shard
    step = batch_size * world
    stop = len(order) - (len(order) % step if drop_last and len(order) >= step else 0)
    starts = np.arange(0, stop, step)
    if shuffle is not None:
        starts = shuffle.permutation(starts)
    for start in starts:
        batch = order[start:start + step]
        if even and len(batch) < step:
            if len(batch) < world:
                continue  # on every rank alike
            rows = np.array_split(batch, world)[rank]
        else:
            rows = batch[rank * batch_size:(rank + 1) * batch_size]
        if len(rows):
            yield rows


def shard_steps(n: int, batch_size: int, world: int = 1, *, drop_last: bool = False) -> int:
    """How many training batches (`even=True`) `shard_batches` gives each rank for `n` rows."""
    full, rest = divmod(n, batch_size * world)
    return full if drop_last and full else full + (rest >= world)


def pick_device(name: str = "auto", world: World | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", world.local_rank if world else torch.cuda.current_device())
        return torch.device("cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInput("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return device


def pick_precision(device: torch.device, requested: str = "auto", *, model: nn.Module | None = None,
                   batch: Any = None, train: bool = True, log: Callable[[str], None] | None = None) -> str:
    """`requested`, or for `auto` the faster of fp32 and bf16 for `model` on a `batch` of its real shape,
    measured once per model, shape and machine and cached (precision.py). Never from CPU flags: they do not
    predict it. Without a model to time, `auto` is fp32."""
    return precision_choice.choose(device, requested, model=model, batch=batch, train=train, log=log).precision


# ---------------------------------------------------------------- one epoch, evaluation

class WeightAverage:
    """An exponential moving average of a model's weights and float buffers (BatchNorm statistics too),
    updated after every step. Its decay ramps up as (1 + t) / (10 + t) so the first steps' random
    weights fade out fast."""

    def __init__(self, model: nn.Module, decay: float, steps: int = 0):
        self.decay, self.steps = decay, steps
        self.model = copy.deepcopy(model).requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.steps += 1
        keep = min(self.decay, (1 + self.steps) / (10 + self.steps))
        live = getattr(model, "module", model).state_dict()
        averaged, counted = [], []  # float weights and buffers are averaged; counters are copied
        for k, v in self.model.state_dict().items():
            (averaged if v.is_floating_point() else counted).append((v, live[k]))
        torch._foreach_lerp_([a for a, _ in averaged], [b for _, b in averaged], 1 - keep)
        for a, b in counted:
            a.copy_(b)


def train_one_epoch(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    scheduler: Any, device: torch.device, precision: str, *, desc: str = "train",
                    total: int | None = None, deadline: float | None = None,
                    world: World = World(), average: WeightAverage | None = None) -> dict[str, Any]:
    """One pass over `batches`; returns mean loss, the raw outputs for train metrics, and items/s,
    gathered over all ranks."""
    model.train()
    losses, probs, labels, seen = [], [], [], 0
    start = time.perf_counter()
    bar = tqdm(batches, total=total, desc=desc, unit="batch", leave=False,
               disable=not (world.main and sys.stderr.isatty()))
    for inputs, targets in bar:
        logits, loss = train_step(model, inputs, targets, optimizer, device, precision)
        if scheduler is not None:
            scheduler.step()
        if average is not None:
            average.update(model)
        losses.append(loss)
        probs.append(torch.sigmoid(logits.float()))
        labels.append(targets.detach())
        seen += int(targets.shape[0])
        if len(losses) % 10 == 0:
            bar.set_postfix(loss=f"{torch.stack(losses[-10:]).mean().item():.4f}",
                            rate=f"{seen / (time.perf_counter() - start):.0f}/s")
        if deadline is not None and world.size == 1 and time.monotonic() > deadline:
            break  # (several ranks must take the same steps, so they stop only at epoch ends)
    elapsed = time.perf_counter() - start
    if not losses:
        raise RuntimeError("the training set gave no batch")
    parts = gather(world, (torch.stack(losses).sum().item(), len(losses), torch.cat(probs).cpu().numpy(),
                           torch.cat(labels).cpu().numpy(), seen))
    loss = sum(p[0] for p in parts) / sum(p[1] for p in parts)
    if not math.isfinite(loss):
        raise TrainingDiverged(f"training loss became {loss}; lower --lr or check the data")
    return {"loss": loss, "probs": np.concatenate([p[2] for p in parts]),
            "labels": np.concatenate([p[3] for p in parts]), "seconds": elapsed,
            "per_s": sum(p[4] for p in parts) / elapsed, "steps": len(losses)}


@torch.no_grad()
def predict_probs(model: nn.Module, batches: Iterable[Batch], device: torch.device, precision: str,
                  transform: Callable[[Any], list[Any]] | None = None, desc: str = "predict",
                  max_rows: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and targets over all `batches`, kept on the device until the end.

    `transform` turns one input batch into several views (test-time augmentation); their probabilities
    are averaged. The views go through the model together, as few calls of at most `max_rows` rows (or one
    view per call, when a batch is bigger than that) as bound memory: a batch of 32 patches and its 8
    views is one call of 256.
    """
    model.eval()
    probs, labels = [], []
    for inputs, targets in tqdm(batches, desc=desc, unit="batch", leave=False, disable=not sys.stderr.isatty()):
        with autocast(device, precision):
            if transform is None:
                p = torch.sigmoid(call_model(model, inputs).float())
            else:
                views = transform(inputs)
                per_call = max(1, max_rows // len(views[0]))
                logits = [call_model(model, torch.cat(views[i:i + per_call])) for i in range(0, len(views), per_call)]
                p = torch.sigmoid(torch.cat(logits).float()).unflatten(0, (len(views), -1)).mean(0)
        probs.append(p)
        labels.append(targets)
    if not probs:
        return np.zeros(0, np.float32), np.zeros(0, np.float32)
    return torch.cat(probs).cpu().numpy(), torch.cat(labels).float().cpu().numpy()


# ---------------------------------------------------------------- checkpoints

def save_atomic(obj: Any, path: Path) -> None:
    """torch.save through a temporary file flushed to disk: a crash never leaves half a checkpoint."""
    try:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    except (OSError, RuntimeError) as err:  # disk full surfaces as either, depending on where it hits
        kept = " the previous one is kept;" if path.exists() else ""
        raise CheckpointError(f"could not write {path} ({err});{kept} free some disk space, then --resume") from None


def load_checkpoint(path: Path, kind: str | None = None) -> dict[str, Any]:
    """Load a checkpoint safely (weights_only: nothing is unpickled) and check it is one of ours."""
    if not path.exists():
        raise CheckpointError(f"{path}: no checkpoint there; train a run first")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a damaged file
        raise CheckpointError(f"{path}: checkpoint is damaged or not a Spotter checkpoint ({err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("version") != CHECKPOINT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {ckpt.get('version') if isinstance(ckpt, dict) else '?'} "
                              f"is not this Spotter's ({CHECKPOINT_VERSION}); retrain the run")
    if kind is not None and ckpt.get("task") != kind:
        raise CheckpointError(f"{path}: this is a {ckpt.get('task')} checkpoint, not a {kind} one")
    return ckpt


# ---------------------------------------------------------------- planning

def plan_epochs(task: Task, settings: TrainSettings, optimizer_factory, device, precision, budget_s: float,
                val_size: int, world_size: int = 1) -> int:
    """How many epochs fit in `budget_s`: time a few steps on a throwaway copy of the model."""
    model = copy.deepcopy(task.model)
    optimizer = optimizer_factory(model)
    batches = task.train_batches(0, 0, 1)
    times = []
    for i, (inputs, targets) in enumerate(batches):
        t = time.perf_counter()
        train_step(model, inputs, targets, optimizer, device, precision)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
        if i >= 7:
            break
    step_s = float(np.median(times[2:] if len(times) > 3 else times))
    # Validation runs forward only (about a third of a training step) over val_size images.
    eval_s = step_s / 3 * math.ceil(val_size / settings.batch_size / world_size)
    epoch_s = step_s * _steps(task, world_size) + eval_s + 1.0
    del model, optimizer
    return max(1, int(budget_s * 0.9 // epoch_s))  # a margin: throughput varies


# ---------------------------------------------------------------- the loop

def one_cycle(optimizer: torch.optim.Optimizer, settings: TrainSettings, total_steps: int, anneal: str = "cos"):
    """Warm-up over the first 15 % of steps, then decay, both `anneal`-shaped; each parameter group peaks
    at `settings.lr` times its own `lr_scale`."""
    peaks = [settings.lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=total_steps, pct_start=0.15,
                                               anneal_strategy=anneal, div_factor=25, final_div_factor=1e3)


def _steps(task: Task, world_size: int) -> int:
    return task.steps_per_epoch(world_size) if callable(task.steps_per_epoch) else task.steps_per_epoch


def make_optimizer(model: nn.Module, settings: TrainSettings) -> torch.optim.Optimizer:
    """AdamW. Frozen parameters are included too: a task may unfreeze them later. Biases, norms and
    embeddings are not decayed. A model may ask for discriminative learning rates with `lr_scales()`,
    a map from parameter-name prefix to a multiplier of the learning rate."""
    scales = model.lr_scales() if hasattr(model, "lr_scales") else {}
    groups: dict[tuple[bool, float], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        decay = not (p.ndim <= 1 or "embedding" in name)
        scale = next((s for prefix, s in scales.items() if name.startswith(prefix)), 1.0)
        groups.setdefault((decay, scale), []).append(p)
    return torch.optim.AdamW([{"params": params, "weight_decay": settings.weight_decay if decay else 0.0,
                               "lr": settings.lr * scale, "lr_scale": scale}
                              for (decay, scale), params in groups.items()], lr=settings.lr)


@dataclass
class _Run:
    """Everything one call of `fit` carries from step to step."""

    task: Task
    settings: TrainSettings
    kind: str
    world: World
    device: torch.device
    precision: str
    model: nn.Module
    optimizer: torch.optim.Optimizer
    run_dir: Path
    log: Callable[[str], None]
    state: dict[str, Any] = field(default_factory=dict)  # epoch, epochs, best, best_epoch, bad_epochs
    scheduler: Any = None
    average: WeightAverage | None = None  # with settings.ema: the weights that are validated and saved
    deadline: float | None = None  # time.monotonic() by which a --time-budget run must end
    all_settings: dict[str, Any] = field(default_factory=dict)

    @property
    def steps_per_epoch(self) -> int:
        return _steps(self.task, self.world.size)

    @property
    def evaluated(self) -> nn.Module:
        """The model that is validated and saved as "model": the weight average when there is one."""
        return self.average.model if self.average is not None else self.model


# The first epochs, timed for real, replan a --time-budget run; the schedule is still warming up then (15 % of
# the steps), so stretching or shrinking it bends the learning rate little.
REPLAN_EPOCHS = 3


def fit(task: Task, settings: TrainSettings, run_dir: Path, *, kind: str, resume: bool = False,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train `task.model` into `run_dir`; return the best epoch's validation metrics (without validation:
    the last epoch's training metrics).

    Under torchrun every rank trains its share of each batch through DistributedDataParallel; metrics
    are gathered over all ranks, and only rank 0 logs and writes files.
    """
    run = _setup(task, settings, Path(run_dir), kind, log)
    saved = _resume_from(run) if resume else None
    if saved is None:
        _plan(run)
    _build_schedule(run, saved)
    epoch_seconds = []
    while run.state["epoch"] < run.state["epochs"]:
        epoch = run.state["epoch"] + 1
        epoch_start = time.monotonic()
        train = _train_epoch(run, epoch)
        val = _validate(run)
        if run.deadline is not None and saved is None and epoch <= REPLAN_EPOCHS:
            epoch_seconds.append(time.monotonic() - epoch_start)
            _replan(run, epoch_seconds)
        _finish_epoch(run, epoch, train, val)
        if _should_stop(run):
            break
    best = load_checkpoint(run.run_dir / "best.pt", kind)
    run.model.load_state_dict(best["model"])  # leave the caller with the best weights
    result = {"precision": run.precision, **best["metrics"]}
    return result if task.val_batches is None else {"best_epoch": run.state["best_epoch"], **result}


def quiet(message: str) -> None:
    """The log of every rank but rank 0."""


def _setup(task: Task, settings: TrainSettings, run_dir: Path, kind: str, log) -> _Run:
    """Device, precision, model and optimizer; the run starts at epoch 0 with the planned epochs."""
    world = join_world(settings.device)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = pick_device(settings.device, world)
    requested = task.precision if settings.precision == "auto" and task.precision else settings.precision
    # Rank 0 times the model (on first use) and every rank takes its decision.
    choice = gather(world, precision_choice.choose(device, requested, model=task.model, log=log,
                                                   batch=lambda: next(task.train_batches(0, 0, 1)))
                    if world.main else None)[0]
    precision = choice.precision
    model = task.model.to(device)
    run = _Run(task, settings, kind, world, device, precision, model, make_optimizer(model, settings), run_dir,
               log if world.main else quiet)
    run.state = {"epoch": 0, "best": -math.inf, "best_epoch": 0, "epochs": settings.epochs, "bad_epochs": 0}
    run.deadline = time.monotonic() + settings.time_budget_min * 60 if settings.time_budget_min else None
    run.all_settings = {"train": asdict(settings), "task": task.settings, "device": str(device),
                        "precision": precision, "precision_reason": choice.reason, "world_size": world.size}
    return run


def _resume_from(run: _Run) -> dict[str, Any] | None:
    """The last complete epoch's checkpoint (None when there is none); its state becomes the run's."""
    last = run.run_dir / "last.pt"
    if not last.exists():
        run.log(f"nothing to resume in {run.run_dir}; starting fresh")
        return None
    ckpt = load_checkpoint(last, run.kind)
    run.state.update(ckpt["state"])
    started_in = ckpt["settings"].get("precision")
    if started_in and started_in != run.precision:  # precision.json deleted or re-timed since: the run keeps its own
        run.precision = started_in
        run.all_settings.update(precision=started_in, precision_reason=ckpt["settings"].get("precision_reason"))
    if run.world.main:
        _drop_rows_after(run.run_dir / "metrics.csv", run.state["epoch"])  # an epoch that never reached its checkpoint
    run.log(f"resuming {run.run_dir} after epoch {run.state['epoch']} of {run.state['epochs']}")
    return ckpt


def _plan(run: _Run) -> None:
    """A fresh run: fit the epochs into the time budget (rank 0 times, every rank follows) and start a new
    metrics.csv."""
    settings, world = run.settings, run.world
    if settings.time_budget_min:
        planned = None
        if world.main:
            planned = plan_epochs(run.task, settings, functools.partial(make_optimizer, settings=settings),
                                  run.device, run.precision, settings.time_budget_min * 60,
                                  run.task.settings.get("val_size", 0), world.size)
        run.state["epochs"] = min(gather(world, planned)[0], settings.epochs)
        run.log(f"time budget {settings.time_budget_min:g} min: planned {run.state['epochs']} epochs")
    if world.main:
        (run.run_dir / "metrics.csv").unlink(missing_ok=True)


def _build_schedule(run: _Run, saved: dict[str, Any] | None) -> None:
    """The one-cycle schedule over the planned epochs; a resumed run restores model, optimizer and schedule."""
    run.scheduler = one_cycle(run.optimizer, run.settings, run.state["epochs"] * run.steps_per_epoch,
                              run.task.anneal)
    if run.settings.ema:
        run.average = WeightAverage(run.model, run.settings.ema)
    if saved is not None:
        run.model.load_state_dict(saved.get("trained_model", saved["model"]))
        if run.average is not None:
            run.average.model.load_state_dict(saved["model"])
            run.average.steps = saved["state"]["average_steps"]
        run.optimizer.load_state_dict(saved["optimizer"])
        run.scheduler.load_state_dict(saved["scheduler"])
        if "rng" in saved and len(saved["rng"]) == run.world.size:
            set_rng_state(saved["rng"][run.world.rank])
    if run.world.main:
        write_text_atomic(run.run_dir / "settings.json", json.dumps(run.all_settings, indent=2, default=str))


def _train_epoch(run: _Run, epoch: int) -> dict[str, Any]:
    if run.task.start_epoch is not None:
        run.task.start_epoch(epoch)
    trained = run.model
    if run.world.size > 1:  # wrapped each epoch: DDP syncs only what requires grad when it is made
        trained = DistributedDataParallel(run.model, device_ids=[run.device.index] if run.device.type == "cuda"
                                          else None)
    return train_one_epoch(trained, run.task.train_batches(epoch, run.world.rank, run.world.size), run.optimizer,
                           run.scheduler, run.device, run.precision, desc=f"epoch {epoch}/{run.state['epochs']}",
                           total=run.steps_per_epoch, deadline=run.deadline, world=run.world, average=run.average)


def _validate(run: _Run) -> dict[str, float]:
    """The task's scores over the whole validation set (every rank's share, gathered); none without one."""
    if run.task.val_batches is None:
        return {}
    parts = gather(run.world, predict_probs(run.evaluated, run.task.val_batches(run.world.rank, run.world.size),
                                            run.device, run.precision, desc="validate"))
    return run.task.score(np.concatenate([p[1] for p in parts]), np.concatenate([p[0] for p in parts]))


def _replan(run: _Run, epoch_seconds: list[float]) -> None:
    """The plan came from a few timed steps; each of the first whole epochs, timed for real, replans the rest.
    The first epoch warms caches, so once there are later ones their median decides."""
    epoch_s = float(np.median(epoch_seconds[1:] or epoch_seconds))
    done = len(epoch_seconds)
    planned = done + int((run.deadline - time.monotonic()) * 0.95 // epoch_s) if run.world.main else None
    planned = max(done, min(gather(run.world, planned)[0], run.settings.epochs))
    if planned != run.state["epochs"]:
        run.log(f"epochs take {epoch_s:.1f} s: replanned to {planned} epochs")
        run.state["epochs"] = planned
        steps_done = run.scheduler.last_epoch
        run.scheduler = one_cycle(run.optimizer, run.settings, planned * run.steps_per_epoch, run.task.anneal)
        for _ in range(steps_done):  # fast-forward the new schedule to where training is
            run.scheduler.step()


def _finish_epoch(run: _Run, epoch: int, train: dict[str, Any], val: dict[str, float]) -> None:
    """Keep score, log the epoch, append its metrics row and write its checkpoints (best when improved;
    without validation, every epoch: the last one is the model)."""
    state, metric = run.state, run.task.main_metric
    # Against the rounded targets: a distilled student's are soft probabilities.
    train_scores = run.task.score((train["labels"] >= 0.5).astype(np.float32), train["probs"])
    row = {"epoch": epoch, "lr": run.optimizer.param_groups[0]["lr"], "train_loss": train["loss"],
           **{f"train_{k}": v for k, v in train_scores.items() if k != "loss"},
           **{f"val_{k}": v for k, v in val.items()},
           "seconds": round(train["seconds"], 2), "per_s": round(train["per_s"], 1)}
    improved = not val or val[metric] > state["best"]
    state.update(epoch=epoch, bad_epochs=0 if improved else state["bad_epochs"] + 1)
    if run.average is not None:
        state["average_steps"] = run.average.steps
    if improved:
        state.update(best=val.get(metric, state["best"]), best_epoch=epoch)
    scores = (f"val_loss {val['loss']:.4f}  val_{metric} {val[metric]:.4f}{' *' if improved else ''}" if val
              else f"train_{metric} {row.get(f'train_{metric}', math.nan):.4f}")
    run.log(f"epoch {epoch:3d}/{state['epochs']}  loss {train['loss']:.4f}  {scores}  "
            f"{train['per_s']:.0f}/s  {train['seconds']:.0f}s")
    rng = gather(run.world, rng_state())  # every rank's generators, so each resumes with its own
    if run.world.main:
        _append_csv(run.run_dir / "metrics.csv", row)
        ckpt = _checkpoint(run, row, rng)
        if improved:
            save_atomic(ckpt, run.run_dir / "best.pt")
        save_atomic(ckpt, run.run_dir / "last.pt")
    barrier(run.world)


def _checkpoint(run: _Run, metrics: dict[str, float], rng: list[dict[str, Any]]) -> dict[str, Any]:
    # "model" holds the weights that were validated (the average, with settings.ema): what predictors load.
    trained = {"trained_model": run.model.state_dict()} if run.average is not None else {}
    return {"version": CHECKPOINT_VERSION, "task": run.kind, "model": run.evaluated.state_dict(), **trained,
            "optimizer": run.optimizer.state_dict(), "scheduler": run.scheduler.state_dict(),
            "state": dict(run.state), "settings": json.loads(json.dumps(run.all_settings, default=str)),
            "metrics": metrics, "rng": rng, **run.task.extra}


def rng_state() -> dict[str, Any]:
    """This process's random-number generators, in types a weights_only checkpoint can hold."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos,
                                                       has_gauss, cached], "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def _should_stop(run: _Run) -> bool:
    """Early stopping (patience) and the time budget; rank 0's clock decides, so every rank stops together."""
    patience = run.settings.patience
    if patience is not None and run.state["bad_epochs"] >= patience:
        run.log(f"no improvement for {patience} epochs: stopping early")
        return True
    if run.deadline is not None and gather(run.world, time.monotonic() > run.deadline)[0]:
        run.log("time budget reached: stopping")
        return True
    return False


def _append_csv(path: Path, row: dict[str, Any]) -> None:
    new = not path.exists()
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)


def _drop_rows_after(path: Path, epoch: int) -> None:
    if not path.exists():
        return
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        fields, kept = reader.fieldnames, [row for row in reader if int(row["epoch"]) <= epoch]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)


def seed_everything(seed: int) -> None:
    """Seed every global generator (torch CPU and CUDA, NumPy, Python)."""
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
