"""InterruptCheckpoint: Ctrl+C during fit leaves a checkpoint to resume, and says how."""

import signal

import pytest
import torch
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import ModelCheckpoint

from dense_lightning.callbacks import InterruptCheckpoint


class InterruptAt(Callback):
    """Ctrl+C when a batch starts after ``step`` optimizer steps."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise KeyboardInterrupt


@pytest.fixture
def sigint_restored():
    # Lightning ignores SIGINT while it shuts down after an interrupt; give pytest its handler.
    handler = signal.getsignal(signal.SIGINT)
    yield
    signal.signal(signal.SIGINT, handler)


def _fit(tmp_path, seg_task, seg_data, callbacks, **kwargs):
    torch.manual_seed(0)
    ckpt_path = kwargs.pop("ckpt_path", None)
    settings = dict(
        accelerator="cpu", devices=1, max_epochs=3, logger=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, num_sanity_val_steps=0,
        callbacks=callbacks,
    )  # fmt: skip
    trainer = Trainer(**{**settings, **kwargs})
    task = seg_task()
    trainer.fit(task, datamodule=seg_data(), ckpt_path=ckpt_path)
    return trainer, task


def test_an_interrupt_before_the_first_validation_saves_a_checkpoint(
    tmp_path, seg_task, seg_data, capsys, sigint_restored
):
    interrupt = InterruptCheckpoint(command=["dense-lightning", "fit", "-c", "my config.yaml"])
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="last")
    with pytest.raises(SystemExit) as exit_info:
        _fit(tmp_path, seg_task, seg_data, [interrupt, checkpoint, InterruptAt(1)])
    assert exit_info.value.code == 1  # Lightning's status after an interrupt
    saved = tmp_path / "ckpt" / "interrupted.ckpt"  # beside ModelCheckpoint's files
    assert interrupt.saved == saved and saved.is_file()
    assert not (tmp_path / "ckpt" / "last.ckpt").exists()  # nothing else would be there yet
    assert torch.load(saved, weights_only=False)["global_step"] == 1
    err = capsys.readouterr().err
    assert f"interrupted at epoch 0, step 1; saved {saved}" in err
    assert f"Resume with: dense-lightning fit -c 'my config.yaml' --ckpt_path {saved}" in err
    # Resumed to the end, the run's latest state is last.ckpt again: the file goes.
    trainer, _ = _fit(
        tmp_path, seg_task, seg_data, [InterruptCheckpoint(), checkpoint], ckpt_path=saved
    )
    assert trainer.global_step == 6 and not saved.exists()


def test_nothing_is_saved_before_the_first_step_or_for_a_crash(
    tmp_path, seg_task, seg_data, capsys, sigint_restored
):
    interrupt = InterruptCheckpoint()
    with pytest.raises(SystemExit):
        _fit(tmp_path, seg_task, seg_data, [interrupt, InterruptAt(0)])
    assert interrupt.saved is None and "nothing to resume" in capsys.readouterr().err

    class Crash(Callback):
        def on_train_batch_end(self, *args):
            raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        _fit(tmp_path, seg_task, seg_data, [interrupt, Crash()])
    assert interrupt.saved is None and not list(tmp_path.rglob("interrupted.ckpt"))
    assert interrupt.resume_hint(tmp_path / "x.ckpt").startswith("Resume with trainer.fit(")
