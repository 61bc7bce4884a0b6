"""LineProgress: progress as plain lines, for output that goes to a file (batch jobs)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from typing import Any

from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import ProgressBar
from typing_extensions import override

from dense_lightning.callbacks.progress_values import shown_metrics

__all__ = ["LineProgress"]


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def _value(value: Any) -> str:
    number = float(value)
    return f"{number:.4f}" if math.isfinite(number) and abs(number) >= 1e-3 else f"{number:.3g}"


class LineProgress(ProgressBar):
    """One line every few training steps and one per validation, flushed as it is printed.

    A live progress bar redraws one line of a terminal; written to a file (a batch job's
    log), it shows nothing until the run ends. These lines are for such logs::

        epoch 0/5  step 10/96  loss 1.2034  0.41 s/step  elapsed 0:00:05
        epoch 0/5  validation  loss 1.0871  val_loss 1.1327  val_miou 0.2514  best 0.2514  ...

    with the same values as :class:`~dense_lightning.callbacks.DenseProgressBar`; evaluation
    outside ``fit`` gets a line every ``every_n_steps`` batches. Rank zero only.

    Args:
        every_n_steps: a training line every this many optimizer steps; default the
            trainer's ``log_every_n_steps``, when the logged loss is new.
        metrics: progress-bar keys to show instead of the default.
        show_best: add ``best`` for the best monitored score.
    """

    def __init__(
        self,
        every_n_steps: int | None = None,
        metrics: Sequence[str] | None = None,
        show_best: bool = True,
    ) -> None:
        super().__init__()
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1 or None, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self.metrics = list(metrics) if metrics is not None else None
        self.show_best = show_best
        self._enabled = True
        self._start = time.monotonic()
        self._mark = (self._start, 0)  # time and step of the previous training line

    @override
    def disable(self) -> None:
        self._enabled = False

    @override
    def enable(self) -> None:
        self._enabled = True

    @property
    def is_enabled(self) -> bool:
        """Whether lines are printed (Lightning disables the bar on ranks other than zero)."""
        return self._enabled

    @override
    def get_metrics(self, trainer: Trainer, pl_module: LightningModule) -> dict[str, Any]:
        items = super().get_metrics(trainer, pl_module)
        return shown_metrics(items, trainer, pl_module, self.metrics, self.show_best)

    def _every(self, trainer: Trainer) -> int:
        return self.every_n_steps or max(1, int(trainer.log_every_n_steps))

    def _emit(self, text: str) -> None:
        if self._enabled:
            print(f"{text}  elapsed {_clock(time.monotonic() - self._start)}", flush=True)

    def _epoch(self, trainer: Trainer) -> str:
        last = trainer.max_epochs - 1 if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        return f"epoch {trainer.current_epoch}/{last}"

    def _values(self, trainer: Trainer, pl_module: LightningModule, validation: bool) -> str:
        # Step lines keep to the training values; validation lines add the rest.
        shown = self.get_metrics(trainer, pl_module)
        if not validation:
            shown = {k: v for k, v in shown.items() if not k.startswith("val_") and k != "best"}
        return "  ".join(f"{key} {_value(value)}" for key, value in shown.items())

    @override
    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._start = time.monotonic()
        self._mark = (self._start, trainer.global_step)

    @override
    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, index: int
    ) -> None:
        step = trainer.global_step
        if step == self._mark[1] or step % self._every(trainer) != 0:
            return
        now = time.monotonic()
        pace = (now - self._mark[0]) / (step - self._mark[1])
        self._mark = (now, step)
        total = trainer.estimated_stepping_batches
        total_text = str(int(total)) if math.isfinite(total) else "?"
        values = self._values(trainer, pl_module, validation=False)
        self._emit(f"{self._epoch(trainer)}  step {step}/{total_text}  {values}  {pace:.2f} s/step")

    @override
    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            values = self._values(trainer, pl_module, validation=True)
            self._emit(f"{self._epoch(trainer)}  validation  {values}")

    def _eval_line(self, stage: str, batch_index: int, totals: Sequence[float], index: int) -> None:
        done = batch_index + 1
        total = totals[index] if index < len(totals) else math.inf
        every = self.every_n_steps or 50
        if done % every == 0 or done == total:
            total_text = str(int(total)) if math.isfinite(total) else "?"
            self._emit(f"{stage}  batch {done}/{total_text}")

    @override
    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if trainer.state.fn != "fit":
            self._eval_line("validation", batch_idx, trainer.num_val_batches, dataloader_idx)

    @override
    def on_test_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_line("test", batch_idx, trainer.num_test_batches, dataloader_idx)

    @override
    def on_predict_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        self._eval_line("predict", batch_idx, trainer.num_predict_batches, dataloader_idx)
