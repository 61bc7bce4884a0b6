"""InverseTransferExport: write the trained dense network back in its original, fast form."""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor, nn
from typing_extensions import override

from dense_lightning.callbacks.cost import measure_costs
from dense_lightning.callbacks.dense_conversion import check_submodule_name, get_network
from dense_lightning.callbacks.run_config import run_directory
from dense_lightning.equivalent import EquivalenceReport, to_original, verify_equivalence
from dense_lightning.files import atomic_write_all
from dense_lightning.loggers import log_export_artifacts
from dense_lightning.models import DENSE_STATE_KEY, dense_state
from dense_lightning.tasks.protocol import ExportableTask

__all__ = ["InverseTransferExport", "WeightsSource", "validation_loader"]

CHECKPOINT_NAME = "model_original.ckpt"
REPORT_NAME = "equivalence.json"
WEIGHTS = ("best", "last")
# Entries of Lightning's checkpoint format that only resuming a fit needs; an exported model
# is loaded with load_from_checkpoint, which reads the weights and the hyperparameters.
_TRAINING_STATE = ("callbacks", "loops", "lr_schedulers", "optimizer_states")


@dataclass(frozen=True)
class WeightsSource:
    """Which weights an export holds.

    Attributes:
        kind: ``"best"`` (the best monitored checkpoint) or ``"last"`` (the end of fit).
        checkpoint: the checkpoint file they come from; ``None`` for the end-of-fit weights.
        note: why these weights, in words for the summary.
    """

    kind: Literal["best", "last"]
    checkpoint: str | None
    note: str


@contextmanager
def _full_precision_math() -> Iterator[None]:
    """Disable TF32 so that both models compute in true float32 while being compared."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def validation_loader(trainer: Trainer) -> Iterable[Any] | None:
    """A validation loader; from the DataModule when it has one, so it is not split by rank."""
    datamodule = trainer.datamodule
    if datamodule is not None and is_overridden("val_dataloader", datamodule):
        return datamodule.val_dataloader()
    loaders = trainer.val_dataloaders
    return loaders[0] if isinstance(loaders, list | tuple) and loaders else loaders


def _lattice_weight(pl_module: LightningModule, state: Mapping[str, Any] | None) -> float | None:
    """The weight of the exported network's own loss in dense training, when there was one.

    ``None`` when the module has no such hyperparameter (any LightningModule) or trained at
    its native stride (the exported network is the trained one).
    """
    weight = getattr(pl_module, "hparams", {}).get("lattice_loss_weight")
    if weight is None or state is None or state["original_stride"] == state["output_stride"]:
        return None
    return float(weight)


def _load_weights(network: nn.Module, state_dict: Mapping[str, Tensor], prefix: str) -> nn.Module:
    """A copy of ``network`` with the weights under ``prefix`` in a module's state dict."""
    weights = {k.removeprefix(prefix): v for k, v in state_dict.items() if k.startswith(prefix)}
    loaded = copy.deepcopy(network)
    # Conversion keeps parameter names, so a dense or original checkpoint loads either way.
    loaded.load_state_dict(weights, strict=True)
    return loaded


class InverseTransferExport(Callback):
    """At the end of ``fit``, export the original-stride model and prove it equivalent.

    The weights are those of the best monitored checkpoint (``weights="best"``, the model
    people deploy) or of the end of fit (``"last"``); without a monitored
    ``ModelCheckpoint`` that saved a best file, the end-of-fit weights are exported and the
    summary says so. On rank zero, the network goes through ``to_original`` and
    ``verify_equivalence`` against the dense network on a real validation batch. A network
    converted exactly must pass (otherwise nothing is written and a ``RuntimeError`` says
    why); one converted approximately (``strict=False`` with layers that mix positions,
    known from the start of fit) is exported labelled ``"approximate"`` with its measured
    error. Three files are written atomically (all or none) into the export directory:

    - ``backbone_<name>.pth``: backbone weights under plain timm names, loadable with
      ``timm.create_model(name, num_classes=0, checkpoint_path=...)`` (tasks only); for
      image-level tasks (``timm_weights = "classifier"``) ``classifier_<name>.pth``, the whole
      classifier, which loads into ``timm.create_model(name, num_classes=n)`` with
      ``strict=True``;
    - ``model_original.ckpt``: the Lightning checkpoint of those weights (written by
      Lightning, minus optimizer and loop state), with ``output_stride=None`` and the
      original structure recorded, loadable with ``<Module>.load_from_checkpoint``;
    - ``equivalence.json``: the equivalence report, which weights, the dense and exported
      validation metrics and cost per image (tasks only) and the timm keys the backbone
      file lacks.

    With ``submodule`` (the network's encoder was converted alone, as by
    ``DenseConversion(submodule=...)``), the rest of the network was trained on the dense
    encoder's features, so no whole network at the original stride exists: the export is
    ``<submodule>_original.pth``, the submodule's weights in its original strided form (for an
    smp model, they load with ``strict=True`` into the undilated ``smp.encoders.get_encoder``),
    verified against the dense submodule, and ``equivalence.json``.

    The result is also kept in :attr:`summary` (the same dictionary as ``equivalence.json``),
    which ``FitSummary(export=...)`` prints. The ``on_fit_end`` hook is used because the
    weights are final then; an interrupted run does not reach it and so exports nothing.

    Tasks are used through the ``ExportableTask`` interface: ``evaluate(loader, network=...)``
    for the metrics and ``timm_backbone_state_dict(network=...)`` for the backbone file. Any
    other LightningModule gets the checkpoint and the report.

    Args:
        dirpath: export directory. Default, like ``ModelCheckpoint``'s:
            ``<save_dir>/<name>/<version>/exports`` of the first logger, or
            ``<default_root_dir>/exports`` without a logger.
        weights: ``"best"`` (best monitored checkpoint) or ``"last"`` (end of fit).
        attribute: name of the network attribute on the LightningModule.
        image_key: key of the images in a batch dict (tuples use their first element).
        num_images: images from the first validation batch used for the equivalence check.
        rtol: largest accepted error relative to the largest output magnitude.
        evaluate: score the dense and exported networks on the validation set (tasks only).
        eval_batches: stop the evaluation after this many batches (``None``: whole set).
        measure_cost: report GFLOPs and milliseconds per image of both networks (timed in
            turns, median, this process's CPU time on a CPU: see ``measure_costs``).
        log_artifacts: log the exported files and the report as wandb artifacts to the
            active ``WandbLogger`` run; no-op without one.
        submodule: export only this part of the network (the one ``DenseConversion``
            converted with the same argument).

    Raises:
        ValueError: an argument is out of range.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        weights: Literal["best", "last"] = "best",
        attribute: str = "model",
        image_key: str = "image",
        num_images: int = 4,
        rtol: float = 1e-4,
        evaluate: bool = True,
        eval_batches: int | None = None,
        measure_cost: bool = True,
        log_artifacts: bool = False,
        submodule: str | None = None,
    ) -> None:
        if num_images < 1 or rtol <= 0 or (eval_batches is not None and eval_batches < 1):
            raise ValueError(
                f"Need num_images >= 1, rtol > 0 and eval_batches >= 1 or None; got "
                f"num_images={num_images}, rtol={rtol}, eval_batches={eval_batches}."
            )
        if weights not in WEIGHTS:
            raise ValueError(f"weights must be one of {WEIGHTS}, got {weights!r}.")
        check_submodule_name(submodule)
        self.dirpath = dirpath
        self.weights = weights
        self.attribute = attribute
        self.image_key = image_key
        self.num_images = num_images
        self.rtol = rtol
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.measure_cost = measure_cost
        self.log_artifacts = log_artifacts
        self.submodule = submodule
        #: The last export: the content of ``equivalence.json`` plus nothing else.
        self.summary: dict[str, Any] | None = None

    def resolve_dir(self, trainer: Trainer) -> Path:
        """The export directory for ``trainer`` (see ``dirpath``)."""
        if self.dirpath is not None:
            return Path(self.dirpath)
        return run_directory(trainer) / "exports"

    @override
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        # The network is final by now (tasks convert in __init__, DenseConversion in setup):
        # say before the first step what the export will be, not after the last.
        network = get_network(pl_module, self.attribute, self.submodule)
        state = dense_state(network, self.submodule)
        if state is not None and state["approximate"]:
            rank_zero_info(
                f"InverseTransferExport: {type(pl_module).__name__}.{self.attribute} was "
                "converted approximately (strict=False); the export will be labelled "
                "'approximate' with its measured error."
            )

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.export(trainer, pl_module)

    def weights_source(self, trainer: Trainer) -> WeightsSource:
        """Which weights to export: the best monitored checkpoint, or the end of fit."""
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None)
        if self.weights == "last":
            return WeightsSource("last", None, "the weights at the end of fit (weights=last)")
        best = getattr(checkpoint, "best_model_path", "") if monitor else ""
        if best and Path(best).is_file():
            return WeightsSource("best", best, f"the best {monitor} checkpoint")
        return WeightsSource(
            "last",
            None,
            "the weights at the end of fit: no best checkpoint to export (it needs a "
            "ModelCheckpoint with a monitor that saved a file)",
        )

    def export(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any] | None:
        """Export on every process (saving end-of-fit weights is collective); write on rank 0.

        Returns:
            The summary on rank zero, ``None`` elsewhere.

        Raises:
            RuntimeError: an exactly converted network does not match its export (nothing is
                written).
        """
        # Every rank must agree on the source: the end-of-fit weights are saved collectively.
        source = trainer.strategy.broadcast(self.weights_source(trainer))
        checkpoint = self._source_checkpoint(trainer, source)
        if not trainer.is_global_zero:
            return None
        dense = get_network(pl_module, self.attribute)
        if source.checkpoint is not None:
            dense = _load_weights(dense, checkpoint["state_dict"], f"{self.attribute}.")
        return self._write(trainer, pl_module, dense, checkpoint, source)

    def _source_checkpoint(self, trainer: Trainer, source: WeightsSource) -> dict[str, Any]:
        """The Lightning checkpoint of the exported weights (rank zero; ``{}`` elsewhere)."""
        if source.checkpoint is not None:
            if not trainer.is_global_zero:
                return {}
            return torch.load(source.checkpoint, map_location="cpu", weights_only=False)
        # Lightning writes the checkpoint of the current weights (hyperparameters, version
        # and the module's own on_save_checkpoint entries included).
        scratch = tempfile.mkdtemp(prefix="dense-lightning-") if trainer.is_global_zero else None
        scratch = trainer.strategy.broadcast(scratch)
        path = Path(scratch, "final.ckpt")
        try:
            trainer.save_checkpoint(path, weights_only=True)
            if not trainer.is_global_zero:
                return {}
            return torch.load(path, map_location="cpu", weights_only=False)
        finally:
            if trainer.is_global_zero:
                shutil.rmtree(scratch, ignore_errors=True)

    def _write(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        dense: nn.Module,
        checkpoint: dict[str, Any],
        source: WeightsSource,
    ) -> dict[str, Any]:
        if self.submodule is not None:  # the part that was converted, on its own
            dense = dense.get_submodule(self.submodule)
        original = to_original(dense).eval()
        images = self._images(trainer, pl_module)
        report = self._verify(original, dense, images)
        state = dense_state(dense)
        approximate = bool(state and state["approximate"])
        directory = self.resolve_dir(trainer)
        if not report.equivalent and not approximate:
            raise RuntimeError(
                f"InverseTransferExport refused to write to {directory}: the exported network "
                f"is not equivalent to the dense one (max relative error "
                f"{report.max_rel_error:.2e} > rtol {self.rtol:.0e}), although the network "
                f"was converted as exact.\n{report}"
            )
        writers, details = self._payloads(pl_module, original, checkpoint, directory)
        report_path = directory / REPORT_NAME
        summary = {
            "dirpath": str(directory),
            "files": sorted(str(p) for p in [*writers, report_path]),
            "weights": {
                **asdict(source),
                "epoch": checkpoint.get("epoch"),
                "global_step": checkpoint.get("global_step"),
            },
            "approximate": approximate,
            "metrics": self._metrics(trainer, pl_module, dense, original),
            "cost": self._cost(dense, original, images),
            "dense": state,
            "lattice_loss_weight": _lattice_weight(pl_module, state),
            "equivalence": report.to_dict(),
            **details,
        }
        writers[report_path] = lambda p: p.write_text(json.dumps(summary, indent=2))
        atomic_write_all(writers)
        self.summary = summary
        if self.log_artifacts:
            log_export_artifacts(trainer, summary["files"], summary)
        self._announce(summary)
        return summary

    def _images(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        loader = validation_loader(trainer)
        loader = trainer.train_dataloader if loader is None else loader
        if loader is None:
            raise RuntimeError("InverseTransferExport needs a validation or training batch.")
        batch = next(iter(loader))
        if isinstance(batch, dict):
            images = batch[self.image_key]
        else:
            images = batch[0] if isinstance(batch, list | tuple) else batch
        return images[: self.num_images].to(pl_module.device)

    def _verify(self, original: nn.Module, dense: nn.Module, images: Tensor) -> EquivalenceReport:
        method = (dense_state(dense) or {}).get("method", "forward")
        with _full_precision_math():
            return verify_equivalence(original, dense, images, method=method, rtol=self.rtol)

    def _metrics(
        self, trainer: Trainer, pl_module: LightningModule, dense: nn.Module, original: nn.Module
    ) -> dict[str, float]:
        loader = validation_loader(trainer)
        if not self.evaluate or loader is None or not isinstance(pl_module, ExportableTask):
            return {}
        if self.submodule is not None:
            return {}  # the exported part is not a network the task can score
        limit = 1 if trainer.fast_dev_run else self.eval_batches
        with _full_precision_math():
            scores = {
                name: pl_module.evaluate(loader, network=network, max_batches=limit)
                for name, network in (("dense", dense), ("exported", original))
            }
        metrics = {
            f"{name}_val_{k}": v for name, values in scores.items() for k, v in values.items()
        }
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def _cost(
        self, dense: nn.Module, original: nn.Module, images: Tensor
    ) -> dict[str, dict[str, float | str]]:
        if not self.measure_cost:
            return {}
        method = (dense_state(dense) or {}).get("method", "forward")
        return measure_costs({"dense": dense, "exported": original}, images, method=method)

    def _payloads(
        self,
        pl_module: LightningModule,
        original: nn.Module,
        checkpoint: dict[str, Any],
        directory: Path,
    ) -> tuple[dict[Path, Any], dict[str, Any]]:
        """What to write: file -> writer, plus details for the report."""
        if self.submodule is not None:
            weights = original.state_dict()
            path = directory / f"{self.submodule}_original.pth"
            return {path: lambda p: torch.save(weights, p)}, {"submodule": self.submodule}
        exported = {k: v for k, v in checkpoint.items() if k not in _TRAINING_STATE}
        hparams = exported.get(pl_module.CHECKPOINT_HYPER_PARAMS_KEY)
        if isinstance(hparams, Mapping) and "output_stride" in hparams:
            # The exported model runs at its native stride.
            exported[pl_module.CHECKPOINT_HYPER_PARAMS_KEY] = {**hparams, "output_stride": None}
        # Conversion keeps parameter names, so only this entry says "original".
        exported[DENSE_STATE_KEY] = {**exported.get(DENSE_STATE_KEY, {}), self.attribute: None}
        writers = {directory / CHECKPOINT_NAME: lambda p: torch.save(exported, p)}
        details: dict[str, Any] = {}
        if isinstance(pl_module, ExportableTask):
            backbone, missing = pl_module.timm_backbone_state_dict(network=original)
            name = pl_module.hparams["backbone"]
            kind = getattr(pl_module, "timm_weights", "backbone")
            writers[directory / f"{kind}_{name}.pth"] = lambda p: torch.save(backbone, p)
            details = {"backbone": name, "backbone_missing_timm_keys": missing}
            if kind != "backbone":
                details["timm_weights"] = kind
        return writers, details

    def _announce(self, summary: dict[str, Any]) -> None:
        weights = summary["weights"]
        error = summary["equivalence"]["max_rel_error"]
        label = "approximate" if summary["approximate"] else "equivalence"
        lines = [f"InverseTransferExport: wrote to {summary['dirpath']}{os.sep}"]
        lines += [f"  {Path(p).name}" for p in summary["files"]]
        lines.append(
            f"  weights: {weights['note']} (epoch {weights['epoch']}, step "
            f"{weights['global_step']})"
        )
        lines.append(f"  {label}: max relative error {error:.2e}")
        lines += [f"  {k} = {v:.4f}" for k, v in summary["metrics"].items()]
        rank_zero_info("\n".join(lines))
