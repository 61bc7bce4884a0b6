"""The base of every equivalent layer: built from an original layer, restorable, one state.

An equivalent layer is a subclass of the layer it replaces. It shares the original's
parameters and buffers (same names, same tensors) and keeps everything dense about it in two
attributes: ``geometry`` (how the layer sits on the lattice) and ``dense_state`` (what the
original was, and how the layer executes). :meth:`EquivalentLayer.restore` drops both and gives
the original layer back.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from torch import nn

from dense_lightning.equivalent.lattice import LatticeGeometry

__all__ = [
    "EquivalentLayer",
    "Execution",
    "LayerState",
    "dense_class_for",
    "pair",
]

Execution = Literal["auto", "dilated", "phase"]


def pair(value: Any) -> tuple[int, int]:
    """``(v, v)`` for an int, else the first two entries as ints (kernel, stride, padding...)."""
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


@dataclass
class LayerState:
    """Everything a dense layer adds to the original module, in one typed place.

    Attributes:
        original_class: Class of the original layer.
        original_config: The original values of the attributes the dense layer overrides.
        execution: How the layer runs outside phase regions: ``"dilated"`` (dilated kernels),
            ``"phase"`` (ordinary kernels on space-to-batch phases) or ``"auto"`` (timed).
        choices: What ``"auto"`` picked, per input shape, dtype, device and phase base.
    """

    original_class: type[nn.Module]
    original_config: dict[str, Any]
    execution: Execution = "dilated"
    choices: dict[tuple, str] = field(default_factory=dict)


# Attributes a dense layer adds to the original module's __dict__; removed on restore.
_DENSE_ATTRS = ("geometry", "dense_state")


class EquivalentLayer:
    """Mixin shared by the dense layers: conversion from, and back to, the original."""

    geometry: LatticeGeometry
    dense_state: LayerState
    # Attributes of the original module that the dense module overrides.
    _overridden: ClassVar[tuple[str, ...]] = ()
    # Attributes the dense class computes for itself; dropped on restore.
    _derived: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def from_module(cls, module: nn.Module, geometry: LatticeGeometry) -> nn.Module:
        """Build the dense layer that shares ``module``'s parameters and buffers.

        Args:
            module: The original layer (left untouched).
            geometry: Its lattice geometry, from tracing the model.

        Returns:
            A new module of a dense class; ``state_dict`` keys and tensors are the same.
        """
        new_cls = dense_class_for(cls, type(module))
        dense = new_cls.__new__(new_cls)
        dense.__dict__ = _shallow_state(module)
        dense.dense_state = LayerState(
            type(module), {k: getattr(module, k) for k in cls._overridden if hasattr(module, k)}
        )
        dense.geometry = geometry
        dense._apply_dense_config()
        return dense

    def _apply_dense_config(self) -> None:
        raise NotImplementedError

    def restore(self) -> nn.Module:
        """Return the original layer, sharing this layer's parameters and buffers."""
        original_class = self.dense_state.original_class
        original = original_class.__new__(original_class)
        state = _shallow_state(self)  # type: ignore[arg-type]
        for key in (*_DENSE_ATTRS, *self._derived):
            state.pop(key, None)
        state.update(self.dense_state.original_config)
        original.__dict__ = state
        return original

    def extra_repr(self) -> str:  # noqa: D102 - shown in print(model)
        g = self.geometry
        return (
            f"{super().extra_repr()}, dense_stride={g.dense_stride}, "  # type: ignore[misc]
            f"dense_dilation={g.dense_dilation}, lattice_in={g.in_step}, lattice_out={g.out_step}"
        )


def _shallow_state(module: nn.Module) -> dict[str, Any]:
    """Copy of ``module.__dict__`` whose registries are new dicts holding the same tensors."""
    state = dict(module.__dict__)
    for key, value in state.items():
        if isinstance(value, dict):
            state[key] = copy.copy(value)
    return state


_DYNAMIC: dict[tuple[type, type], type] = {}

# Layers whose forward only adds TF-"same" padding to the torch op (timm's dynamic ones,
# EfficientNet-PyTorch's static ones): the lattice padding replaces it, so their forward is
# bypassed (their weights need no transform).
_PAD_ONLY = {
    "Conv2dSame", "MaxPool2dSame", "AvgPool2dSame",
    "Conv2dStaticSamePadding", "MaxPool2dStaticSamePadding",
}  # fmt: skip


def dense_class_for(base: type, original: type) -> type:
    """The dense class for an original layer class.

    Plain torch layers and timm's padding-only "same" layers map to ``base``; other subclasses
    with their own ``forward`` (weight standardisation...) get a dense class derived from
    them, so their forward is kept.
    """
    torch_layer = base.__mro__[2]  # EConv2d -> EquivalentLayer -> nn.Conv2d
    if original is torch_layer or original.__name__ in _PAD_ONLY:
        return base
    if (base, original) not in _DYNAMIC:
        name = f"{base.__name__}_{original.__name__}"
        module = sys.modules[base.__module__]
        cls = type(name, (base, original), {"__module__": base.__module__})
        # Registered under its name in the dense classes' module so pickling finds it.
        setattr(module, name, cls)
        _DYNAMIC[(base, original)] = cls
    return _DYNAMIC[(base, original)]
