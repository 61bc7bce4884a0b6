"""The README's demo block is generated from a run's summary record, never typed."""

import json
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dense_lightning.callbacks import FitSummary, InverseTransferExport, SegmentationBaselines
from dense_lightning.callbacks.readme_demo import BEGIN, END, main, readme_block, replace_block
from dense_lightning.callbacks.summary_record import read_record

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RECORD = REPO / "docs" / "demo_summary.json"


def test_the_readme_keeps_its_demo_block_between_markers():
    text = README.read_text()
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    with pytest.raises(ValueError, match="no demo block"):
        replace_block("no markers here", "x")


def test_the_readme_demo_block_is_the_demo_record():
    # The record is the demo run's summary.json, copied by the readme_demo command.
    assert RECORD.is_file(), "make demo, then python -m dense_lightning.callbacks.readme_demo <run>"
    text = README.read_text()
    rows = dict(read_record(RECORD)["rows"])
    assert "lattice_loss_weight" in rows["exported trained"]  # how the export was trained
    assert f"exported trained │ {rows['exported trained']}" in text
    assert replace_block(text, readme_block(read_record(RECORD))) == text


def test_a_fit_writes_the_record_that_the_block_is_made_from(tmp_path, seg_task, seg_data, capsys):
    torch.manual_seed(0)
    export = InverseTransferExport()
    baselines = SegmentationBaselines()
    summary = FitSummary(export=export, baselines=baselines, console_width=120)
    trainer = Trainer(
        accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=1,
        logger=False, enable_model_summary=False, enable_progress_bar=False,
        default_root_dir=tmp_path, num_sanity_val_steps=0,
        callbacks=[ModelCheckpoint(monitor="val_miou", mode="max"), export, baselines, summary],
    )  # fmt: skip
    trainer.fit(seg_task(), datamodule=seg_data(image_size=64))
    printed = capsys.readouterr().out
    record = read_record(tmp_path)  # summary.json in the run's folder
    assert [tuple(r) for r in record["rows"]] == summary.rows
    block = readme_block(record)
    rows = dict(summary.rows)
    assert f"exported weights │ {rows['exported weights']}" in block
    assert f"exported trained │ {rows['exported trained']}" in block
    for title, values, cost in summary.scores:
        line = next(line for line in block.splitlines() if line.startswith(f" {title}"))
        assert all(f"{v:.4f}" in line and f"{v:.4f}" in printed for v in values.values())
        assert "gflops" not in cost or f"{cost['gflops']:.2f}" in line
        assert "ms" not in line  # this machine's times stay out of the README
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{BEGIN}\n```\nold numbers\n```\n{END}\nrest\n")
    copy = tmp_path / "docs" / "demo_summary.json"
    main([str(tmp_path), "--readme", str(readme), "--record", str(copy)])
    assert readme.read_text() == f"intro\n{BEGIN}\n```\n{block}\n```\n{END}\nrest\n"
    assert json.loads(copy.read_text()) == record
