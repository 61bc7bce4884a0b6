"""Strict conversion proves itself: the dense model is compared with the original before use.

``to_dense`` runs both models on a seeded probe input and compares every output on the
original lattice. Deep random networks amplify float32 rounding far past any fixed tolerance
(squeeze-excitation gates and long residual chains reach 1e-3 to 1e-1 relative error), so an
error above the tolerance is measured again in float64: rounding shrinks by about nine orders
of magnitude there, a real difference does not.
"""

from __future__ import annotations

import copy
from dataclasses import replace

import torch
from torch import nn

from dense_lightning.equivalent.errors import Finding, NotEquivalentError
from dense_lightning.equivalent.info import DenseInfo
from dense_lightning.equivalent.report import EquivalenceReport
from dense_lightning.equivalent.verify import verify_equivalence

__all__ = ["FLOAT64_RTOL", "RTOL", "prove", "verify_in_float64"]

#: Relative tolerance on the lattice for the working dtype.
RTOL = 1e-4
#: Relative tolerance in float64, where rounding is about 1e-9 times smaller.
FLOAT64_RTOL = 1e-8


def _probe(
    model: nn.Module, size: int, in_chans: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    ref = next(iter(model.parameters()), None)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(1, in_chans, size, size, generator=generator)
    if ref is not None:
        x = x.to(device=ref.device, dtype=dtype or ref.dtype)
    return x


def verify_in_float64(
    original: nn.Module,
    dense: nn.Module,
    x: torch.Tensor,
    *,
    method: str = "forward",
    check_phases: bool = False,
) -> EquivalenceReport:
    """``verify_equivalence`` on float64 copies of both models, at the float64 tolerance.

    Where float32 rounding, amplified by depth, exceeds :data:`RTOL`, this tells rounding
    (gone in float64) from a real difference (still there).
    """
    return verify_equivalence(
        copy.deepcopy(original).double(), copy.deepcopy(dense).double(), x.double(),
        method=method, rtol=FLOAT64_RTOL, check_phases=check_phases,
    )  # fmt: skip


def _float64_error(
    original: nn.Module, dense: nn.Module, info: DenseInfo, size: int, in_chans: int
) -> tuple[float, str | None]:
    """Lattice error in float64 and, when it is real, the first module that diverges."""
    x = _probe(original, size, in_chans, torch.float64)
    report = verify_in_float64(original, dense, x, method=info.method)
    return report.max_rel_error, report.first_divergent_module


def prove(
    original: nn.Module, dense: nn.Module, info: DenseInfo, size: int, in_chans: int, strict: bool
) -> DenseInfo:
    """Measure the dense model against the original on a probe; refuse a real difference.

    Args:
        original: The original model (not modified).
        dense: Its conversion, with ``dense_info`` set.
        info: That ``dense_info``.
        size: Side of the probe input (one the model accepts).
        in_chans: Input channels.
        strict: Raise when the models differ; otherwise mark the result approximate.

    Returns:
        ``info`` with the measured errors (and ``approximate`` set when they differ).

    Raises:
        NotEquivalentError: In strict mode, naming the first divergent module.
        ValueError: The dense model fails on an input the original accepts.
    """
    x = _probe(original, size, in_chans)
    try:
        report = verify_equivalence(
            original, dense, x, method=info.method, rtol=RTOL, check_phases=False, locate=False
        )
    except Exception as error:
        raise ValueError(
            f"the dense {type(dense).__name__} failed on a {size}x{size} probe that the original "
            f"accepts: {type(error).__name__}: {error}"
        ) from error
    info = replace(info, max_rel_error=report.max_rel_error)
    if report.max_rel_error <= RTOL or info.findings:
        return info  # exact, or approximate by construction (findings say why)
    try:
        error64, module = _float64_error(original, dense, info, size, in_chans)
    except Exception as error:  # an op without float64 support: cannot tell rounding apart
        error64, module = float("inf"), f"(float64 check failed: {type(error).__name__})"
    info = replace(info, float64_rel_error=error64)
    if error64 <= FLOAT64_RTOL:
        return info  # rounding, amplified by depth
    reason = (
        f"the dense output differs from the original on the lattice: max relative error "
        f"{report.max_rel_error:.2e} in {x.dtype}, {error64:.2e} in float64 (not rounding)"
    )
    finding = Finding(module or "", _type_name(dense, module), reason)
    if strict:
        raise NotEquivalentError([finding], info.output_stride, type(dense).__name__)
    return replace(info, approximate=True, findings=(finding,))


def _type_name(model: nn.Module, name: str | None) -> str:
    try:
        return type(model.get_submodule(name)).__name__ if name else type(model).__name__
    except AttributeError:
        return type(model).__name__
