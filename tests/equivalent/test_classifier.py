"""Whole classifiers: the global pool and the head run per phase, phase 0 is the original.

A dense classifier returns ``[B, num_classes, k, k]``; ``out[..., 0, 0]`` must equal the
original logits (border included) and ``out[..., i, j]`` the classifier on the view shifted by
``(i, j) * output_stride`` pixels. With padding, each view has its own border cells, so the
shifted views are checked on the features' interior (networks without position mixing) and
exactly on the logits of a network without padding.
"""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

from dense_lightning.equivalent import (
    EquivalentLayer,
    NotEquivalentError,
    to_dense,
    to_original,
    verify_equivalence,
)

# (timm name, where the head is entered, where it is folded, whether position mixing (SE)
# makes every phase see its own statistics).
CLASSIFIERS = [
    ("test_resnet", "global_pool.pool", "fc", False),
    ("resnet10t", "global_pool.pool", "fc", False),
    ("convnext_atto", "head.global_pool.pool", "head", False),
    ("regnetx_002", "head.global_pool.pool", "head", False),
    ("tf_efficientnet_lite0", "global_pool.pool", "classifier", False),
    ("efficientnet_b0", "global_pool.pool", "classifier", True),
    ("mobilenetv3_small_050", "global_pool.pool", "classifier", True),
]
NUM_CLASSES = 5


def _inputs(size: int) -> torch.Tensor:
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))


@pytest.mark.parametrize("output_stride", [8, 16])
@pytest.mark.parametrize(("name", "entry", "fold", "mixing"), CLASSIFIERS)
def test_phase_zero_is_the_original_classifier(
    make_model, name, entry, fold, mixing, output_stride
):
    model = make_model(name, num_classes=NUM_CLASSES)
    dense = to_dense(model, output_stride)
    info = dense.dense_info
    k = 32 // output_stride
    assert info.original_stride == 32 and not info.approximate and not info.findings
    assert (info.global_head.module, info.global_head.output) == (entry, fold)
    assert info.global_head.step == (k, k)
    for size in (64, 77) if output_stride == 8 else (96,):
        x = _inputs(size)
        with torch.no_grad():
            logits, phases = model(x), dense(x)
        assert phases.shape == (2, NUM_CLASSES, k, k)
        scale = logits.abs().max()
        assert (phases[..., 0, 0] - logits).abs().max() <= 1e-5 * scale
        # The other phases are other views, not copies of phase 0.
        assert (phases[..., -1, -1] - logits).abs().max() > 1e-3 * scale
        report = verify_equivalence(model, dense, x)
        assert report.equivalent, str(report)
        assert report.outputs[0].factor == (k, k)
        assert "per phase" in report.outputs[0].phase_note
    # The inverse transfer is the plain timm classifier.
    back = to_original(dense)
    fresh = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES)
    fresh.load_state_dict(back.state_dict(), strict=True)
    assert not any(isinstance(m, EquivalentLayer) for m in back.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in back.modules())
    with torch.no_grad():
        torch.testing.assert_close(back(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("name", "mixing", "size"),
    [
        ("test_resnet", False, 256),
        ("resnet10t", False, 320),
        ("efficientnet_b0", True, 96),
        ("mobilenetv3_small_050", True, 96),
    ],
)
def test_shifted_phases_on_the_features(make_model, name, mixing, size):
    """Phase (i, j) reads the features of the shifted view: exact in their interior.

    At stride 32 the receptive field spans hundreds of pixels: the interior needs a large input.
    """
    model = make_model(name, num_classes=NUM_CLASSES)
    dense = to_dense(model, 8)
    x = _inputs(size)[:1]
    report = verify_equivalence(model, dense, x, method="forward_features", max_phases=4)
    assert report.equivalent, str(report)
    if mixing:  # squeeze-excitation: each phase has its own channel gates
        assert report.outputs[0].phases_checked == 0
        assert "own global statistics" in report.outputs[0].phase_note
    else:
        assert report.outputs[0].phases_checked == 4
        assert report.max_phase_rel_error < 1e-5


def _valid_classifier() -> nn.Module:
    """Stride 4, no padding: every view of the right size has no border cells at all."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, 2), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(8, 3),
    ).eval()  # fmt: skip


@pytest.mark.parametrize("output_stride", [1, 2])
def test_every_phase_is_the_classifier_on_its_view(output_stride):
    """Without padding, phase (i, j) is exactly the classifier on the shifted crop."""
    model = _valid_classifier()
    dense = to_dense(model, output_stride)
    k, n = 4 // output_stride, 5
    view = (n - 1) * 4 + 7  # n cells of receptive field 7 and stride 4
    x = torch.randn(2, 3, view + (k - 1) * output_stride, view + (k - 1) * output_stride)
    with torch.no_grad():
        phases = dense(x)
        for i in range(k):
            for j in range(k):
                dy, dx = i * output_stride, j * output_stride
                expected = model(x[..., dy : dy + view, dx : dx + view])
                torch.testing.assert_close(phases[..., i, j], expected, rtol=1e-5, atol=1e-6)


def test_pool_before_the_last_conv_runs_it_per_phase(make_model):
    """MobileNetV3 pools before conv_head: that conv reads 1x1 maps and keeps its geometry."""
    model = make_model("mobilenetv3_small_050", num_classes=NUM_CLASSES)
    dense = to_dense(model, 8)
    assert type(dense.conv_head) is nn.Conv2d
    x = _inputs(64)
    with torch.no_grad():
        torch.testing.assert_close(dense(x)[..., 0, 0], model(x), rtol=1e-5, atol=1e-5)
        # The parts, called one after the other, give the same phases.
        parts = dense.forward_head(dense.forward_features(x))
        torch.testing.assert_close(parts, dense(x), rtol=0, atol=0)


def test_copies_training_and_native_stride(make_model):
    model = make_model("resnet10t", num_classes=NUM_CLASSES)
    dense = to_dense(model, 16)
    x = _inputs(64)
    twin = copy.deepcopy(dense)
    with torch.no_grad():
        torch.testing.assert_close(twin(x), dense(x), rtol=0, atol=0)
    # Training mode runs and back-propagates through the phases.
    dense.train()
    dense(x)[..., 1, 0].sum().backward()
    assert dense.fc.weight.grad is not None and dense.conv1[0].weight.grad.abs().sum() > 0
    # At the native stride nothing changes: logits stay [B, num_classes].
    native = to_dense(model, 32)
    with torch.no_grad():
        assert native(x).shape == (2, NUM_CLASSES)


def test_classifier_with_spatial_outputs_too_is_refused():
    class Both(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, 4, 1)
            self.pool = nn.AdaptiveAvgPool2d(1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.conv(x)
            return y, self.pool(y)

    with pytest.raises(NotEquivalentError, match="pool"):
        to_dense(Both().eval(), 1)
