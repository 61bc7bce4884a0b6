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
import dense_lightning.data
import dense_lightning.tasks  # noqa: F401
from dense_lightning.callbacks import default_callbacks

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
    - Every run gets a rich progress bar with the metrics that matter and, after ``fit``, a
      summary table (best checkpoint, exports, equivalence error, dense vs exported metric),
      unless the config lists its own progress bar or ``FitSummary``.
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

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # A rich bar with the numbers that matter and a fit summary table, unless the config
        # brings its own.
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        kwargs.setdefault("callbacks", [*callbacks, *default_callbacks(config)])
        return super().instantiate_trainer(**kwargs)


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
