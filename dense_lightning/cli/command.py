"""The ``dense-lightning`` command: LightningCLI with any task and any DataModule by class path.

Examples::

    dense-lightning fit --config configs/segmentation/quickstart.yaml
    dense-lightning fit -c configs/segmentation/quickstart.yaml --model.init_args.output_stride 16
    dense-lightning fit -c configs/segmentation/quickstart.yaml --ckpt_path last
    dense-lightning validate -c configs/segmentation/quickstart.yaml --ckpt_path last.ckpt
"""

from __future__ import annotations

import sys
import textwrap
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from jsonargparse import Namespace
from lightning.pytorch import LightningDataModule, LightningModule, Trainer
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities import rank_zero_info
from typing_extensions import override

# Imported so that short class names ("SemanticSegmentationTask", "DenseConversion") resolve.
import dense_lightning.data
import dense_lightning.tasks  # noqa: F401
from dense_lightning.callbacks import default_callbacks
from dense_lightning.callbacks.run_config import SaveRunConfig, run_directory
from dense_lightning.cli import preflight
from dense_lightning.cli.help import DESCRIPTION, SUBCOMMANDS, HelpFormatter, epilog
from dense_lightning.cli.messages import (
    PROG,
    DenseArgumentParser,
    error_text,
    fail,
    user_error,
)
from dense_lightning.cli.runs import LAST, RunLayout, continue_run
from dense_lightning.errors import ConfigurationError

__all__ = ["DenseLightningCLI", "create_cli", "main"]

# Values of --ckpt_path that Lightning resolves itself.
_LIGHTNING_CKPT_VALUES = ("best", "hpc")


def _runs_on_cuda(accelerator: Any) -> bool:
    """Whether a ``trainer.accelerator`` setting ends up on CUDA devices."""
    if isinstance(accelerator, str):
        if accelerator == "auto":
            return torch.cuda.is_available()
        return accelerator in ("cuda", "gpu")
    return "cuda" in type(accelerator).__name__.lower()


def quiet_known_warnings(subcommand: str | None, continuing: bool) -> None:
    """Silence the warnings every run would print that are nobody's to act on, by message.

    - Lightning 2.6 calls torch's deprecated ``LeafSpec`` check (a FutureWarning per run);
    - outside ``fit``, ``ModelCheckpoint`` says that its folder differs from the one the
      checkpoint was saved in: it saves nothing there, so it does not matter;
    - a run that continues its own folder finds its checkpoint folder not empty, as it should.
    """
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
    )
    if subcommand not in (None, "fit"):
        warnings.filterwarnings("ignore", message="The dirpath has changed from")
    if continuing:
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )


class DenseLightningCLI(LightningCLI):
    """LightningCLI for dense-lightning.

    - Subclass mode for model and data: ``model.class_path`` names any LightningModule
      (e.g. ``SemanticSegmentationTask``), ``data.class_path`` any LightningDataModule.
    - Every check runs before a folder, a logger or a run exists: the checkpoint file
      (``--ckpt_path``: exists, is a Lightning checkpoint, keeps the output stride when
      resuming), the data (the data module is built first, so its file checks come before
      pretrained weights are fetched), and the task against the data (``num_classes``...).
    - ``--ckpt_path last`` is the newest last (or interrupted) checkpoint over the logger's
      runs; ``fit`` without one starts a new run. A checkpoint inside a run folder
      continues that folder (``version_3``, a wandb run id), for ``fit`` and evaluation.
    - The config is saved into the run's own folder (beside checkpoints and exports, for
      every logger, wandb included): ``config.yaml`` for fit, ``config_<stage>.yaml`` else.
    - ``trainer.sync_batchnorm: true`` and ``precision: 16-mixed`` (GPU settings of the
      configs) become ``false`` and ``32-true`` when the run is not on CUDA, where they cannot
      run; the same config then trains on one CPU, with ``strategy: ddp`` as one process.
    - Bad arguments and the library's configuration errors (``ConfigurationError``,
      ``NotEquivalentError``) end the command with ``dense-lightning: error: ...`` and exit
      status 2; any other exception keeps its traceback.
    - Every run gets a progress display (a rich bar on a terminal, one line per logging
      interval and per validation otherwise), a checkpoint when interrupted with the command
      that resumes it, and after ``fit`` a summary, unless the config lists its own.

    Args:
        *args: LightningCLI's arguments.
        **kwargs: LightningCLI's keyword arguments.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        given = kwargs.get("args")
        argv = given if isinstance(given, list | tuple) else None if given else sys.argv[1:]
        #: The command line, for the resume hint of an interrupted fit.
        self.command: list[str] | None = None if argv is None else [PROG, *map(str, argv)]
        #: The run folder a ``--ckpt_path`` inside one continues.
        self.run_version: str | None = None
        super().__init__(*args, **kwargs)

    @override
    def setup_parser(
        self, add_subcommands: bool, main_kwargs: dict[str, Any], subparser_kwargs: dict[str, Any]
    ) -> None:
        super().setup_parser(add_subcommands, main_kwargs, subparser_kwargs)
        # The subcommand list shows Lightning's first docstring line: give whole sentences.
        action = getattr(self.parser, "_subcommands_action", None)
        for choice in getattr(action, "_choices_actions", []):
            choice.help = SUBCOMMANDS.get(choice.dest, choice.help)

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: ArgsType) -> None:
        super().parse_arguments(parser, args)
        # Before LightningCLI reads the checkpoint's hyperparameters (right after this).
        subcommand = self.config.get("subcommand")
        config = self.config[subcommand] if subcommand else self.config
        preflight.check_backbone_file(config.get("model"))
        if subcommand is not None:
            self._check_checkpoint(subcommand, config)

    def _check_checkpoint(self, subcommand: str, config: Namespace) -> None:
        ckpt_path = config.get("ckpt_path")
        if ckpt_path is None or ckpt_path in _LIGHTNING_CKPT_VALUES or "://" in str(ckpt_path):
            return
        layout = RunLayout.of(self._logger(subcommand, config), config.trainer.default_root_dir)
        if ckpt_path == LAST:
            found = layout.last_checkpoint()
            where = layout.root or layout.default_root_dir / "checkpoints"
            if found is None and subcommand == "fit":
                rank_zero_info(f"--ckpt_path last: no checkpoint in {where} yet; a new run starts.")
                config.ckpt_path = None
                return
            if found is None:
                raise ConfigurationError(
                    f"--ckpt_path last: no last checkpoint of any run in {where}; give the "
                    "path of a checkpoint."
                )
            rank_zero_info(f"--ckpt_path last: {found}")
            config.ckpt_path = ckpt_path = str(found)
        checkpoint = preflight.read_checkpoint(str(ckpt_path))
        if subcommand == "fit":
            preflight.check_resume_stride(checkpoint, config.get("model"))
        self.run_version = layout.version_of(ckpt_path)

    def _logger(self, subcommand: str, config: Namespace) -> Any:
        """The configured logger, built from its config alone (loggers do nothing when built)."""
        logger = config.trainer.get("logger")
        if logger is None or isinstance(logger, bool):
            return logger
        built = self._parser(subcommand).instantiate(
            Namespace(trainer=Namespace(logger=logger)), instantiate_groups=False
        )
        return built.trainer.logger

    @override
    def before_instantiate_classes(self) -> None:
        quiet_known_warnings(self.subcommand, continuing=self.run_version is not None)
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
        # The data module first: it checks its files when built, and a wrong root must be
        # reported before the model fetches pretrained weights (minutes of retries offline).
        config = self.config[self.subcommand] if self.subcommand else self.config
        spec = config.get("data")
        if spec is None:
            super().instantiate_classes()
            return
        self._dump_config()  # LightningCLI's record of the config, taken while it is plain
        parser = self._parser(self.subcommand)
        datamodule = parser.instantiate(Namespace(data=spec), instantiate_groups=False).data
        preflight.check_data_matches_task(config.get("model"), datamodule)
        config.data = datamodule  # built once: the parser keeps an instance as it is
        try:
            super().instantiate_classes()
        finally:
            config.data = spec  # the saved config.yaml holds the data's settings

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        # A progress display, an interrupt checkpoint and a fit summary, unless the config
        # brings its own.
        config = self._get(self.config_init, "trainer", default={})
        callbacks = config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        extra = default_callbacks(config, command=self.command)
        kwargs.setdefault("callbacks", [*callbacks, *extra])
        trainer = super().instantiate_trainer(**kwargs)
        if self.run_version is not None and trainer.loggers:
            if continue_run(trainer.loggers[0], self.run_version):
                rank_zero_info(f"Continuing the run in {run_directory(trainer)}")
        return trainer


def create_cli(args: ArgsType = None, run: bool = True) -> DenseLightningCLI:
    """Build (and by default run) the CLI; ``args`` replaces ``sys.argv[1:]``.

    Raises:
        SystemExit: with status 2 on bad arguments and configuration errors, after printing
            them (one line, or one line per kind of problem for a dataset report).
    """
    try:
        return DenseLightningCLI(
            LightningModule,
            LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            parser_class=DenseArgumentParser,
            parser_kwargs={
                "prog": PROG,
                "description": textwrap.fill(DESCRIPTION, width=88),
                "epilog": epilog(),
                "formatter_class": HelpFormatter,
                **{name: {"description": text} for name, text in SUBCOMMANDS.items()},
            },
            save_config_callback=SaveRunConfig,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
        )
    except Exception as error:
        cause = user_error(error)
        if cause is None:
            raise
        fail(error_text(cause) if isinstance(cause, ConfigurationError) else str(cause))


def main(args: Sequence[str] | None = None) -> None:
    """Entry point of ``dense-lightning`` and ``python -m dense_lightning``."""
    create_cli(None if args is None else list(args))
