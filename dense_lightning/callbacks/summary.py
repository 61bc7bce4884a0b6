"""FitSummary: one table at the end of ``fit`` with everything worth copying into a notebook."""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.callbacks import RichProgressBar
from lightning.pytorch.loggers import WandbLogger
from rich.console import Console
from rich.table import Table
from typing_extensions import override

from dense_lightning.callbacks.baselines import SegmentationBaselines
from dense_lightning.callbacks.export import InverseTransferExport
from dense_lightning.callbacks.run_config import run_directory
from dense_lightning.callbacks.summary_record import write_record
from dense_lightning.viz.draw import ordinal

__all__ = [
    "PATH_ROWS",
    "FitSummary",
    "fit_summary_rows",
    "fit_summary_table",
    "path_lines",
    "print_summary",
    "rows_table",
    "score_rows",
    "score_table",
]

Row = tuple[str, str]


def _number(value: Any) -> str:
    """A metric as text: 4 decimals, scientific notation for tiny errors, "-" when missing."""
    if value is None:
        return "-"
    value = float(value)
    if math.isnan(value):
        return "nan"
    return f"{value:.1e}" if value != 0 and abs(value) < 1e-3 else f"{value:.4f}"


def _checkpoint_rows(trainer: Trainer, pl_module: LightningModule) -> list[Row]:
    checkpoint = trainer.checkpoint_callback
    monitor = getattr(checkpoint, "monitor", None) or getattr(pl_module, "monitor", None)
    rows: list[Row] = []
    best = getattr(checkpoint, "best_model_score", None)
    if monitor and best is not None:
        rows.append((f"best {monitor}", _number(best)))
    elif monitor and monitor in trainer.callback_metrics:
        rows.append((f"last {monitor}", _number(trainer.callback_metrics[monitor])))
    if checkpoint is not None and getattr(checkpoint, "monitor", None):
        rows.append(("best checkpoint", getattr(checkpoint, "best_model_path", "") or "-"))
    last = _last_checkpoint(trainer)
    if last:
        rows.append(("last checkpoint", f"{last} (the final state)"))
    return rows


def _last_checkpoint(trainer: Trainer) -> str:
    """The checkpoint of the latest state: ``save_last``'s, or an unmonitored callback's."""
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        if getattr(callback, "last_model_path", ""):
            return callback.last_model_path
    for callback in getattr(trainer, "checkpoint_callbacks", []):
        if getattr(callback, "monitor", None) is None and getattr(callback, "best_model_path", ""):
            return callback.best_model_path
    return ""


def _training_note(weight: float) -> str:
    """How dense training supervised the exported network (the lattice term's weight)."""
    if weight == 0:
        return "without its own loss (lattice_loss_weight=0): every dense phase supervised alike"
    return (
        f"with its own loss in every dense step (lattice_loss_weight={weight:g}: the dense "
        "map's lattice, upsampled or decoded at the original stride)"
    )


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
    weight = summary.get("lattice_loss_weight")
    if weight is not None:
        rows.append(("exported trained", _training_note(float(weight))))
    weights = summary.get("weights") or {}
    if weights:
        source = Path(weights["checkpoint"]).name if weights.get("checkpoint") else "end of fit"
        rows.append(
            (
                "exported weights",
                f"{weights.get('kind')}: {weights.get('note')} ({source}, epoch "
                f"{weights.get('epoch')}, step {weights.get('global_step')})",
            )
        )
    equivalence = summary.get("equivalence", {})
    if summary.get("approximate"):
        verdict = "approximate (strict=False)"
    else:
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


def fit_summary_rows(
    trainer: Trainer, pl_module: LightningModule, export: Mapping[str, Any] | None = None
) -> list[Row]:
    """The summary as ``(what, value)`` rows: checkpoints, then the export (when given).

    Rows: the best monitored score, the best and last checkpoint paths (from the trainer's
    ``ModelCheckpoint`` callbacks), then, from ``export`` (``InverseTransferExport.summary``):
    the dense and original strides, which weights were exported, the equivalence verdict and
    largest relative error, each validation metric of the dense and the exported model, the
    export directory and its files.
    """
    rows = _checkpoint_rows(trainer, pl_module)
    if export:
        rows.extend(_export_rows(export))
    return rows


# Rows whose values are paths: printed whole below the table, where they can be copied (a
# table cell breaks them mid-word to fit its column).
PATH_ROWS = ("best checkpoint", "last checkpoint", "export dir", "  file")


def fit_summary_table(
    trainer: Trainer, pl_module: LightningModule, export: Mapping[str, Any] | None = None
) -> Table:
    """:func:`fit_summary_rows` as a ``rich`` table, without the paths (:func:`path_lines`)."""
    return rows_table(fit_summary_rows(trainer, pl_module, export))


def rows_table(rows: list[Row]) -> Table:
    """Summary rows other than :data:`PATH_ROWS` as a two-column ``rich`` table."""
    table = Table(title="dense-lightning fit summary", show_header=False, title_justify="left")
    table.add_column("what", style="bold cyan", no_wrap=True)
    table.add_column("value", overflow="fold")
    for what, value in rows:
        if what not in PATH_ROWS:
            table.add_row(what, value)
    return table


def path_lines(rows: list[Row]) -> list[str]:
    """The :data:`PATH_ROWS` of a summary as lines, each path whole; exported files by name."""
    lines = []
    files = [Path(value).name for what, value in rows if what == "  file"]
    for what, value in rows:
        if what in PATH_ROWS and what != "  file":
            lines.append(f"{what:<16} {value}")
            if what == "export dir" and files:
                lines.append(f"{'':<16} {', '.join(files)}")
    return lines


ScoreRow = tuple[str, dict[str, float], dict[str, float]]


def score_rows(
    export: Mapping[str, Any] | None,
    baselines: Mapping[str, Mapping[str, float]] | None = None,
    ceiling_stride: int | None = None,
) -> list[ScoreRow]:
    """Validation scores and cost per image, from the floor up to the ceiling.

    Returns:
        ``(model, metrics, cost)`` rows: the floor, the dense model, the exported model and
        the ceiling, each when known; metrics are unprefixed (``miou``), cost has ``gflops``
        and ``ms``.
    """
    export = export or {}
    baselines = baselines or {}
    metrics = export.get("metrics", {})
    cost = export.get("cost", {})
    dense = export.get("dense") or {}
    rows: list[ScoreRow] = []
    if "floor" in baselines:
        rows.append(("floor: background everywhere", dict(baselines["floor"]), {}))
    for name, label in (("dense", "output"), ("exported", "original")):
        values = {
            k.removeprefix(f"{name}_val_"): v
            for k, v in metrics.items()
            if k.startswith(f"{name}_val_")
        }
        stride = dense.get(f"{label}_stride")
        title = f"{name} model" + (f" (stride {stride})" if stride else "")
        if values or name in cost:
            rows.append((title, values, dict(cost.get(name, {}))))
    if "ceiling" in baselines:
        stride = f" {ceiling_stride} px" if ceiling_stride else ""
        rows.append((f"ceiling: best label per{stride} cell", dict(baselines["ceiling"]), {}))
    return rows


_CLOCKS = {"cpu": "CPU ms", "cuda": "GPU ms"}


def score_table(rows: list[ScoreRow]) -> Table:
    """:func:`score_rows` as a ``rich`` table: one column per metric, then the cost.

    Numbers never wrap or shorten: at 80 columns the model names wrap instead. The time
    column says its clock (``CPU ms``: this process's CPU time per image, see
    :func:`~dense_lightning.callbacks.measure_costs`).
    """
    names = sorted({key for _, values, _ in rows for key in values})
    clocks = {str(cost.get("clock")) for _, _, cost in rows if "ms" in cost}
    ms_header = _CLOCKS.get(clocks.pop(), "ms") if len(clocks) == 1 else "ms"
    cells = [
        [
            *(_number(values.get(n)) for n in names),
            f"{cost['gflops']:.2f}" if "gflops" in cost else "-",
            f"{cost['ms']:.1f}" if "ms" in cost else "-",
        ]
        for _, values, cost in rows
    ]
    headers = [*names, "GFLOPs", ms_header]
    table = Table(title="validation scores, cost per image", title_justify="left")
    table.add_column("model", style="bold cyan", overflow="fold", ratio=1)
    for i, header in enumerate(headers):
        width = max([len(header), *(len(row[i]) for row in cells)])
        table.add_column(header, justify="right", no_wrap=True, min_width=width)
    for (title, _, _), row in zip(rows, cells, strict=True):
        table.add_row(title, *row)
    return table


def print_summary(console: Console, rows: list[Row], scores: list[ScoreRow]) -> None:
    """Print the summary table, its paths (whole, for copying) and the score table."""
    console.print(rows_table(rows))
    lines = path_lines(rows)
    if lines:
        console.print("files", style="bold")
        for line in lines:
            # soft_wrap: no line breaks are inserted; a terminal wraps the line itself.
            console.print(line, soft_wrap=True, highlight=False)
    if scores:
        console.print(score_table(scores))


class FitSummary(Callback):
    """Print the fit summary and the score table when ``fit`` ends, on rank zero.

    The hook is ``teardown`` (stage ``"fit"``): Lightning calls it after every callback's
    ``on_fit_end``, so the export has been written whatever the order of the callbacks,
    and only when fit finished (an exception skips it). With a ``WandbLogger``, the best
    score and the equivalence error also go to the run summary (``best_<monitor>``,
    ``equivalence_max_rel_error``), where a sweep or a runs table can read them.

    The ``dense-lightning`` command links the run's ``InverseTransferExport`` and
    ``SegmentationBaselines`` callbacks to its summary; in your own code, pass them. The
    summary is also written to ``summary.json`` in the run's folder (see
    :mod:`~dense_lightning.callbacks.readme_demo`: the README's demo block comes from one).

    Args:
        export: the export callback whose :attr:`~InverseTransferExport.summary` is shown.
        baselines: reference scores (floor and ceiling) shown beside the models.
        console_width: width of the tables; default the terminal's.
        write_record: write ``summary.json`` into the run's folder.
    """

    def __init__(
        self,
        export: InverseTransferExport | None = None,
        baselines: SegmentationBaselines | None = None,
        console_width: int | None = None,
        write_record: bool = True,
    ) -> None:
        self.export = export
        self.baselines = baselines
        self.console_width = console_width
        self.write_record = write_record
        #: Rows of the last summary printed.
        self.rows: list[Row] = []
        #: Score rows of the last summary printed.
        self.scores: list[ScoreRow] = []

    @override
    def teardown(self, trainer: Trainer, pl_module: LightningModule, stage: str) -> None:
        if stage != "fit" or not trainer.is_global_zero:
            return
        export = self.export.summary if self.export is not None else None
        self.rows = fit_summary_rows(trainer, pl_module, export)
        baselines = self.baselines
        self.scores = score_rows(
            export,
            baselines.scores if baselines is not None else None,
            baselines.ceiling_stride if baselines is not None else None,
        )
        bar = trainer.progress_bar_callback
        if isinstance(bar, RichProgressBar):
            # Stop the live bar first (its own teardown may come later and does nothing
            # then), or it is redrawn below the table.
            bar.teardown(trainer, pl_module, stage)
        print_summary(Console(width=self.console_width), self.rows, self.scores)
        if self.write_record:
            write_record(run_directory(trainer), self.rows, self.scores)
        self._update_wandb_summary(trainer, pl_module, export)

    @staticmethod
    def _update_wandb_summary(
        trainer: Trainer, pl_module: LightningModule, export: Mapping[str, Any] | None
    ) -> None:
        values: dict[str, float] = {}
        checkpoint = trainer.checkpoint_callback
        monitor = getattr(checkpoint, "monitor", None) or getattr(pl_module, "monitor", None)
        best = getattr(checkpoint, "best_model_score", None)
        if monitor and best is not None:
            values[f"best_{monitor}"] = float(best)
        if export and "max_rel_error" in export.get("equivalence", {}):
            values["equivalence_max_rel_error"] = float(export["equivalence"]["max_rel_error"])
        for logger in trainer.loggers:
            if values and isinstance(logger, WandbLogger):
                logger.experiment.summary.update(values)
