"""InverseTransferExport: write the trained dense network back in its original, fast form."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.model_helpers import is_overridden
from torch import Tensor
from typing_extensions import override

from dense_lightning.callbacks.dense_conversion import get_network
from dense_lightning.equivalent import EquivalenceReport, to_original, verify_equivalence
from dense_lightning.files import atomic_write_all
from dense_lightning.loggers import log_export_artifacts
from dense_lightning.models import DENSE_STATE_KEY, dense_state

__all__ = ["InverseTransferExport"]

CHECKPOINT_NAME = "model_original.ckpt"
REPORT_NAME = "equivalence.json"


@contextmanager
def _full_precision_math() -> Iterator[None]:
    """Disable TF32 so that both models compute in true float32 while being compared."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def _eval_loader(trainer: Trainer) -> Iterable[Any] | None:
    """A validation loader; from the DataModule when it has one, so it is not split by rank."""
    datamodule = trainer.datamodule
    if datamodule is not None and is_overridden("val_dataloader", datamodule):
        return datamodule.val_dataloader()
    loaders = trainer.val_dataloaders
    return loaders[0] if isinstance(loaders, list | tuple) and loaders else loaders


class InverseTransferExport(Callback):
    """At the end of ``fit``, export the original-stride model and prove it equivalent.

    On rank zero, the network in ``pl_module.<attribute>`` goes through ``to_original``
    and ``verify_equivalence`` against the dense network on a real validation batch. If
    the check fails, nothing is written and a ``RuntimeError`` says why. Otherwise three
    files are written atomically (all or none) into the export directory:

    - ``backbone_<name>.pth``: backbone weights under plain timm names, loadable with
      ``timm.create_model(name, num_classes=0, checkpoint_path=...)`` (tasks only);
    - ``model_original.ckpt``: a task checkpoint with ``output_stride=None``, loadable with
      ``<TaskClass>.load_from_checkpoint``;
    - ``equivalence.json``: the equivalence report, the dense and exported validation
      metrics (tasks only) and which timm keys the backbone file lacks.

    The ``on_fit_end`` hook is used because the weights are final then; an interrupted run
    does not reach it and so exports nothing.

    Args:
        dirpath: export directory. Default, like ``ModelCheckpoint``'s:
            ``<save_dir>/<name>/<version>/exports`` of the first logger, or
            ``<default_root_dir>/exports`` without a logger.
        attribute: name of the network attribute on the LightningModule.
        image_key: key of the images in a batch dict (tuples use their first element).
        num_images: images from the first validation batch used for the equivalence check.
        rtol: largest accepted error relative to the largest output magnitude.
        evaluate: score the dense and exported networks on the validation set (tasks only).
        eval_batches: stop the evaluation after this many batches (``None``: whole set).
        log_artifacts: log the exported files and the report as wandb artifacts to the
            active ``WandbLogger`` run; no-op without one.
    """

    def __init__(
        self,
        dirpath: str | None = None,
        attribute: str = "model",
        image_key: str = "image",
        num_images: int = 4,
        rtol: float = 1e-4,
        evaluate: bool = True,
        eval_batches: int | None = None,
        log_artifacts: bool = False,
    ) -> None:
        if num_images < 1 or rtol <= 0 or (eval_batches is not None and eval_batches < 1):
            raise ValueError(
                f"Need num_images >= 1, rtol > 0 and eval_batches >= 1 or None; got "
                f"num_images={num_images}, rtol={rtol}, eval_batches={eval_batches}."
            )
        self.dirpath = dirpath
        self.attribute = attribute
        self.image_key = image_key
        self.num_images = num_images
        self.rtol = rtol
        self.evaluate = evaluate
        self.eval_batches = eval_batches
        self.log_artifacts = log_artifacts
        #: Summary of the last export (paths, metrics, report), for the CLI to print.
        self.summary: dict[str, Any] | None = None

    def resolve_dir(self, trainer: Trainer) -> Path:
        """The export directory for ``trainer`` (see ``dirpath``)."""
        if self.dirpath is not None:
            return Path(self.dirpath)
        if trainer.loggers:
            logger = trainer.loggers[0]
            save_dir = logger.save_dir or trainer.default_root_dir
            version = logger.version
            version = version if isinstance(version, str) else f"version_{version}"
            return Path(save_dir, str(logger.name), version, "exports")
        return Path(trainer.default_root_dir, "exports")

    @override
    def on_fit_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            self.export(trainer, pl_module)

    def export(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        """Verify, then write the export files; return (and keep) a summary.

        Raises:
            RuntimeError: the exported network is not equivalent (nothing is written).
        """
        dense = get_network(pl_module, self.attribute)
        original = to_original(dense).eval()
        report = self._verify(original, dense, self._images(trainer, pl_module))
        directory = self.resolve_dir(trainer)
        if not report.equivalent:
            raise RuntimeError(
                f"InverseTransferExport refused to write to {directory}: the exported network "
                f"is not equivalent to the dense one (max relative error "
                f"{report.max_rel_error:.2e} > rtol {self.rtol:.0e}).\n{report}"
            )
        metrics = self._metrics(trainer, pl_module, original)
        writers, details = self._payloads(trainer, pl_module, directory)
        report_path = directory / REPORT_NAME
        summary = {
            "dirpath": str(directory),
            "files": sorted(str(p) for p in [*writers, report_path]),
            "metrics": metrics,
            "dense": dense_state(dense),
            "equivalence": report.to_dict(),
            **details,
        }
        writers[report_path] = lambda p: p.write_text(json.dumps(summary, indent=2))
        atomic_write_all(writers)
        self.summary = summary
        if self.log_artifacts:
            log_export_artifacts(trainer, summary["files"], summary)
        self._announce(summary, report)
        return summary

    def _images(self, trainer: Trainer, pl_module: LightningModule) -> Tensor:
        loader = _eval_loader(trainer)
        loader = trainer.train_dataloader if loader is None else loader
        if loader is None:
            raise RuntimeError("InverseTransferExport needs a validation or training batch.")
        batch = next(iter(loader))
        if isinstance(batch, dict):
            images = batch[self.image_key]
        else:
            images = batch[0] if isinstance(batch, list | tuple) else batch
        return images[: self.num_images].to(pl_module.device)

    def _verify(self, original: Any, dense: Any, images: Tensor) -> EquivalenceReport:
        method = getattr(getattr(dense, "dense_info", None), "method", "forward")
        with _full_precision_math():
            return verify_equivalence(original, dense, images, method=method, rtol=self.rtol)

    def _metrics(
        self, trainer: Trainer, pl_module: LightningModule, original: Any
    ) -> dict[str, float]:
        loader = _eval_loader(trainer)
        if not self.evaluate or loader is None or not hasattr(pl_module, "evaluate"):
            return {}
        limit = 1 if trainer.fast_dev_run else self.eval_batches
        with _full_precision_math():
            dense = pl_module.evaluate(loader, max_batches=limit)
            exported = pl_module.evaluate(loader, network=original, max_batches=limit)
        metrics = {f"dense_val_{k}": v for k, v in dense.items()}
        metrics |= {f"exported_val_{k}": v for k, v in exported.items()}
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=trainer.global_step)
        return metrics

    def _payloads(
        self, trainer: Trainer, pl_module: LightningModule, directory: Path
    ) -> tuple[dict[Path, Any], dict[str, Any]]:
        """What to write: file -> writer, plus details for the report."""
        state_dict = {k: v.detach().cpu() for k, v in pl_module.state_dict().items()}
        hparams = dict(pl_module.hparams)
        if "output_stride" in hparams:
            hparams["output_stride"] = None  # the exported model runs at its native stride
        checkpoint = {
            "epoch": trainer.current_epoch,
            "global_step": trainer.global_step,
            "pytorch-lightning_version": lightning.__version__,
            "state_dict": state_dict,
            pl_module.CHECKPOINT_HYPER_PARAMS_KEY: hparams,
        }
        pl_module.on_save_checkpoint(checkpoint)  # what the module adds to any checkpoint
        # Conversion keeps parameter names, so only this entry says "original".
        checkpoint[DENSE_STATE_KEY] = {self.attribute: None}
        writers = {directory / CHECKPOINT_NAME: lambda p: torch.save(checkpoint, p)}
        details: dict[str, Any] = {}
        if hasattr(pl_module, "timm_backbone_state_dict"):
            backbone, missing = pl_module.timm_backbone_state_dict()
            name = pl_module.hparams["backbone"]
            writers[directory / f"backbone_{name}.pth"] = lambda p: torch.save(backbone, p)
            details = {"backbone": name, "backbone_missing_timm_keys": missing}
        return writers, details

    def _announce(self, summary: dict[str, Any], report: EquivalenceReport) -> None:
        lines = [f"InverseTransferExport: wrote to {summary['dirpath']}{os.sep}"]
        lines += [f"  {Path(p).name}" for p in summary["files"]]
        lines.append(f"  equivalence: max relative error {report.max_rel_error:.2e}")
        lines += [f"  {k} = {v:.4f}" for k, v in summary["metrics"].items()]
        rank_zero_info("\n".join(lines))
