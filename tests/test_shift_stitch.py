"""Shift-and-stitch equals the dense model in the interior, for single and listed outputs."""

import pytest
import timm
import torch
from torch import nn

from dense_lightning.equivalent import to_dense
from dense_lightning.equivalent.shift_stitch import shift_and_stitch, stitch_interior


def _small_net():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.MaxPool2d(3, 2, 1, ceil_mode=True),
        nn.Conv2d(8, 8, 3, 1, 1), nn.AvgPool2d(2, 2), nn.Conv2d(8, 4, 3, 2, 1),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("output_stride", [1, 2, 4])
@pytest.mark.parametrize("size", [(61, 67), (64, 64)])
def test_interior_matches_dense(output_stride, size):
    net = _small_net()
    dense = to_dense(net, output_stride).eval()
    k = 16 // output_stride
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        got = shift_and_stitch(net, x, k, output_stride)
        ref = dense(x)
    assert got.shape == ref.shape
    mask = stitch_interior(dense, lambda t: shift_and_stitch(net, t, k, output_stride), x, k,
                           output_stride)  # fmt: skip
    assert mask.sum() > 0
    assert torch.allclose(got[..., mask], ref[..., mask], atol=1e-5)
    # The border is where they may differ: the mask is not trivially everything.
    assert not mask.all()


def test_batched_equals_loop():
    net = _small_net()
    x = torch.randn(1, 3, 40, 40)
    loop = shift_and_stitch(net, x, 4, 4)
    batched = shift_and_stitch(net, x, 4, 4, batched=True)
    assert torch.allclose(loop, batched, atol=1e-6)


def test_feature_list_uses_each_outputs_factor():
    model = timm.create_model("resnet18", pretrained=False, features_only=True,
                              out_indices=(1, 2, 3)).eval()  # fmt: skip
    dense = to_dense(model, 8).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        got, ref = shift_and_stitch(model, x, 2, 8), dense(x)
    assert isinstance(got, list)
    assert [t.shape for t in got] == [t.shape for t in ref]
    # Outputs at or below the output stride are not stitched: they equal the original's.
    with torch.no_grad():
        assert torch.allclose(got[0], model(x)[0])


def test_bad_arguments():
    with pytest.raises(ValueError, match="positive"):
        shift_and_stitch(_small_net(), torch.randn(1, 3, 8, 8), 0, 4)
