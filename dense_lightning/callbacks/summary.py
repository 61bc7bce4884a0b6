"""FitSummary: one table at the end of ``fit`` with everything worth copying into a notebook."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table
from typing_extensions import override

from dense_lightning.callbacks.export import InverseTransferExport
from dense_lightning.viz.draw import ordinal

__all__ = ["FitSummary", "fit_summary_rows", "fit_summary_table"]

Row = tuple[str, str]


def _number(value: Any) -> str:
    """A metric as text: 4 decimals, scientific notation for tiny errors, "-" when missing."""
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "nan"
    return f"{value:.1e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


def _export_summary(trainer: Trainer) -> Mapping[str, Any] | None:
    """The summary of the last ``InverseTransferExport`` that exported, if any."""
    for callback in trainer.callbacks:
        if isinstance(callback, InverseTransferExport) and callback.summary:
            return callback.summary
    return None


def _checkpoint_rows(trainer: Trainer, pl_module: LightningModule) -> list[Row]:
    checkpoint = trainer.checkpoint_callback
    monitor = getattr(checkpoint, "monitor", None) or getattr(pl_module, "monitor", None)
    rows: list[Row] = []
    best = getattr(checkpoint, "best_model_score", None)
    if monitor and best is not None:
        rows.append((f"best {monitor}", _number(best)))
    elif monitor and monitor in trainer.callback_metrics:
        rows.append((f"last {monitor}", _number(trainer.callback_metrics[monitor])))
    if checkpoint is not None:
        rows.append(("best checkpoint", getattr(checkpoint, "best_model_path", "") or "-"))
        last = getattr(checkpoint, "last_model_path", "")
        if last:
            rows.append(("last checkpoint", last))
    return rows


def _export_rows(summary: Mapping[str, Any]) -> list[Row]:
    rows: list[Row] = []
    dense = summary.get("dense") or {}
    if dense:
        stride, original = dense["output_stride"], dense["original_stride"]
        factor = original // stride
        rows.append(("output stride", f"{stride} (dense) / {original} (exported original)"))
        if factor > 1:
            rows.append(
                (
                    "exported model",
                    f"computes every {ordinal(factor)} cell of the dense map: "
                    f"{factor * factor}x fewer positions",
                )
            )
    equivalence = summary.get("equivalence", {})
    verdict = "equivalent" if equivalence.get("equivalent") else "NOT equivalent"
    error = equivalence.get("max_rel_error")
    error = "-" if error is None else f"{float(error):.1e}"
    rows.append(("equivalence", f"{verdict}, max relative error {error}"))
    metrics = summary.get("metrics", {})
    for key in sorted(metrics):
        if key.startswith("dense_"):
            name = key.removeprefix("dense_")
            exported = metrics.get(f"exported_{name}")
            rows.append((name, f"dense {_number(metrics[key])} | exported {_number(exported)}"))
    rows.append(("export dir", str(summary.get("dirpath", "-"))))
    rows.extend(("  file", str(path)) for path in summary.get("files", []))
    return rows


def fit_summary_rows(trainer: Trainer, pl_module: LightningModule) -> list[Row]:
    """The summary as ``(what, value)`` rows: checkpoints, then the export (when it ran).

    Rows: the best monitored score and the best and last checkpoint paths (from
    ``trainer.checkpoint_callback``), then, from the ``InverseTransferExport`` callback's
    ``summary``: the dense and original strides, the equivalence verdict and largest
    relative error, each validation metric of the dense and the exported model, the export
    directory and its files.
    """
    rows = _checkpoint_rows(trainer, pl_module)
    export = _export_summary(trainer)
    if export is not None:
        rows.extend(_export_rows(export))
    return rows


def fit_summary_table(trainer: Trainer, pl_module: LightningModule) -> Table:
    """:func:`fit_summary_rows` as a ``rich`` table."""
    table = Table(title="dense-lightning fit summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for what, value in fit_summary_rows(trainer, pl_module):
        table.add_row(what, value)
    return table


class FitSummary(Callback):
    """Print :func:`fit_summary_table` when ``fit`` ends, on rank zero.

    The hook is ``teardown`` (stage ``"fit"``): Lightning calls it after every callback's
    ``on_fit_end``, so the export has been written whatever the order of the callbacks,
    and only when fit finished (an exception skips it). With a ``WandbLogger``, the best
    score and the equivalence error also go to the run summary (``best_<monitor>``,
    ``equivalence_max_rel_error``), where a sweep or a runs table can read them.

    Args:
        console_width: width of the table; default the terminal's.
    """

    def __init__(self, console_width: int | None = None) -> None:
        self.console_width = console_width
        #: Rows of the last summary printed.
        self.rows: list[Row] = []

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        self.rows = fit_summary_rows(trainer, pl_module)
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar):
            # Stop the live bar first (its own teardown may come later and does nothing
            # then), or it is redrawn below the table.
            bar.teardown(trainer, pl_module, stage)
        Console(width=self.console_width).print(fit_summary_table(trainer, pl_module))
        self._update_wandb_summary(trainer, pl_module)

    @staticmethod
    def _update_wandb_summary(trainer: Trainer, pl_module: LightningModule) -> None:
        values: dict[str, float] = {}
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None) or getattr(pl_module, "monitor", None)
        best = getattr(checkpoint, "best_model_score", None)
        if monitor and best is not None:
            values[f"best_{monitor}"] = float(best)
        export = _export_summary(trainer)
        if export is not None and "max_rel_error" in export.get("equivalence", {}):
            values["equivalence_max_rel_error"] = float(export["equivalence"]["max_rel_error"])
        for logger in trainer.loggers:
            if values and isinstance(logger, WandbLogger):
                logger.experiment.summary.update(values)
