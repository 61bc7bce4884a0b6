"""Phase (space-to-batch) execution computes exactly what the dilated dense layers compute."""

import copy
import random

import pytest
import timm
import torch
from timm.layers import Conv2dSame, StdConv2d
from timm.layers.pool2d_same import AvgPool2dSame, MaxPool2dSame
from torch import nn

from dense_lightning.equivalent import (
    batch_to_space,
    execution_choices,
    model_stride,
    set_execution,
    space_to_batch,
    to_dense,
    to_original,
    verify_equivalence,
)
from dense_lightning.equivalent.execution import chosen_regions

MODES = [("phase", False), ("phase", True), ("auto", True), ("auto", False)]


def _rel(a, b):
    return ((a - b).abs().max() / a.abs().max().clamp_min(1e-12)).item()


def _variants(dense):
    """The dense model under every execution mode (copies), keyed by mode name."""
    out = {}
    for mode, blocks in MODES:
        out[f"{mode}{'+blocks' if blocks else ''}"] = set_execution(
            copy.deepcopy(dense), mode, blocks=blocks
        )
    return out


@pytest.mark.parametrize("step", [(2, 2), (4, 2), (1, 3)])
@pytest.mark.parametrize("mid", [(5,), (2, 5)])  # 4-D maps and 5-D stacks of branches
def test_space_to_batch_round_trip(step, mid):
    x = torch.randn(3, *mid, 12, 6)
    phases = space_to_batch(x, step)
    assert phases.shape == (3 * step[0] * step[1], *mid, 12 // step[0], 6 // step[1])
    assert torch.equal(phases[:3], x[..., :: step[0], :: step[1]])
    last = phases[-3:]
    assert torch.equal(last, x[..., step[0] - 1 :: step[0], step[1] - 1 :: step[1]])
    assert torch.equal(batch_to_space(phases, step), x)


def _random_layer(rng: random.Random) -> nn.Module:
    kind = rng.choice(["conv", "conv", "std", "same", "max", "avg", "maxsame", "avgsame"])
    k, s = rng.choice([1, 2, 3, 4, 5]), rng.choice([1, 1, 2])
    if kind == "conv":
        return nn.Conv2d(
            8, 8, k, s, padding=rng.randint(0, k // 2 + 1), dilation=rng.choice([1, 2]),
            groups=rng.choice([1, 8]),
        )  # fmt: skip
    if kind == "std":
        return StdConv2d(8, 8, k, s, padding=k // 2)
    if kind == "same":
        return Conv2dSame(8, 8, k, s)
    if kind in ("maxsame", "avgsame"):
        return (MaxPool2dSame if kind == "maxsame" else AvgPool2dSame)(max(k, 2), s)
    k = max(k, 2)
    pad, ceil = rng.randint(0, k // 2), rng.random() < 0.5
    if kind == "max":
        return nn.MaxPool2d(k, s, pad, dilation=rng.choice([1, 2]), ceil_mode=ceil)
    return nn.AvgPool2d(k, s, pad, ceil_mode=ceil, count_include_pad=rng.random() < 0.5)


@pytest.mark.parametrize("seed", range(12))
def test_random_layers_every_path_exact(seed):
    rng = random.Random(seed)
    torch.manual_seed(seed)
    # Two strided stem layers make the layers under test see input steps 2 or 4.
    body = [_random_layer(rng) for _ in range(3)]
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), *body, nn.BatchNorm2d(8)
    ).eval()
    size = (rng.randint(41, 67), rng.randint(41, 67))
    x = torch.randn(2, 3, *size)
    for output_stride in (1, 2):
        if model_stride(model) % output_stride:
            continue  # a stride the random body cannot reach
        dense = to_dense(model, output_stride).eval()
        with torch.no_grad():
            ref = dense(x)
            for name, variant in _variants(dense).items():
                assert _rel(ref, variant(x)) < 1e-5, (seed, output_stride, name)
                # Against the original too: both paths share each layer's _run, so agreeing
                # with each other alone would not show that either is right.
                report = verify_equivalence(model, variant, x, check_phases=False)
                assert report.equivalent, (seed, output_stride, name, str(report))


@pytest.mark.parametrize(
    ("name", "output_stride"),
    [
        ("resnet18", 8),
        ("convnext_atto", 8),
        pytest.param("resnet18", 4, marks=pytest.mark.slow),
        pytest.param("vgg11", 4, marks=pytest.mark.slow),
        pytest.param("resnet50d", 8, marks=pytest.mark.slow),  # avg-pool shortcuts, ceil_mode
    ],
)
def test_timm_models_every_path_exact(name, output_stride):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=0, global_pool="").eval()
    dense = to_dense(model, output_stride, method="forward_features").eval()
    x = torch.randn(1, 3, 77, 69)
    with torch.no_grad():
        ref = dense.forward_features(x)
        for variant_name, variant in _variants(dense).items():
            assert _rel(ref, variant.forward_features(x)) < 1e-5, variant_name
    report = verify_equivalence(model, _variants(dense)["phase+blocks"], x, max_phases=2)
    assert report.equivalent, report


def test_blocks_follow_sequential_runs():
    model = timm.create_model("resnet50", pretrained=False, num_classes=0, global_pool="")
    dense = to_dense(model, 8, method="forward_features")
    plan = {region.name: region.in_step for region in chosen_regions(dense)}
    assert plan == {"layer3[1:5]": (2, 2), "layer4.0": (2, 2), "layer4[1:2]": (4, 4)}


def test_auto_caches_a_choice_per_shape():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="").eval()
    dense = set_execution(to_dense(model, 8, method="forward_features"), "auto").eval()
    with torch.no_grad():
        dense.forward_features(torch.randn(1, 3, 64, 64))
        first = execution_choices(dense)
        dense.forward_features(torch.randn(1, 3, 64, 64))
        assert execution_choices(dense) == first
        dense.forward_features(torch.randn(1, 3, 96, 64))
    decided = execution_choices(dense)
    assert sum(decided["blocks"].values()) == 2 * sum(first["blocks"].values()) > 0
    assert set(decided["blocks"]) | set(decided["layers"]) <= {"dilated", "phase"}


def test_training_step_matches_dilated():
    torch.manual_seed(0)
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="")
    dense = to_dense(model, 8, method="forward_features").train()
    phase = set_execution(copy.deepcopy(dense), "phase").train()
    x = torch.randn(2, 3, 64, 64)
    outs, grads = [], []
    for net in (dense, phase):
        y = net.forward_features(x)
        y.square().mean().backward()
        outs.append(y.detach())
        grads.append(torch.cat([p.grad.flatten() for p in net.parameters()]))
    assert _rel(outs[0], outs[1]) < 1e-4
    assert _rel(grads[0], grads[1]) < 1e-3
    bn = [b for b in (dense.layer4[1].bn2, phase.layer4[1].bn2)]
    assert torch.allclose(bn[0].running_var, bn[1].running_var, rtol=1e-4)


def test_inverse_transfer_and_state_dict_unaffected():
    model = timm.create_model("resnet18", pretrained=False, num_classes=0, global_pool="").eval()
    dense = to_dense(model, 4, method="forward_features")
    keys = list(dense.state_dict())
    phase = set_execution(dense, "phase")
    assert list(phase.state_dict()) == keys
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        exported = to_original(phase).eval()
        assert _rel(model.forward_features(x), exported.forward_features(x)) < 1e-6
        restored = [m for m in exported.modules() if isinstance(m, nn.Conv2d)]
        assert not any("dense_state" in m.__dict__ for m in restored)
        # The exported model carries no execution state: no hook points at a dense layer.
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in exported.modules())
        reference = timm.create_model("resnet18", pretrained=False, num_classes=0)
        reference.load_state_dict(exported.state_dict(), strict=True)
        set_execution(phase, "dilated")
        assert not any(m._forward_hooks or m._forward_pre_hooks for m in phase.modules())


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode must be"):
        set_execution(nn.Conv2d(1, 1, 1), "fast")  # type: ignore[arg-type]
