"""Regression tests: smp models as a user first tried them, each failure that was reported."""

from __future__ import annotations

import warnings

import pytest
import torch

pytest.importorskip(
    "segmentation_models_pytorch", reason="needs the [smp] extra: pip install -e '.[dev,smp]'"
)

import segmentation_models_pytorch as smp

from dense_lightning.equivalent import (
    EquivalentLayer,
    get_dense_info,
    to_dense,
    verify_equivalence,
)
from dense_lightning.errors import ConfigurationError


def _encoder(name: str, **kwargs: object) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return smp.encoders.get_encoder(name, weights=None, **kwargs).eval()


def _unchanged(model: torch.nn.Module, dense: torch.nn.Module, size: int) -> None:
    assert not any(isinstance(m, EquivalentLayer) for m in dense.modules())
    assert get_dense_info(dense).factor == 1
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(dense(x), model(x), rtol=0, atol=0)


def test_native_efficientnet_encoder_converts_exactly_on_a_96_px_probe():
    # Was: "dense output size (20, 20) is not a multiple of the original (6, 6)": its static
    # same padding (fixed for 224 px, in a ZeroPad2d child) padded the dense map unscaled.
    encoder = _encoder("efficientnet-b0")
    dense = to_dense(encoder, 8)
    for size in (96, 77):  # the encoder alone accepts odd sizes: its padding stays fixed
        x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size))
        report = verify_equivalence(encoder, dense, x, check_phases=False)
        assert report.equivalent, str(report)


@pytest.mark.slow
def test_native_efficientnet_dilated_by_smp_converts_exactly():
    # Was: "encoder._blocks.0: input of spatial size (95, 95) is not a multiple of its lattice
    # step (2, 2)", inside DeepLabV3: smp's make_dilated left the early blocks' static padding.
    encoder = _encoder("efficientnet-b0", output_stride=8)
    dense = to_dense(encoder, 2, probe_size=64)
    x = torch.randn(1, 3, 64, 64)
    assert verify_equivalence(encoder, dense, x, check_phases=False).equivalent


def test_deeplabv3_with_native_efficientnet_at_stride_1_is_returned_unchanged():
    torch.manual_seed(0)
    model = smp.DeepLabV3(encoder_name="efficientnet-b0", encoder_weights=None).eval()
    _unchanged(model, to_dense(model, 1), 64)


def test_pan_is_probed_at_a_size_it_accepts():
    # Was: "could not be traced: decoder.fpa.down2.0 (MaxPool2d) raised RuntimeError on a
    # probe input of 96x96 px": its pyramid pools the stride-32 map down three more times.
    torch.manual_seed(0)
    model = smp.PAN(encoder_name="resnet18", encoder_weights=None).eval()
    _unchanged(model, to_dense(model, 1), 256)


@pytest.mark.parametrize("arch", [smp.Unet, smp.FPN])
def test_unet_and_fpn_at_stride_1_are_returned_unchanged(arch):
    # Was: refused for "interpolate resamples by a fixed factor at stride 32", though their
    # outputs are at stride 1 already.
    torch.manual_seed(0)
    model = arch(encoder_name="resnet18", encoder_weights=None).eval()
    _unchanged(model, to_dense(model, 1), 64)


def test_asking_deeplabv3plus_for_stride_8_points_to_the_dense_encoder():
    # Was: "output_stride 8 is not reachable: the model's stride is 1".
    model = smp.DeepLabV3Plus(encoder_name="tu-resnet18", encoder_weights=None)
    with pytest.raises(ConfigurationError, match=r"dense_encoder\(model, 8\)") as error:
        to_dense(model, 8)
    message = str(error.value)
    assert "outputs are at stride 1 already" in message
    assert 'submodule="encoder"' in message


def test_to_dense_with_submodule_encoder_is_the_documented_way():
    torch.manual_seed(0)
    model = smp.DeepLabV3Plus(encoder_name="tu-resnet18", encoder_weights=None).eval()
    dense = to_dense(model, 8, submodule="encoder")
    assert get_dense_info(dense.encoder).output_stride == 8
    assert dense.decoder.up.scale_factor == 2  # built for 16 (factor 4), set for 8
    with torch.no_grad():
        assert dense(torch.randn(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    with pytest.raises(ConfigurationError, match="only the encoder"):
        to_dense(model, 8, submodule="decoder")


def test_a_dense_encoder_in_fpn_is_refused_before_the_decoder_runs():
    # Was: "RuntimeError: The size of tensor a (32) must match the size of tensor b (16)".
    model = smp.FPN(encoder_name="tu-resnet18", encoder_weights=None)
    with pytest.raises(ConfigurationError, match="level by level"):
        to_dense(model, 8, submodule="encoder")
