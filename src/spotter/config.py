"""Settings said once: each setting is a dataclass field declared with `setting(default, help=...)`, and the
`train` commands' options are generated from those fields; a run's saved settings can be read back (`--config`).

Our own generator (this module) rather than jsonargparse, which litgpt and LightningCLI use: jsonargparse is not
installed, and Spotter's flags predate this module. Tests, scripts and the README use names that are not the
field names (`--no-augment` for augment, `--time-budget MIN` for time_budget_min, `--pack-dir` for pack_root,
`--keep-conflicting-duplicates` for resolve_duplicates, `--no-<step>` for the normalise dict); a short generator
keeps every one of them, and every --help text, exactly as it was.

Layers, later ones winning: the dataclass default, a model's own training defaults, the saved settings of
`--config`, the flags given on the command line. Generated options have no argparse default, so that a flag
that is absent is known to be absent (and the layers below it decide).
"""
from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, Field, field, fields
from pathlib import Path
from typing import Any

from . import runs
from .errors import BadInput

TYPES = {"int": int, "float": float, "str": str}


def setting(default: Any = MISSING, *, help: str | None = None, default_factory: Any = MISSING,
            **option: Any) -> Field:
    """A dataclass field and its command-line option. `option` may hold `flag` (default `--field-name`),
    `metavar`, `choices`, `action`, `required` (the value must come from a flag or `--config`), `cli=False`
    (no option) and, for a dict of switches, `steps` (a dataclass whose fields each get a `--no-<step>`)."""
    return field(default=default, default_factory=default_factory, metadata={"help": help, **option})


def flag_of(f: Field) -> str:
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def default_of(f: Field) -> Any:
    return f.default_factory() if f.default_factory is not MISSING else f.default


def same_as(cls: type, name: str) -> dict[str, Any]:
    """argparse keywords (default, help) of a hand-written option that means the setting `cls.name`."""
    f = next(f for f in fields(cls) if f.name == name)
    return {"default": default_of(f), "help": f.metadata.get("help")}


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One option per field of `cls` (see `setting`); its value lands in `args` only when the flag is given."""
    for f in fields(cls):
        meta = dict(f.metadata)
        if not meta.get("cli", True):
            continue
        if "steps" in meta:  # a dict of on/off steps: one `--no-<step>` each
            for step in fields(meta["steps"]):
                parser.add_argument(f"--no-{step.name}", dest=f"{f.name}.{step.name}", action="store_false",
                                    default=argparse.SUPPRESS, help=meta["help"].format(step=step.name))
            continue
        flag = flag_of(f)
        kwargs = {"dest": f.name, "default": argparse.SUPPRESS, "help": meta.get("help")}
        if meta.get("required"):  # checked by `build`, once --config has had its say
            kwargs["help"] += " (required unless --config)"
        kind = str(f.type).split("|")[0].strip()
        if "action" in meta:
            kwargs["action"] = meta["action"]
        elif kind == "bool":  # a switch: `--skip-bad` turns on a False default, `--no-augment` turns off a True one
            kwargs["action"] = "store_false" if f.default else "store_true"
        else:
            # The metavar argparse gives a flag named like the option (PACK_DIR for --pack-dir), not the field.
            kwargs.update(type=TYPES[kind], metavar=meta.get("metavar", flag.lstrip("-").replace("-", "_").upper()))
            if "choices" in meta:
                kwargs.update(choices=list(meta["choices"]), metavar=meta.get("metavar"))
        parser.add_argument(flag, **kwargs)


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The settings of `cls` given on the command line (a dict setting: the steps switched off)."""
    values, parsed = {}, vars(args)
    for f in fields(cls):
        if "steps" in f.metadata:
            off = {s.name: False for s in fields(f.metadata["steps"]) if f"{f.name}.{s.name}" in parsed}
            if off:
                values[f.name] = off
        elif f.name in parsed:
            values[f.name] = parsed[f.name]
    return values


def build(cls: type, *layers: dict[str, Any], where: str = "the command line") -> Any:
    """`cls` from layers of values, later ones winning; a dict setting is merged key by key."""
    known = {f.name: f for f in fields(cls)}
    values: dict[str, Any] = {}
    for layer in layers:
        unknown = set(layer) - set(known)
        if unknown:
            raise BadInput(f"{where}: unknown {cls.__name__} settings: {', '.join(sorted(unknown))} "
                           f"(made by an incompatible Spotter version?)")
        for name, value in layer.items():
            if isinstance(value, dict) and "steps" in known[name].metadata:
                value = {**values.get(name, default_of(known[name])), **value}
            values[name] = value
    for name, f in known.items():
        if f.metadata.get("required") and name not in values:
            raise BadInput(f"the following arguments are required: {flag_of(f)} (or --config RUN/settings.json)")
    return cls(**values)


def saved_settings(path: Path, task: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training-loop settings, task settings) a run saved, to replay it. `path` is the run folder or its
    settings file: `settings.json` ({"train": .., "task": {task: .., ..}, ..}, both tasks) or a tweets run's
    `run.json` ({task: .., "train": ..})."""
    path = Path(path)
    if path.is_dir():  # a run folder, opened the one way (runs.py), whatever its layout
        run = runs.open_run(path, task)
        if run.is_ensemble:
            raise BadInput(f"--config {path}: an ensemble is not trained; replay one of its runs")
        return run.train, run.settings
    try:
        saved = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise BadInput(f"--config {path}: cannot read it ({err})") from None
    nested = saved.get("task") if isinstance(saved, dict) else None
    values = nested.get(task) if isinstance(nested, dict) else saved.get(task) if isinstance(saved, dict) else None
    if not isinstance(values, dict) or not isinstance(saved.get("train"), dict):
        raise BadInput(f"--config {path}: not the saved settings of a {task} run (its settings.json or run.json)")
    return saved["train"], values
