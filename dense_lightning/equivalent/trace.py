"""Find every spatial layer's reduction, and every op that mixes positions, by running probes.

The model runs twice, on probe inputs of sizes ``P`` and ``P + delta``. Along any path of
strided layers a tensor of reduction ``r`` changes its length by exactly ``delta / r`` when
``delta`` is a multiple of every stride product (floors and ceils shift by whole cells), so
``r = delta / (len2 - len1)`` is exact, whatever the paddings, kernels or ``ceil_mode``. No
per-family tables: a new architecture is traced like any other.

While the probes run, a :class:`~torch.overrides.TorchFunctionMode` watches the functional
calls made *outside* the layers we convert (convs, max and average pools) and records those
that mix spatial positions: reductions over H or W (squeeze-excitation, ECA, global pooling),
adaptive pools, interpolation, explicit padding, spatial softmax, group/instance norm,
flattening of spatial axes. :mod:`dense_lightning.equivalent.findings` decides which of them
break equivalence at a given output stride.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dense_lightning.equivalent.ops import OpRecord, describe_op

__all__ = ["SPATIAL_LAYERS", "LayerTrace", "ModelTrace", "flatten_outputs", "trace_model"]

SPATIAL_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)


def flatten_outputs(out: Any) -> list[torch.Tensor]:
    """Tensors of a model output (tensor, list/tuple or dict, nested), in order."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in flatten_outputs(v)]
    return []


@dataclass
class LayerTrace:
    """Reductions (input pixels per cell, per axis) around one spatial layer."""

    name: str
    module: nn.Module
    in_reduction: tuple[float, float]
    out_reduction: tuple[float, float]


@dataclass
class ModelTrace:
    """Everything the conversion needs to know about a model."""

    layers: dict[str, LayerTrace]
    ops: list[OpRecord]
    output_reductions: list[tuple[float, float]]
    inconsistent: dict[str, str] = field(default_factory=dict)

    @property
    def stride(self) -> int:
        """The model's total stride: the largest reduction among its outputs.

        A model whose outputs are global (a classifier: pooled logits) has the stride of its
        deepest spatial layer, so that its global pooling shows up as a finding.
        """
        finite = [r for red in self.output_reductions for r in red if r != float("inf")]
        if not finite:
            finite = [
                r
                for layer in self.layers.values()
                for r in layer.out_reduction
                if r != float("inf")
            ]
        return int(max(finite))


@dataclass
class _Probe:
    layer_in: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layer_out: dict[str, tuple[int, ...]] = field(default_factory=dict)
    repeated: dict[str, set[tuple[int, ...]]] = field(default_factory=dict)
    ops: list[OpRecord] = field(default_factory=list)
    outputs: list[tuple[int, ...]] = field(default_factory=list)


class _Recorder(TorchFunctionMode):
    """Records functional ops that mix spatial positions, tagged with the calling module."""

    def __init__(self, probe: _Probe, stack: list[tuple[str, nn.Module]]) -> None:
        super().__init__()
        self.probe, self.stack, self.leaf_depth = probe, stack, 0

    def __torch_function__(
        self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.leaf_depth == 0:
            name, module = self.stack[-1]
            record = describe_op(func, args, kwargs, out, name, type(module).__name__)
            if record is not None:
                self.probe.ops.append(record)
        return out


def _hooks(
    model: nn.Module, probe: _Probe, stack: list[tuple[str, nn.Module]], recorder: _Recorder
) -> Iterator[Any]:
    for name, module in model.named_modules():
        is_leaf = isinstance(module, SPATIAL_LAYERS)

        def pre(mod: nn.Module, args: tuple, name: str = name, is_leaf: bool = is_leaf) -> None:
            stack.append((name, mod))
            if is_leaf:
                recorder.leaf_depth += 1
                shape = tuple(args[0].shape)
                if name in probe.layer_in and probe.layer_in[name] != shape:
                    probe.repeated.setdefault(name, {probe.layer_in[name]}).add(shape)
                probe.layer_in[name] = shape

        def post(
            mod: nn.Module, args: tuple, out: Any, name: str = name, is_leaf: bool = is_leaf
        ) -> None:
            stack.pop()
            if is_leaf:
                recorder.leaf_depth -= 1
                probe.layer_out[name] = tuple(out.shape)

        yield module.register_forward_pre_hook(pre)
        yield module.register_forward_hook(post, always_call=True)


def _run_probe(model: nn.Module, method: str, size: int, in_chans: int) -> _Probe:
    probe, stack = _Probe(), [("", model)]
    recorder = _Recorder(probe, stack)
    handles = list(_hooks(model, probe, stack, recorder))
    ref = next(iter(model.parameters()), None)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, in_chans, size, size, generator=generator)
    if ref is not None:
        x = x.to(device=ref.device, dtype=ref.dtype)
    try:
        with torch.no_grad(), recorder:
            out = getattr(model, method)(x)
    finally:
        for handle in handles:
            handle.remove()
    probe.outputs = [tuple(t.shape) for t in flatten_outputs(out)]
    return probe


def reduction(shape1: tuple[int, ...], shape2: tuple[int, ...], delta: int) -> tuple[float, float]:
    """Reduction per spatial axis (last two dims) from the two probes' shapes."""
    red = []
    for a, b in zip(shape1[-2:], shape2[-2:], strict=True):
        red.append(float("inf") if b == a else delta / (b - a))
    return red[0], red[1]


def _first_in_chans(model: nn.Module) -> int:
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3  # only pools: any channel count works


def trace_model(
    model: nn.Module,
    method: str = "forward",
    probe_size: int | None = None,
    delta: int = 128,
    in_chans: int | None = None,
) -> ModelTrace:
    """Trace ``model`` on two probe inputs and return reductions of layers, ops and outputs.

    Args:
        model: Any CNN.
        method: Name of the forward method to trace (``"forward_features"`` for a timm trunk).
        probe_size: Side of the smaller probe (default 96); the larger is ``probe_size + delta``.
        delta: Size difference of the probes; must be a multiple of the model's stride.
        in_chans: Input channels (default: the first convolution's).

    Returns:
        The :class:`ModelTrace`.
    """
    if not any(isinstance(m, SPATIAL_LAYERS) for m in model.modules()):
        raise ValueError(
            f"{type(model).__name__} has no Conv2d, MaxPool2d or AvgPool2d layer to convert"
        )
    in_chans = in_chans or _first_in_chans(model)
    size = probe_size or 96
    was_training = model.training
    model.eval()
    try:
        p1 = _run_probe(model, method, size, in_chans)
        p2 = _run_probe(model, method, size + delta, in_chans)
    finally:
        model.train(was_training)
    modules = dict(model.named_modules())
    layers = {
        name: LayerTrace(
            name,
            modules[name],
            reduction(p1.layer_in[name], p2.layer_in[name], delta),
            reduction(p1.layer_out[name], p2.layer_out[name], delta),
        )
        for name in p1.layer_in
    }
    if len(p1.ops) != len(p2.ops):
        raise ValueError(
            f"{type(model).__name__}'s forward runs different ops at probe sizes {size} and "
            f"{size + delta}; its control flow depends on the input size, which cannot be traced"
        )
    for op1, op2 in zip(p1.ops, p2.ops, strict=True):
        op1.attach_second_probe(op2, delta)
    inconsistent = {
        name: f"is called on inputs of several sizes {sorted(shapes)}"
        for name, shapes in p1.repeated.items()
    }
    outputs = [reduction(a, b, delta) for a, b in zip(p1.outputs, p2.outputs, strict=True)]
    return ModelTrace(layers, p1.ops, outputs, inconsistent)
