"""The ``dense-lightning`` command: LightningCLI with any task and any DataModule by class path.

Examples::

    dense-lightning fit --config configs/segmentation/quickstart.yaml
    dense-lightning fit -c configs/segmentation/quickstart.yaml --model.init_args.output_stride 16
    dense-lightning validate -c configs/segmentation/quickstart.yaml --ckpt_path last.ckpt
"""

from __future__ import annotations

import sys
from typing import Any

import torch
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

# Imported so that short class names ("SemanticSegmentationTask", "DenseConversion") resolve.
import dense_lightning.callbacks
import dense_lightning.data
import dense_lightning.tasks

__all__ = ["DenseLightningCLI", "create_cli", "main"]


def _runs_on_cuda(accelerator: Any) -> bool:
    """Whether a ``trainer.accelerator`` setting ends up on CUDA devices."""
    if isinstance(accelerator, str):
        if accelerator == "auto":
            return torch.cuda.is_available()
        return accelerator in ("cuda", "gpu")
    return "cuda" in type(accelerator).__name__.lower()


class DenseLightningCLI(LightningCLI):
    """LightningCLI for dense-lightning.

    - Subclass mode for model and data: ``model.class_path`` names any LightningModule
      (e.g. ``SemanticSegmentationTask``), ``data.class_path`` any LightningDataModule.
    - The config is saved with ``overwrite=True``, so re-running in the same directory works.
    - ``trainer.sync_batchnorm: true`` and ``precision: 16-mixed`` (GPU settings of the
      configs) become ``false`` and ``32-true`` when the run is not on CUDA, where they cannot
      run; the same config then trains on one CPU, with ``strategy: ddp`` as one process.
    - Errors in the arguments (unknown backbone, bad output stride) end the command before
      training starts, with the message on one line.
    - After ``fit``, a short summary prints the monitored metric and, when the
      ``InverseTransferExport`` callback ran, the dense and exported models' metrics.
    """

    @override
    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        trainer = config.trainer
        if _runs_on_cuda(trainer.get("accelerator", "auto")):
            return
        # GPU settings of the configs that cannot run elsewhere; everything else is kept.
        if trainer.get("sync_batchnorm"):
            rank_zero_info("sync_batchnorm switched off: SyncBatchNorm needs CUDA devices.")
            trainer.sync_batchnorm = False
        if str(trainer.get("precision")) in ("16-mixed", "16"):
            rank_zero_info("precision 16-mixed -> 32-true: float16 AMP needs CUDA devices.")
            trainer.precision = "32-true"

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as err:  # NotEquivalentError included
            print(f"dense-lightning: error: {err}", file=sys.stderr)
            raise SystemExit(2) from err

    def after_fit(self) -> None:
        """Print a short summary of the run on rank zero."""
        if self.trainer.is_global_zero:
            print(fit_summary(self.trainer, self.model))


def fit_summary(trainer: Trainer, model: LightningModule) -> str:
    """A few lines: the monitored metric, and dense vs exported metrics when exported."""
    lines = ["", "dense-lightning fit summary"]
    monitor = getattr(model, "monitor", None)
    value = trainer.callback_metrics.get(monitor) if monitor else None
    if value is not None:
        lines.append(f"  {monitor} (last validation, dense model): {float(value):.4f}")
    checkpoint = trainer.checkpoint_callback
    if checkpoint is not None and getattr(checkpoint, "best_model_path", ""):
        lines.append(f"  best checkpoint: {checkpoint.best_model_path}")
    for callback in trainer.callbacks:
        summary = getattr(callback, "summary", None)
        if not isinstance(callback, dense_lightning.callbacks.InverseTransferExport) or not summary:
            continue
        metrics = summary["metrics"]
        for key in sorted(metrics):
            if key.startswith("dense_val_"):
                name = key.removeprefix("dense_val_")
                exported = metrics.get(f"exported_val_{name}", float("nan"))
                lines.append(
                    f"  val {name}: dense {metrics[key]:.4f} | exported fast model {exported:.4f}"
                )
        error = summary["equivalence"].get("max_rel_error", float("nan"))
        lines.append(f"  exported == dense on the lattice (max relative error {error:.1e})")
        dense = summary.get("dense")
        if dense:
            # Say why the scores differ although the networks are equivalent.
            k = dense["original_stride"] // dense["output_stride"]
            lines.append(
                f"  (the exported model runs at stride {dense['original_stride']}: it computes "
                f"every {k}th cell of the dense map, {k * k}x fewer positions)"
            )
        lines.append(f"  exports: {summary['dirpath']}")
    return "\n".join(lines)


def create_cli(args: ArgsType = None, run: bool = True) -> DenseLightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``."""
    return DenseLightningCLI(
        LightningModule,
        LightningDataModule,
        subclass_mode_model=True,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        args=args,
        run=run,
    )


def main(args: ArgsType = None) -> None:
    """Entry point of ``dense-lightning`` and ``python -m dense_lightning``."""
    create_cli(args)
