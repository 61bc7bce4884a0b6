"""``python -m benchmarks.smp --quick`` runs and writes the documented JSON and table."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytest.importorskip(
    "segmentation_models_pytorch", reason="needs the [smp] extra: pip install -e '.[dev,smp]'"
)

# benchmarks/ is a top-level folder of the repository, not part of the installed package.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks import smp as bench


def test_smp_benchmark_quick(tmp_path):
    payload = bench.main(["--quick", "--out", str(tmp_path)])
    assert payload["complete"] is True
    assert json.loads((tmp_path / "smp.json").read_text())["rows"] == payload["rows"]
    assert payload["machine"]["quick"] is True and payload["machine"]["smp"]
    rows = {row["encoder"]: row for row in payload["rows"]}
    assert set(rows) == set(bench.QUICK_ENCODERS)
    assert rows["resnet18"]["kind"] == "smp make_dilated"
    assert rows["tu-resnet18"]["kind"] == "timm output_stride"
    # smp's make_dilated gives the formerly strided 3x3 convolution the new rate: not exact.
    assert rows["resnet18"]["baseline"]["error"] > 1e-2
    for row in rows.values():
        mine = row["ours"]
        assert mine["error"] < 1e-5 and len(mine["levels"]) == 6
        assert mine["proof_error"] < 1e-5
    md = (tmp_path / "smp.md").read_text()
    assert md.startswith("# smp encoders") and "**2 of 2** encoder/stride pairs exact" in md


def test_docstring_names_the_command():
    assert "python -m benchmarks.smp" in bench.__doc__
