"""Fast paths of the dense layers and regions compute what the general paths compute."""

from __future__ import annotations

import copy

import pytest
import torch
from timm.layers.eca import EcaModule
from timm.layers.squeeze_excite import EffectiveSEModule, SEModule
from timm.models._efficientnet_blocks import SqueezeExcite
from torch import nn

from dense_lightning.equivalent import (
    batch_to_space,
    space_to_batch,
    to_dense,
    to_original,
    verify_equivalence,
)
from dense_lightning.equivalent.layers import EAvgPool2d, EConv2d
from dense_lightning.equivalent.phase import region_hooks
from dense_lightning.equivalent.statistics import channel_gate, gate_on_dense_map
from tests.equivalent.conftest import randomize_norms

GATES = {
    "SEModule": lambda: SEModule(12, rd_channels=4),
    "SEModule+bn": lambda: SEModule(12, rd_channels=4, norm_layer=nn.BatchNorm2d),
    "SEModule+max": lambda: SEModule(12, rd_channels=4, add_maxpool=True),
    "EffectiveSE": lambda: EffectiveSEModule(12),
    "EffectiveSE+max": lambda: EffectiveSEModule(12, add_maxpool=True),
    "SqueezeExcite": lambda: SqueezeExcite(12, rd_ratio=0.25),
    "Eca": lambda: EcaModule(12),
    "Eca2": lambda: EcaModule(12, use_mlp=True),
}


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", [(20, 28), (21, 15), (9, 9)], ids=str)
@pytest.mark.parametrize("step", [(2, 2), (4, 4), (1, 4)], ids=str)
@pytest.mark.parametrize("name", GATES)
def test_gate_statistics_on_the_dense_map_equal_the_phase_path(name, step, size, train):
    torch.manual_seed(0)
    module = randomize_norms(GATES[name]()).train(train)
    gate = channel_gate(module)
    assert gate is not None
    x = torch.randn(2, 12, size[0] * step[0], size[1] * step[1])
    split = copy.deepcopy(module)
    expected = batch_to_space(split(space_to_batch(x, step)), step)
    got = gate_on_dense_map(module, gate, x, step)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    if train and name == "SEModule+bn":  # the batch norm saw the same statistics
        torch.testing.assert_close(module.bn.running_var, split.bn.running_var)


@pytest.mark.parametrize("rows", [3, 70], ids=["many-chunks", "one-chunk"])
def test_gated_map_holds_about_the_memory_of_a_plain_gate(rows):
    from benchmarks._common import peak_memory

    torch.manual_seed(0)
    module = SEModule(16, rd_channels=4).eval()
    x = torch.randn(2, 16, rows * 4, 48)
    split = copy.deepcopy(module)
    with torch.no_grad():
        got = gate_on_dense_map(module, channel_gate(module), x, (4, 4))
        expected = batch_to_space(split(space_to_batch(x, (4, 4))), (4, 4))
        # The output, the per-phase statistics and gates, and repeated gate rows of a few
        # channels at a time: not gate rows for the whole map next to it.
        peak = peak_memory(lambda: gate_on_dense_map(module, channel_gate(module), x, (4, 4)),
                           torch.device("cpu"))  # fmt: skip
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    # Gate rows for the whole map would be 1/3 of it at three rows per phase.
    assert peak <= x.nbytes * 1.1


def test_gate_statistics_keep_gradients():
    torch.manual_seed(0)
    module = SqueezeExcite(8)
    twin = copy.deepcopy(module)
    x = torch.randn(1, 8, 12, 20, requires_grad=True)
    x2 = x.detach().clone().requires_grad_()
    gate_on_dense_map(module, channel_gate(module), x, (4, 4)).square().sum().backward()
    batch_to_space(twin(space_to_batch(x2, (4, 4))), (4, 4)).square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    for a, b in zip(module.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_gated_map_takes_an_in_place_residual_sum_in_training():
    # timm's blocks add the shortcut in place on the gated map (``x += shortcut``): the gated
    # map must not be a view made inside the custom autograd function; gradients stay exact.
    torch.manual_seed(0)
    module = SEModule(12, rd_channels=4)
    twin = copy.deepcopy(module)
    x = torch.randn(2, 12, 8, 12, requires_grad=True)
    shortcut = torch.randn(2, 12, 8, 12)
    x2 = x.detach().clone().requires_grad_()
    got = gate_on_dense_map(module, channel_gate(module), x, (2, 4))
    got += shortcut
    expected = batch_to_space(twin(space_to_batch(x2, (2, 4))), (2, 4)) + shortcut
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    got.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(module.fc1.weight.grad, twin.fc1.weight.grad, rtol=1e-5, atol=1e-6)


def test_gate_layers_with_hooks_still_run_as_modules():
    # The gate's 1x1 convolutions run as a matmul, except where a hook (a user's, quantisation,
    # pruning masks) expects the module to be called.
    torch.manual_seed(0)
    module = SEModule(12, rd_channels=4)
    calls = []
    module.fc2.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    x = torch.randn(2, 12, 8, 8)
    expected = batch_to_space(module(space_to_batch(x, (2, 2))), (2, 2))
    calls.clear()
    got = gate_on_dense_map(module, channel_gate(module), x, (2, 2))
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    assert calls == [torch.Size([8, 12, 1, 1])]


def test_subclass_of_a_gate_is_not_recognised():
    class Custom(SEModule):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gate(self.fc2(self.fc1(x.amax((2, 3), keepdim=True))))

    assert channel_gate(Custom(8)) is None


def _gated(dense: nn.Module) -> list[nn.Module]:
    return [m for m, _, _, r in region_hooks(dense) if r.gate is not None]


@pytest.mark.parametrize("size", [64, 67, 72], ids=str)
def test_dense_efficientnet_gates_on_the_dense_map_are_exact(make_model, size):
    model = make_model("efficientnet_b0", features_only=True)
    dense = to_dense(model, 8)
    gated = _gated(dense)
    assert gated and all("forward" in m.__dict__ for m in gated)
    x = torch.randn(1, 3, size, size + 5)
    assert verify_equivalence(model, dense, x, check_phases=False).equivalent
    split = copy.deepcopy(dense)
    for module, _, _, region in region_hooks(split):
        module.__dict__.pop("forward", None)
        region.gate = None
    with torch.no_grad():
        for a, b in zip(dense(x), split(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    exported = to_original(dense)
    assert not any("forward" in m.__dict__ for m in exported.modules())
    with torch.no_grad():
        for a, b in zip(exported(x), model(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_gates_survive_deepcopy_and_run_in_train_mode(make_model):
    model = make_model("regnety_002", features_only=True)
    dense = copy.deepcopy(to_dense(model, 8))
    gated = _gated(dense)
    assert gated
    # The copied forward belongs to the copied module, not to the one it was copied from.
    assert all(m.forward.args[1] is m for m in gated)
    dense.train()
    out = dense(torch.randn(2, 3, 64, 64))
    sum(o.square().mean() for o in out).backward()
    assert all(p.grad is not None for m in gated for p in m.parameters())


def _dense_layers(dense: nn.Module, cls: type) -> list[nn.Module]:
    return [m for m in dense.modules() if isinstance(m, cls)]


def test_padding_plans_are_cached_per_input_size(make_model):
    dense = to_dense(make_model("resnet18", features_only=True), 8)
    conv = next(m for m in _dense_layers(dense, EConv2d) if m.geometry.in_step != (1, 1))
    g = conv.geometry
    g._plans.clear()  # the proof at conversion planned its probe's size
    a, b = torch.zeros(1, 1, 28, 28), torch.zeros(1, 1, 30, 26)
    first = g.plan(a)
    assert g.plan(a) is first  # a hit: the same plan object
    assert g._plans == {(28, 28): first}
    other = g.plan(b)
    assert other is not first and set(g._plans) == {(28, 28), (30, 26)}
    # Cached plans are what planning computes afresh.
    assert other.h == g.h.plan(30, g.ceil_mode) and other.w == g.w.plan(26, g.ceil_mode)
    assert copy.deepcopy(g) == g  # the cache is not part of the geometry's identity


class _AvgNet(nn.Module):
    def __init__(self, ceil_mode: bool, count_include_pad: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, 2, 1)
        self.pool = nn.AvgPool2d(3, 2, 1, ceil_mode=ceil_mode, count_include_pad=count_include_pad)
        self.head = nn.Conv2d(4, 4, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.conv(x)))


@pytest.mark.parametrize("ceil_mode,count_include_pad", [(False, True), (True, False)])
def test_average_pool_constants_are_cached_and_exact(ceil_mode, count_include_pad):
    torch.manual_seed(0)
    model = _AvgNet(ceil_mode, count_include_pad).eval()
    dense = to_dense(model, 1)
    (pool,) = _dense_layers(dense, EAvgPool2d)
    for size in (33, 40):
        assert verify_equivalence(model, dense, torch.randn(1, 3, size, size)).equivalent
    pool._constant_cache.clear()
    x = torch.randn(1, 3, 33, 33)
    with torch.no_grad():
        fresh = dense(x)
        assert len(pool._constant_cache) == 1
        torch.testing.assert_close(dense(x), fresh, rtol=0, atol=0)  # from the cache
        dense(torch.randn(1, 3, 40, 40))
    assert len(pool._constant_cache) == 2  # one entry per input size
    assert "_constant_cache" not in to_original(dense).pool.__dict__
