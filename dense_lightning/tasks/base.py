"""BaseTask: hyperparameters, dense conversion, cell geometry, optimisation and the one step."""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin, get_type_hints

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities.types import OptimizerLRScheduler
from torch import Tensor, nn
from torchmetrics import MetricCollection
from typing_extensions import override

from dense_lightning.equivalent import check_output_stride
from dense_lightning.equivalent.cells import CellGeometry, cell_geometry, eval_mode
from dense_lightning.errors import ConfigurationError
from dense_lightning.models import (
    DENSE_STATE_KEY,
    BackboneWithHead,
    check_backbone_name,
    create_backbone,
    dense_state,
    make_dense,
    timm_state_dict,
)
from dense_lightning.ops import infer_stride
from dense_lightning.tasks.lattice import lattice_step, lattice_subsample
from dense_lightning.tasks.optim import OptimizerName, SchedulerName, build_optimization
from dense_lightning.tasks.structure import checkpoint_hparams, run_time_structure

__all__ = ["BaseTask", "OptimizerName", "SchedulerName", "Stage", "StepLoss"]

Stage = Literal["train", "val", "test"]


@dataclass(frozen=True)
class StepLoss:
    """The losses of one forward pass (see :meth:`BaseTask.step_loss`).

    Attributes:
        total: the training objective: weighted dense terms plus the weighted lattice term.
        terms: the unweighted dense loss terms, keyed by the task's ``loss_names``.
        lattice: the exported network's weighted loss, or ``None`` when not added.
        outputs: the post-processed outputs of the dense network.
    """

    total: Tensor
    terms: dict[str, Tensor]
    lattice: Tensor | None
    outputs: Any


class BaseTask(LightningModule, ABC):
    """Base of every task: a convertible ``self.model`` plus everything global around it.

    ``self.model`` is a timm backbone and the head that :meth:`build_head` returns, made of
    local layers whose forward returns the raw head output at feature resolution. With
    ``output_stride`` set, the task converts it with ``to_dense`` right after building it;
    checkpoints record the structure they were saved with and :meth:`on_load_checkpoint`
    restores it (and converts it when ``validate``/``test``/``predict`` asks for another
    output stride: the weights are the same network at every stride).

    A subclass says what it is through class attributes (``monitor``, ``mode``,
    ``loss_names``, ``data_checks``) and a few methods: :meth:`build_head`,
    :meth:`configure_losses`, :meth:`make_metrics`, :meth:`loss_terms`,
    :meth:`update_metrics`, and optionally :meth:`postprocess` (what happens outside the
    network). The train, validation and test step is written once, here.

    **Lattice supervision.** The dense output, sampled every ``k`` cells, *is* the exported
    network's output (``k`` = original stride / output stride). A dense step therefore also
    has the loss the exported model gets on the same batch at no extra forward pass:
    :meth:`lattice_raw` takes the lattice subsample, :meth:`postprocess` treats it as it
    treats the exported network's output (upsampled or decoded at the original stride), and
    :meth:`loss_terms` scores it. ``lattice_loss_weight`` adds that loss to the dense loss,
    which supervises all ``k * k`` phases alike; it is logged as ``{stage}_loss_lattice``.
    In eval mode the term equals the exported model's loss to float rounding; in train mode
    BatchNorm normalises with the dense map's batch statistics, as the dense loss does.

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
        lattice_loss_weight: weight of the exported network's own loss (the lattice
            subsample of the dense output, see above) added to the dense loss; ``0`` trains
            all phases alike. Ignored when the network is not dense (the two losses are then
            one).
    """

    #: The metric that model selection (checkpointing, early stopping) should watch.
    monitor: str = "val_loss"
    #: Whether ``monitor`` should be minimised or maximised.
    mode: Literal["min", "max"] = "min"
    #: Names of the loss terms :meth:`loss_terms` returns. Each is weighted by the
    #: hyperparameter ``{name}_weight`` when the task has one; with several terms each is
    #: also logged as ``{stage}_loss_{name}``.
    loss_names: ClassVar[tuple[str, ...]] = ("loss",)
    #: Hyperparameters the DataModule must agree on (checked in ``setup``, before step 0).
    data_checks: ClassVar[tuple[str, ...]] = ()
    #: Whether training steps update the metrics (off where decoding costs more than a step).
    train_metrics_enabled: ClassVar[bool] = True
    #: What :meth:`timm_backbone_state_dict` returns under timm's names, and so what the
    #: export's ``<timm_weights>_<backbone>.pth`` holds: ``"backbone"`` (the feature trunk,
    #: for ``num_classes=0``) or ``"classifier"`` (the whole timm model, head included).
    timm_weights: ClassVar[str] = "backbone"

    def __init__(
        self,
        backbone: str = "resnet18",
        pretrained: bool = False,
        checkpoint_path: str | None = None,
        output_stride: int | None = None,
        strict_equivalence: bool = True,
        optimizer: OptimizerName = "adamw",
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: SchedulerName = "cosine",
        warmup_steps: int = 0,
        freeze_backbone: bool = False,
        lattice_loss_weight: float = 1.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: nn.Module
        self._cells: CellGeometry | None = None
        # Fail on a bad argument here, before a model is built or a trainer starts.
        self.check_hparams()
        self.configure_models()
        if output_stride is not None:
            self.model = make_dense(self.model, output_stride, strict=strict_equivalence)
        if freeze_backbone:
            self.backbone_module.requires_grad_(False)
        self.configure_losses()
        self.configure_metrics()

    # ----------------------------------------------------------------------------- arguments

    def check_hparams(self) -> None:
        """Raise ``ValueError`` naming any bad hyperparameter; subclasses extend it."""
        hp = self.hparams
        self._check_literals()
        check_backbone_name(hp.backbone)
        if hp.output_stride is not None:
            check_output_stride(hp.output_stride)
        if hp.lr <= 0 or hp.weight_decay < 0 or hp.warmup_steps < 0:
            raise ConfigurationError(
                f"Need lr > 0, weight_decay >= 0 and warmup_steps >= 0; got lr={hp.lr}, "
                f"weight_decay={hp.weight_decay}, warmup_steps={hp.warmup_steps}."
            )
        if hp.lattice_loss_weight < 0:
            raise ConfigurationError(
                f"lattice_loss_weight must be >= 0, got {hp.lattice_loss_weight}."
            )
        weights = {name: hp[f"{name}_weight"] for name in self.loss_names if f"{name}_weight" in hp}
        if weights and min(weights.values()) < 0:
            raise ConfigurationError(f"Loss weights must be >= 0, got {weights}.")

    def _check_literals(self) -> None:
        """Check every ``Literal``-typed argument of the task's ``__init__`` chain.

        The CLI checks them while parsing; this gives Python callers the same error.
        """
        for cls in type(self).__mro__:
            init = cls.__dict__.get("__init__")
            if init is None or cls is LightningModule:
                continue
            hints = get_type_hints(init)
            for name in inspect.signature(init).parameters:
                hint = hints.get(name)
                if get_origin(hint) is not Literal or name not in self.hparams:
                    continue
                allowed = get_args(hint)
                if self.hparams[name] not in allowed:
                    raise ConfigurationError(
                        f"Unknown {name} {self.hparams[name]!r}; choose one of "
                        f"{', '.join(map(repr, allowed))}."
                    )

    # -------------------------------------------------------------------------------- model

    @abstractmethod
    def build_head(self, in_channels: int) -> nn.Module:
        """The task's head, reading the deepest feature map (``in_channels`` channels)."""

    def configure_models(self) -> None:
        """Build ``self.model`` (backbone + :meth:`build_head`) with the original structure."""
        hp = self.hparams
        backbone = create_backbone(
            hp.backbone, pretrained=hp.pretrained, checkpoint_path=hp.checkpoint_path
        )
        self.model = BackboneWithHead(
            backbone, self.build_head(backbone.feature_info.channels()[-1])
        )

    @property
    def backbone_module(self) -> nn.Module:
        """The backbone inside ``self.model``."""
        return self.model.backbone

    def timm_backbone_state_dict(
        self, network: nn.Module | None = None
    ) -> tuple[dict[str, Tensor], list[str]]:
        """Backbone weights of ``network`` (default ``self.model``) under plain timm names.

        Returns the state dict and the timm keys it lacks (head layers).
        """
        network = self.model if network is None else network
        return timm_state_dict(network.backbone, self.hparams.backbone)

    @property
    def cells(self) -> CellGeometry:
        """Where the cells of ``self.model``'s output sit, traced once.

        The offset is the same for the dense and the original network; only the stride
        changes, and :meth:`geometry` reads it off each output.
        """
        if self._cells is None:
            self._cells = cell_geometry(self.model)
        return self._cells

    def geometry(self, images: Tensor, maps: Tensor) -> CellGeometry:
        """The geometry of ``maps``, a network's output for ``images`` (dense or original)."""
        stride = infer_stride(tuple(images.shape[-2:]), tuple(maps.shape[-2:]))
        return self.cells.with_stride(stride)

    def original_stride(self) -> int:
        """The stride of the original network (what an export runs at)."""
        state = dense_state(self.model)
        return int(state["original_stride"]) if state else self.cells.stride[0]

    # ------------------------------------------------------------------------ loss, metrics

    @abstractmethod
    def configure_losses(self) -> None:
        """Build the loss."""

    @abstractmethod
    def make_metrics(self, **kwargs: Any) -> MetricCollection:
        """Build a fresh, unprefixed metric collection; ``kwargs`` go to every metric."""

    @abstractmethod
    def loss_terms(self, outputs: Any, batch: dict[str, Any]) -> dict[str, Tensor]:
        """Unweighted loss terms of ``outputs`` (from :meth:`forward`), keyed by ``loss_names``."""

    @abstractmethod
    def update_metrics(
        self, metrics: MetricCollection, outputs: Any, batch: dict[str, Any]
    ) -> None:
        """Update ``metrics`` with one batch."""

    def configure_metrics(self) -> None:
        """Create ``train_metrics``, ``val_metrics`` and ``test_metrics`` with their prefixes."""
        metrics = self.make_metrics()
        for stage in get_args(Stage):
            setattr(self, f"{stage}_metrics", metrics.clone(prefix=f"{stage}_"))

    def compute_loss(self, outputs: Any, batch: dict[str, Any]) -> Tensor:
        """The loss of ``outputs``: :meth:`loss_terms` weighted by their ``*_weight`` hparams.

        Without the lattice term, which needs the raw output: see :meth:`step_loss`.
        """
        return self.weighted_loss(self.loss_terms(outputs, batch))

    def weighted_loss(self, terms: dict[str, Tensor]) -> Tensor:
        """Sum of ``terms``, each times its ``{name}_weight`` hyperparameter (default 1)."""
        hp = self.hparams
        return sum(hp.get(f"{name}_weight", 1.0) * value for name, value in terms.items())

    # -------------------------------------------------------------------------------- steps

    def postprocess(self, raw: Any, images: Tensor) -> Any:
        """What happens to a network's raw output outside the network (default: nothing).

        Subclasses override it (segmentation upsamples logits here) so that every network,
        dense or exported, and the dense output's lattice subsample (:meth:`lattice_raw`) are
        treated alike: the geometry is read off each output's own size.

        Args:
            raw: the network's output for ``images``.
            images: the input batch ``[B, C, H, W]``.
        """
        return raw

    def run(self, network: nn.Module, images: Tensor) -> Any:
        """Outputs of ``network`` for ``images``: the network, then :meth:`postprocess`."""
        return self.postprocess(network(images), images)

    @override
    def forward(self, images: Tensor) -> Any:
        """:meth:`run` with ``self.model``."""
        return self.run(self.model, images)

    def lattice_raw(self, raw: Any) -> Any:
        """The exported network's raw output, taken from ``self.model``'s raw output.

        Every ``k``-th cell of each map (:mod:`~dense_lightning.tasks.lattice`); ``raw`` itself
        when the network is not dense.
        """
        return lattice_subsample(raw, lattice_step(self.model))

    def lattice_loss(self, raw: Any, batch: dict[str, Any]) -> Tensor | None:
        """The exported network's (weighted) loss on ``batch``, from the dense ``raw`` output.

        ``None`` when there is nothing to add: the network is not dense, or
        ``lattice_loss_weight`` is 0.
        """
        if lattice_step(self.model) == 1 or self.hparams.lattice_loss_weight == 0:
            return None
        lattice = self.postprocess(self.lattice_raw(raw), batch["image"])
        return self.weighted_loss(self.loss_terms(lattice, batch))

    def step_loss(self, batch: dict[str, Any]) -> StepLoss:
        """One forward pass of ``self.model`` on ``batch`` and every loss it gives.

        The training objective is the weighted dense loss plus ``lattice_loss_weight`` times
        the exported network's loss (:meth:`lattice_loss`). Custom training loops call this
        to optimise exactly what ``fit`` optimises.
        """
        images = batch["image"]
        raw = self.model(images)
        outputs = self.postprocess(raw, images)
        terms = self.loss_terms(outputs, batch)
        total = self.weighted_loss(terms)
        lattice = self.lattice_loss(raw, batch)
        if lattice is not None:
            total = total + self.hparams.lattice_loss_weight * lattice
        return StepLoss(total, terms, lattice, outputs)

    def _shared_step(self, batch: dict[str, Any], stage: Stage) -> Tensor:
        """The train, validation and test step: forward, loss, metrics, logging."""
        step = self.step_loss(batch)
        # Epoch values are means over all ranks (a scalar all-reduce per step is cheap);
        # training also logs per step.
        on_step = stage == "train"
        kwargs = {"batch_size": batch["image"].shape[0], "sync_dist": True, "on_epoch": True}
        self.log(f"{stage}_loss", step.total, on_step=on_step, prog_bar=True, **kwargs)
        parts = {}
        if len(step.terms) > 1:
            parts = {f"{stage}_loss_{name}": value.detach() for name, value in step.terms.items()}
        if step.lattice is not None:
            parts[f"{stage}_loss_lattice"] = step.lattice.detach()
        if parts:
            self.log_dict(parts, on_step=on_step, **kwargs)
        if stage != "train" or self.train_metrics_enabled:
            self.update_metrics(getattr(self, f"{stage}_metrics"), _detach(step.outputs), batch)
        return step.total

    def _log_epoch_metrics(self, stage: Stage) -> None:
        """Compute (synced over ranks by torchmetrics), log and reset a stage's metrics."""
        metrics: MetricCollection = getattr(self, f"{stage}_metrics")
        if any(metric.update_called for metric in metrics.values()):
            values = {name: value.to(self.device) for name, value in metrics.compute().items()}
            # compute() already gathered every rank's instances: the values agree on all ranks.
            self.log_dict(values, prog_bar=stage != "train", sync_dist=True)
        metrics.reset()

    @override
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        return self._shared_step(batch, "train")

    @override
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "val")

    @override
    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._shared_step(batch, "test")

    @override
    def on_train_epoch_end(self) -> None:
        self._log_epoch_metrics("train")

    @override
    def on_validation_epoch_end(self) -> None:
        self._log_epoch_metrics("val")

    @override
    def on_test_epoch_end(self) -> None:
        self._log_epoch_metrics("test")

    @override
    def setup(self, stage: str) -> None:
        self.check_data(getattr(self._trainer, "datamodule", None), self.data_checks)

    def check_data(self, datamodule: Any, names: tuple[str, ...]) -> None:
        """Raise ``ValueError`` when ``datamodule`` disagrees with the task on ``names``.

        Called from ``setup`` so a data/model mismatch fails before step 0, not as an index
        error inside the loss.
        """
        for name in names:
            ours = self.hparams[name]
            theirs = getattr(datamodule, name, ours)
            if theirs != ours:
                raise ConfigurationError(
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
        (used to score the exported model next to the dense one). ``network`` is run through
        :meth:`run`, never assigned to the task.

        Args:
            dataloader: batches in the task's format.
            network: a network with ``self.model``'s interface (e.g. the exported one).
            max_batches: stop after this many batches.

        Returns:
            Unprefixed metric values.
        """
        network = self.model if network is None else network
        metrics = self.make_metrics(sync_on_compute=False).to(self.device)
        with eval_mode(self, network):
            for i, batch in enumerate(dataloader):
                if max_batches is not None and i >= max_batches:
                    break
                batch = self.transfer_batch_to_device(batch, self.device, 0)
                self.update_metrics(metrics, self.run(network, batch["image"]), batch)
        return {name: float(value) for name, value in metrics.compute().items()}

    @override
    def train(self, mode: bool = True) -> BaseTask:
        super().train(mode)
        if mode and self.hparams.freeze_backbone:
            # Frozen weights with moving BatchNorm statistics would still drift the backbone.
            self.backbone_module.eval()
        return self

    # ---------------------------------------------------------------------------- checkpoints

    @override
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint.setdefault(DENSE_STATE_KEY, {})["model"] = dense_state(self.model)
        hparams = checkpoint.get(self.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, dict):
            checkpoint[self.CHECKPOINT_HYPER_PARAMS_KEY] = checkpoint_hparams(hparams)

    @override
    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        states = checkpoint.get(DENSE_STATE_KEY)
        # A checkpoint without the entry predates it or comes from elsewhere: keep the
        # structure the hyperparameters gave.
        if states is None or "model" not in states:
            return
        fn = getattr(getattr(self._trainer, "state", None), "fn", None)
        self.model, self.hparams.output_stride = run_time_structure(
            self.model,
            states["model"],
            self.hparams.output_stride,
            fn,
            strict=self.hparams.strict_equivalence,
        )

    # ------------------------------------------------------------------------------ optimiser

    @override
    def configure_optimizers(self) -> OptimizerLRScheduler:
        hp = self.hparams
        params = [p for p in self.parameters() if p.requires_grad]
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        return build_optimization(params, hp, total)


def _detach(outputs: Any) -> Any:
    """``outputs`` (a tensor or a dict of tensors) without their graphs."""
    if isinstance(outputs, dict):
        return {name: value.detach() for name, value in outputs.items()}
    return outputs.detach() if isinstance(outputs, Tensor) else outputs
