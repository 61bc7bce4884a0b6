from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar

from dense_lightning.callbacks import InverseTransferExport
from dense_lightning.callbacks.progress import DenseProgressBar, default_callbacks
from dense_lightning.callbacks.summary import FitSummary, fit_summary_rows, fit_summary_table


def _fit(tmp_path, seg_task, seg_data, callbacks, **kwargs):
    torch.manual_seed(0)
    task = seg_task()
    trainer = Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        logger=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0, callbacks=callbacks, **kwargs,
    )  # fmt: skip
    trainer.fit(task, datamodule=seg_data())
    return trainer, task


def test_rows_from_checkpoint_and_export_summaries():
    export = InverseTransferExport()
    export.summary = {
        "dirpath": "/runs/exports",
        "files": ["/runs/exports/model_original.ckpt", "/runs/exports/equivalence.json"],
        "metrics": {"dense_val_miou": 0.51, "exported_val_miou": 0.51},
        "dense": {"output_stride": 8, "original_stride": 32},
        "equivalence": {"equivalent": True, "max_rel_error": 3e-7},
    }
    checkpoint = SimpleNamespace(
        monitor="val_miou", best_model_score=torch.tensor(0.625),
        best_model_path="/runs/best.ckpt", last_model_path="/runs/last.ckpt",
    )  # fmt: skip
    trainer = SimpleNamespace(
        checkpoint_callback=checkpoint, callbacks=[checkpoint, export], callback_metrics={}
    )
    rows = dict(fit_summary_rows(trainer, SimpleNamespace(monitor="val_miou")))
    assert rows["best val_miou"] == "0.6250"
    assert rows["best checkpoint"] == "/runs/best.ckpt"
    assert rows["last checkpoint"] == "/runs/last.ckpt"
    assert rows["output stride"] == "8 (dense) / 32 (exported original)"
    assert rows["exported model"].endswith("every 4th cell of the dense map: 16x fewer positions")
    assert rows["equivalence"] == "equivalent, max relative error 3.0e-07"
    assert rows["val_miou"] == "dense 0.5100 | exported 0.5100"
    assert rows["export dir"] == "/runs/exports"
    assert fit_summary_table(trainer, SimpleNamespace()).row_count == 10


def test_rows_without_checkpoint_or_export_fall_back_to_the_last_value():
    trainer = SimpleNamespace(
        checkpoint_callback=None, callbacks=[], callback_metrics={"val_map": torch.tensor(0.25)}
    )
    assert fit_summary_rows(trainer, SimpleNamespace(monitor="val_map")) == [
        ("last val_map", "0.2500")
    ]


def test_fit_prints_the_table_after_the_export(tmp_path, seg_task, seg_data, capsys):
    summary = FitSummary(console_width=200)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_miou", mode="max")
    # FitSummary first in the list: it still sees the export, which ends before teardown.
    export = InverseTransferExport(dirpath=str(tmp_path / "exports"))
    _fit(tmp_path, seg_task, seg_data, [summary, checkpoint, export], enable_progress_bar=False)
    out = capsys.readouterr().out
    assert "dense-lightning fit summary" in out
    rows = dict(summary.rows)
    assert rows["best checkpoint"].endswith(".ckpt") and rows["best checkpoint"] in out
    assert rows["equivalence"].startswith("equivalent, max relative error")
    assert rows["val_miou"].startswith("dense ") and "| exported " in rows["val_miou"]
    assert str(tmp_path / "exports") in out


def test_no_summary_when_fit_fails(tmp_path, seg_task, seg_data):
    class Boom(ModelCheckpoint):
        def on_train_epoch_end(self, trainer, pl_module):
            raise RuntimeError("boom")

    summary = FitSummary()
    with pytest.raises(RuntimeError, match="boom"):
        _fit(tmp_path, seg_task, seg_data, [summary, Boom()], enable_progress_bar=False)
    assert summary.rows == []


def test_progress_bar_shows_losses_and_the_monitored_metric(tmp_path, seg_task, seg_data):
    bar = DenseProgressBar()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_miou", mode="max")
    trainer, task = _fit(tmp_path, seg_task, seg_data, [bar, checkpoint])
    assert trainer.progress_bar_callback is bar
    shown = bar.get_metrics(trainer, task)
    assert set(shown) == {"loss", "val_loss", "val_miou", "best"}
    assert "val_pixel_acc" in trainer.progress_bar_metrics  # logged, just not shown
    custom = DenseProgressBar(metrics=["val_pixel_acc"], show_best=False)
    assert set(custom.get_metrics(trainer, task)) == {"val_pixel_acc"}


def test_default_callbacks_respect_the_config():
    kinds = [type(c) for c in default_callbacks({"callbacks": [ModelCheckpoint()]})]
    assert kinds == [DenseProgressBar, FitSummary]
    assert default_callbacks({"callbacks": [TQDMProgressBar(), FitSummary()]}) == []
    disabled = default_callbacks({"enable_progress_bar": False, "callbacks": None})
    assert [type(c) for c in disabled] == [FitSummary]
