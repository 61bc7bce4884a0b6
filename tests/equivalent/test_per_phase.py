"""Position-mixing modules run per phase and are exact: timm families and one module per kind."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent import (
    NotEquivalentError,
    batch_to_space,
    set_execution,
    to_dense,
    to_original,
    verify_equivalence,
)
from dense_lightning.equivalent.phase import remove_regions
from tests.equivalent.tester import Family, check_features_only

PER_PHASE_FAMILIES = [
    Family("seresnet18", regions=("layer3.0.se", "layer4.1.se")),  # squeeze-excitation
    Family("ecaresnet26t", regions=("layer3.0.se",)),  # ECA: conv1d over channels of a mean
    Family("efficientnet_b0", regions=("blocks.3.0.se",)),
    Family("mobilenetv3_small_100", regions=("blocks.2.0.se",)),  # hard-sigmoid SE
    Family("regnety_002", regions=("s3.b1.se",)),
    Family("lcnet_050"),
    Family("mixnet_s"),  # mixed kernel sizes + SE
    Family("resnest14d", (64,)),  # split attention (radix softmax over a spatial mean)
    Family("convnextv2_atto", regions=("stages_2.blocks.0.mlp.grn",)),  # GRN: a spatial norm
    Family("resnet18", kwargs={"norm_layer": timm.layers.GroupNorm}),  # group norm statistics
    Family("hrnet_w18_small", (64,)),  # nearest upsampling between lattices in fuse layers
    Family("edgenext_xx_small", (64,)),  # attention over positions inside a CNN
    # Strided blocks that hold what cannot be given holes run once per output phase on views:
    Family("skresnet18", regions=("layer3.0.conv1", "layer4.0.conv1")),  # SK gate after a stride
    Family("resnet18", kwargs={"aa_layer": timm.layers.BlurPool2d}, regions=("layer3.0.aa",)),
    Family("inception_v3", (80, 83), regions=("Mixed_6a", "Mixed_7a")),  # F.max_pool2d stride 2
]
STRIDES = [pytest.param(16, marks=pytest.mark.slow), 8, pytest.param(4, marks=pytest.mark.slow)]


@pytest.mark.parametrize("output_stride", STRIDES)
@pytest.mark.parametrize("family", PER_PHASE_FAMILIES, ids=str)
def test_per_phase_family_equivalent(make_model, family, output_stride):
    dense = check_features_only(make_model, family, output_stride)
    # At output stride 16 only the last stage is dense; resnest14d has one block there, whose
    # split attention runs before its strided pool, on the original lattice, so needs no region.
    assert dense.dense_info.regions or (output_stride == 16 and family.name == "resnest14d")


def test_group_norm_trunk_inverts_into_timm(make_model):
    model = make_model("resnet18", norm_layer=timm.layers.GroupNorm)
    dense = to_dense(model, 8, method="forward_features")
    x = torch.randn(2, 3, 67, 67)
    assert verify_equivalence(model, dense, x, check_phases=False).equivalent
    exported = to_original(dense)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in exported.modules())
    fresh = timm.create_model("resnet18", pretrained=False, norm_layer=timm.layers.GroupNorm)
    fresh.load_state_dict(exported.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model(x), rtol=1e-5, atol=1e-5)


def test_speed_paths_keep_the_regions_exact(make_model):
    model = make_model("seresnet18", features_only=True)
    dense = to_dense(model, 4)
    x = torch.randn(1, 3, 67, 61)
    for mode, blocks in [("phase", True), ("phase", False), ("dilated", True)]:
        set_execution(dense, mode, blocks=blocks)
        report = verify_equivalence(model, dense, x, check_phases=False)
        assert report.equivalent, (mode, blocks, str(report))


class ConvBnSe(nn.Module):
    """A body block whose BatchNorm sits inside the region that its SE gate needs."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, 1, 1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn(self.conv(x))
        return y * y.mean((2, 3), keepdim=True).sigmoid()


def test_train_mode_batch_norm_inside_a_region_sees_the_same_elements():
    # In phase layout BatchNorm normalises over phases x batch: the same elements as over the
    # dense map, so its batch statistics, running statistics and output are unchanged.
    torch.manual_seed(0)
    dense = to_dense(Stem(ConvBnSe()).eval(), 1).train()
    assert [r.module for r in dense.dense_info.regions] == ["body"]
    without = copy.deepcopy(dense)
    remove_regions(without, required=True)
    x = torch.randn(2, 3, 40, 40)
    seen = {}
    for name, net in (("region", dense), ("dense map", without)):
        net.body.bn.register_forward_hook(lambda m, a, out, name=name: seen.update({name: out}))
        net(x)
    a, b = seen["region"], seen["dense map"]
    assert a.shape[0] == 16 * b.shape[0]  # 4x4 phases per image
    torch.testing.assert_close(batch_to_space(a, (4, 4)), b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dense.body.bn.running_var, without.body.bn.running_var)


# --- one small module per kind of position mixing -------------------------------------------


class Stem(nn.Module):
    """Two stride-2 convs: everything after them has lattice step 4 at output stride 1."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, 2, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, 2, 1))
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.stem(x))


class Fn(nn.Module):
    """A module whose forward is one functional expression (a body block of a real net)."""

    def __init__(self, fn, conv: bool = False) -> None:
        super().__init__()
        self.fn = fn
        self.conv = nn.Conv2d(4, 4, 3, 1, 1) if conv else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.conv(x))


def _coords(x: torch.Tensor) -> torch.Tensor:
    w = torch.arange(x.shape[-1], dtype=x.dtype) / x.shape[-1]
    return x + w


def _five_d(x: torch.Tensor) -> torch.Tensor:
    stacked = torch.stack([x, x.flip(1)], dim=1)  # [N, 2, C, H, W], as selective kernels do
    weights = stacked.mean((-2, -1), keepdim=True).softmax(1)
    return (stacked * weights).sum(1)


def _attention(x: torch.Tensor) -> torch.Tensor:
    tokens = x.flatten(2)  # [N, C, HW]
    weights = (tokens.transpose(1, 2) @ tokens / 2).softmax(-1)  # [N, HW, HW]
    return (tokens @ weights.transpose(1, 2)).reshape(x.shape)


KINDS = {
    "squeeze_excite": lambda x: x * x.mean((2, 3), keepdim=True).sigmoid(),
    "group_norm": lambda x: F.group_norm(x, 2),
    "vector_norm": lambda x: x / torch.linalg.vector_norm(x, dim=(2, 3), keepdim=True),
    "spatial_softmax": lambda x: x.flatten(2).softmax(-1).reshape(x.shape),
    "functional_avg_pool": lambda x: F.avg_pool2d(x, 3, 1, 1, count_include_pad=False),
    "functional_max_pool": lambda x: F.max_pool2d(x, 3, 1, 1),
    "functional_conv": lambda x: F.conv2d(x, torch.ones(4, 1, 3, 3) / 9, padding=1, groups=4),
    "explicit_pad_and_slice": lambda x: F.pad(x, (1, 1, 1, 1))[..., :-2, 2:],
    "cat_along_width": lambda x: torch.cat([x[..., :1], x[..., :-1]], dim=-1),
    "cumsum": lambda x: x.cumsum(-2) / x.shape[-2],
    "coordinate_map": _coords,
    "five_d_branches": _five_d,
    "attention": _attention,
}


@pytest.mark.parametrize("size", [32, 37])
@pytest.mark.parametrize("kind", KINDS)
def test_each_kind_runs_per_phase(kind, size):
    torch.manual_seed(0)
    model = Stem(Fn(KINDS[kind], conv=True)).eval()
    dense = to_dense(model, 1)
    assert [r.module for r in dense.dense_info.regions] == ["body"]
    assert dense.dense_info.regions[0].in_step == (4, 4)
    x = torch.randn(2, 3, size, size)
    report = verify_equivalence(model, dense, x)
    assert report.equivalent, str(report)


class Fuse(nn.Module):
    """HRNet-style fuse: a deep branch upsampled onto a shallow one, then added."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.down = nn.Conv2d(4, 4, 3, 2, 1)
        if mode == "pixel_shuffle":  # a sub-pixel upsampler, as in super-resolution necks
            self.up = nn.Sequential(nn.Conv2d(4, 16, 1), nn.PixelShuffle(2))
            return
        up = {"align_corners": False} if mode == "bilinear" else {}
        self.up = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Upsample(scale_factor=2, mode=mode, **up))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.down(x))


@pytest.mark.parametrize("mode", ["nearest", "bilinear", "pixel_shuffle"])
@pytest.mark.parametrize("output_stride", [1, 2])
def test_resampling_between_lattices(mode, output_stride):
    torch.manual_seed(0)
    model = Stem(Fuse(mode)).eval()
    dense = to_dense(model, output_stride)
    regions = {r.module: r for r in dense.dense_info.regions}
    assert list(regions) == ["body.up.1"]  # the smallest module around it: the Upsample
    assert regions["body.up.1"].in_step[0] == 2 * regions["body.up.1"].out_step[0]
    for size in (32, 40):  # the original itself needs multiples of 8
        x = torch.randn(1, 3, size, size)
        report = verify_equivalence(model, dense, x, check_phases=False)
        assert report.equivalent, str(report)


class Strided(nn.Module):
    """A body block that changes the lattice: a strided conv, then a functional expression."""

    def __init__(self, fn, se: bool = False) -> None:
        super().__init__()
        self.fn = fn
        self.down = nn.Conv2d(4, 4, 3, 2, 1)
        self.se = Fn(KINDS["squeeze_excite"]) if se else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.se(self.fn(self.down(x)))


_BLUR = torch.tensor([1.0, 2.0, 1.0])


def _blur_pool(x: torch.Tensor) -> torch.Tensor:
    kernel = (_BLUR[:, None] * _BLUR[None] / 16).expand(4, 1, 3, 3)
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), kernel, stride=2, groups=4)


# kind: (expression after the strided conv, SE gate after it, the expression's own stride)
STRIDED_KINDS = {
    "functional_max_pool": (lambda x: F.max_pool2d(x, 3, 2, 1), False, 2),
    "blur_pool_reflect": (_blur_pool, False, 2),
    "selective_kernel_gate": (_five_d, False, 1),
    "pool_with_nested_squeeze_excite": (lambda x: F.max_pool2d(x, 3, 2, 1), True, 2),
    "down_and_up": (lambda x: F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0), False, 1),
}


@pytest.mark.parametrize("size", [32, 37])
@pytest.mark.parametrize("output_stride", [1, 2])
@pytest.mark.parametrize("kind", STRIDED_KINDS)
def test_strided_block_runs_once_per_output_phase(kind, output_stride, size):
    # The block is the original module on each output phase's input view: exact whatever it
    # holds, and a region inside it (its SE gate) is absorbed rather than refused.
    torch.manual_seed(0)
    fn, se, stride = STRIDED_KINDS[kind]
    model = Stem(Strided(fn, se=se)).eval()
    dense = to_dense(model, output_stride)
    (region,) = dense.dense_info.regions
    step = 4 // output_stride
    assert region.module == "body" and region.in_step == (step, step)
    assert region.out_step == (2 * stride * step,) * 2
    assert region.per_view_statistics == (se or kind == "selective_kernel_gate")
    factor = region.out_step[0]
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        original, out = model(x), dense(x)
    assert out.shape[-2:] == tuple(factor * n for n in original.shape[-2:])
    torch.testing.assert_close(out[..., ::factor, ::factor], original, rtol=1e-5, atol=1e-6)
    report = verify_equivalence(model, dense, x, check_phases=not region.per_view_statistics)
    assert report.equivalent, str(report)


def test_op_fed_from_two_lattices_is_refused_with_its_module():
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a.mean((2, 3), keepdim=True) * b

    class Net(Stem):
        def __init__(self) -> None:
            super().__init__(nn.Identity())
            self.down, self.two = nn.Conv2d(4, 4, 1, 2), Two()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            return self.two(y, self.down(y))

    with pytest.raises(NotEquivalentError, match=r"two \(Two\): mean over spatial dims"):
        to_dense(Net().eval(), 1)


def test_op_at_the_root_is_refused():
    class Root(Stem):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.stem(x)
            return y * y.mean((2, 3), keepdim=True)

    with pytest.raises(NotEquivalentError, match="<root>"):
        to_dense(Root(nn.Identity()).eval(), 1)


@pytest.mark.parametrize(
    ("name", "kwargs"), [("skresnet18", {}), ("resnet18", {"aa_layer": timm.layers.BlurPool2d})]
)
def test_strided_regions_train_and_export_into_timm(make_model, name, kwargs):
    model = make_model(name, features_only=True, **kwargs)
    dense = to_dense(model, 8).train()
    assert any(r.in_step != r.out_step for r in dense.dense_info.regions)
    # Gradients flow through the views into every weight of the strided blocks.
    sum(f.square().mean() for f in dense(torch.randn(2, 3, 64, 64))).backward()
    assert all(p.grad is not None for p in dense.parameters() if p.requires_grad)
    exported = to_original(dense.eval())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in exported.modules())
    fresh = timm.create_model(name, pretrained=False, features_only=True, **kwargs).eval()
    fresh.load_state_dict(exported.state_dict(), strict=True)
    x = torch.randn(1, 3, 67, 67)
    with torch.no_grad():
        for a, b in zip(fresh(x), exported(x), strict=True):
            torch.testing.assert_close(a, b)
