"""The dense vs original picture: the same map at two strides, each cell where it sits.

Both networks' maps are painted on the image's pixel grid through one
:class:`~dense_lightning.equivalent.cells.CellGeometry` (cell ``j`` at pixel ``o + s * j``,
every pixel showing its nearest cell, each cell whole: see :mod:`dense_lightning.viz.cells`),
on one colour scale. Dense cell ``k * i`` and original cell ``i`` sit on the same pixel and
hold the same value, so each original cell, a large block, has the colour of the small dense
cell at its centre; those dense cells are outlined. The colour bar says what the colours are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from dense_lightning.equivalent import get_dense_info, max_errors, to_original
from dense_lightning.equivalent.cells import CellGeometry, eval_mode, trace_cell_geometry
from dense_lightning.viz.cells import Margins, cell_margins, cells_on_canvas, on_canvas, paint_cells
from dense_lightning.viz.colors import class_colors, heat_colormap, to_uint8_image
from dense_lightning.viz.context import VizContext, class_entries
from dense_lightning.viz.draw import (
    display_factor,
    footer,
    label_edges,
    tile,
    title_lines,
    titled,
    upscale,
)
from dense_lightning.viz.guides import PANEL_BACKGROUND, colorbar, legend

__all__ = [
    "DenseComparison",
    "output_geometry",
    "paint_cells",
    "render_dense_vs_original",
]

# Raw maps shown, in order of preference, when a network returns a dict.
_MAP_KEYS = ("keypoint_heatmap", "heatmap")
_MIN_OUTLINED_CELL = 6  # display pixels: smaller cells are not outlined (the line would hide them)


@dataclass
class DenseComparison:
    """The dense vs original picture and the numbers behind it.

    Attributes:
        image: ``uint8 [3, H, W]``: per image, the input, the original network's map and the
            dense network's map on the image's pixels, and a legend or colour bar.
        factor: dense cells per original cell along each axis.
        max_abs_error: largest ``|dense cell k*i - original cell i|`` over all outputs.
        max_rel_error: that over the largest ``|original|`` (NaN when the shapes do not line
            up, e.g. for an approximate conversion).
        geometry: where the dense cells sit (the original's: same offset, stride ``factor``
            times larger).
        margins: image pixels added around each panel, ``((top, bottom), (left, right))``,
            so that every cell is drawn whole (see :mod:`dense_lightning.viz.cells`).
        colours: what the colours show, as the legend or colour bar heads it.
    """

    image: Tensor
    factor: int
    max_abs_error: float
    max_rel_error: float
    geometry: CellGeometry
    margins: Margins = ((0, 0), (0, 0))
    colours: str = ""


def output_geometry(network: nn.Module, method: str = "forward") -> CellGeometry:
    """Where the cells of the map the picture shows sit, for ``network`` (dense or not).

    A dense network's geometry is traced on its original twin (same offset, ``factor`` times
    the stride), which costs a fraction of tracing the dense network itself. Networks whose
    cells cannot be traced (an op mixing all positions) fall back to the centre-of-cell
    convention ``o = (s - 1) / 2``: the picture stays consistent (dense cell ``k * i`` and
    original cell ``i`` still share a pixel), only the offset is nominal.

    Raises:
        ValueError: ``network`` is not dense and its cells cannot be traced.
    """
    info = get_dense_info(network)
    traced = to_original(network) if info is not None else network
    stride = info.output_stride if info is not None else None
    try:
        with torch.no_grad(), eval_mode(traced):
            probe = next((p for p in traced.parameters()), None)
            device = probe.device if probe is not None else torch.device("cpu")
            output = getattr(traced, method)(torch.zeros(1, 3, 64, 64, device=device))
            geometry = trace_cell_geometry(traced, method)[_shown_index(output)]
    except ValueError:
        if stride is None:
            raise
        return CellGeometry(stride=(stride, stride), offset=((stride - 1) / 2,) * 2)
    return geometry if stride is None else geometry.with_stride(stride)


def _outline_cells(
    panel: Tensor,
    geometry: CellGeometry,
    cells: Sequence[int],
    size: Sequence[int],
    margins: Margins,
    factor: int,
    every: int,
) -> Tensor:
    """Outline, on a panel enlarged ``factor`` times, the cells whose indices ``every`` divides."""
    if min(geometry.stride) * factor < _MIN_OUTLINED_CELL:
        return panel
    rows, cols = cells_on_canvas(geometry, cells, size, margins)
    rows, cols = rows.repeat_interleave(factor), cols.repeat_interleave(factor)
    region = (rows[:, None] + 1) * (int(cells[1]) + 2) + (cols[None, :] + 1)
    chosen = (rows[:, None] % every == 0) & (cols[None, :] % every == 0)
    chosen &= (rows[:, None] >= 0) & (cols[None, :] >= 0)
    return torch.where(chosen & label_edges(region), _contrasting(panel), panel)


def _contrasting(panel: Tensor) -> Tensor:
    """Per pixel, black on light colours and white on dark ones: lines that show everywhere."""
    luminance = (panel.float() * torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1)).sum(0)
    return torch.where(luminance > 110, 0, 255).to(torch.uint8).expand_as(panel)


def _shown_index(output: Any) -> int:
    """Position, among the output's 4-d tensors, of the one the picture shows."""
    if isinstance(output, Mapping):
        keys = [k for k, v in output.items() if isinstance(v, Tensor) and v.dim() == 4]
        key = next((k for k in _MAP_KEYS if k in keys), keys[0])
        return keys.index(key)
    if isinstance(output, list | tuple):
        return len(output) - 1  # feature pyramid: the coarsest level
    return 0


def _shown(output: Any) -> Tensor:
    """The map the picture shows, ``[B, C, h, w]``."""
    if isinstance(output, Mapping):
        return [v for v in output.values() if isinstance(v, Tensor) and v.dim() == 4][
            _shown_index(output)
        ]
    if isinstance(output, list | tuple):
        return output[_shown_index(output)]
    return output


def _is_class_logits(output: Any, shown: Tensor) -> bool:
    """Class logits (shown as class colours) rather than scores (shown on a heat scale)."""
    return isinstance(output, Tensor) and shown.shape[1] > 1


def _heat(output: Any, shown: Tensor) -> Tensor:
    """``[B, h, w]`` values on the heat scale: sigmoid scores, or feature energy."""
    if isinstance(output, list | tuple):
        return shown.float().abs().mean(dim=1)
    return shown.float().sigmoid().amax(dim=1)


def _heat_label(output: Any, shown: Tensor) -> str:
    """What the heat scale measures (see :func:`_heat`), as the colour bar's heading."""
    if isinstance(output, list | tuple):
        return "feature energy:\nmean |value|\nover channels"
    name = "score"
    if isinstance(output, Mapping):
        key = next(k for k, v in output.items() if v is shown)
        name = f"{key.replace('_', ' ')} score"
    if shown.shape[1] > 1:
        return f"{name}:\nsigmoid, best of\n{shown.shape[1]} channels"
    return f"{name}:\nsigmoid"


def _flat(output: Any) -> list[Tensor]:
    if isinstance(output, Mapping):
        return [v for v in output.values() if isinstance(v, Tensor)]
    if isinstance(output, list | tuple):
        return list(output)
    return [output]


def _errors(original: Any, dense: Any, factor: int) -> tuple[float, float]:
    """Largest abs and relative difference of dense cells ``k * i`` and original cells ``i``."""
    worst_abs, worst_rel = 0.0, 0.0
    for ref, got in zip(_flat(original), _flat(dense), strict=True):
        sampled = got[..., ::factor, ::factor] if got.dim() == 4 else got
        if ref.shape != sampled.shape:
            return math.nan, math.nan
        abs_error, rel_error = max_errors(ref.float(), sampled.float())
        worst_abs, worst_rel = max(worst_abs, abs_error), max(worst_rel, rel_error)
    return worst_abs, worst_rel


@torch.no_grad()
def render_dense_vs_original(
    network: nn.Module,
    images: Tensor,
    ctx: VizContext | None = None,
    original: nn.Module | None = None,
    geometry: CellGeometry | None = None,
) -> DenseComparison:
    """Run the dense ``network`` and its original-stride twin on ``images``, side by side.

    Each row shows the input, the original network's map (one block per original cell) and
    the dense map (``factor`` times finer), painted where their cells sit on one colour
    scale: class logits as the colour of their argmax class (with a legend), other maps as
    sigmoid scores on a heat scale (with a colour bar). The dense cells that are original
    cells are outlined: each has its block's colour.

    Args:
        network: a model returned by ``to_dense``.
        images: network inputs ``[B, 3, H, W]``.
        ctx: names and display settings.
        original: ``to_original(network)`` when the caller has it already (it is a copy,
            so callers drawing many batches with fixed weights can build it once).
        geometry: :func:`output_geometry` of ``network`` when the caller has it (tracing it
            costs a few forward passes).

    Raises:
        ValueError: ``network`` is not dense.
    """
    ctx = ctx or VizContext()
    info = get_dense_info(network)
    if info is None:
        raise ValueError(
            f"{type(network).__name__} is not dense (no dense_info); convert it with to_dense "
            "or train with output_stride set to draw the dense vs original picture."
        )
    original = to_original(network) if original is None else original
    with eval_mode(network, original):
        dense_out = getattr(network, info.method)(images)
        original_out = getattr(original, info.method)(images)
    geometry = geometry or output_geometry(network, info.method)
    k = info.factor
    coarse = geometry.with_stride(tuple(s * k for s in geometry.stride))
    max_abs, max_rel = _errors(original_out, dense_out, k)
    maps = (_shown(original_out), _shown(dense_out))
    colored, guide, colours = _colour(original_out, maps, ctx)
    pictures = to_uint8_image(images)
    size = tuple(pictures.shape[-2:])
    factor = display_factor(size, ctx.min_size)
    shown = ((coarse, maps[0].shape[-2:], 1), (geometry, maps[1].shape[-2:], k))
    margins = cell_margins([(geom, cells) for geom, cells, _ in shown], size)
    titles = (
        "input",
        f"original, stride {info.original_stride}",
        f"dense, stride {info.output_stride}",
    )
    rows = []
    for i in range(len(images)):
        panels = [upscale(on_canvas(pictures[i], margins, PANEL_BACKGROUND), factor)]
        for (geom, cells, every), colors in zip(shown, colored, strict=True):
            panel = upscale(paint_cells(colors[i], geom, size, margins), factor)
            panels.append(_outline_cells(panel, geom, cells, size, margins, factor, every))
        lines = title_lines(titles, int(panels[0].shape[-1]))
        rows.append([titled(p, t, lines=lines) for p, t in zip(panels, titles, strict=True)])
    grid = tile(rows)
    picture = tile([[grid, guide(int(grid.shape[-2]))]], gap=0)
    note = (
        f"Outlined: dense cells {k}i, each equal to original cell i "
        f"(max difference {_number(max_abs)}, relative {_number(max_rel)})."
        if not math.isnan(max_rel)
        else f"Outlined: dense cells {k}i. The maps' shapes differ (approximate conversion)."
    )
    return DenseComparison(
        footer(picture, note), k, max_abs, max_rel, geometry, margins, " ".join(colours.split())
    )


def _number(value: float) -> str:
    """``0`` when exact, else two significant digits in scientific notation."""
    return "0" if value == 0 else f"{value:.1e}"


def _colour(
    output: Any, maps: tuple[Tensor, Tensor], ctx: VizContext
) -> tuple[list[Tensor], Callable[[int], Tensor], str]:
    """Both maps in colours on one scale, their guide's maker, and what the colours show.

    The colours are ``uint8 [B, 3, h, w]`` per map.
    """
    if _is_class_logits(output, maps[0]):
        num_classes = int(maps[0].shape[1])
        colors = class_colors(num_classes, ctx.background)
        colored = [colors[m.argmax(dim=1).cpu()].permute(0, 3, 1, 2) for m in maps]
        entries = class_entries(num_classes, ctx, ctx.background, background_shown=True)
        guide = lambda height: legend(entries, height, title="classes")  # noqa: E731
        return colored, guide, "class of the highest logit"
    heat = [_heat(output, m) for m in maps]
    # The range of both maps: the whole colour scale shows their differences cell to cell.
    vmin = min(float(h.min()) for h in heat)
    vmax = max(max(float(h.max()) for h in heat), vmin + 1e-6)
    label = _heat_label(output, maps[0])
    colored = [torch.stack([heat_colormap(x, vmin, vmax) for x in h]) for h in heat]
    return colored, lambda height: colorbar(vmin, vmax, height, label=label), label
