"""``verify_equivalence``: check numerically that a dense model computes the original's outputs.

Three checks, in eval mode (BatchNorm statistics in train mode are not equivalent):

1. The lattice: the dense output sampled every ``k`` cells equals the original output,
   border included, for every output of the model.
2. The phases: the other ``k*k - 1`` samplings equal the original network applied to the input
   shifted by the phase, in the interior (cells whose receptive field stays inside both
   inputs). The receptive field is measured with a NaN probe: a NaN pixel spreads exactly to
   the cells that read it. For a model with regions that read every position (a spatial
   mean, group norm, attention) each phase has its own statistics, so this check does not
   apply; the report says so instead.
3. When something differs: the first module, in execution order, whose dense output leaves
   the original's on the lattice.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import torch
from torch import nn

from dense_lightning.equivalent.compare import max_errors
from dense_lightning.equivalent.info import get_dense_info
from dense_lightning.equivalent.report import EquivalenceReport, OutputCheck
from dense_lightning.equivalent.trace import flatten_outputs

__all__ = ["verify_equivalence"]

_HEAD_NOTE = (
    "not applicable: the global pool and the head run per phase, so phase (i, j) is the "
    "classifier on its own whole view, border cells included; check the shifted views on the "
    "features (method='forward_features')"
)
_PER_VIEW_NOTE = (
    "not applicable: modules that read every position run per phase, so each phase other than "
    "0 is the original network on that phase's own sub-image, with its own global statistics, "
    "not on a shifted input"
)


def _run(model: nn.Module, method: str, x: torch.Tensor) -> list[torch.Tensor]:
    return [t.float() for t in flatten_outputs(getattr(model, method)(x))]


def _is_phases(original: torch.Tensor, dense: torch.Tensor) -> bool:
    """True when ``dense`` is ``original``'s shape plus trailing ``[k, k]`` phases."""
    return (
        original.ndim < 3
        and dense.ndim == original.ndim + 2
        and dense.shape[: original.ndim] == original.shape
    )


def _factor(original: torch.Tensor, dense: torch.Tensor) -> tuple[int, int]:
    (hn, wn), (hd, wd) = original.shape[-2:], dense.shape[-2:]
    if original.ndim != dense.ndim or original.shape[:-2] != dense.shape[:-2]:
        raise ValueError(
            f"dense output {tuple(dense.shape)} does not match {tuple(original.shape)}"
        )
    if hd % hn or wd % wn:
        raise ValueError(
            f"dense output size {(hd, wd)} is not a multiple of the original {(hn, wn)}"
        )
    return hd // hn, wd // wn


def _reach(
    model: nn.Module, method: str, x: torch.Tensor, reductions: list[tuple[int, int]]
) -> list[tuple[float, float, float, float] | None]:
    """Per output, how far receptive fields reach (up, down, left, right), in pixels.

    A NaN at the centre pixel spreads exactly to the cells whose receptive field holds it; their
    extent bounds the reach of every receptive field. ``None`` when the NaN reaches the border
    of the output: the input is too small to have an interior.
    """
    probe = x[:1].clone()
    cy, cx = probe.shape[-2] // 2, probe.shape[-1] // 2
    probe[..., cy, cx] = float("nan")
    reaches: list[tuple[float, float, float, float] | None] = []
    for out, (rh, rw) in zip(_run(model, method, probe), reductions, strict=True):
        nan = out.isnan().flatten(0, -3).any(0)
        rows, cols = nan.any(1).nonzero().flatten(), nan.any(0).nonzero().flatten()
        if len(rows) == 0 or min(rows[0], cols[0]) == 0:
            reaches.append(None)
            continue
        if rows[-1] == nan.shape[0] - 1 or cols[-1] == nan.shape[1] - 1:
            reaches.append(None)
            continue
        # A cell o reads pixels [o*r - up, o*r + down]; the extreme cells that read the NaN
        # give strict bounds on both.
        reaches.append(
            (
                (rows[-1].item() + 1) * rh - cy,
                cy - (rows[0].item() - 1) * rh,
                (cols[-1].item() + 1) * rw - cx,
                cx - (cols[0].item() - 1) * rw,
            )
        )
    return reaches


def _interior(n: int, size: int, r: int, up: float, down: float) -> slice:
    """Cells of an ``n``-cell output of a ``size``-pixel input whose field stays inside."""
    first = math.ceil(up / r)
    last = min(math.floor((size - 1 - down) / r), n - 1)
    return slice(first, max(first, last + 1))


def _phases(k: tuple[int, int], limit: int) -> list[tuple[int, int]]:
    """Up to ``limit`` non-zero phases, spread over the k x k grid deterministically."""
    every = [p for p in itertools.product(range(k[0]), range(k[1])) if p != (0, 0)]
    if len(every) <= limit:
        return every
    picks = torch.linspace(0, len(every) - 1, limit).round().long().tolist()
    return [every[i] for i in picks]


def _check_phases(
    original: nn.Module, method: str, x: torch.Tensor, dense_outs: list[torch.Tensor],
    checks: list[OutputCheck], output_stride: int, max_phases: int, skip: set[int],
) -> None:  # fmt: skip
    # An output with k > 1 cells per original cell has dense reduction output_stride, so its
    # original reduction is exactly output_stride * k.
    reductions = [(output_stride * c.factor[0], output_stride * c.factor[1]) for c in checks]
    reaches = _reach(original, method, x, reductions)
    h, w = x.shape[-2:]
    for check, dense, reach, (rh, rw) in zip(checks, dense_outs, reaches, reductions, strict=True):
        kh, kw = check.factor
        if (kh, kw) == (1, 1) or dense.ndim < 3 or check.index in skip:
            continue
        if reach is None or h <= rh or w <= rw:
            check.phase_note = "not checked: the input is too small to have an interior"
            continue
        worst_abs = worst_rel = 0.0
        phases = _phases((kh, kw), max_phases)
        rows = cols = slice(0)
        for ph, pw in phases:
            dy, dx = ph * output_stride, pw * output_stride
            # One crop for every phase, so the shifted input keeps one size.
            shifted = x[..., dy : h - rh + dy, dx : w - rw + dx]
            ref = _run(original, method, shifted)[check.index]
            rows = _interior(ref.shape[-2], h - rh, rh, reach[0], reach[1])
            cols = _interior(ref.shape[-1], w - rw, rw, reach[2], reach[3])
            got = dense[..., ph::kh, pw::kw][..., : ref.shape[-2], : ref.shape[-1]]
            diff, rel = max_errors(ref[..., rows, cols], got[..., rows, cols])
            worst_abs, worst_rel = max(worst_abs, diff), max(worst_rel, rel)
        if rows.stop <= rows.start or cols.stop <= cols.start:
            check.phase_note = "not checked: the input is too small to have an interior"
            continue
        check.phases_checked = len(phases)
        check.phase_max_abs_error, check.phase_max_rel_error = worst_abs, worst_rel
        check.interior = (rows.stop - rows.start, cols.stop - cols.start)


def _first_divergence(
    original: nn.Module, dense: nn.Module, method: str, x: torch.Tensor, rtol: float
) -> str | None:
    """Name of the first module (execution order) whose output leaves the original's."""
    recorded: dict[str, list[Any]] = {"original": [], "dense": []}

    def attach(model: nn.Module, key: str) -> list[Any]:
        def hook(name: str) -> Any:
            def fn(_: nn.Module, __: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    recorded[key].append((name, out.detach().float().clone()))

            return fn

        return [m.register_forward_hook(hook(n)) for n, m in model.named_modules() if n]

    handles = attach(original, "original") + attach(dense, "dense")
    try:
        getattr(original, method)(x)
        getattr(dense, method)(x)
    finally:
        for handle in handles:
            handle.remove()
    dense_by_name = dict(recorded["dense"])
    for name, ref in recorded["original"]:
        got = dense_by_name.get(name)
        if got is None or got.ndim != ref.ndim or got.ndim < 3:
            continue
        try:
            kh, kw = _factor(ref, got)
        except ValueError:
            return name
        if max_errors(ref, got[..., ::kh, ::kw])[1] > rtol:
            return name
    return None


def _guess_stride(x: torch.Tensor, outs: list[torch.Tensor], checks: list[OutputCheck]) -> int:
    """Output stride of a dense model without ``dense_info``, from its densified outputs."""
    sizes = [t.shape[-1] for t, c in zip(outs, checks, strict=True) if c.factor != (1, 1)]
    if not sizes:
        return 1
    return 2 ** max(round(math.log2(x.shape[-1] / min(sizes))), 0)


@torch.no_grad()
def verify_equivalence(
    original: nn.Module,
    dense: nn.Module,
    x: torch.Tensor,
    *,
    method: str | None = None,
    rtol: float = 1e-4,
    check_phases: bool = True,
    max_phases: int = 8,
    locate: bool = True,
) -> EquivalenceReport:
    """Compare ``dense`` against ``original`` on input ``x``.

    Args:
        original: The original strided model.
        dense: Its dense version (from :func:`to_dense`), or any model claimed equivalent.
        x: Input batch ``[N, C, H, W]`` (any size the original accepts).
        method: Forward method to call; defaults to the one ``to_dense`` traced.
        rtol: Largest accepted error relative to the largest original output magnitude.
        check_phases: Also check the shifted phases in the interior.
        max_phases: At most this many phases per output (spread over the k x k grid).
        locate: On failure, name the first divergent module.

    Returns:
        An :class:`EquivalenceReport`; ``report.equivalent`` tells the verdict.
    """
    info = get_dense_info(dense)
    method = method or (info.method if info is not None else "forward")
    modes = original.training, dense.training
    original.eval()
    dense.eval()
    try:
        outs_o, outs_d = _run(original, method, x), _run(dense, method, x)
        if len(outs_o) != len(outs_d):
            raise ValueError(f"original gives {len(outs_o)} outputs, dense gives {len(outs_d)}")
        checks = []
        heads = set()
        for i, (ref, got) in enumerate(zip(outs_o, outs_d, strict=True)):
            if _is_phases(ref, got):  # a classifier's per-phase head: phase 0 is the original
                heads.add(i)
                factor, sampled = (got.shape[-2], got.shape[-1]), got[..., 0, 0]
            else:
                factor = _factor(ref, got) if ref.ndim >= 3 else (1, 1)
                sampled = got[..., :: factor[0], :: factor[1]] if ref.ndim >= 3 else got
            abs_err, rel_err = max_errors(ref, sampled)
            checks.append(
                OutputCheck(i, tuple(ref.shape), tuple(got.shape), factor, abs_err, rel_err)
            )
        for i in heads:
            checks[i].phase_note = _HEAD_NOTE
        spatial = [c for c in checks if c.index not in heads]
        if check_phases and info is not None and info.per_view_statistics:
            for check in spatial:
                if check.factor != (1, 1):
                    check.phase_note = _PER_VIEW_NOTE
        elif check_phases and spatial:
            stride = info.output_stride if info is not None else _guess_stride(x, outs_d, checks)
            _check_phases(original, method, x, outs_d, checks, stride, max_phases, heads)
        report = EquivalenceReport(
            outputs=checks,
            rtol=rtol,
            input_shape=tuple(x.shape),
            output_stride=getattr(info, "output_stride", None),
            original_stride=getattr(info, "original_stride", None),
            approximate=bool(getattr(info, "approximate", False)),
        )
        if locate and not report.equivalent:
            report.first_divergent_module = _first_divergence(original, dense, method, x, rtol)
        return report
    finally:
        original.train(modes[0])
        dense.train(modes[1])
