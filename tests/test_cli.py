"""The dense-lightning command: errors, resuming, re-runs, DDP."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from lightning.pytorch.strategies import DDPStrategy
from torch import nn

from dense_lightning.cli import one_line, user_error
from dense_lightning.cli.messages import error_text
from dense_lightning.data.verify import DatasetError
from dense_lightning.equivalent import get_dense_info, is_dense
from dense_lightning.errors import ConfigurationError
from dense_lightning.tasks import SemanticSegmentationTask

REPO = Path(__file__).resolve().parents[1]

SMALL = [
    "--data.init_args.num_train", "8", "--data.init_args.num_val", "4",
    "--data.init_args.batch_size", "4", "--data.init_args.image_size", "64",
    "--model.init_args.backbone", "test_resnet",
    "--model.init_args.head_channels", "16", "--model.init_args.warmup_steps", "0",
    "--trainer.accelerator", "cpu", "--trainer.enable_progress_bar", "false",
]  # fmt: skip


@pytest.mark.parametrize(
    ("override", "message"),
    [
        (
            ["--model.init_args.output_stride", "eight"],
            "output_stride: expected int or null, got 'eight'",
        ),
        (["--model.init_args.optimizer", "rmsprop"], "got 'rmsprop'"),
        (["--model.init_args.checkpoint_path", "missing.pth"], "no such file: missing.pth"),
        (["--model.init_args.fancy", "1"], "unknown option 'fancy'"),
        (["--model.init_args.backbone", "resnet181"], "Did you mean: resnet18"),
        (["--model.init_args.output_stride", "3"], "power of two"),
        (["--model.init_args.output_stride", "64"], "not reachable"),
    ],
)
def test_bad_values_fail_before_training_in_one_line(
    run_cli, quickstart, tmp_path, capsys, override, message
):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("fit", "--config", quickstart, *SMALL, *override)
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and errors[0].startswith("dense-lightning: error: ")
    assert message in errors[0]
    assert not (tmp_path / "lightning_logs").exists()


def test_an_ordinary_bug_keeps_its_traceback(run_cli, quickstart, monkeypatch):
    def broken(self):
        raise ValueError("a bug in a task")

    monkeypatch.setattr(SemanticSegmentationTask, "configure_losses", broken)
    with pytest.raises(ValueError) as error:
        run_cli("fit", "--config", quickstart, *SMALL)
    assert user_error(error.value) is None
    assert any("a bug in a task" in str(link) for link in _links(error.value))


def _links(error):
    while error is not None:
        yield error
        error = error.__cause__ or error.__context__


def _command(tmp_path, *args, prelude=""):
    """``dense-lightning <args>`` in a subprocess; ``prelude`` runs first (to break things)."""
    code = f"{prelude}\nfrom dense_lightning.cli import main\nmain()"
    return subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        cwd=tmp_path, capture_output=True, text=True, env=_subprocess_env(), timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_the_command_prints_one_error_line_or_a_whole_traceback(tmp_path, quickstart):
    bad = _command(tmp_path, "fit", "--config", quickstart, "--model.init_args.output_stride=eight")
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.splitlines() == [
        "dense-lightning: error: output_stride: expected int or null, got 'eight' "
        "(see dense-lightning fit --help)"
    ]
    missing = _command(tmp_path, "fit", "-c", quickstart, "--model.init_args.checkpoint_path=w.pth")
    errors = [line for line in missing.stderr.splitlines() if "error" in line]
    assert missing.returncode == 2 and len(errors) == 1 and "no such file: w.pth" in errors[0]
    assert "Traceback" not in missing.stderr
    prelude = (
        "from dense_lightning.tasks import SemanticSegmentationTask as T\n"
        "def broken(self): raise ValueError('a bug in a task')\n"
        "T.configure_losses = broken"
    )
    bug = _command(tmp_path, "fit", "--config", quickstart, *SMALL, prelude=prelude)
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr and "a bug in a task" in bug.stderr


def test_help_says_what_the_tool_does_and_lists_tasks_and_configs(run_cli, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "Train any timm CNN densely" in out and "export the original fast network" in out
    for name in ("SemanticSegmentationTask", "ObjectDetectionTask", "KeypointEstimationTask"):
        assert name in out
    assert "SyntheticSegmentationDataModule" in out
    configs = sorted((REPO / "configs").glob("[!s]*/*.yaml"))
    assert configs and all(str(c.relative_to(REPO)) in out for c in configs)


@pytest.mark.parametrize(
    ("message", "line"),
    [
        (
            "Parser key \"image_size\":\n  Expected a <class 'int'>. Got value: big",
            "image_size: expected int, got 'big'",
        ),
        ("unrecognized arguments: --x 1", "unrecognized arguments: --x 1"),
        (
            "Parser key \"config\":\n  File does not exist: '/runs/nonexistent.yaml'",
            "config: no such file: /runs/nonexistent.yaml",
        ),
    ],
)
def test_one_line_messages(message, line):
    assert one_line(message) == line


def test_a_report_by_kind_keeps_its_lines_and_anything_else_is_one_line():
    report = DatasetError("VOC-style folder /d: 2 bad file(s)\n  unreadable image (1): a.jpg\n"
                          "  listed mask missing (1): b.png")  # fmt: skip
    assert error_text(report).splitlines() == [
        "VOC-style folder /d: 2 bad file(s)",
        "  unreadable image (1): a.jpg",
        "  listed mask missing (1): b.png",
    ]
    assert error_text(ConfigurationError("a setting\nthat wraps")) == "a setting that wraps"


@pytest.mark.slow
def test_last_checkpoint_is_the_final_state_and_the_export_the_best(run_cli, quickstart, tmp_path):
    cli = run_cli("fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "3")
    run = tmp_path / "lightning_logs" / "version_0"
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert last["global_step"] == cli.trainer.global_step == 6
    best = cli.trainer.checkpoint_callback.best_model_path
    assert Path(best).name.startswith("best-") and Path(best).parent == run / "checkpoints"
    export = json.loads((run / "exports" / "equivalence.json").read_text())
    assert export["weights"]["kind"] == "best" and export["weights"]["checkpoint"] == best
    assert (run / "config.yaml").is_file()


@pytest.mark.slow
def test_wandb_runs_keep_their_config_in_their_own_folder(run_cli, quickstart, tmp_path):
    import wandb

    wandb_dir = tmp_path / "wb"
    cli = run_cli(
        "fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "1",
        "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.offline=true",
        f"--trainer.logger.init_args.save_dir={wandb_dir}",
        "--trainer.logger.init_args.project=dense-lightning-tests",
    )  # fmt: skip
    run_id = cli.trainer.logger.version
    wandb.finish()
    folder = wandb_dir / "dense-lightning-tests" / run_id
    assert (folder / "config.yaml").is_file() and (folder / "exports").is_dir()
    assert (folder / "checkpoints" / "last.ckpt").is_file()
    assert not (tmp_path / "config.yaml").exists() and not (wandb_dir / "config.yaml").exists()


def test_resume_continues_dense(run_cli, quickstart, tmp_path, capsys):
    first = run_cli("fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "1")
    assert first.trainer.global_step == 2
    out = capsys.readouterr().out
    assert "fit summary" in out and "exported model" in out
    last = tmp_path / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    # Resuming at another stride is a configuration error: one line that says what to do.
    with pytest.raises(SystemExit) as exit_info:
        run_cli(
            "fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "2",
            "--model.init_args.output_stride", "null", "--ckpt_path", last,
        )  # fmt: skip
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1 and "--model.init_args.output_stride 16" in errors[0]
    second = run_cli(
        "fit", "--config", quickstart, *SMALL, "--trainer.max_epochs", "2", "--ckpt_path", last
    )
    assert second.model.model.dense_info.output_stride == 16
    assert second.trainer.global_step == 4 and second.trainer.current_epoch == 2
    validate = run_cli("validate", "--config", quickstart, *SMALL, "--ckpt_path", last)
    assert validate.model.model.dense_info.output_stride == 16


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


@pytest.mark.slow
@pytest.mark.parametrize(("backbone", "region"), [
    ("efficientnet_b0", "blocks.3.0.se"), ("regnety_002", "s3.b1.se"),
])  # fmt: skip
def test_squeeze_excitation_backbones_fit_per_phase_and_export_verified(
    run_cli, quickstart, tmp_path, backbone, region
):
    # Their SE gates pool globally: they run per phase, so the fit is strict and the export exact.
    cli = run_cli(
        "fit", "--config", quickstart, *SMALL, "--model.init_args.backbone", backbone,
        "--model.init_args.output_stride", "8", "--data.init_args.image_size", "64",
        "--trainer.max_epochs", "1",
    )  # fmt: skip
    info = get_dense_info(cli.model.model)
    assert not info.approximate and f"backbone.{region}" in {r.module for r in info.regions}
    exports = tmp_path / "lightning_logs" / "version_0" / "exports"
    report = json.loads((exports / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"] and not report["approximate"]
    fresh = timm.create_model(backbone, pretrained=False, num_classes=0)
    state = torch.load(exports / f"backbone_{backbone}.pth", weights_only=True)
    missing, unexpected = fresh.load_state_dict(state, strict=False)
    assert not unexpected and all(not k.startswith(("blocks", "s1", "s2", "s3")) for k in missing)
