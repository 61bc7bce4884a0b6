"""The dense-lightning command: errors, resuming, re-runs, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from dense_lightning.equivalent import is_dense

SMALL = [
    "--data.init_args.num_train", "8", "--data.init_args.num_val", "4",
    "--data.init_args.batch_size", "4", "--model.init_args.backbone", "test_resnet",
    "--model.init_args.head_channels", "16", "--model.init_args.warmup_steps", "0",
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (["--model.init_args.backbone", "resnet181"], "Unknown backbone 'resnet181'"),
        (["--model.init_args.backbone", "resnet181"], "resnet18"),  # a close match is named
        (["--model.init_args.output_stride", "3"], "power of two"),
        (["--model.init_args.output_stride", "64"], "not reachable"),
        (["--model.init_args.optimizer", "rmsprop"], "rmsprop"),
    ],
)
def test_bad_values_fail_before_training(run_cli, quickstart, tmp_path, capsys, override, message):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", quickstart, *SMALL, *override)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "lightning_logs").exists()


def test_resume_continues_dense(run_cli, quickstart, tmp_path, capsys):
    first = run_cli("fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "1")
    assert first.trainer.global_step == 2
    out = capsys.readouterr().out
    assert "fit summary" in out and "exported model" in out
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    # Resume with a config that no longer asks for a dense model: the checkpoint decides.
    second = run_cli(
        "fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "2",
        "--model.init_args.output_stride", "null", "--ckpt_path", last,
    )  # fmt: skip
    assert second.model.model.dense_info.output_stride == 8
    assert second.trainer.global_step == 4 and second.trainer.current_epoch == 2
    validate = run_cli("validate", "--config", quickstart, *SMALL, "--ckpt_path", last)
    assert validate.model.model.dense_info.output_stride == 8


def test_rerun_in_the_same_directory_and_one_cpu_ddp(run_cli, quickstart, tmp_path):
    args = ["fit", "--config", quickstart, *SMALL, "--trainer.logger", "false"]
    args += ["--trainer.max_steps", "1", "--trainer.limit_val_batches", "1"]
    for _ in range(2):  # the second run overwrites config.yaml instead of failing
        cli = run_cli(*args)
    assert (tmp_path / "config.yaml").is_file()
    # The config's strategy: ddp + devices: auto is one process on a CPU, without SyncBatchNorm.
    assert isinstance(cli.trainer.strategy, DDPStrategy) and cli.trainer.world_size == 1
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in cli.model.modules())
    assert is_dense(cli.model.model)


def _subprocess_env():
    # One thread per process: two DDP ranks share the machine's cores.
    return {**os.environ, "WANDB_MODE": "offline", "OMP_NUM_THREADS": "1"}


def test_python_dash_m_entry_point(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dense_lightning", "fit", "--help"],
        cwd=tmp_path, capture_output=True, text=True, env=_subprocess_env(), timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "--model" in result.stdout and "--ckpt_path" in result.stdout


@pytest.mark.slow
def test_two_process_cpu_ddp_fit_exports(tmp_path, quickstart):
    command = [
        sys.executable, "-m", "dense_lightning", "fit", "--config", str(quickstart), *SMALL,
        "--trainer.devices", "2", "--trainer.max_epochs", "1",
    ]  # fmt: skip
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env=_subprocess_env(), timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr
    assert result.stdout.count("fit summary") == 1  # rank zero only
    exports = Path(tmp_path, "lightning_logs", "version_0", "exports")
    names = sorted(p.name for p in exports.iterdir())
    assert names == ["backbone_test_resnet.pth", "equivalence.json", "model_original.ckpt"]
    report = json.loads((exports / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"]
