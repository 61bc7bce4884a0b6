"""Fixtures for the smp and torchgeo tests: seeded models whose norms are not the identity.

Every test module here starts with ``pytest.importorskip``: without the ``[smp]`` extra the
modules are skipped, with the reason. Helpers are fixtures: the suite runs with
``--import-mode=importlib``, where test modules cannot import each other.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import pytest
import torch
from torch import nn

#: Why the modules here are skipped without smp (each calls ``pytest.importorskip`` with it).
SKIP_REASON = "needs the [smp] extra: pip install -e '.[dev,smp]'"


def randomize_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics, norm affines and layer scales: no block is the identity.

    (ConvNeXt's layer scales start at 1e-6, which would hide any error inside its blocks.)
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.rsplit(".", 1)[-1] == "gamma":
                param.copy_(torch.rand(param.shape, generator=g) + 0.5)
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is not None:
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)):
                if m.weight is not None and m.bias is not None:
                    m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


@pytest.fixture
def make_smp() -> Callable[..., nn.Module]:
    """Build a seeded smp model (``encoder_weights=None``) in eval mode with random norms."""

    def build(arch: str, encoder_name: str, **kwargs: object) -> nn.Module:
        import segmentation_models_pytorch as smp

        torch.manual_seed(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # smp's deprecation notes for timm- encoders
            model = smp.create_model(
                arch, encoder_name=encoder_name, encoder_weights=None, **kwargs
            )
        return randomize_norms(model)

    return build


@pytest.fixture
def undilated() -> Callable[[str, nn.Module], nn.Module]:
    """The undilated smp encoder ``name``, holding the weights of ``encoder`` (strict load)."""

    def build(name: str, encoder: nn.Module, **kwargs: object) -> nn.Module:
        import segmentation_models_pytorch as smp

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fresh = smp.encoders.get_encoder(name, weights=None, **kwargs)
        fresh.load_state_dict(encoder.state_dict(), strict=True)
        return fresh.eval()

    return build
