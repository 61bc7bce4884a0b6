"""The package builds without deprecation warnings from its build backend."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_metadata_builds_with_an_spdx_licence_and_no_deprecation(tmp_path):
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, tmp_path)
    (tmp_path / "dense_lightning").mkdir()
    (tmp_path / "dense_lightning" / "__init__.py").write_text('"""Package."""\n')
    code = (
        "import os; from setuptools import build_meta; os.mkdir('out'); "
        "print(build_meta.prepare_metadata_for_build_wheel('out'))"
    )
    result = subprocess.run(
        [sys.executable, "-W", "always", "-c", code],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "project.license` as a TOML table is deprecated" not in result.stderr
    assert "License classifiers are deprecated" not in result.stderr
    metadata = next((tmp_path / "out").glob("*.dist-info")) / "METADATA"
    assert "License-Expression: Apache-2.0" in metadata.read_text().splitlines()
