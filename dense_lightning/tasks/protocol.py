"""What an export needs from a task: its network, its model-selection metric and its metrics.

Callbacks type against :class:`ExportableTask` instead of a concrete task class, so a user's
own LightningModule can be exported by giving it these few members.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, Literal, Protocol, runtime_checkable

from torch import Tensor, nn

__all__ = ["ExportableTask"]


@runtime_checkable
class ExportableTask(Protocol):
    """A task whose network can be evaluated and exported without touching its own state.

    Attributes:
        model: the convertible network (dense or original structure).
        monitor: the metric model selection watches (e.g. ``"val_miou"``).
        mode: whether ``monitor`` is minimised or maximised.
        hparams: the task's hyperparameters (``backbone``, ``output_stride``...).
    """

    model: nn.Module
    monitor: str
    mode: Literal["min", "max"]
    hparams: Any

    def evaluate(
        self,
        dataloader: Iterable[dict[str, Any]],
        network: nn.Module | None = None,
        max_batches: int | None = None,
    ) -> dict[str, float]:
        """Metrics of ``network`` (default ``model``) over ``dataloader``, unprefixed."""
        ...

    def timm_backbone_state_dict(
        self, network: nn.Module | None = None
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Backbone weights of ``network`` (default ``model``) under plain timm names.

        Returns the state dict and the timm keys it lacks (layers after the last feature level).
        """
        ...
