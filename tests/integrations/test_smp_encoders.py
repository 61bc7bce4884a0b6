"""Exact dense encoders in smp models: DeepLabV3/V3+ and PAN take them, U-Net and FPN refuse.

Every encoder is checked against the undilated smp encoder holding the same weights, on the
lattice, at two input sizes (multiples of 32, as smp requires).
"""

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
from dense_lightning.integrations.smp import (
    create_model,
    dense_encoder,
    original_encoder,
)
from dense_lightning.integrations.smp.encoders import share_tensors

# Native smp encoders and timm ("tu-") ones: resnet, efficientnet (static same padding),
# convnext (2x2 stride-2 convolutions), seresnext (squeeze-excitation: per-phase regions).
# The squeeze-excitation ones run many blocks per phase, which is slow on a CPU.
ENCODERS = [
    "resnet18",
    pytest.param("tu-resnet18", marks=pytest.mark.slow),  # also in the create_model test
    "efficientnet-b0",
    pytest.param("tu-efficientnet_b0", marks=pytest.mark.slow),
    "tu-convnext_atto",
    pytest.param("se_resnext50_32x4d", marks=pytest.mark.slow),
    pytest.param("tu-seresnext26d_32x4d", marks=pytest.mark.slow),
]
SIZES = (64, 96)


def check_lattice(undilated_encoder, dense, output_stride):
    """Every feature level equals the undilated encoder's on the lattice, at two sizes."""
    for size in SIZES:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        report = verify_equivalence(undilated_encoder, dense, x, check_phases=False)
        assert report.equivalent, str(report)
        assert report.max_rel_error < 1e-5, str(report)
    # Levels deeper than the output stride arrive at it, as with smp's make_dilated.
    with torch.no_grad():
        levels = [f for f in dense(x) if f.shape[1] > 0]
    strides = [size // f.shape[-1] for f in levels]
    assert strides == sorted(strides) and max(strides) == output_stride


@pytest.mark.parametrize("encoder_name", ENCODERS)
def test_deeplabv3plus_at_encoder_output_stride_8_is_exact(make_smp, undilated, encoder_name):
    model = make_smp("DeepLabV3Plus", encoder_name, encoder_output_stride=8, classes=3)
    dense = dense_encoder(model, 8, probe_size=64)
    info = get_dense_info(dense.encoder)
    assert (info.output_stride, info.original_stride, info.approximate) == (8, 32, False)
    check_lattice(undilated(encoder_name, dense.encoder), dense.encoder, 8)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert dense(x).shape == model(x).shape == (1, 3, 64, 64)
    # The model itself is left untouched; the dense one shares nothing with it.
    assert not any(isinstance(m, EquivalentLayer) for m in model.modules())


@pytest.mark.parametrize(
    "encoder_name",
    ["resnet18", pytest.param("efficientnet-b0", marks=pytest.mark.slow), "tu-convnext_atto"],
)
def test_deeplabv3_built_at_8_converted_at_16_follows_with_its_head(
    make_smp, undilated, encoder_name
):
    model = make_smp("DeepLabV3", encoder_name, classes=2)  # smp's default: stride 8
    dense = dense_encoder(model, 16, probe_size=64)
    assert dense.segmentation_head[1].scale_factor == 16  # smp's value at stride 16
    check_lattice(undilated(encoder_name, dense.encoder), dense.encoder, 16)
    with torch.no_grad():
        assert dense(torch.randn(1, 3, 64, 64)).shape == (1, 2, 64, 64)


def test_pan_takes_an_exact_dense_encoder_at_16(make_smp, undilated):
    model = make_smp("PAN", "tu-resnet18", classes=2)
    dense = dense_encoder(model, 16)
    check_lattice(undilated("tu-resnet18", dense.encoder), dense.encoder, 16)
    with torch.no_grad():
        assert dense(torch.randn(1, 3, 256, 256)).shape == (1, 2, 256, 256)


def test_create_model_is_a_drop_in_for_encoder_output_stride(undilated):
    torch.manual_seed(0)
    model = create_model(
        "deeplabv3plus", encoder_name="tu-resnet18", encoder_output_stride=8,
        encoder_weights=None, classes=4,
    )  # fmt: skip
    reference = smp.DeepLabV3Plus(
        encoder_name="tu-resnet18", encoder_output_stride=8, encoder_weights=None, classes=4
    )
    assert model.decoder.up.scale_factor == reference.decoder.up.scale_factor == 2
    assert set(model.state_dict()) == set(reference.state_dict())
    check_lattice(undilated("tu-resnet18", original_encoder(model)).eval(), model.encoder.eval(), 8)


@pytest.mark.parametrize("encoder_name", ["resnet18", "tu-convnext_atto"])
def test_the_export_loads_strictly_into_the_undilated_encoder(make_smp, encoder_name):
    model = make_smp("DeepLabV3Plus", encoder_name, encoder_output_stride=16)
    dense = dense_encoder(model, 8, probe_size=64)
    exported = original_encoder(dense)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = smp.encoders.get_encoder(encoder_name, weights=None).eval()
    fresh.load_state_dict(exported.state_dict(), strict=True)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(fresh(x), exported.eval()(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_the_model_keeps_its_tensors_and_a_frozen_encoder_stays_frozen(make_smp):
    model = make_smp("DeepLabV3Plus", "resnet18", encoder_output_stride=16)
    for p in model.encoder.parameters():
        p.requires_grad = False
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    dense = dense_encoder(model, 8, inplace=True, probe_size=64)
    assert dense is model
    assert not any(p.requires_grad for p in dense.encoder.parameters())
    for key, value in dense.state_dict().items():
        assert torch.equal(value, weights[key]), key


@pytest.mark.parametrize("arch", ["FPN", "Unet"])
@pytest.mark.parametrize(
    "encoder_name", ["tu-resnet18", pytest.param("efficientnet-b0", marks=pytest.mark.slow)]
)
def test_fpn_and_unet_encoders_convert_but_the_models_refuse_with_the_reason(
    make_smp, arch, encoder_name
):
    model = make_smp(arch, encoder_name)
    # The encoder on its own (undilated in these models) is exact.
    dense = to_dense(model.encoder, 8, probe_size=64)
    check_lattice(model.encoder, dense, 8)
    # The model cannot take it: its decoder restores resolution level by level.
    with pytest.raises(ConfigurationError, match=rf"smp\.{arch} cannot take a dense encoder.*by 2"):
        dense_encoder(model, 8)
    with pytest.raises(ConfigurationError, match="DeepLabV3"):
        to_dense(model, 8, submodule="encoder")


def test_other_architectures_and_strides_are_refused_with_the_reason(make_smp):
    with pytest.raises(ConfigurationError, match="has no encoder_output_stride"):
        dense_encoder(make_smp("PSPNet", "resnet18"), 8)
    with pytest.raises(ConfigurationError, match="takes encoder output stride 8 or 16, got 4"):
        dense_encoder(make_smp("DeepLabV3", "resnet18"), 4)
    with pytest.raises(ConfigurationError, match="segmentation_models_pytorch model"):
        dense_encoder(torch.nn.Conv2d(3, 3, 3), 8)


def test_without_a_config_the_encoder_is_found_from_the_model_name(make_smp, monkeypatch):
    # smp before 0.5 records no constructor arguments; the model's name says the encoder.
    model = make_smp("DeepLabV3Plus", "resnet18", encoder_output_stride=16)
    monkeypatch.setattr(type(model), "config", property(lambda self: None), raising=False)
    assert model.name == "deeplabv3plus-resnet18"
    dense = dense_encoder(model, 8, probe_size=64)
    assert get_dense_info(dense.encoder).original_stride == 32


def test_weights_of_another_encoder_are_refused():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        small = smp.encoders.get_encoder("resnet18", weights=None)
        other = smp.encoders.get_encoder("resnet34", weights=None)
    with pytest.raises(ConfigurationError, match="does not hold the same weights"):
        share_tensors(small, other)
