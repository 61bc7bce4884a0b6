"""The run's own folder, and the config saved into it whatever the logger."""

from __future__ import annotations

from pathlib import Path

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.cli import LightningArgumentParser, SaveConfigCallback
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from typing_extensions import override

from dense_lightning.files import atomic_write

__all__ = ["SaveRunConfig", "run_directory"]


def run_directory(trainer: Trainer) -> Path:
    """The folder of this run: ``<save_dir>/<name>/<version>`` of the first logger.

    The same rule as ``ModelCheckpoint``'s directory, for every logger: TensorBoard and CSV
    (``lightning_logs/version_0``), wandb (``<save_dir>/<project>/<run id>``, beside the
    checkpoints), and ``default_root_dir`` without a logger.
    """
    if not trainer.loggers:
        return Path(trainer.default_root_dir)
    logger = trainer.loggers[0]
    version = logger.version
    version = version if isinstance(version, str) else f"version_{version}"
    return Path(logger.save_dir or trainer.default_root_dir, str(logger.name), version)


class SaveRunConfig(SaveConfigCallback):
    """LightningCLI's config saver, writing ``config.yaml`` into :func:`run_directory`.

    Lightning's own saver writes to ``trainer.log_dir``, which for loggers without a local
    log folder (wandb) is their ``save_dir``: the working folder, shared by every run and
    every sweep agent started there. Here each run's config lands beside its checkpoints
    and exports, written atomically on rank zero. ``fit`` writes ``config.yaml``; an
    evaluation (``validate``, ``test``, ``predict``), which may continue a trained run's
    folder, writes ``config_<stage>.yaml`` beside it and leaves the training config alone.

    Args:
        parser: the CLI's parser.
        config: the parsed config.
        config_filename: file name inside the run folder.
        overwrite: replace an existing file instead of failing.
        multifile: save nested configs as separate files (as ``SaveConfigCallback``).
        save_to_log_dir: ignored; this saver always writes into the run folder.
    """

    def __init__(
        self,
        parser: LightningArgumentParser,
        config: object,
        config_filename: str = "config.yaml",
        overwrite: bool = False,
        multifile: bool = False,
        save_to_log_dir: bool = False,
    ) -> None:
        # Lightning's trainer.log_dir step is replaced by save_config below.
        super().__init__(parser, config, config_filename, overwrite, multifile, False)

    def filename(self, stage: str) -> str:
        """``config_filename`` for ``fit``, ``<stem>_<stage><suffix>`` for other stages."""
        stage = getattr(stage, "value", stage)  # Lightning passes its TrainerFn enum
        if stage == "fit":
            return self.config_filename
        name = Path(self.config_filename)
        return f"{name.stem}_{stage}{name.suffix}"

    @override
    @rank_zero_only
    def save_config(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        path = run_directory(trainer) / self.filename(stage)
        if path.exists() and not self.overwrite:
            raise RuntimeError(
                f"{path} exists: not overwriting the config of a previous run. Delete it, or "
                "pass save_config_kwargs={'overwrite': True}."
            )
        atomic_write(
            path,
            lambda tmp: self.parser.save(
                self.config, str(tmp), skip_none=False, overwrite=True, multifile=self.multifile
            ),
        )
