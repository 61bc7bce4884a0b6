"""Shift-and-stitch: the classic way to get dense predictions from a strided network.

The original network runs ``k * k`` times, on the input shifted up and left by
``(a * output_stride, b * output_stride)`` pixels for ``a, b < k`` (zeros enter at the bottom
and right), and the outputs are interleaved: cell ``(i, j)`` of shift ``(a, b)`` goes to
``(i * k + a, j * k + b)``. In the interior (cells whose receptive field stays inside the image,
clear of the rows and columns cropped by the shift) this is exactly what the dense model of
:func:`~dense_lightning.equivalent.to_dense` computes in one pass; at the border the two differ,
because a shifted input brings its own zero padding. :func:`stitch_interior` finds the cells
where they must agree.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from dense_lightning.equivalent.trace import flatten_outputs, trace_model

__all__ = ["shift_and_stitch", "stitch_interior"]


def _factors(model: Any, method: str, count: int, k: int, output_stride: int) -> list[int]:
    """Cells per original cell of each output: ``k`` for one output, else from a trace."""
    if count == 1:
        return [k]
    if not isinstance(model, nn.Module):
        raise ValueError("stitching several outputs needs the nn.Module, to trace their strides")
    reductions = trace_model(model, method).output_reductions
    factors = []
    for rh, rw in reductions:
        if rh != rw or rh == float("inf"):
            raise ValueError(f"cannot stitch an output of reductions {(rh, rw)}")
        factors.append(min(k, max(int(rh) // output_stride, 1)))
    return factors


def _shift(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``x`` moved up by ``dy`` and left by ``dx`` pixels; zeros fill the bottom and right."""
    if dy == dx == 0:
        return x
    return F.pad(x, (0, dx, 0, dy))[..., dy:, dx:]


@torch.no_grad()
def shift_and_stitch(
    model: nn.Module | Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    k: int,
    output_stride: int,
    *,
    method: str = "forward",
    batched: bool = False,
) -> torch.Tensor | list[torch.Tensor]:
    """Dense outputs of a strided network by running it on ``k * k`` shifted inputs.

    Args:
        model: The original (strided) network, in eval mode for a meaningful comparison.
        x: Input batch ``[N, C, H, W]``.
        k: Phases per axis: the network's stride divided by ``output_stride``.
        output_stride: Stride of the stitched output; shifts are multiples of it.
        method: Forward method to call (``"forward_features"`` for a timm trunk).
        batched: Run the ``k * k`` shifted inputs as one batch (``k * k`` times the
            memory) instead of one after the other.

    Returns:
        A tensor, or a list of tensors when the network returns several (a feature list:
        each output is stitched at its own factor ``min(k, reduction / output_stride)``).
        Each output is ``k`` (or its factor) times larger per axis than the network's.
    """
    if k < 1 or output_stride < 1:
        raise ValueError(f"k and output_stride must be positive, got {k} and {output_stride}")
    forward = getattr(model, method) if isinstance(model, nn.Module) else model
    shifts = [(a, b) for a in range(k) for b in range(k)]
    if batched:
        raw = forward(
            torch.cat([_shift(x, a * output_stride, b * output_stride) for a, b in shifts])
        )
        chunks = [o.chunk(len(shifts)) for o in flatten_outputs(raw)]
        outputs = iter(zip(*chunks, strict=True))
    else:
        raw = forward(x)  # the (0, 0) shift; the others run one at a time, stitched as they come
        rest = (forward(_shift(x, a * output_stride, b * output_stride)) for a, b in shifts[1:])
        outputs = itertools.chain([raw], rest)
        outputs = (tuple(flatten_outputs(out)) for out in outputs)
    stitched: list[torch.Tensor] = []
    factors: list[int] = []
    for (a, b), outs in zip(shifts, outputs, strict=True):
        if not stitched:
            factors = _factors(model, method, len(outs), k, output_stride)
            stitched = [
                t.new_empty(*t.shape[:-2], t.shape[-2] * f, t.shape[-1] * f)
                for t, f in zip(outs, factors, strict=True)
            ]
        for out, dense, f in zip(outs, stitched, factors, strict=True):
            if a < f and b < f:
                dense[..., a::f, b::f] = out
    return stitched[0] if isinstance(raw, torch.Tensor) else stitched


@torch.no_grad()
def stitch_interior(
    dense: Callable[[torch.Tensor], torch.Tensor],
    stitch: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    k: int,
    output_stride: int,
) -> torch.Tensor:
    """Mask of the output cells where shift-and-stitch and the dense model must agree.

    The input's first ``(k - 1) * output_stride`` rows and columns (which some shifts crop)
    and its last row and column (beyond which some shifts read zeros) are set to NaN; a NaN
    spreads to exactly the cells that read it, so the cells that stay finite in both outputs
    see neither the crop nor the fill.

    Args:
        dense: Input -> dense output (one tensor).
        stitch: Input -> stitched output (one tensor).
        x: The input to be compared on (one sample is enough).
        k: Phases per axis.
        output_stride: Output stride.

    Returns:
        A boolean mask ``[H', W']`` over the output's spatial cells.
    """
    probe = x[:1].clone()
    crop = (k - 1) * output_stride
    probe[..., : max(crop, 1), :] = float("nan")
    probe[..., :, : max(crop, 1)] = float("nan")
    probe[..., -1:, :] = float("nan")
    probe[..., :, -1:] = float("nan")
    finite = [out.isfinite().flatten(0, -3).all(0) for out in (dense(probe), stitch(probe))]
    return finite[0] & finite[1]
