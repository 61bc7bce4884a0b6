"""The ``dense-lightning`` command (LightningCLI): checks before anything runs, runs, help."""

from dense_lightning.cli.command import DenseLightningCLI, create_cli, main
from dense_lightning.cli.help import epilog
from dense_lightning.cli.messages import one_line, user_error

__all__ = ["DenseLightningCLI", "create_cli", "epilog", "main", "one_line", "user_error"]
