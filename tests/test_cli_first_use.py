"""What a new user meets first, through the real command in a subprocess.

Mistakes end with one ``dense-lightning: error:`` line (one per kind of problem for a dataset
report) and leave no folder, log or run behind; an interrupted fit says how to resume; a
resumed or evaluated run continues its own folder; output to a file gets progress lines.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
QUICKSTART = REPO / "configs" / "segmentation" / "quickstart.yaml"
VOC = REPO / "configs" / "segmentation" / "voc.yaml"
SMALL = [
    "--data.init_args.num_train", "8", "--data.init_args.num_val", "4",
    "--data.init_args.batch_size", "4", "--data.init_args.image_size", "64",
    "--model.init_args.backbone", "test_resnet", "--model.init_args.head_channels", "16",
    "--model.init_args.warmup_steps", "0", "--trainer.accelerator", "cpu",
]  # fmt: skip
ERROR = "dense-lightning: error: "


def _env():
    return {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "1"}


def _command(cwd, *args, timeout=600):
    """``dense-lightning <args>`` in ``cwd``, in a subprocess; stdout is a pipe, not a terminal."""
    return subprocess.run(
        [sys.executable, "-m", "dense_lightning", *map(str, args)],
        cwd=cwd, capture_output=True, text=True, env=_env(), timeout=timeout,
    )  # fmt: skip


def _left_behind(folder, *inputs):
    """Every file and folder under ``folder`` but ``inputs``, what they hold and hold them."""
    inputs = [Path(p).resolve() for p in inputs]

    def kept(path):
        path = path.resolve()
        return any(path == p or p in path.parents or path in p.parents for p in inputs)

    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if not kept(p))


def _one_error(result):
    """The error line of a failed command, after checking that it is the only one."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith(ERROR), result.stderr[-3000:]
    return errors[0]


def test_a_missing_checkpoint_is_one_line_and_leaves_nothing(tmp_path):
    result = _command(
        tmp_path, "validate", "-c", QUICKSTART, *SMALL, "--ckpt_path", "nope/last.ckpt"
    )
    line = _one_error(result)
    assert result.stderr.splitlines() == [line] and result.stdout == ""
    assert line.startswith(f"{ERROR}--ckpt_path: no such file: nope/last.ckpt.")
    assert _left_behind(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"hello, not a checkpoint\n", "is not a checkpoint torch.load can read"),
        ({"conv.weight": torch.zeros(1)}, "is not a Lightning checkpoint (it has no 'state_dict')"),
    ],
    ids=["text", "plain-state-dict"],
)
def test_a_file_that_is_no_checkpoint_is_one_line(tmp_path, content, message):
    path = tmp_path / "weights.ckpt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    result = _command(tmp_path, "validate", "-c", QUICKSTART, *SMALL, "--ckpt_path", path.name)
    line = _one_error(result)
    assert result.stderr.splitlines() == [line] and message in line
    assert _left_behind(tmp_path, path) == []


def test_a_missing_config_file_is_named(tmp_path):
    result = _command(tmp_path, "fit", "-c", "nonexistent.yaml")
    line = _one_error(result)
    assert result.stderr.splitlines() == [line]
    assert line.startswith(f"{ERROR}config: no such file: ") and "nonexistent.yaml" in line
    assert _left_behind(tmp_path) == []


@pytest.mark.slow  # imports wandb and builds the data (~15 s)
def test_a_task_that_disagrees_with_its_data_starts_no_wandb_run(tmp_path):
    result = _command(
        tmp_path, "fit", "-c", QUICKSTART, *SMALL, "--model.init_args.num_classes", "3",
        "--trainer.logger=lightning.pytorch.loggers.WandbLogger",
        "--trainer.logger.init_args.offline=true", "--trainer.logger.init_args.project=proj",
    )  # fmt: skip
    line = _one_error(result)
    assert "data has num_classes=4 but the task was built with num_classes=3" in line
    assert len(result.stderr.splitlines()) <= 3  # the seed and the CPU settings, then it
    assert _left_behind(tmp_path) == []  # no wandb/offline-run-*, no proj/<id>/config.yaml


@pytest.mark.slow
def test_a_missing_dataset_root_is_reported_before_weights_are_fetched(tmp_path):
    # The config asks for ImageNet weights: without the data checked first, the hub would be
    # retried for about a minute here (no network), then the weights reported, not the root.
    result = _command(tmp_path, "fit", "-c", VOC, "--data.init_args.root", "data/VOC2012")
    line = _one_error(result)
    assert "dataset root not found: data/VOC2012" in line
    assert "Retrying" not in result.stderr and "pretrained" not in result.stderr
    assert _left_behind(tmp_path) == []


@pytest.mark.slow
def test_a_dataset_report_keeps_one_line_per_kind_of_problem(tmp_path, voc_root):
    Image.fromarray(np.full((40, 40), 42, np.uint8), mode="L").save(
        voc_root / "SegmentationClass" / "img00.png"
    )
    (voc_root / "JPEGImages" / "img05.jpg").write_bytes(b"not a jpeg")
    result = _command(
        tmp_path, "fit", "-c", VOC, "--data.init_args.root", voc_root,
        "--model.init_args.pretrained", "false", "--model.init_args.backbone", "resnet18",
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(ERROR))
    report = lines[start:]
    assert report[0].startswith(f"{ERROR}VOC-style folder {voc_root}: 2 bad file(s)")
    assert len(report) == 3 and all(line.startswith("  ") for line in report[1:])
    assert any("label outside" in line and "img00.png (label 42)" in line for line in report)
    assert any(line.startswith("  unreadable image (1): JPEGImages/img05.jpg") for line in report)
    assert _left_behind(tmp_path, voc_root) == []


def test_help_lists_tasks_not_protocols_and_whole_sentences(run_cli, capsys):
    from dense_lightning.cli.help import SUBCOMMANDS

    with pytest.raises(SystemExit) as exit_info:  # in-process: the same parser, no start-up
        run_cli("--help")
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "ExportableTask" not in out and "SemanticSegmentationTask" in out
    flat = " ".join(out.split())
    for sentence in SUBCOMMANDS.values():
        assert sentence in flat and sentence.endswith(".")


# ------------------------------------------------------------------ with a trained run


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny fit (2 epochs, 4 steps), its output redirected to a pipe as in a batch job."""
    folder = tmp_path_factory.mktemp("trained")
    args = ["--trainer.max_epochs", "2", "--trainer.log_every_n_steps", "1"]
    result = _command(folder, "fit", "-c", QUICKSTART, *SMALL, *args)
    assert result.returncode == 0, result.stderr[-3000:]
    return folder, result


@pytest.fixture
def run_copy(trained, tmp_path):
    """A copy of the trained run's working folder, for a test to change."""
    shutil.copytree(trained[0], tmp_path, dirs_exist_ok=True)
    return tmp_path


@pytest.mark.slow
def test_output_to_a_file_gets_a_line_per_step_and_per_validation(trained):
    _, result = trained
    lines = [line for line in result.stdout.splitlines() if line.startswith("epoch ")]
    steps = [line.split()[3] for line in lines if " step " in line]
    assert steps == ["1/4", "2/4", "3/4", "4/4"]
    validations = [line for line in lines if " validation " in line]
    assert len(validations) == 2 and all("val_miou " in line for line in validations)
    assert "LeafSpec" not in result.stderr  # Lightning's deprecation, nobody's to act on


@pytest.mark.slow
def test_resuming_at_another_stride_leaves_nothing_behind(run_copy):
    before = _left_behind(run_copy)
    last = run_copy / "lightning_logs" / "version_0" / "checkpoints" / "last.ckpt"
    result = _command(
        run_copy, "fit", "-c", QUICKSTART, *SMALL, "--trainer.max_epochs", "3",
        "--model.init_args.output_stride", "null", "--ckpt_path", last,
    )  # fmt: skip
    assert "--model.init_args.output_stride 16" in _one_error(result)
    assert _left_behind(run_copy) == before


@pytest.mark.slow
def test_evaluating_a_checkpoint_continues_its_run_folder(run_copy):
    run = run_copy / "lightning_logs" / "version_0"
    config = (run / "config.yaml").read_text()
    result = _command(run_copy, "validate", "-c", QUICKSTART, *SMALL, "--ckpt_path", "last")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"--ckpt_path last: {run / 'checkpoints' / 'last.ckpt'}" in result.stderr
    assert "The dirpath has changed" not in result.stderr and "LeafSpec" not in result.stderr
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]
    assert (run / "config_validate.yaml").is_file() and (run / "config.yaml").read_text() == config
    exported = run / "exports" / "model_original.ckpt"
    tested = _command(run_copy, "test", "-c", QUICKSTART, *SMALL, "--ckpt_path", exported)
    assert tested.returncode == 0, tested.stderr[-3000:]
    out = tested.stdout + tested.stderr
    assert "Checkpoint saved at the original stride 32; running test at output_stride=16" in out
    assert "None" not in next(line for line in out.splitlines() if "original stride" in line)
    assert sorted(p.name for p in run.parent.iterdir()) == ["version_0"]


@pytest.mark.slow
def test_an_interrupted_fit_says_how_to_resume_and_resumes_in_its_folder(tmp_path):
    args = [*SMALL, "--data.init_args.num_train", "64", "--trainer.log_every_n_steps", "1"]
    fit = [sys.executable, "-m", "dense_lightning", "fit", "-c", str(QUICKSTART), *args]
    # A runner started in the background without job control hands its children an ignored
    # SIGINT (Python then installs no KeyboardInterrupt handler): give the run the default.
    process = subprocess.Popen(
        [*fit, "--trainer.max_epochs", "2"], cwd=tmp_path, env=_env(), text=True,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    for line in process.stdout:  # 16 steps per epoch: the first validation is far away
        if " step 2/" in line:
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=600)
    assert process.returncode == 1, err[-3000:]
    checkpoints = tmp_path / "lightning_logs" / "version_0" / "checkpoints"
    saved = checkpoints / "interrupted.ckpt"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["interrupted.ckpt"]
    hint = next(line for line in err.splitlines() if line.startswith("Resume with: "))
    assert hint.startswith("Resume with: dense-lightning fit -c ") and hint.endswith(
        f"--trainer.max_epochs 2 --ckpt_path {saved}"
    )
    step = torch.load(saved, weights_only=False)["global_step"]
    assert step >= 2
    resumed = _command(tmp_path, "fit", "-c", QUICKSTART, *args, "--trainer.max_epochs", "1",
                       "--ckpt_path", "last")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert sorted(p.name for p in checkpoints.parent.parent.iterdir()) == ["version_0"]
    last = torch.load(checkpoints / "last.ckpt", weights_only=False)
    assert last["global_step"] == 16 and not saved.exists()  # resumed, then finished
    report = json.loads((checkpoints.parent / "exports" / "equivalence.json").read_text())
    assert report["equivalence"]["equivalent"]
