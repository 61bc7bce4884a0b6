"""What runs leave in the working folder stays out of git and out of lint."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LEFTOVERS = [
    "wandb/offline-run-1/files/config.yaml", "config.yaml", "dense-lightning/abc/config.yaml",
    "preds/image_0.png", "lightning_logs/version_0/checkpoints/last.ckpt", "outputs/sweeps/x",
    "config_validate.yaml", "summary.json",
]  # fmt: skip


@pytest.mark.skipif(shutil.which("git") is None or not (REPO / ".git").exists(), reason="no git")
@pytest.mark.parametrize("path", LEFTOVERS)
def test_run_leftovers_are_ignored_by_git(path):
    result = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, check=False)
    assert result.returncode == 0, f"{path} is not in .gitignore"


def test_a_wandb_folder_does_not_make_wandb_first_party(tmp_path):
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    (tmp_path / "wandb" / "offline-run-1").mkdir(parents=True)  # what a wandb run leaves
    package = tmp_path / "dense_lightning"
    package.mkdir()
    (package / "__init__.py").write_text('"""Package."""\n')
    (package / "media.py").write_text('"""Module."""\n\nimport lightning\nimport wandb\n')
    command = [sys.executable, "-m", "ruff", "check", "--no-cache", "--select", "I", "."]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout
