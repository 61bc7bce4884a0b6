"""Fixtures for the equivalence tests: timm models whose BatchNorm is not the identity."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import timm
import torch
from torch import nn


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every norm layer random statistics and affine parameters.

    timm zero-initialises the last BatchNorm of residual blocks, which would hide every error
    inside a residual branch; random statistics make BN a real per-channel affine map.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if m.weight is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


@pytest.fixture
def make_model() -> Callable[..., nn.Module]:
    """Build a seeded timm model (pretrained=False) in eval mode with random norms."""

    def build(name: str, **kwargs: object) -> nn.Module:
        torch.manual_seed(0)
        return randomize_norms(timm.create_model(name, pretrained=False, **kwargs))

    return build
