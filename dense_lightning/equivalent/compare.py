"""The error measure shared by every equivalence check: worst difference, absolute and relative."""

from __future__ import annotations

import torch

__all__ = ["max_errors"]


def max_errors(reference: torch.Tensor, other: torch.Tensor) -> tuple[float, float]:
    """Largest ``|reference - other|`` and that over the largest finite ``|reference|``.

    Equal values count as equal even when not finite (a max pool whose window lies wholly in
    its padding yields ``-inf`` in the original too, and ``NaN`` after it); any other mismatch
    involving a non-finite value is an infinite error.

    Args:
        reference: The original network's values.
        other: The values compared with them (same shape).

    Returns:
        ``(max_abs_error, max_rel_error)``; ``(0.0, 0.0)`` for empty tensors.
    """
    if reference.numel() == 0:
        return 0.0, 0.0
    same = (reference == other) | (reference.isnan() & other.isnan())
    diff = torch.where(same, 0.0, (reference - other).abs()).nan_to_num(nan=float("inf"))
    finite = reference[reference.isfinite()].abs()
    scale = finite.max().item() if finite.numel() else 1.0
    worst = diff.max().item()
    return worst, worst / max(scale, 1e-12)
