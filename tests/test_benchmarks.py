"""Every benchmark's --quick mode runs and writes the documented JSON (no timing asserts)."""

import json
import sys
from pathlib import Path

import pytest

# benchmarks/ is a top-level folder of the repository, not part of the installed package;
# `python -m pytest` finds it through the working directory, a bare `pytest` through this.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy, overhead, speed


def _load(path):
    assert path.with_suffix(".md").read_text().startswith("# ")
    return json.loads(path.read_text())


def _machine(record):
    for key in ("platform", "cpu_count", "torch", "torch_threads", "clock", "date"):
        assert key in record
    assert record["quick"] is True


def test_speed_quick(tmp_path):
    speed.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path / "speed.json")
    assert (tmp_path / "speed.png").stat().st_size > 0
    _machine(payload["machine"])
    (row,) = payload["rows"]
    assert set(row["times"]) == {
        "original", "exported", "dense_dilated", "dense_phase", "dense_auto", "stitch"
    }  # fmt: skip
    assert row["macs"]["stitch"] == row["k"] ** 2 * row["macs"]["original"]
    assert row["stitch_check"]["interior_cells"] > 0
    # Exactness is asserted; speed never is.
    assert row["stitch_check"]["interior_max_rel_error"] < 1e-4
    assert max(row["path_max_rel_error"].values()) < 1e-4
    for key in ("stitch_efficiency", "dense_auto_overhead", "exported_over_original_time"):
        assert row["derived"][key] > 0


def test_accuracy_quick(tmp_path):
    accuracy.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path / "accuracy_segmentation.json")
    _machine(payload["machine"])
    assert payload["settings"]["metric"] == "miou"
    summary = payload["summary"]
    for key in ("a_baseline", "b_dense", "c_exported"):
        assert 0.0 <= summary[key]["mean"] <= 1.0
        assert summary[key]["macs_per_image"] > 0
    # (c) is (a)'s architecture: the same test-time MACs; (b) costs more.
    assert summary["c_exported"]["macs_per_image"] == summary["a_baseline"]["macs_per_image"]
    assert summary["b_dense"]["macs_per_image"] > summary["a_baseline"]["macs_per_image"]
    assert len(summary["c_minus_a"]["per_seed"]) == len(payload["runs"])


def test_overhead_quick(tmp_path):
    overhead.main(["--quick", "--out", str(tmp_path)])
    payload = _load(tmp_path / "overhead.json")
    _machine(payload["machine"])
    for row in payload["rows"].values():
        assert set(row["steps_per_s"]) == {"lightning", "lightning_no_train_metrics", "plain"}
        assert all(v > 0 for v in row["steps_per_s"].values())


@pytest.mark.parametrize("module", [speed, accuracy, overhead])
def test_docstring_names_the_command(module):
    assert f"python -m benchmarks.{module.__name__.split('.')[-1]}" in module.__doc__
