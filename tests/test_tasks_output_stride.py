"""The output stride at run time: resuming fit keeps it, validate/test/predict may change it."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Trainer

from dense_lightning.data import SyntheticSegmentationDataModule
from dense_lightning.errors import ConfigurationError
from dense_lightning.models import DENSE_STATE_KEY
from dense_lightning.tasks import SemanticSegmentationTask

ROOT = Path(__file__).resolve().parents[1]


def _task(output_stride):
    torch.manual_seed(0)
    return SemanticSegmentationTask(
        backbone="test_resnet", output_stride=output_stride, head_channels=16
    )


def _data():
    return SyntheticSegmentationDataModule(
        image_size=64, num_train=4, num_val=4, batch_size=2, num_workers=0
    )


def _trainer(tmp_path, **kwargs):
    defaults = dict(
        accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
        enable_model_summary=False, enable_checkpointing=False, default_root_dir=tmp_path,
    )  # fmt: skip
    return Trainer(**{**defaults, **kwargs})


@pytest.fixture
def checkpoint_16(tmp_path):
    trainer = _trainer(tmp_path, max_steps=1, limit_val_batches=0)
    trainer.fit(_task(16), datamodule=_data())
    path = tmp_path / "os16.ckpt"
    trainer.save_checkpoint(path)
    return path


def test_checkpoint_records_structure_not_run_time_stride(checkpoint_16):
    checkpoint = torch.load(checkpoint_16, weights_only=False)
    assert checkpoint[DENSE_STATE_KEY]["model"]["output_stride"] == 16
    # Left in the hyperparameters, LightningCLI would put it back over the command line's.
    assert "output_stride" not in checkpoint["hyper_parameters"]
    restored = SemanticSegmentationTask.load_from_checkpoint(checkpoint_16)
    assert restored.model.dense_info.output_stride == 16
    assert restored.hparams.output_stride == 16


def test_resuming_fit_at_another_stride_is_an_error(checkpoint_16, tmp_path):
    trainer = _trainer(tmp_path, max_steps=2, limit_val_batches=0)
    with pytest.raises(ConfigurationError, match=r"trained at output_stride=16.*resumes at"):
        trainer.fit(_task(8), datamodule=_data(), ckpt_path=checkpoint_16)
    assert trainer.global_step == 0


def test_validate_at_another_stride_converts_the_same_weights(checkpoint_16, tmp_path):
    reference = SemanticSegmentationTask.load_from_checkpoint(checkpoint_16).eval()
    task = _task(4)
    _trainer(tmp_path, limit_val_batches=1).validate(task, _data(), ckpt_path=checkpoint_16)
    assert task.model.dense_info.output_stride == 4
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        at16, at4 = reference.model(images), task.eval().model(images)
    # The same network: stride 4 sampled every 4th cell is the stride-16 map.
    torch.testing.assert_close(at4[..., ::4, ::4], at16, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_command_line_output_stride_wins_over_checkpoint(tmp_path):
    config = ROOT / "configs" / "segmentation" / "quickstart.yaml"
    small = [
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.enable_progress_bar=false",
        "--data.init_args.num_train=4", "--data.init_args.num_val=4",
        "--data.init_args.image_size=64", "--data.init_args.batch_size=2",
        "--model.init_args.backbone=test_resnet", "--model.init_args.head_channels=16",
    ]  # fmt: skip
    cli = [sys.executable, "-m", "dense_lightning"]

    def run(*args):
        result = subprocess.run(
            [*cli, *args], cwd=tmp_path, capture_output=True, text=True, timeout=600
        )
        assert result.returncode == 0, result.stderr[-3000:]
        return result.stdout + result.stderr

    run("fit", "-c", str(config), *small, "--trainer.max_steps=2", "--trainer.max_epochs=1",
        "--model.init_args.output_stride=16")  # fmt: skip
    checkpoint = next(tmp_path.rglob("last.ckpt"))
    out = run("validate", "-c", str(config), *small, f"--ckpt_path={checkpoint}",
              "--trainer.limit_val_batches=2", "--model.init_args.output_stride=4")  # fmt: skip
    assert "trained at output_stride=16; running validate at output_stride=4" in out
    assert "val_miou" in out
