"""The family tester: one function that every equivalence table calls for one entry.

Adding a backbone to the equivalence suite is one line in a table (``FAMILIES`` or
``PER_PHASE_FAMILIES``): a timm name, the input sizes it accepts (an odd one where the original
network itself accepts it) and, optionally, ``create_model`` keyword arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from dense_lightning.equivalent import to_dense, verify_equivalence


@dataclass(frozen=True)
class Family:
    """One table entry: a timm model and the sizes to check it at."""

    name: str
    sizes: tuple[int, ...] = (64, 67)
    kwargs: dict[str, Any] = field(default_factory=dict)
    # Modules expected to run per phase at output stride 8 (a prefix is enough).
    regions: tuple[str, ...] = ()

    def __str__(self) -> str:
        return self.name + ("+" + "+".join(f"{k}" for k in self.kwargs) if self.kwargs else "")


def check_features_only(
    make_model: Callable[..., nn.Module], family: Family, output_stride: int
) -> nn.Module:
    """Convert ``family`` at ``output_stride`` and assert it is exact on the lattice."""
    model = make_model(family.name, features_only=True, **family.kwargs)
    dense = to_dense(model, output_stride)
    info = dense.dense_info
    assert info.output_stride == output_stride
    assert not info.approximate and not info.findings
    for size in family.sizes:
        x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(size))
        report = verify_equivalence(model, dense, x, check_phases=False)
        assert report.equivalent, str(report)
        assert report.max_rel_error < 1e-5, str(report)
        assert report.outputs[-1].factor == (info.factor,) * 2
    if output_stride == 8:
        names = [r.module for r in info.regions]
        for expected in family.regions:
            assert any(n.startswith(expected) for n in names), (expected, names)
    return dense
