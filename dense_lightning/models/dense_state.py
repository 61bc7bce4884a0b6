"""The dense state of a network as a checkpoint entry, and its restoration.

A checkpoint must restore the structure it was saved with, dense or original. Conversion
never changes parameter names, so the structure is not visible in ``state_dict``; it is
recorded next to it under ``checkpoint[DENSE_STATE_KEY][attribute]``.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from dense_lightning.equivalent import is_dense, to_dense, to_original

__all__ = ["DENSE_STATE_KEY", "apply_dense_state", "dense_state", "make_dense"]

DENSE_STATE_KEY = "dense_lightning"


def dense_state(network: nn.Module, submodule: str | None = None) -> dict[str, Any] | None:
    """Describe how ``network`` was converted, or ``None`` for the original structure.

    Args:
        network: a network that ``to_dense`` may have converted.
        submodule: the dotted name of the converted submodule (an encoder), when only that
            part was converted (``to_dense(..., submodule=...)``).

    Returns:
        ``{"output_stride", "original_stride", "approximate", "method"}`` (plus
        ``"submodule"`` when given) or ``None``.
    """
    holder = network.get_submodule(submodule) if submodule else network
    info = getattr(holder, "dense_info", None)
    if info is None:
        return None
    state = {
        "output_stride": info.output_stride,
        "original_stride": info.original_stride,
        "approximate": info.approximate,
        "method": info.method,
    }
    if submodule:
        state["submodule"] = submodule
    return state


def make_dense(
    network: nn.Module,
    output_stride: int,
    *,
    strict: bool = True,
    method: str = "forward",
    submodule: str | None = None,
) -> nn.Module:
    """Return ``network`` dense at ``output_stride``, converting only when needed.

    Idempotent: a network already dense at that stride is returned unchanged; one dense at
    another stride goes back to the original first (``to_dense`` refuses dense input).

    Args:
        network: original or dense network.
        output_stride: the wanted total stride (of ``submodule`` when given).
        strict: raise ``NotEquivalentError`` for layers that cannot be made equivalent.
        method: forward method traced by ``to_dense``.
        submodule: convert only this submodule (an encoder): ``to_dense(..., submodule=...)``.

    Returns:
        The dense network (a converted copy when a conversion happened).
    """
    current = dense_state(network, submodule)
    if current is not None and current["output_stride"] == output_stride:
        return network
    if submodule is not None:  # a dense submodule at another stride is redone in there
        return to_dense(network, output_stride, strict=strict, method=method, submodule=submodule)
    if is_dense(network):
        network = to_original(network)
    return to_dense(network, output_stride, strict=strict, method=method)


def apply_dense_state(network: nn.Module, state: dict[str, Any] | None) -> nn.Module:
    """Give ``network`` the structure described by ``state`` (from :func:`dense_state`).

    Args:
        network: original or dense network with the same parameters.
        state: the recorded state; ``None`` means the original structure.

    Returns:
        ``network`` itself when it already has that structure, otherwise a converted copy.
    """
    if state is None:
        return to_original(network) if is_dense(network) else network
    return make_dense(
        network,
        int(state["output_stride"]),
        # An approximate conversion was saved on purpose; restoring it must not refuse.
        strict=not state.get("approximate", False),
        method=state.get("method", "forward"),
        submodule=state.get("submodule"),
    )
