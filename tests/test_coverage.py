"""The coverage sweep: its verdicts and its --quick run."""

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import coverage
from dense_lightning.equivalent import NotEquivalentError
from dense_lightning.equivalent.errors import Finding


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv2(torch.relu(self.conv(x)))


class Upsampled(nn.Module):
    """A fake "dense" model: the original's output repeated, right on the lattice only."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x).repeat_interleave(2, -2).repeat_interleave(2, -1)


def test_convert_exact():
    out = coverage.convert(Net().eval(), "forward", 2, 3, (32, 37))
    assert out["verdict"] == "exact"
    assert out["max_rel_error"] < 1e-5
    assert out["info"]["output_stride"] == 2


@pytest.mark.parametrize(
    ("error", "verdict"),
    [
        (NotEquivalentError([Finding("se", "SEModule", "pools globally")], 8), "refused"),
        (ValueError("bad output stride"), "refused"),
        (RuntimeError("shape mismatch in trace"), "crashed"),
        (AssertionError("probe size"), "crashed"),
    ],
)
def test_convert_classifies_exceptions(monkeypatch, error, verdict):
    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(coverage, "to_dense", fail)
    out = coverage.convert(Net().eval(), "forward", 2, 3, (32, 37))
    assert out["verdict"] == verdict
    assert out["error"] == type(error).__name__
    if isinstance(error, NotEquivalentError):
        assert out["detail"] == "se (SEModule): pools globally"
    if verdict == "crashed":
        assert out["stage"] == "to_dense" and "test_coverage.py" in out["where"]


def test_convert_wrong_when_the_verifier_disagrees(monkeypatch):
    monkeypatch.setattr(coverage, "to_dense", lambda model, *a, **k: Upsampled(model))
    out = coverage.convert(Net().eval(), "forward", 2, 3, (32, 37))
    # Right on the lattice, wrong on every other phase: only the phase check catches it.
    assert out["verdict"] == "wrong"
    assert out["max_phase_rel_error"] > 1e-2


def test_convert_wrong_when_outputs_have_another_size(monkeypatch):
    class Cropped(Upsampled):
        def forward(self, x):
            return super().forward(x)[..., :-1, :-1]

    monkeypatch.setattr(coverage, "to_dense", lambda model, *a, **k: Cropped(model))
    out = coverage.convert(Net().eval(), "forward", 2, 3, (32, 37))
    assert out["verdict"] == "wrong" and out["stage"] == "verify"


def test_randomized_norms_are_not_identity():
    bn = coverage.randomize_norms(nn.Sequential(nn.BatchNorm2d(4)))[0]
    x = torch.randn(2, 4, 5, 5)
    assert not torch.allclose(bn(x), x, atol=1e-2)


def test_quick_sweep(tmp_path):
    payload = coverage.main(["--quick", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "coverage.json").read_text())
    assert saved["complete"] is True and saved["rows"] == json.loads(
        json.dumps(payload["rows"], default=str)
    )
    rows = {r["name"]: r for r in payload["rows"]}
    assert set(rows) == set(coverage.QUICK_MODELS)
    assert rows["test_resnet"]["results"]["8"]["verdict"] == "exact"
    assert rows["test_resnet"]["mode"] == "features_only"
    assert rows["test_vit"]["fixed_input_size"] is True
    assert rows["test_vit"]["results"]["16"]["verdict"] == "n/a"  # its stride is 16
    for row in rows.values():
        for result in row["results"].values():
            assert result["verdict"] in ("exact", "refused", "n/a"), result
    md = (tmp_path / "coverage.md").read_text()
    assert "of 3 runnable exact at output stride 8" in md
    assert "`test_efficientnet`" in md
