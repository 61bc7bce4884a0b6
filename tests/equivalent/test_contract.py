"""Strict conversion proves itself, and each check of the core fails when its code is wrong.

Every test here kills a specific mistake: a dropped branch of the padding rule, a removed
support check, a verifier that ignores phases, a proof that trusts float32.
"""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.layers.pool2d_same import AvgPool2dSame
from torch import nn

from dense_lightning.equivalent import NotEquivalentError, to_dense, verify_equivalence
from dense_lightning.equivalent import proof as proof_module
from dense_lightning.equivalent.ops import describe_op


def _stem(*layers: nn.Module) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), *layers).eval()


# --- the padding rule: every branch of the original-padding decision -------------------------

LAYERS_AFTER_A_STRIDE = {
    "int_padding": nn.Conv2d(4, 4, 3, 1, 1),
    "tuple_padding": nn.Conv2d(4, 4, (3, 5), 1, (1, 2)),
    "same_string": nn.Conv2d(4, 4, 4, 1, padding="same"),
    "valid_string": nn.Conv2d(4, 4, 3, 1, padding="valid"),
    "tf_same_class": timm.layers.Conv2dSame(4, 4, 3, 2),
    "avg_same_no_count_pad": AvgPool2dSame(3, 1, count_include_pad=False),
    "avg_same_stride2": AvgPool2dSame(2, 2, count_include_pad=False),
    "avg_ceil_no_count_pad": nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    "avg_count_pad": nn.AvgPool2d(3, 1, 1, count_include_pad=True),
    "max_ceil": nn.MaxPool2d(3, 2, 1, ceil_mode=True),
    "max_dilated": nn.MaxPool2d(3, 1, 1, dilation=2),
}


@pytest.mark.parametrize("size", [31, 32])
@pytest.mark.parametrize("layer", LAYERS_AFTER_A_STRIDE)
def test_layer_after_a_removed_stride_is_exact(layer, size):
    torch.manual_seed(0)
    model = _stem(LAYERS_AFTER_A_STRIDE[layer], nn.Conv2d(4, 4, 3, 2, 1))
    dense = to_dense(model, 1)
    report = verify_equivalence(model, dense, torch.randn(2, 3, size, size), check_phases=False)
    assert report.equivalent, str(report)


# --- layers that cannot be given holes are refused, never converted wrongly -----------------


class TwoSizes(nn.Module):
    """One conv applied at two resolutions: its lattice step would have to be two things."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.Conv2d(3, 4, 3, 2, 1)
        self.shared = nn.Conv2d(4, 4, 3, 1, 1)
        self.down2 = nn.Conv2d(4, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.shared(self.down(x))
        return self.shared(self.down2(y))


@pytest.mark.parametrize(
    ("model", "match"),
    [
        (_stem(nn.Conv2d(4, 4, 3, 1, 1, padding_mode="reflect")), "padding_mode='reflect'"),
        (_stem(nn.Conv2d(4, 4, 3, 1, 1, padding_mode="circular")), "padding_mode='circular'"),
        (_stem(nn.MaxPool2d(3, 1, 1, return_indices=True)), "return_indices"),
        (TwoSizes().eval(), "called on inputs of several sizes"),
    ],
    ids=["reflect", "circular", "return_indices", "two_sizes"],
)
def test_unsupported_layers_are_refused(model, match):
    with pytest.raises(NotEquivalentError, match=match):
        to_dense(model, 1)


# --- the verifier: phases count ---------------------------------------------------------------


class NearestUpsampled(nn.Module):
    """A fake dense model: the original's outputs, each cell repeated k x k times.

    Sampled every k cells it *is* the original, so only the phase check can tell.
    """

    def __init__(self, original: nn.Module, factor: int) -> None:
        super().__init__()
        self.original, self.factor = original, factor

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [F.interpolate(t, scale_factor=self.factor) for t in self.original(x)]


def test_verifier_rejects_a_fake_dense_model():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", features_only=True, out_indices=(1, 2)).eval()
    fake = NearestUpsampled(model, 4)
    report = verify_equivalence(model, fake, torch.randn(1, 3, 160, 160))
    assert report.max_rel_error == 0.0  # the lattice alone is fooled
    assert report.max_phase_rel_error > 1e-2
    assert not report.equivalent


# --- strict conversion proves itself ---------------------------------------------------------


class SortRows(nn.Module):
    """Sorting along W is not an op the trace knows, and it mixes the phases of a row."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sort(x, dim=-1).values


def test_strict_refuses_what_the_trace_missed():
    model = _stem(nn.Conv2d(4, 4, 3, 2, 1), SortRows())
    with pytest.raises(NotEquivalentError, match=r"not rounding") as info:
        to_dense(model, 1)
    assert info.value.findings[0].module == "3"  # the first module whose output differs
    dense = to_dense(model, 1, strict=False)
    assert dense.dense_info.approximate
    assert dense.dense_info.float64_rel_error > 1e-3


def test_rounding_is_told_apart_in_float64(monkeypatch, make_model):
    # With no float32 tolerance at all, every difference goes to the float64 check, which
    # must find rounding (tiny) and accept.
    monkeypatch.setattr(proof_module, "RTOL", 0.0)
    model = make_model("regnety_002", features_only=True)
    dense = to_dense(model, 8)
    info = dense.dense_info
    assert info.max_rel_error > 0.0
    assert info.float64_rel_error is not None and info.float64_rel_error <= 1e-8
    assert not info.approximate


# --- tracing: errors name the module, fixed-size models are probed at sizes they accept ------


class Fails(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("boom: needs a 7-channel input")


def test_trace_errors_name_the_module():
    with pytest.raises(ValueError, match=r"2 \(Fails\) raised RuntimeError.*boom"):
        to_dense(_stem(Fails()), 1)


class FixedSize(nn.Module):
    """Accepts only inputs of at least 112 px (a fixed position table, say)."""

    pretrained_cfg = {"input_size": (3, 112, 112)}

    def __init__(self) -> None:
        super().__init__()
        self.body = _stem(nn.Conv2d(4, 4, 3, 2, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] < 112:
            raise ValueError(f"input size {x.shape[-1]} is below 112")
        return self.body(x)


def test_fixed_size_model_is_probed_at_its_own_size():
    model = FixedSize().eval()
    dense = to_dense(model, 1)
    report = verify_equivalence(model, dense, torch.randn(1, 3, 120, 120), check_phases=False)
    assert report.equivalent


class SpaceToDepth(nn.Module):
    """A stem that folds 4x4 pixels into channels: its first conv reads 48 channels."""

    pretrained_cfg = {"input_size": (3, 64, 64)}

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(48, 8, 3, 1, 1)
        self.down = nn.Conv2d(8, 8, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.conv(F.pixel_unshuffle(x, 4)))


def test_input_channels_come_from_the_model_config():
    model = SpaceToDepth().eval()
    dense = to_dense(model, 4)
    assert verify_equivalence(
        model, dense, torch.randn(1, 3, 64, 64), check_phases=False
    ).equivalent


# --- op classification: each kind the trace tells apart --------------------------------------

X = torch.randn(1, 4, 8, 8)
OPS = [
    ("pointwise_conv", F.conv2d, (X, torch.ones(4, 4, 1, 1)), {}, None),
    ("conv3x3", F.conv2d, (X, torch.ones(4, 4, 3, 3)), {}, "local"),
    ("strided_1x1_conv", F.conv2d, (X, torch.ones(4, 4, 1, 1), None, 2), {}, "local"),
    ("avg_pool", F.avg_pool2d, (X, 3), {}, "local"),
    ("adaptive", F.adaptive_avg_pool2d, (X, 1), {}, "adaptive"),
    ("interpolate", F.interpolate, (X,), {"scale_factor": 2}, "resample"),
    ("pad", F.pad, (X, (1, 1)), {}, "pad"),
    ("mean_hw", torch.mean, (X, (2, 3)), {}, "reduce"),
    ("elementwise_max", torch.max, (X, X), {}, None),
    ("softmax", torch.softmax, (X, -1), {}, "reduce"),
    ("group_norm", F.group_norm, (X, 2), {}, "reduce"),
    ("layer_norm", F.layer_norm, (X, (8,)), {}, "reduce"),
    ("flatten", torch.flatten, (X, 2), {}, "reshape"),
    ("getitem", torch.Tensor.__getitem__, (X, (Ellipsis, slice(1, None))), {}, "index"),
    ("cat", torch.cat, ([X, X], -1), {}, "concat"),
    ("cumsum", torch.cumsum, (X, -1), {}, "scan"),
    ("vector_norm", torch.linalg.vector_norm, (X,), {"dim": (2, 3)}, "reduce"),
    ("arange", torch.arange, (8,), {}, "create"),
]


@pytest.mark.parametrize(
    ("func", "args", "kwargs", "kind"), [o[1:] for o in OPS], ids=[o[0] for o in OPS]
)
def test_op_classification(func, args, kwargs, kind):
    record = describe_op(func, args, kwargs, func(*args, **kwargs), "m", "M")
    assert (record.kind if record else None) == kind


def test_slicing_a_spatial_dim_runs_per_phase_but_channels_need_nothing():
    class Slice(nn.Module):
        def __init__(self, index: tuple) -> None:
            super().__init__()
            self.index = index

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x[self.index]

    spatial = _stem(nn.Conv2d(4, 4, 3, 2, 1), Slice((Ellipsis, slice(1, None))))
    dense = to_dense(spatial, 1)
    (region,) = dense.dense_info.regions
    assert region.module == "3" and "slices spatial positions" in region.reasons[0]
    x = torch.randn(1, 3, 37, 37)
    assert verify_equivalence(spatial, dense, x, check_phases=False).equivalent
    channels = _stem(nn.Conv2d(4, 4, 3, 2, 1), Slice((slice(None), slice(0, 2))))
    assert not to_dense(channels, 1).dense_info.regions
