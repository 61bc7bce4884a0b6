"""The optimiser and the per-step learning-rate schedule every task uses."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any, Literal

import torch
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import nn

__all__ = ["OptimizerName", "SchedulerName", "build_optimization", "lr_factor"]

OptimizerName = Literal["adamw", "adam", "sgd"]
SchedulerName = Literal["cosine", "poly", "step", "none"]
# Step schedule: the learning rate drops 10x at these fractions of training.
_STEP_MILESTONES = (0.6, 0.85)


def build_optimization(
    params: Iterable[nn.Parameter], hp: Mapping[str, Any], total_steps: int
) -> OptimizerLRScheduler:
    """Optimizer and per-step scheduler from a task's hyperparameters, in Lightning's format.

    Args:
        params: the parameters to train.
        hp: ``optimizer``, ``lr``, ``weight_decay``, ``momentum``, ``scheduler`` and
            ``warmup_steps``.
        total_steps: optimizer steps of the whole fit.

    Returns:
        ``{"optimizer", "lr_scheduler": {"scheduler", "interval": "step"}}``.
    """
    params = list(params)
    if hp["optimizer"] == "sgd":
        optimizer: torch.optim.Optimizer = torch.optim.SGD(
            params,
            lr=hp["lr"],
            momentum=hp["momentum"],
            weight_decay=hp["weight_decay"],
            nesterov=True,
        )
    elif hp["optimizer"] == "adam":
        optimizer = torch.optim.Adam(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    else:
        optimizer = torch.optim.AdamW(params, lr=hp["lr"], weight_decay=hp["weight_decay"])
    kind, warmup = hp["scheduler"], hp["warmup_steps"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(kind, step, total_steps, warmup)
    )
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
    """Learning-rate multiplier at ``step`` of ``total`` after ``warmup`` linear steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min((step - warmup) / max(total - warmup, 1), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "poly":
        return (1.0 - progress) ** 0.9
    if kind == "step":
        return 0.1 ** sum(progress >= m for m in _STEP_MILESTONES)
    return 1.0
