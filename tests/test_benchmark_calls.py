"""Ours does the work of timm's dilated model: the same aten calls, and the speed verdicts."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from benchmarks._hand_dilated import hand_dilated
from benchmarks._ops import aten_calls, compare_calls
from benchmarks._speed_peer import build_peer, median_interval, same_calls, train_step, verdict
from dense_lightning.equivalent import to_dense

CPU = torch.device("cpu")


def _features(name: str) -> nn.Module:
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()


def _compare(ours: nn.Module, peer: nn.Module, size: int = 64) -> dict[str, dict]:
    torch.manual_seed(1)
    x, xt = torch.randn(1, 3, size, size), torch.randn(2, 3, size, size)
    models = {"ours": ours, "peer": peer}
    with torch.no_grad():
        inference = same_calls({k: (lambda m=m: m.forward_features(x)) for k, m in models.items()})
    steps = {k: train_step(copy.deepcopy(m).train(), xt) for k, m in models.items()}
    return {"inference": inference, "train": same_calls(steps)}


@pytest.mark.parametrize("name", ["resnet18", "resnet26", "regnetx_002", "mobilenetv2_035"])
def test_dense_makes_the_aten_calls_of_timms_dilated_model(name):
    original = _features(name)
    peer, why = build_peer(name, 8, original, CPU)
    assert peer is not None, why
    compared = _compare(to_dense(original, 8).eval(), peer)
    # The same ops on tensors of the same shapes and strides, with the same padding and
    # dilation: no pad copies, no extra kernels, pointwise convs on the pointwise kernel.
    for key, result in compared.items():
        assert result["same"], (key, result)
        assert result["ours"] > 50


def test_dense_makes_the_aten_calls_of_the_hand_dilated_peer():
    original = _features("dla46_c")
    compared = _compare(to_dense(original, 8).eval(), hand_dilated(original, 8).eval())
    assert compared["inference"]["same"], compared["inference"]
    assert compared["train"]["same"], compared["train"]


def test_per_phase_squeeze_excitation_makes_other_calls():
    # timm's dilated SE network is fast and wrong; ours pays per-phase gates, and the
    # comparison says so instead of calling the two the same work.
    original = _features("regnety_002")
    peer, _ = build_peer("regnety_002", 8, original, CPU)
    result = _compare(to_dense(original, 8).eval(), peer)["inference"]
    assert not result["same"] and result["only_ours"] > 0


def test_compare_calls_sees_arguments_not_just_op_names():
    x = torch.randn(1, 8, 16, 16)
    pointwise = nn.Conv2d(8, 8, 1)
    holed = copy.deepcopy(pointwise)
    holed.dilation = (2, 2)
    with torch.no_grad():
        result = compare_calls(aten_calls(lambda: holed(x)), aten_calls(lambda: pointwise(x)))
    # The same numbers, another kernel: a 1x1 conv with dilation 2 is a different call.
    torch.testing.assert_close(holed(x), pointwise(x))
    assert not result["same"]
    assert result["ops_only_ours"] == {"aten.convolution.default": 1}
    assert result["ops_only_peer"] == {"aten.convolution.default": 1}
    # A different stride of the input tensor is a different call too.
    channels_last = x.to(memory_format=torch.channels_last)
    with torch.no_grad():
        strided = compare_calls(
            aten_calls(lambda: pointwise(channels_last)), aten_calls(lambda: pointwise(x))
        )
    assert not strided["same"]


def test_compare_calls_ignores_the_order_of_branches():
    x = torch.randn(1, 4, 8, 8)
    a, b = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 1)
    with torch.no_grad():
        first = aten_calls(lambda: (a(x), b(x)))
        second = aten_calls(lambda: (b(x), a(x)))
        twice = aten_calls(lambda: (a(x), a(x), b(x)))
    assert compare_calls(first, second)["same"]
    extra = compare_calls(twice, first)
    assert not extra["same"] and extra["only_ours"] == 1 and extra["only_peer"] == 0


def test_median_interval_holds_the_median_and_narrows_with_agreement():
    ratios = [0.9, 1.1, 1.0, 0.95, 1.05, 1.2, 0.85]
    low, high = median_interval(ratios)
    assert low <= 1.0 <= high and low >= min(ratios) and high <= max(ratios)
    assert median_interval(ratios) == (low, high)  # seeded
    assert median_interval([1.02] * 9) == pytest.approx((1.02, 1.02))
    even_low, even_high = median_interval([1.0, 2.0])
    assert even_low == 1.0 and even_high == 2.0


@pytest.mark.parametrize(
    ("ratio", "interval", "same", "expected"),
    [
        (0.98, (0.95, 1.01), False, "met"),
        (1.02, (0.99, 1.05), True, "tie"),
        (1.02, (0.99, 1.05), False, "noise"),
        (1.08, (1.03, 1.12), True, "above"),
    ],
)
def test_verdict_reads_the_ratio_its_interval_and_the_calls(ratio, interval, same, expected):
    assert verdict({"ratio": ratio, "ratio_ci": list(interval)}, same) == expected


def test_hand_dilated_keeps_pointwise_convs_at_dilation_one():
    original = _features("dla46_c")
    peer = hand_dilated(original, 8)
    dilations = {m.dilation for m in peer.modules() if isinstance(m, nn.Conv2d)}
    assert (1, 1) in dilations and max(d[0] for d in dilations) == 4
    assert all(
        m.dilation == (1, 1) for m in peer.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)
    )  # fmt: skip
