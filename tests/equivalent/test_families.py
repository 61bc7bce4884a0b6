"""Exact equivalence on real timm families, as a table: adding a family is one line."""

from __future__ import annotations

import pytest
import timm
import torch

from dense_lightning.equivalent import to_dense, to_original, verify_equivalence
from tests.equivalent.tester import Family, check_features_only

# name, input sizes (odd sizes where the original network itself accepts them)
FAMILIES = [
    ("resnet18", (64, 67)),
    ("resnet50d", (64, 67)),  # ResNet-D: avg_down shortcut, AvgPool2d(2, ceil_mode=True)
    ("resnext26ts", (64, 67)),
    ("regnetx_002", (64, 67)),
    ("cspresnet50", (64, 67)),
    ("darknet53", (64, 67)),
    ("mobilenetv2_100", (64, 67)),
    ("efficientnet_lite0", (64, 67)),
    ("tf_efficientnet_lite0", (64, 71)),  # dynamic TF-"same" padding, made exact
    ("repvgg_a0", (64, 67)),
    ("convnext_atto", (64, 67)),  # 2x2 stride-2 downsample convs: even kernels
    ("vgg11", (64, 67)),  # 2x2 max pools
    ("dla34", (64,)),  # DLA itself needs multiples of 32
    ("densenet121", (64, 67)),
]
STRIDES = [16, 8, 4, pytest.param(1, marks=pytest.mark.slow)]


def _ids(entry: tuple) -> str:
    return entry[0]


@pytest.mark.parametrize("output_stride", STRIDES)
@pytest.mark.parametrize("entry", FAMILIES, ids=_ids)
def test_features_only_equivalent(make_model, entry, output_stride):
    name, sizes = entry
    dense = check_features_only(make_model, Family(name, sizes), output_stride)
    assert not dense.dense_info.regions  # local layers only: nothing runs per phase


@pytest.mark.parametrize("entry", FAMILIES, ids=_ids)
def test_classifier_trunk_equivalent_and_inverts_into_timm(make_model, entry):
    name, sizes = entry
    model = make_model(name)
    dense = to_dense(model, 8, method="forward_features")
    x = torch.randn(1, 3, sizes[-1], sizes[-1], generator=torch.Generator().manual_seed(1))
    report = verify_equivalence(model, dense, x, check_phases=False)
    assert report.equivalent, str(report)
    # Inverse transfer: the state_dict loads into the plain timm model, strictly.
    fresh = timm.create_model(name, pretrained=False).eval()
    fresh.load_state_dict(to_original(dense).state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), model(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "out_indices", "size"),
    [("resnet18", (1, 2), 160), ("convnext_atto", (0, 1), 288), ("vgg11", (2, 3), 160)],
)
def test_shifted_phases_equal_original_on_shifted_inputs(make_model, name, out_indices, size):
    # Shallow outputs (stride 8) so the input has an interior free of border effects.
    model = make_model(name, features_only=True, out_indices=out_indices)
    output_stride = 2
    dense = to_dense(model, output_stride)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    report = verify_equivalence(model, dense, x, max_phases=15)
    assert report.equivalent, str(report)
    deepest = report.outputs[-1]
    assert deepest.phases_checked == 15
    assert deepest.interior is not None and min(deepest.interior) > 0
    assert deepest.phase_max_rel_error < 1e-5
