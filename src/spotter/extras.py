"""Optional parts: a missing extra is a one-line error naming the `pip install` that fixes it, never a traceback."""
from __future__ import annotations

import importlib
import importlib.util

from .errors import UserError

# Which modules each extra of pyproject.toml brings, as imported.
EXTRAS = {"serve": ("fastapi", "uvicorn", "multipart", "captum", "swagger_ui_bundle"),
          "export": ("onnx", "onnxruntime", "onnxscript"),
          "pretrained": ("transformers",)}


class MissingExtra(UserError, ImportError):
    """An optional part of Spotter is not installed; the message says how to get it."""


def installed(extra: str, *modules: str) -> bool:
    """Whether `modules` (default: every module of `extra`) can be imported, without importing them (onnxruntime
    alone adds ~66 MB to a process that never uses it)."""
    return all(importlib.util.find_spec(name) is not None for name in modules or EXTRAS[extra])


def require(extra: str, *modules: str, what: str = "") -> None:
    """Import `modules` (default: every module of `extra`), or say which `pip install` brings them."""
    for name in modules or EXTRAS[extra]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtra(f"{what or 'this'} needs {name}, from the '{extra}' extra: "
                               f"pip install 'spotter[{extra}]'") from None
