"""Conversion contract: errors, findings, inverse transfer, shared tensors, layer state."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from dense_lightning.equivalent import (
    EAvgPool2d,
    EConv2d,
    EMaxPool2d,
    NotEquivalentError,
    is_dense,
    model_stride,
    to_dense,
    to_original,
    verify_equivalence,
)

# Position-mixing modules that run per phase, with the region each must get at stride 8.
PER_PHASE = {
    "seresnet18": "layer3.0.se",
    "efficientnet_b0": "blocks.3.0.se",
    "mobilenetv3_small_100": "blocks.2.0.se",
    "regnety_002": "s3.b1.se",
    "ecaresnet26t": "layer3.0.se",
}


@pytest.mark.parametrize(("name", "module"), PER_PHASE.items())
def test_global_ops_run_per_phase_and_are_recorded(make_model, name, module):
    model = make_model(name, features_only=True)
    dense = to_dense(model, 8)
    info = dense.dense_info
    assert not info.approximate and not info.findings
    regions = {r.module: r for r in info.regions}
    assert module in regions
    assert regions[module].in_step == regions[module].out_step == (2, 2)
    assert any("pools globally" in reason for reason in regions[module].reasons)
    assert info.per_view_statistics
    report = verify_equivalence(model, dense, torch.randn(2, 3, 67, 67))
    assert report.equivalent, str(report)
    # Phases other than 0 see their own global statistics: the report says so.
    densified = [o for o in report.outputs if o.factor != (1, 1)]
    assert densified and all("own global statistics" in (o.phase_note or "") for o in densified)


def test_global_op_before_the_first_removed_stride_needs_no_region(make_model):
    # At output stride 16 the SE blocks of layer1-3 see an unchanged map; only layer4 changes.
    model = make_model("seresnet18", features_only=True)
    dense = to_dense(model, 16)
    assert {r.module.split(".")[0] for r in dense.dense_info.regions} == {"layer4"}


class _GlobalMeanBody(nn.Module):
    """A body whose global mean sits at the root, where no module can run per phase."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, 2, 1)
        self.head = nn.Conv2d(4, 4, 3, 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.stem(x)
        return self.head(y * y.mean((2, 3), keepdim=True).sigmoid())


def test_unfixable_global_op_raises_and_strict_false_is_approximate():
    model = _GlobalMeanBody().eval()
    with pytest.raises(NotEquivalentError, match="strict=False") as info:
        to_dense(model, 1)
    assert [f.module for f in info.value.findings] == [""]
    assert "pools globally" in str(info.value)
    dense = to_dense(model, 1, strict=False)
    assert dense.dense_info.approximate
    assert dense.dense_info.max_rel_error > 1e-4
    report = verify_equivalence(model, dense, torch.randn(1, 3, 32, 32), check_phases=False)
    assert report.approximate and not report.equivalent


class _RootPoolClassifier(nn.Module):
    """A classifier that pools in its own forward: no module around the pool to split."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 4, 1)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def test_classifier_pooling_at_the_root_is_flagged():
    with pytest.raises(NotEquivalentError, match="pools globally"):
        to_dense(_RootPoolClassifier().eval(), 1)


def test_interpolation_at_the_root_is_flagged():
    class Up(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down = nn.Conv2d(3, 4, 3, 2, 1)
            self.conv = nn.Conv2d(4, 4, 3, 2, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(self.down(x))
            return nn.functional.interpolate(y, scale_factor=2.0)

    with pytest.raises(NotEquivalentError, match="interpolate"):
        to_dense(Up(), 1)


def test_round_trip_outputs_and_state_dict(make_model):
    model = make_model("resnet18", features_only=True)
    x = torch.randn(1, 3, 67, 67)
    back = to_original(to_dense(model, 4))
    assert not is_dense(back)
    with torch.no_grad():
        for a, b in zip(back(x), model(x), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
    sd_a, sd_b = back.state_dict(), model.state_dict()
    assert sd_a.keys() == sd_b.keys()
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)
    assert {type(m) for m in back.modules()} == {type(m) for m in model.modules()}


def test_inplace_shares_parameters_and_copy_does_not(make_model):
    model = make_model("convnext_atto", features_only=True)
    params = {n: p for n, p in model.named_parameters()}
    buffers = {n: b for n, b in model.named_buffers()}
    dense = to_dense(model, 8, inplace=True)
    assert dense is model
    assert all(p is params[n] for n, p in dense.named_parameters())
    assert all(b is buffers[n] for n, b in dense.named_buffers())
    back = to_original(dense, inplace=True)
    assert all(p is params[n] for n, p in back.named_parameters())

    fresh = make_model("convnext_atto", features_only=True)
    copied = to_dense(fresh, 8)
    assert not is_dense(fresh)
    assert all(p is not q for p, q in zip(copied.parameters(), fresh.parameters(), strict=True))


def test_layers_keep_state_dict_and_restore(make_model):
    model = make_model("resnet50d", features_only=True)
    dense = to_dense(model, 2)
    kinds = {type(m) for m in dense.modules()}
    assert {EConv2d, EMaxPool2d, EAvgPool2d} <= kinds
    for key, value in model.state_dict().items():
        assert dense.state_dict()[key].shape == value.shape
    stepped = [m for m in dense.modules() if isinstance(m, EConv2d) and m.geometry.in_step[0] > 1]
    conv = next(m for m in stepped if m.kernel_size[0] > 1)
    original = conv.dense_state.original_config
    assert conv.dilation[0] == conv.geometry.in_step[0] * original["dilation"][0]
    # A 1x1 kernel has no holes: it keeps dilation 1, as a dilated peer's 1x1 convs do.
    assert all(m.dilation == (1, 1) for m in stepped if m.kernel_size == (1, 1))
    assert any(m.kernel_size == (1, 1) for m in stepped)
    assert "dense_dilation" in repr(conv)
    restored = conv.restore()
    assert type(restored) is nn.Conv2d
    assert restored.dilation == original["dilation"]
    assert not {"geometry", "dense_state", "_counts_padding"} & set(restored.__dict__)
    assert restored.weight is conv.weight


def test_deepcopy_and_pickle_of_dense_model(make_model, tmp_path):
    dense = to_dense(make_model("resnet18", features_only=True), 8)
    x = torch.randn(1, 3, 64, 64)
    clone = copy.deepcopy(dense)
    torch.save(dense, tmp_path / "m.pt")
    loaded = torch.load(tmp_path / "m.pt", weights_only=False)
    with torch.no_grad():
        for a, b, c in zip(dense(x), clone(x), loaded(x), strict=True):
            torch.testing.assert_close(a, b)
            torch.testing.assert_close(a, c)


def test_model_stride_traces_dense_models(make_model):
    model = make_model("resnet18", features_only=True)
    assert model_stride(model) == 32
    assert model_stride(to_dense(model, 4)) == 4


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (3, "power of two"),
        (12, "power of two"),
        (0, "power of two"),
        (-8, "power of two"),
        (64, "not reachable.*32"),
        (7.5, "integer"),
        (8.0, "integer"),
        ("8", "integer"),
        (True, "integer"),
    ],
)
def test_bad_output_stride(make_model, value, match):
    model = make_model("resnet18", features_only=True)
    with pytest.raises(ValueError, match=match):
        to_dense(model, value)


def test_model_without_spatial_layers():
    with pytest.raises(ValueError, match="no Conv2d, MaxPool2d or AvgPool2d"):
        to_dense(nn.Sequential(nn.Linear(3, 3)), 8)


def test_already_dense_and_missing_method(make_model):
    dense = to_dense(make_model("resnet18", features_only=True), 8)
    with pytest.raises(ValueError, match="already dense"):
        to_dense(dense, 4)
    with pytest.raises(ValueError, match="no method 'forward_head'"):
        to_dense(make_model("resnet18", features_only=True), 8, method="forward_head")


def test_verifier_names_first_divergent_module(make_model):
    model = make_model("resnet18", features_only=True)
    dense = to_dense(model, 8)
    with torch.no_grad():
        dense.layer3[1].conv1.weight.add_(0.05)
    report = verify_equivalence(model, dense, torch.randn(1, 3, 64, 64), check_phases=False)
    assert not report.equivalent
    assert report.first_divergent_module == "layer3.1.conv1"
    assert report.to_dict()["equivalent"] is False
    assert "first divergent module: layer3.1.conv1" in str(report)


def _smp_style_dilation(model: nn.Module) -> nn.Module:
    """smp's ``replace_strides_with_dilation``: one rate for every conv of layer4."""
    for module in model.layer4.modules():
        if isinstance(module, nn.Conv2d):
            module.stride = (1, 1)
            if module.kernel_size[0] > 1:
                module.dilation, module.padding = (2, 2), (2, 2)
    return model


def test_verifier_rejects_same_rate_dilation(make_model):
    # The counterexample from the style guide: not equivalent, and the verifier says so.
    model = make_model("resnet50", features_only=True)
    smp_like = _smp_style_dilation(copy.deepcopy(model))
    report = verify_equivalence(model, smp_like, torch.randn(1, 3, 64, 64), check_phases=False)
    assert not report.equivalent
    assert report.max_rel_error > 1e-2
    assert report.first_divergent_module.startswith("layer4.0")
    ours = verify_equivalence(model, to_dense(model, 16), torch.randn(1, 3, 64, 64))
    assert ours.equivalent


def test_timm_pooled_shortcut_and_same_padding_layers():
    # timm layers with their own forward: StdConv2d (weight standardisation), same-padding pools.
    from timm.layers import Conv2dSame, StdConv2d, StdConv2dSame
    from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame

    model = nn.Sequential(
        StdConv2d(3, 4, 3, stride=2, padding=1),
        StdConv2dSame(4, 4, 3, stride=1, padding="same"),
        Conv2dSame(4, 4, 4, stride=2),
        MaxPool2dSame(3, stride=2),
        AvgPool2dSame(2, stride=2),
        nn.Conv2d(4, 4, 3, padding=1),
    ).eval()
    dense = to_dense(model, 1)
    assert type(dense[0]).__name__ == "EConv2d_StdConv2d"
    assert type(dense[1]).__name__ == "EConv2d_StdConv2dSame"
    for size in (33, 40, 45):
        report = verify_equivalence(model, dense, torch.randn(1, 3, size, size))
        assert report.equivalent, str(report)
    back = to_original(dense)
    assert [type(m) for m in back] == [type(m) for m in model]
    assert timm.layers.StdConv2d in {type(m) for m in back.modules()}
