"""One step, the same everywhere: bf16 autocast or nothing, the model called on one tensor or a tuple, and a
training step with BCE on logits. The engine trains with these, and the precision probe times them."""
from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


def autocast(device: torch.device, precision: str):
    """The one precision path: bf16 autocast or nothing."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def call_model(model: nn.Module, inputs: Any) -> torch.Tensor:
    return model(*inputs) if isinstance(inputs, tuple) else model(inputs)


def train_step(model: nn.Module, inputs: Any, targets: torch.Tensor, optimizer: torch.optim.Optimizer,
               device: torch.device, precision: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step with BCE on logits; returns the (detached) logits and loss."""
    with autocast(device, precision):
        logits = call_model(model, inputs)
    loss = nn.functional.binary_cross_entropy_with_logits(logits.float(), targets.float())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return logits.detach(), loss.detach()
