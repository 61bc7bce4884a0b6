"""EfficientNet-PyTorch's static "same" padding (smp's native efficientnet-b*) made exact."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent import NotEquivalentError, to_dense, to_original, verify_equivalence
from dense_lightning.equivalent.static_padding import EZeroPadMaxPool2d


def _same(size: int, kernel: int, stride: int) -> tuple[int, int]:
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class Conv2dStaticSamePadding(nn.Conv2d):
    """EfficientNet-PyTorch's layer: TF-same padding computed once, for ``image_size``."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, image_size: int) -> None:
        super().__init__(cin, cout, kernel, stride, bias=False)
        lead, trail = _same(image_size, kernel, stride)
        self.static_padding = (
            nn.ZeroPad2d((lead, trail, lead, trail)) if lead + trail else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.static_padding(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation)


class MaxPool2dStaticSamePadding(nn.MaxPool2d):
    def __init__(self, kernel: int, stride: int, image_size: int) -> None:
        super().__init__(kernel, stride)
        lead, trail = _same(image_size, kernel, stride)
        self.static_padding = nn.ZeroPad2d((lead, trail, lead, trail))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(self.static_padding(x), self.kernel_size, self.stride)


def _net(image_size: int = 224) -> nn.Module:
    # Paddings fixed for 224 px (even sizes: the extra cell trails), whatever the input.
    layers: list[nn.Module] = [Conv2dStaticSamePadding(3, 8, 3, 2, image_size), nn.BatchNorm2d(8)]
    size = math.ceil(image_size / 2)
    for kernel, stride in ((3, 1), (5, 2), (3, 2), (5, 1), (3, 2)):
        layers += [Conv2dStaticSamePadding(8, 8, kernel, stride, size), nn.Tanh()]
        size = math.ceil(size / stride)
        if kernel == 5 and stride == 2:  # a zero-padded pool at stride 4
            layers.append(MaxPool2dStaticSamePadding(3, 1, size))
    torch.manual_seed(0)
    return nn.Sequential(*layers).eval()


@pytest.mark.parametrize("output_stride", [16, 8, 2])
def test_static_same_padding_is_exact_on_even_and_odd_inputs(output_stride):
    model = _net()
    dense = to_dense(model, output_stride)
    assert not dense.dense_info.findings
    assert isinstance(dense[6], EZeroPadMaxPool2d) == (output_stride < 4)
    for size in (64, 67, 95):
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        report = verify_equivalence(model, dense, x, check_phases=False)
        assert report.equivalent, str(report)
        assert report.max_rel_error < 1e-5
    restored = to_original(dense)
    assert type(restored[0]) is Conv2dStaticSamePadding
    x = torch.randn(1, 3, 67, 67)
    with torch.no_grad():
        torch.testing.assert_close(restored(x), model(x), rtol=0, atol=0)


def test_the_pool_pads_with_zeros_as_the_original():
    # All inputs negative: a -inf padding would make the border cells differ.
    model = nn.Sequential(
        Conv2dStaticSamePadding(3, 4, 3, 2, 32), MaxPool2dStaticSamePadding(3, 2, 16)
    )
    model.eval()
    dense = to_dense(model, 1)
    x = -1 - torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        original = model(x)
        assert (original == 0).any()  # the padding wins somewhere: the test can fail
    assert verify_equivalence(model, dense, x, check_phases=False).equivalent


def test_a_non_zero_static_padding_is_refused_with_the_reason():
    model = nn.Sequential(nn.Conv2d(3, 4, 3, 2), Conv2dStaticSamePadding(4, 4, 3, 1, 16))
    model[1].static_padding = nn.ConstantPad2d(1, 1.0)
    with pytest.raises(NotEquivalentError, match="not a zero padding"):
        to_dense(model, 1)
