"""Where a network's output cells sit in the image: one geometry for every cell-to-pixel mapping.

Cell ``j`` of a map with stride ``s`` sits at pixel ``o + s * j`` on each axis, where ``o`` is the
centre of cell 0's receptive field. Pixel coordinates here put pixel ``p``'s centre at ``p`` (the
index convention of masks and of ``F.interpolate``); points (boxes, keypoints) use continuous
coordinates where pixel ``p`` covers ``[p, p + 1)``, so a point ``x`` is at pixel ``x - 0.5``.

The equivalent mapping makes dense cell ``k * i`` the original cell ``i``: same value, same
receptive field. So ``o`` is the same for a dense network and its original, and upsampling,
target encoding and decoding that go through one :class:`CellGeometry` put the exported model's
predictions exactly where the dense model put the same values.

``o`` is found by tracing, never from per-family tables: :func:`trace_cell_geometry` puts a NaN
into one input pixel and reads which output cells it reaches (NaN crosses every tap of a kernel,
zero weights included, so the reached cells are exactly those whose receptive field holds the
pixel). Sweeping the pixel over one stride pins both ends of the receptive field to the pixel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "CellGeometry",
    "cell_geometry",
    "eval_mode",
    "lattice_upsample",
    "trace_cell_geometry",
]

# Lengths tried for the traced axis: the receptive field must fit inside, with room to spare.
_PROBE_LENGTHS = (256, 512, 1024, 2048)
# Width of a probe across the traced axis: enough for one cell at stride 32.
_ACROSS = 32
# Added to a probe length to read the stride off the change in output length; a multiple of
# every power-of-two stride up to 64.
_STRIDE_DELTA = 64


@dataclass(frozen=True)
class CellGeometry:
    """Cell ``j`` of a map sits at pixel ``offset + stride * j``, per axis ``(y, x)``.

    Attributes:
        stride: input pixels per cell, ``(sy, sx)``.
        offset: pixel of cell 0's centre, ``(oy, ox)``, with pixel ``p``'s centre at ``p``.
    """

    stride: tuple[int, int]
    offset: tuple[float, float]

    def __post_init__(self) -> None:
        if len(self.stride) != 2 or len(self.offset) != 2:
            raise ValueError(f"stride and offset need 2 values (y, x); got {self}.")
        if min(self.stride) < 1:
            raise ValueError(f"stride must be >= 1 on both axes, got {self.stride}.")

    def with_stride(self, stride: int | Sequence[int]) -> CellGeometry:
        """The geometry of the same network at another output stride (same ``offset``).

        Args:
            stride: the new stride, one value or ``(sy, sx)``.

        Returns:
            A geometry with that stride and this offset.
        """
        return replace(self, stride=_pair_int(stride))

    def pixel(self, cells: Tensor | float, axis: int) -> Tensor | float:
        """Pixel coordinate of cell coordinate(s) ``cells`` on ``axis`` (0: y, 1: x)."""
        return self.offset[axis] + self.stride[axis] * cells

    def cell(self, pixels: Tensor | float, axis: int) -> Tensor | float:
        """Cell coordinate (real-valued) of pixel coordinate(s) ``pixels`` on ``axis``."""
        return (pixels - self.offset[axis]) / self.stride[axis]

    def points_to_cells(self, points: Tensor) -> Tensor:
        """Cell coordinates of ``[..., 2]`` points ``(x, y)`` in continuous image coordinates."""
        x = self.cell(points[..., 0] - 0.5, 1)
        y = self.cell(points[..., 1] - 0.5, 0)
        return torch.stack([x, y], dim=-1)

    def cells_to_points(self, cells: Tensor) -> Tensor:
        """Continuous image coordinates ``(x, y)`` of ``[..., 2]`` cell coordinates ``(x, y)``."""
        x = self.pixel(cells[..., 0], 1) + 0.5
        y = self.pixel(cells[..., 1], 0) + 0.5
        return torch.stack([x, y], dim=-1)

    def nearest_cells(self, points: Tensor, map_size: Sequence[int]) -> tuple[Tensor, Tensor]:
        """Indices ``(xs, ys)`` of the cells nearest to ``[..., 2]`` points, clamped to the map.

        Args:
            points: ``(x, y)`` in continuous image coordinates.
            map_size: ``(h, w)`` of the map.

        Returns:
            int64 column and row indices, shaped like ``points[..., 0]``.
        """
        cells = self.points_to_cells(points).round().long()
        h, w = map_size
        return cells[..., 0].clamp(0, w - 1), cells[..., 1].clamp(0, h - 1)


def _pair_int(value: int | Sequence[int]) -> tuple[int, int]:
    """``(v, v)`` for one int, the two values of a pair."""
    if isinstance(value, int):
        return value, value
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"Expected one int or a (y, x) pair, got {value!r}.")
    return pair  # type: ignore[return-value]


def _axis_weights(
    length: int, cells: int, geometry: CellGeometry, axis: int, device: torch.device
) -> tuple[Tensor, Tensor, Tensor]:
    """Neighbouring cell indices and the weight of the second one for every pixel of an axis."""
    pixels = torch.arange(length, device=device, dtype=torch.float32)
    # Pixels beyond the first or last cell take that cell's value: no extrapolation.
    u = geometry.cell(pixels, axis).clamp(0, cells - 1)
    lo = u.floor().long().clamp(max=cells - 1)
    hi = (lo + 1).clamp(max=cells - 1)
    return lo, hi, u - lo


def lattice_upsample(maps: Tensor, geometry: CellGeometry, size: Sequence[int]) -> Tensor:
    """Bilinear upsampling that puts cell ``j`` at pixel ``geometry.pixel(j)``.

    Between two cells the value is interpolated linearly on each axis; pixels before the first
    or after the last cell take that cell's value. A dense map and its lattice subsample (every
    ``k``-th cell, stride ``k`` times larger, same offset) agree at every lattice pixel.

    Args:
        maps: ``[B, C, h, w]`` values per cell.
        geometry: where the cells of ``maps`` sit.
        size: ``(H, W)`` of the output, in pixels.

    Returns:
        ``[B, C, H, W]`` with ``maps``' dtype.
    """
    height, width = (int(v) for v in size)
    out = maps
    for axis, length in ((0, height), (1, width)):
        dim = axis - 2
        lo, hi, w = _axis_weights(length, maps.shape[dim], geometry, axis, maps.device)
        shape = [1, 1, 1, 1]
        shape[dim] = length
        w = w.to(maps.dtype).view(shape)
        first, second = out.index_select(dim, lo), out.index_select(dim, hi)
        out = torch.lerp(first, second, w)
    return out


@contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """Put ``modules`` (and all their submodules) in eval mode, restoring each one's mode after.

    Restores every submodule's own flag, so a frozen backbone kept in eval mode inside a
    training model stays so.
    """
    saved = [(m, m.training) for module in modules for m in module.modules()]
    for module in modules:
        module.eval()
    try:
        yield
    finally:
        for m, training in saved:
            m.training = training


# Reductions over the spatial axes (squeeze-excitation, ECA, global pooling) would carry the
# probe's NaN to every cell; with NaN read as zero there they leave the local path visible.
_SPATIAL_REDUCTIONS = {
    torch.mean,
    torch.Tensor.mean,
    torch.sum,
    torch.Tensor.sum,
    torch.amax,
    torch.Tensor.amax,
    torch.amin,
    torch.Tensor.amin,
    F.adaptive_avg_pool2d,
    F.adaptive_max_pool2d,
}


class _NanSafeGlobalPooling(TorchFunctionMode):
    """Read NaN as zero in reductions over the spatial axes (see ``_SPATIAL_REDUCTIONS``)."""

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Sequence[type],
        args: tuple = (),
        kwargs: dict | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        if func in _SPATIAL_REDUCTIONS and args and isinstance(args[0], Tensor):
            x = args[0]
            if x.dim() >= 4 and _reduces_space(func, args, kwargs):
                args = (torch.nan_to_num(x, nan=0.0), *args[1:])
        return func(*args, **kwargs)


def _reduces_space(func: Callable[..., Any], args: tuple, kwargs: dict) -> bool:
    """Whether a call in ``_SPATIAL_REDUCTIONS`` mixes positions of a ``[B, C, ...]`` input.

    Every axis after batch and channel is spatial: ``[B, C, H, W]``, and the phase view
    ``[B, C, H/sh, sh, W/sw, sw]`` that per-phase statistics reduce over axes 2 and 4.
    """
    if func in (F.adaptive_avg_pool2d, F.adaptive_max_pool2d):
        return True
    dims = kwargs.get("dim", args[1] if len(args) > 1 else None)
    if dims is None:
        return True
    dims = (dims,) if isinstance(dims, int) else tuple(dims)
    return any(d % args[0].dim() >= 2 for d in dims)


def _outputs(model: nn.Module, method: str, x: Tensor) -> list[Tensor]:
    """The 4-d tensors of the model's output (tensor, list/tuple or dict), in order."""

    def flatten(out: Any) -> list[Tensor]:
        if isinstance(out, Tensor):
            return [out] if out.dim() == 4 else []
        if isinstance(out, dict):
            return [t for v in out.values() for t in flatten(v)]
        if isinstance(out, (list, tuple)):
            return [t for v in out for t in flatten(v)]
        return []

    return flatten(getattr(model, method)(x))


def _in_chans(model: nn.Module) -> int:
    """Input channels of the first convolution (3 when the model has none)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


class _AxisProbe:
    """NaN probes along one axis of a ``length``-pixel input, memoised by pixel offset ``t``."""

    def __init__(self, model: nn.Module, method: str, axis: int, length: int, like: Tensor) -> None:
        self.model, self.method, self.axis = model, method, axis
        self.centre = length // 2
        shape = (length, _ACROSS) if axis == 0 else (_ACROSS, length)
        self.zeros = like.new_zeros(1, like.shape[1], *shape)
        self._reach: dict[int, list[tuple[int, int]]] = {}
        self.lengths: list[int] = []

    def strides(self) -> list[int]:
        """Each output's stride along the axis, from its growth when the input grows."""
        pad = (0, 0, 0, _STRIDE_DELTA) if self.axis == 0 else (0, _STRIDE_DELTA)
        with torch.no_grad():
            longer = _outputs(self.model, self.method, F.pad(self.zeros, pad))
        self.reach(0)  # sets self.lengths
        strides = []
        for n, out in zip(self.lengths, longer, strict=True):
            m = out.shape[2 + self.axis]
            if m <= n or _STRIDE_DELTA % (m - n):
                raise ValueError(
                    f"Cannot read the stride of {type(self.model).__name__}: its output length "
                    f"went from {n} to {m} when the input grew by {_STRIDE_DELTA} pixels."
                )
            strides.append(_STRIDE_DELTA // (m - n))
        return strides

    def reach(self, t: int) -> list[tuple[int, int]]:
        """Per output, the first and last cell (-1 for none) a NaN at ``centre + t`` reaches."""
        if t not in self._reach:
            x = self.zeros.clone()
            if self.axis == 0:
                x[:, :, self.centre + t, _ACROSS // 2] = float("nan")
            else:
                x[:, :, _ACROSS // 2, self.centre + t] = float("nan")
            with torch.no_grad(), _NanSafeGlobalPooling():
                outs = _outputs(self.model, self.method, x)
            self.lengths = [out.shape[2 + self.axis] for out in outs]
            found = []
            for out in outs:
                other = 3 if self.axis == 0 else 2
                cells = torch.isnan(out[0]).any(dim=0).any(dim=other - 2).nonzero().flatten()
                found.append((int(cells.min()), int(cells.max())) if cells.numel() else (-1, -1))
            self._reach[t] = found
        return self._reach[t]

    def fits(self, t: int) -> bool:
        """Whether the cells reached from ``centre + t`` stay clear of both ends of every map."""
        return all(
            0 < first and last < n - 1
            for (first, last), n in zip(self.reach(t), self.lengths, strict=True)
        )

    def first_step(self, index: int, end: int, stride: int) -> int:
        """Smallest ``t`` in ``[1, stride)`` where reached cell ``end`` (0 first, 1 last) grows.

        Returns ``stride`` when it does not grow there. Reached cells grow by one every
        ``stride`` pixels, so a binary search finds the step.
        """
        base = self.reach(0)[index][end]
        lo, hi = 1, stride
        while lo < hi:
            mid = (lo + hi) // 2
            if self.reach(mid)[index][end] > base:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def offset(self, index: int, stride: int) -> float:
        """Centre of cell 0's receptive field along the axis, for output ``index``.

        Cell ``i`` reads pixels ``[lo + s*i, hi + s*i]``, so a NaN at pixel ``p`` reaches cells
        ``ceil((p - hi) / s)`` to ``floor((p - lo) / s)``. The last one steps up where ``p - lo``
        is a multiple of ``s``, which gives ``lo``; the first one steps up one pixel after
        ``p - hi`` is a multiple of ``s``, which gives ``hi``.
        """
        t = self.first_step(index, 1, stride) % stride
        low = self.centre + t - stride * self.reach(t)[index][1]
        t = self.first_step(index, 0, stride) - 1
        high = self.centre + t - stride * self.reach(t)[index][0]
        return (low + high) / 2


def _trace_axis(model: nn.Module, method: str, axis: int, like: Tensor) -> list[tuple[int, float]]:
    """``(stride, offset)`` of every output along one axis."""
    for length in _PROBE_LENGTHS:
        probe = _AxisProbe(model, method, axis, length, like)
        strides = probe.strides()
        if probe.fits(0) and probe.fits(max(strides) - 1):
            return [(s, probe.offset(i, s)) for i, s in enumerate(strides)]
        # The receptive field does not fit: try a longer probe.
    raise ValueError(
        f"Cannot locate the cells of {type(model).__name__}: a NaN in one pixel reaches the "
        f"ends of a {_PROBE_LENGTHS[-1]}-pixel probe (receptive field too large, or an op "
        "that mixes all positions, such as group normalisation)."
    )


def trace_cell_geometry(model: nn.Module, method: str = "forward") -> list[CellGeometry]:
    """Trace the geometry of every 4-d output of ``model``: stride and cell 0's centre.

    The model runs in eval mode (BatchNorm batch statistics would spread the probe) and without
    gradients; dense and original networks trace to the same offset. Spatial reductions
    (squeeze-excitation, global pooling) read the probe as zero so the local path decides.

    Args:
        model: any CNN whose method returns a tensor, a list/tuple or a dict of tensors.
        method: the method to run, e.g. ``"forward_features"`` for a classifier trunk.

    Returns:
        One :class:`CellGeometry` per 4-d output, in the order of the flattened output.

    Raises:
        ValueError: the stride or the receptive field cannot be read off the probes.
    """
    param = next(model.parameters(), None)
    like = torch.zeros(
        1,
        _in_chans(model),
        device=param.device if param is not None else None,
        dtype=param.dtype if param is not None else None,
    )
    with eval_mode(model):
        ys = _trace_axis(model, method, 0, like)
        xs = _trace_axis(model, method, 1, like)
    return [
        CellGeometry(stride=(sy, sx), offset=(oy, ox))
        for (sy, oy), (sx, ox) in zip(ys, xs, strict=True)
    ]


def cell_geometry(model: nn.Module, method: str = "forward") -> CellGeometry:
    """The geometry shared by all outputs of ``model`` (a head's maps, say).

    Args:
        model: see :func:`trace_cell_geometry`.
        method: see :func:`trace_cell_geometry`.

    Returns:
        The one geometry of its outputs.

    Raises:
        ValueError: the outputs have different geometries (a feature pyramid: use
            :func:`trace_cell_geometry`), or none is 4-d.
    """
    geometries = set(trace_cell_geometry(model, method))
    if len(geometries) != 1:
        found = sorted(geometries, key=lambda g: g.stride) or "none"
        raise ValueError(
            f"{type(model).__name__}'s outputs do not share one cell geometry ({found}); "
            "use trace_cell_geometry for one geometry per output."
        )
    return geometries.pop()
