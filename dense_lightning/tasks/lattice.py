"""The exported network's output inside the dense one: the lattice subsample of every map.

Equivalence makes dense cell ``k * i`` the original cell ``i``, border included, and gives every
dense map ``k`` times the original length (``k`` = original stride / output stride). So
``[..., ::k, ::k]`` of each dense map is exactly what the original-stride network, the one
``to_original`` exports, outputs for the same images. A task that post-processes and scores
that subsample as it would the exported network's output gets the exported model's loss from
the dense forward pass, at no extra cost.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn

from dense_lightning.models import dense_state

__all__ = ["lattice_step", "lattice_subsample"]


def lattice_step(network: nn.Module) -> int:
    """``k``, the exported network's cells per dense cell and axis (1 when not dense)."""
    state = dense_state(network)
    if state is None:
        return 1
    return int(state["original_stride"]) // int(state["output_stride"])


def lattice_subsample(raw: Any, k: int) -> Any:
    """Every ``k``-th cell of every map (4 dims or more) in ``raw``; other values are kept.

    Args:
        raw: a network's output: a tensor, or a tuple, list or dict of them (nested).
        k: the lattice step, from :func:`lattice_step`.

    Returns:
        ``raw`` with each ``[..., h, w]`` map replaced by ``[..., ::k, ::k]``.
    """
    if k == 1:
        return raw
    return _map_maps(raw, lambda t: t[..., ::k, ::k])


def _map_maps(value: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``fn`` applied to every tensor of 4 dims or more in a tensor, tuple, list or dict."""
    if isinstance(value, Tensor):
        return fn(value) if value.ndim >= 4 else value
    if isinstance(value, dict):
        return {key: _map_maps(item, fn) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_map_maps(item, fn) for item in value)
    return value
