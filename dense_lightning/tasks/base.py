"""BaseTask: hyperparameters, dense conversion, optimisation and the one shared step."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.equivalent import check_output_stride
from dense_lightning.models import (
    DENSE_STATE_KEY,
    apply_dense_state,
    check_backbone_name,
    dense_state,
    make_dense,
    timm_state_dict,
)

__all__ = ["BaseTask"]

Stage = Literal["train", "val", "test"]
_STAGES: tuple[Stage, ...] = ("train", "val", "test")
# Step schedule: the learning rate drops 10x at these fractions of training.
_STEP_MILESTONES = (0.6, 0.85)


class BaseTask(LightningModule, ABC):
    """Base of every task: a convertible ``self.model`` plus everything global around it.

    Subclasses build ``self.model`` (an ``nn.Module`` of local layers whose forward returns the
    raw head output at feature resolution) in :meth:`configure_models`, and define the loss,
    the metrics and how a batch is turned into outputs. With ``output_stride`` set, the task
    converts ``self.model`` with ``to_dense`` right after building it; checkpoints record the
    structure they were saved with and :meth:`on_load_checkpoint` restores it.

    Args:
        backbone: timm model name, e.g. ``"resnet18"``.
        pretrained: start from timm's pretrained weights (needs network or a local cache).
        checkpoint_path: local file with backbone weights under plain timm names.
        output_stride: total stride of the dense model; ``None`` keeps the native stride.
        strict_equivalence: refuse backbones that cannot be made exactly equivalent.
        optimizer: ``"adamw"``, ``"adam"`` or ``"sgd"`` (with Nesterov momentum).
        lr: peak learning rate.
        weight_decay: weight decay (decoupled for AdamW).
        momentum: SGD momentum.
        scheduler: per-step schedule: ``"cosine"``, ``"poly"`` (power 0.9), ``"step"`` (10x
            drops at 60% and 85% of training) or ``"none"``.
        warmup_steps: linear warm-up steps before the schedule.
        freeze_backbone: train the head only; the backbone's BatchNorm statistics stay fixed.
    """

    #: The metric that model selection (checkpointing, early stopping) should watch.
    monitor: str = "val_loss"
    #: Whether ``monitor`` should be minimised or maximised.
    mode: Literal["min", "max"] = "min"

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        output_stride: int | None = None,
        strict_equivalence: bool = True,
        optimizer: Literal["adamw", "adam", "sgd"] = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: Literal["cosine", "poly", "step", "none"] = "cosine",
        warmup_steps: int = 0,
        freeze_backbone: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: nn.Module
        # Fail on a bad argument here, before a model is built or a trainer starts.
        self.check_hparams()
        self.configure_models()
        if output_stride is not None:
            self.model = make_dense(self.model, output_stride, strict=strict_equivalence)
        if freeze_backbone:
            self.backbone_module.requires_grad_(False)
        self.configure_losses()
        self.configure_metrics()

    def check_hparams(self) -> None:
        """Raise ``ValueError`` naming any bad hyperparameter; subclasses extend it."""
        hp = self.hparams
        check_backbone_name(hp.backbone)
        if hp.output_stride is not None:
            check_output_stride(hp.output_stride)
        if hp.lr <= 0 or hp.weight_decay < 0 or hp.warmup_steps < 0:
            raise ValueError(
                f"Need lr > 0, weight_decay >= 0 and warmup_steps >= 0; got lr={hp.lr}, "
                f"weight_decay={hp.weight_decay}, warmup_steps={hp.warmup_steps}."
            )

    @abstractmethod
    def configure_models(self) -> None:
        """Build ``self.model`` with the original (strided) structure."""

    @abstractmethod
    def configure_losses(self) -> None:
        """Build the loss."""

    @abstractmethod
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        """Build a fresh, unprefixed metric collection; ``kwargs`` go to every metric."""

    @abstractmethod
    def compute_loss(self, outputs: Any, batch: dict[str, Any]) -> Tensor:
        """Loss of ``outputs`` (from :meth:`forward`) against ``batch``'s targets."""

    @abstractmethod
    def update_metrics(
        self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any]
    ) -> None:
        """Update ``metrics`` with one batch."""

    def configure_metrics(self) -> None:
        """Create ``train_metrics``, ``val_metrics`` and ``test_metrics`` with their prefixes."""
        metrics = self.make_metrics()
        for stage in _STAGES:
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}_"))

    @property
    def backbone_module(self) -> nn.Module:
        """The backbone inside ``self.model``."""
        return self.model.backbone

    def timm_backbone_state_dict(self) -> tuple[dict[str, Tensor], list[str]]:
        """Backbone weights under plain timm names and the timm keys they lack (head layers)."""
        return timm_state_dict(self.backbone_module, self.hparams.backbone)

    def _shared_step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        """The train, validation and test step: forward, loss, metrics, logging."""
        images = batch["image"]
        outputs = self(images)
        loss = self.compute_loss(outputs, batch)
        metrics = getattr(self, f"{stage}_metrics")
        self.update_metrics(metrics, outputs, batch)
        # Epoch values are means over all ranks (a scalar all-reduce per step is cheap);
        # training also logs per step.
        on_step = stage == "train"
        kwargs = {"batch_size": images.shape[0], "sync_dist": True}
        self.log(f"{stage}_loss", loss, on_step=on_step, on_epoch=True, prog_bar=True, **kwargs)
        self.log_dict(metrics, on_step=False, on_epoch=True, prog_bar=stage != "train", **kwargs)
        return loss

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    def check_data(self, datamodule: Any, names: tuple[str, ...]) -> None:
        """Raise ``ValueError`` when ``datamodule`` disagrees with the task on ``names``.

        Called from ``setup`` so a data/model mismatch fails before step 0, not as an index
        error inside the loss.
        """
        for name in names:
            ours = self.hparams[name]
            theirs = getattr(datamodule, name, ours)
            if theirs != ours:
                raise ValueError(
                    f"The data has {name}={theirs} but the task was built with {name}={ours}; "
                    f"set model.init_args.{name}={theirs}."
                )

    @torch.no_grad()
    def evaluate(
        self,
        dataloader: Iterable[dict[str, Any]],
        network: nn.Module | None = None,
        max_batches: int | None = None,
    ) -> dict[str, float]:
        """Metrics of ``network`` (default ``self.model``) over ``dataloader``, in eval mode.

        Runs outside the trainer and without cross-process sync, so one rank can call it
        (used to score the exported model next to the dense one).

        Args:
            dataloader: batches in the task's format.
            network: a network with ``self.model``'s interface; swapped in while evaluating.
            max_batches: stop after this many batches.

        Returns:
            Unprefixed metric values.
        """
        metrics = self.make_metrics(sync_on_compute=False).to(self.device)
        saved, was_training = self.model, self.training
        self.model = network if network is not None else saved
        self.eval()
        try:
            for i, batch in enumerate(dataloader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                self.update_metrics(metrics, self(batch["image"]), batch)
            return {name: float(value) for name, value in metrics.compute().items()}
        finally:
            self.model = saved
            self.train(was_training)

    @override
    def train(self, mode: bool = True) -> BaseTask:
        super().train(mode)
        if mode and self.hparams.freeze_backbone:
            # Frozen weights with moving BatchNorm statistics would still drift the backbone.
            self.backbone_module.eval()
        return self

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(DENSE_STATE_KEY, {})["model"] = dense_state(self.model)
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, dict) and (
            hparams.get("pretrained") or hparams.get("checkpoint_path")
        ):
            # The checkpoint holds the trained weights: reloading it must not download or read
            # the starting weights again (offline machines, files moved or deleted).
            hparams = {**hparams, "pretrained": False, "checkpoint_path": None}
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = hparams

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(DENSE_STATE_KEY)
        # A checkpoint without the entry predates it or comes from elsewhere: keep the
        # structure the hyperparameters gave.
        if states is not None and "model" in states:
            self.model = apply_dense_state(self.model, states["model"])

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(
                params, lr=hp.lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True
            )
        elif hp.optimizer == "adam":
            optimizer = torch.optim.Adam(params, lr=hp.lr, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(params, lr=hp.lr, weight_decay=hp.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: _lr_factor(hp.scheduler, step, total, hp.warmup_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


def _lr_factor(kind: str, step: int, total: int, warmup: int) -> float:
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
