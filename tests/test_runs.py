"""Run folders before a run starts: the latest run's last checkpoint, the run to continue."""

import os
import time

from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger, WandbLogger

from dense_lightning.cli.runs import RunLayout, continue_run


def _touch(path, age=0.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    stamp = time.time() - age
    os.utime(path, (stamp, stamp))
    return path


def test_last_is_the_newest_latest_state_over_every_run(tmp_path):
    layout = RunLayout.of(True, tmp_path)  # Lightning's default logger
    assert layout.root == tmp_path / "lightning_logs" and layout.last_checkpoint() is None
    runs = tmp_path / "lightning_logs"
    _touch(runs / "version_0" / "checkpoints" / "last.ckpt", age=30)
    interrupted = _touch(runs / "version_1" / "checkpoints" / "interrupted.ckpt", age=10)
    _touch(runs / "version_1" / "checkpoints" / "best-epoch=3.ckpt")  # newer, but a best one
    _touch(runs / "version_2" / "events.out")  # a run that saved nothing
    assert layout.last_checkpoint() == interrupted
    newer = _touch(runs / "version_0" / "checkpoints" / "last-v1.ckpt")
    assert layout.last_checkpoint() == newer
    assert layout.version_of(newer) == "version_0"
    assert layout.version_of(tmp_path / "elsewhere" / "last.ckpt") is None
    assert layout.version_of(runs / "last.ckpt") is None  # not inside a run folder


def test_layouts_of_loggers_and_of_no_logger(tmp_path):
    logger = CSVLogger(save_dir=tmp_path / "logs", name="exp")
    assert RunLayout.of([logger], None).root == tmp_path / "logs" / "exp"
    wandb = WandbLogger(project="proj", save_dir=str(tmp_path), offline=True)
    assert RunLayout.of(wandb, None).root == tmp_path / "proj"
    bare = RunLayout.of(False, tmp_path)
    assert bare.root is None and bare.checkpoint_dirs() == [tmp_path / "checkpoints"]
    assert bare.version_of(tmp_path / "checkpoints" / "last.ckpt") is None


def test_a_logger_continues_a_run_unless_it_chose_its_own(tmp_path):
    tensorboard = TensorBoardLogger(save_dir=tmp_path)
    assert continue_run(tensorboard, "version_3") and tensorboard.version == 3
    assert tensorboard.log_dir == str(tmp_path / "lightning_logs" / "version_3")
    named = CSVLogger(save_dir=tmp_path, version="mine")
    assert not continue_run(named, "version_3") and named.version == "mine"
    wandb = WandbLogger(project="proj", save_dir=str(tmp_path), offline=True)
    assert continue_run(wandb, "abc123") and wandb.version == "abc123"
    assert not continue_run(WandbLogger(project="p", id="other", offline=True), "abc123")
    assert not list(tmp_path.iterdir())  # nothing was created by choosing
