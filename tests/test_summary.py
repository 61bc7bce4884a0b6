import io
from types import SimpleNamespace

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from rich.console import Console

from dense_lightning.callbacks import (
    InterruptCheckpoint,
    InverseTransferExport,
    LineProgress,
    SegmentationBaselines,
    progress,
)
from dense_lightning.callbacks.baselines import block_majority, one_hot_logits
from dense_lightning.callbacks.progress import DenseProgressBar, default_callbacks
from dense_lightning.callbacks.summary import (
    FitSummary,
    fit_summary_rows,
    fit_summary_table,
    path_lines,
    print_summary,
    score_rows,
    score_table,
)


def _fit(tmp_path, seg_task, seg_data, callbacks, **kwargs):
    torch.manual_seed(0)
    task = seg_task()
    settings = dict(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        logger=False, enable_model_summary=False, default_root_dir=tmp_path,
        num_sanity_val_steps=0, callbacks=callbacks,
    )  # fmt: skip
    trainer = Trainer(**{**settings, **kwargs})
    trainer.fit(task, datamodule=seg_data())
    return trainer, task


EXPORT = {
    "dirpath": "/runs/exports",
    "files": ["/runs/exports/model_original.ckpt", "/runs/exports/equivalence.json"],
    "weights": {
        "kind": "best", "checkpoint": "/runs/ckpt/epoch=3.ckpt", "note": "the best val_miou "
        "checkpoint", "epoch": 3, "global_step": 128,
    },
    "approximate": False,
    "metrics": {"dense_val_miou": 0.51, "exported_val_miou": 0.42},
    "cost": {"dense": {"gflops": 1.5, "ms": 20.0}, "exported": {"gflops": 0.25, "ms": 4.0}},
    "dense": {"output_stride": 8, "original_stride": 32},
    "equivalence": {"equivalent": True, "max_rel_error": 3e-7},
}  # fmt: skip


def test_rows_from_checkpoint_and_export_summaries():
    best = SimpleNamespace(
        monitor="val_miou", best_model_score=torch.tensor(0.625),
        best_model_path="/runs/best.ckpt", last_model_path="",
    )  # fmt: skip
    last = SimpleNamespace(monitor=None, best_model_path="/runs/last.ckpt", last_model_path="")
    trainer = SimpleNamespace(
        checkpoint_callback=best, checkpoint_callbacks=[best, last], callback_metrics={}
    )
    rows = dict(fit_summary_rows(trainer, SimpleNamespace(monitor="val_miou"), EXPORT))
    assert rows["best val_miou"] == "0.6250"
    assert rows["best checkpoint"] == "/runs/best.ckpt"
    assert rows["last checkpoint"] == "/runs/last.ckpt (the final state)"
    assert rows["output stride"] == "8 (dense) / 32 (exported original)"
    assert rows["exported model"].endswith("every 4th cell of the dense map: 16x fewer positions")
    assert rows["exported weights"] == (
        "best: the best val_miou checkpoint (epoch=3.ckpt, epoch 3, step 128)"
    )
    assert rows["equivalence"] == "equivalent, max relative error 3.0e-07"
    assert rows["val_miou"] == "dense 0.5100 | exported 0.4200"
    assert rows["export dir"] == "/runs/exports"
    # Paths are printed whole below the table, the exported files by name under their folder.
    assert fit_summary_table(trainer, SimpleNamespace(), EXPORT).row_count == 6
    assert path_lines(fit_summary_rows(trainer, SimpleNamespace(), EXPORT)) == [
        "best checkpoint  /runs/best.ckpt",
        "last checkpoint  /runs/last.ckpt (the final state)",
        "export dir       /runs/exports",
        "                 model_original.ckpt, equivalence.json",
    ]
    approximate = {**EXPORT, "approximate": True, "equivalence": {"max_rel_error": 4e-4}}
    rows = dict(fit_summary_rows(trainer, SimpleNamespace(), approximate))
    assert rows["equivalence"] == "approximate (strict=False), max relative error 4.0e-04"
    assert "exported trained" not in rows  # not recorded: a module without the lattice term


def test_the_summary_says_how_the_export_was_trained():
    trainer = SimpleNamespace(
        checkpoint_callback=None, checkpoint_callbacks=[], callback_metrics={}
    )
    rows = dict(fit_summary_rows(trainer, SimpleNamespace(), {**EXPORT, "lattice_loss_weight": 1}))
    assert rows["exported trained"].startswith("with its own loss in every dense step")
    assert "lattice_loss_weight=1" in rows["exported trained"]
    rows = dict(fit_summary_rows(trainer, SimpleNamespace(), {**EXPORT, "lattice_loss_weight": 0}))
    assert rows["exported trained"].startswith("without its own loss (lattice_loss_weight=0)")


def test_score_rows_go_from_floor_to_ceiling_with_costs():
    baselines = {"floor": {"miou": 0.2}, "ceiling": {"miou": 0.9}}
    rows = score_rows(EXPORT, baselines, ceiling_stride=32)
    assert [title for title, _, _ in rows] == [
        "floor: background everywhere", "dense model (stride 8)",
        "exported model (stride 32)", "ceiling: best label per 32 px cell",
    ]  # fmt: skip
    assert rows[1][1:] == ({"miou": 0.51}, {"gflops": 1.5, "ms": 20.0})
    assert rows[2][1:] == ({"miou": 0.42}, {"gflops": 0.25, "ms": 4.0})
    table = score_table(rows)
    assert [c.header for c in table.columns] == ["model", "miou", "GFLOPs", "ms"]
    timed = {k: {**v, "clock": "cpu"} for k, v in EXPORT["cost"].items()}
    table = score_table(score_rows({**EXPORT, "cost": timed}))
    assert table.columns[-1].header == "CPU ms"  # the clock is named: this process's CPU time
    assert score_rows(None) == []


def test_rows_without_checkpoint_or_export_fall_back_to_the_last_value():
    trainer = SimpleNamespace(
        checkpoint_callback=None, checkpoint_callbacks=[],
        callback_metrics={"val_map": torch.tensor(0.25)},
    )  # fmt: skip
    assert fit_summary_rows(trainer, SimpleNamespace(monitor="val_map")) == [
        ("last val_map", "0.2500")
    ]


def test_fit_prints_the_table_after_the_export(tmp_path, seg_task, seg_data, capsys):
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_miou", mode="max")
    export = InverseTransferExport(dirpath=str(tmp_path / "exports"))
    baselines = SegmentationBaselines()
    # FitSummary first in the list: it still sees the export, which ends before teardown.
    summary = FitSummary(export=export, baselines=baselines, console_width=200)
    callbacks = [summary, checkpoint, export, baselines]
    data = lambda: seg_data(image_size=96)  # noqa: E731 - several 32 px cells per image
    _fit(tmp_path, seg_task, data, callbacks, enable_progress_bar=False)
    out = capsys.readouterr().out
    assert "dense-lightning fit summary" in out and "validation scores" in out
    rows = dict(summary.rows)
    assert rows["best checkpoint"].endswith(".ckpt") and rows["best checkpoint"] in out
    assert rows["exported weights"].startswith("best: the best val_miou checkpoint")
    assert rows["equivalence"].startswith("equivalent, max relative error")
    assert rows["exported trained"].startswith("with its own loss in every dense step")
    assert rows["val_miou"].startswith("dense ") and "| exported " in rows["val_miou"]
    assert str(tmp_path / "exports") in out
    titles = [title for title, _, _ in summary.scores]
    assert titles[0].startswith("floor") and titles[-1] == "ceiling: best label per 32 px cell"
    floor, ceiling = summary.scores[0][1]["miou"], summary.scores[-1][1]["miou"]
    assert 0 < floor < ceiling <= 1
    assert summary.scores[1][2]["gflops"] > summary.scores[2][2]["gflops"] > 0  # dense costs more


def test_baselines_from_the_targets():
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :3, :3] = 2  # most of the top-left 4x4 block
    mask[0, 6, 6] = 255  # ignored pixels do not vote
    mask[0, 5:, 5:][mask[0, 5:, 5:] == 0] = 1  # 8 of 16 in the last block, plus one ignored
    labels = block_majority(mask, num_classes=3, stride=4)
    assert labels[0, 0, 0] == 2 and labels[0, 3, 3] == 2 and labels[0, 0, 7] == 0
    assert labels[0, 7, 7] == 1  # 8 votes for 1 against 7 for 0: the ignored pixel abstained
    assert one_hot_logits(labels, 3).argmax(1).equal(labels)
    with pytest.raises(ValueError):
        SegmentationBaselines(stride=0)


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


def test_default_callbacks_respect_the_config(monkeypatch):
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    export, baselines = InverseTransferExport(), SegmentationBaselines()
    extra = default_callbacks({"callbacks": [ModelCheckpoint(), export, baselines]})
    assert [type(c) for c in extra] == [DenseProgressBar, InterruptCheckpoint, FitSummary]
    assert extra[2].export is export and extra[2].baselines is baselines  # linked, not searched
    listed = FitSummary()
    interrupt = InterruptCheckpoint()
    assert default_callbacks({"callbacks": [TQDMProgressBar(), listed, export, interrupt]}) == []
    assert listed.export is export and listed.baselines is None
    disabled = default_callbacks({"enable_progress_bar": False, "callbacks": None})
    assert [type(c) for c in disabled] == [InterruptCheckpoint, FitSummary]


def test_at_80_columns_numbers_and_paths_stay_whole():
    run = "/home/someone/projects/dense-lightning/lightning_logs/version_12"
    paths = [f"{run}/checkpoints/best-epoch=5-val_map=0.313.ckpt", f"{run}/exports"]
    rows = [
        ("best val_map", "0.3125"), ("best checkpoint", paths[0]),
        ("last checkpoint", f"{run}/checkpoints/last.ckpt (the final state)"),
        ("exported weights", "best: the best val_map checkpoint (epoch 5, step 96)"),
        ("export dir", paths[1]), ("  file", f"{run}/exports/model_original.ckpt"),
    ]  # fmt: skip
    values = {"map": 0.3125, "map_50": 0.6102, "map_75": 0.2901, "mar_100": 0.4123, "loss": 1.2345}
    export = {
        "metrics": {f"{n}_val_{k}": v for n in ("dense", "exported") for k, v in values.items()},
        "cost": {
            "dense": {"gflops": 2.98, "ms": 176.4, "clock": "cpu"},
            "exported": {"gflops": 0.73, "ms": 52.8, "clock": "cpu"},
        },
        "dense": {"output_stride": 8, "original_stride": 32},
    }
    scores = score_rows(export, {"floor": {"map": 0.0}, "ceiling": {"map": 0.9}}, 32)
    out = io.StringIO()
    print_summary(Console(file=out, width=80), rows, scores)
    lines = out.getvalue().splitlines()
    assert "…" not in out.getvalue() and max(len(line) for line in lines if "│" in line) <= 80
    for number in ("0.3125", "0.6102", "0.2901", "0.4123", "1.2345", "176.4", "52.8", "0.9000"):
        assert any(number in line for line in lines), number
    for path in paths:  # each on one line, where it can be copied
        assert any(path in line for line in lines), path
    assert any("model_original.ckpt" in line for line in lines)


def test_the_best_shown_is_never_a_validation_behind(tmp_path, seg_task, seg_data):
    seen = []

    class Probe(Callback):
        # Runs where the bar redraws at the end of an epoch: before ModelCheckpoint, which
        # records a new best at the very end of the epoch.
        def on_train_epoch_end(self, trainer, pl_module):
            shown = bar.get_metrics(trainer, pl_module)
            seen.append((float(trainer.callback_metrics["val_miou"]), shown.get("best")))

    bar = DenseProgressBar()
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_miou", mode="max")
    _fit(tmp_path, seg_task, seg_data, [bar, Probe(), checkpoint], max_epochs=3)
    assert len(seen) == 3
    for epoch, (_, best) in enumerate(seen):
        assert best == round(max(score for score, _ in seen[: epoch + 1]), 4)


def test_line_progress_prints_steps_and_validations(tmp_path, seg_task, seg_data, capsys):
    lines = LineProgress(every_n_steps=1)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", monitor="val_miou", mode="max")
    trainer, task = _fit(
        tmp_path, seg_task, seg_data, [lines, checkpoint], max_epochs=2, limit_train_batches=2
    )
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    steps = [line for line in out if " step " in line]
    validations = [line for line in out if " validation " in line]
    assert [line.split()[3] for line in steps] == ["1/4", "2/4", "3/4", "4/4"]
    assert [line.split()[1] for line in validations] == ["0/1", "1/1"]
    assert all("loss " in line and "elapsed " in line for line in out)
    assert not any("val_" in line for line in steps)  # the last validation is on its own line
    assert "val_miou " in validations[0] and "best " in validations[0]
    trainer.validate(task, datamodule=seg_data(), verbose=False)  # outside fit: batches
    assert capsys.readouterr().out.splitlines()[0].startswith("validation  batch 1/1  elapsed ")
    with pytest.raises(ValueError, match="every_n_steps"):
        LineProgress(every_n_steps=0)


def test_lines_instead_of_a_live_bar_when_the_output_is_a_file(monkeypatch):
    monkeypatch.setattr(progress, "_interactive", lambda: False)
    assert [type(c) for c in default_callbacks({})] == [
        LineProgress, InterruptCheckpoint, FitSummary
    ]  # fmt: skip
    monkeypatch.setattr(progress, "_interactive", lambda: True)
    assert isinstance(default_callbacks({})[0], DenseProgressBar)
    assert not any(
        isinstance(c, InterruptCheckpoint)
        for c in default_callbacks({"enable_checkpointing": False})
    )
