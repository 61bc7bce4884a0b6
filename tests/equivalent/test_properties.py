"""Property tests: random stacks stay exact.

Convs and pools with random kernels, strides, paddings, dilations and ``ceil_mode``, residual
adds, and modules that run per phase: squeeze-excitation, explicit padding with slicing,
concatenation along W and upsampling between lattices.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch import nn

from dense_lightning.equivalent import model_stride, to_dense, to_original, verify_equivalence


class Residual(nn.Module):
    """``main(x) + shortcut(x)``: the two sides must agree on the dense length too."""

    def __init__(self, main: nn.Module, shortcut: nn.Module) -> None:
        super().__init__()
        self.main, self.shortcut = main, shortcut

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x) + self.shortcut(x)


class SqueezeExcite(nn.Module):
    """A global mean gating the channels: runs per phase."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.fc = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.fc(x.mean((2, 3), keepdim=True)).sigmoid()


class PadSlice(nn.Module):
    """Explicit padding, then a slice that shifts the map: offsets in cells."""

    def __init__(self, shift: int) -> None:
        super().__init__()
        self.shift = shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.shift
        return nn.functional.pad(x, (s, s, s, s))[..., : x.shape[-2], 2 * s :]


class CatWidth(nn.Module):
    """The map shifted right by one cell along W: a slice and its edge joined by ``cat``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x[..., :1], x[..., :-1]], dim=-1)


class Fuse(nn.Module):
    """HRNet-style: a strided branch upsampled back and added (resampling between lattices)."""

    def __init__(self, channels: int, mode: str) -> None:
        super().__init__()
        self.down = nn.Conv2d(channels, channels, 3, 2, 1)
        self.up = nn.Upsample(scale_factor=2, mode=mode)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        up = self.up(self.down(x))
        # The branch must meet the map cell for cell: adding a 1x1 branch to a 2x2 map (or a
        # 2x2 branch to a 1x1 map) only runs by broadcasting, which no fusion layer means.
        if up.shape != x.shape:
            raise RuntimeError(f"upsampled branch {tuple(up.shape)} does not meet {tuple(x.shape)}")
        return x + up


@st.composite
def layers(draw: st.DrawFn, channels: int) -> tuple[nn.Module, int]:
    kind = draw(
        st.sampled_from(
            ["conv", "max", "avg", "res_conv", "res_pool", "se", "pad_slice", "cat", "fuse"]
        )
    )
    if kind == "se":
        return SqueezeExcite(channels), 1
    if kind == "pad_slice":
        return PadSlice(draw(st.integers(1, 2))), 1
    if kind == "cat":
        return CatWidth(), 1
    if kind == "fuse":
        return Fuse(channels, draw(st.sampled_from(["nearest", "bilinear"]))), 1
    stride = draw(st.sampled_from([1, 2]))
    if kind == "conv":
        k = draw(st.integers(1, 5))
        layer = nn.Conv2d(
            channels, channels, k, stride, padding=draw(st.integers(0, k)),
            dilation=draw(st.sampled_from([1, 2])),
        )  # fmt: skip
    elif kind == "max":
        k = draw(st.integers(1, 4))
        layer = nn.MaxPool2d(
            k, stride, padding=draw(st.integers(0, k // 2)),
            dilation=draw(st.sampled_from([1, 2])), ceil_mode=draw(st.booleans()),
        )  # fmt: skip
    elif kind == "avg":
        k = draw(st.integers(1, 4))
        layer = nn.AvgPool2d(
            k, stride, padding=draw(st.integers(0, k // 2)), ceil_mode=draw(st.booleans()),
            count_include_pad=draw(st.booleans()),
        )  # fmt: skip
    elif kind == "res_conv":
        layer = Residual(
            nn.Sequential(nn.Conv2d(channels, channels, 3, stride, 1), nn.ReLU()),
            nn.Conv2d(channels, channels, 1, stride),
        )
    else:  # ResNet-D style shortcut: ceil-mode average pool beside a strided conv
        layer = Residual(
            nn.Conv2d(channels, channels, 3, 2, 1),
            nn.Sequential(
                nn.AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False),
                nn.Conv2d(channels, channels, 1),
            ),
        )
        stride = 2
    return layer, stride


@st.composite
def stacks(draw: st.DrawFn) -> nn.Module:
    channels = 3
    modules, total = [], 1
    for _ in range(draw(st.integers(1, 6))):
        layer, stride = draw(layers(channels))
        if total * stride > 16:
            continue
        total *= stride
        modules += [layer, nn.ReLU()] if draw(st.booleans()) else [layer]
    assume(total > 1)
    torch.manual_seed(draw(st.integers(0, 2**16)))
    return nn.Sequential(*modules).eval()


def _accepts(model: nn.Module, *sizes: int) -> bool:
    """Whether the original runs at every size (an upsampled branch needs even sizes)."""
    try:
        with torch.no_grad():
            for size in sizes:
                model(torch.zeros(1, 3, size, size))
    except RuntimeError:
        return False
    return True


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=stacks(), size=st.integers(17, 40), data=st.data())
def test_random_stacks_are_exact(model, size, data):
    x = torch.randn(1, 3, size, size)
    assume(_accepts(model, 96, 224))  # the trace's probe sizes
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError:
        assume(False)  # the original itself rejects this size
    # A max pool window lying wholly in padding gives -inf: a degenerate network.
    assume(bool(out.isfinite().all()))
    stride = model_stride(model)
    output_stride = data.draw(st.sampled_from([s for s in (1, 2, 4, 8) if s < stride]))
    dense = to_dense(model, output_stride)
    report = verify_equivalence(model, dense, x, check_phases=False)
    assert report.equivalent, f"{model}\n{report}"
    back = to_original(dense)
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


@settings(max_examples=15, deadline=None)
@given(model=stacks(), size=st.integers(17, 40))
def test_random_stacks_quick(model, size):
    x = torch.randn(1, 3, size, size)
    assume(_accepts(model, 96, 224))
    try:
        with torch.no_grad():
            out = model(x)
    except RuntimeError:
        assume(False)
    assume(bool(out.isfinite().all()))
    dense = to_dense(model, 1)
    report = verify_equivalence(model, dense, x, check_phases=False)
    assert report.equivalent, f"{model}\n{report}"
