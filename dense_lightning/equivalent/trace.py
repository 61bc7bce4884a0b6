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
flattening of spatial axes, coordinate maps built from the input size.
:meth:`~dense_lightning.equivalent.ops.OpRecord.breaks` decides which of them break
equivalence at a given output stride. The inputs and outputs of every module are recorded
too, so that the smallest module around such an op that can run in phase layout is found.

An exception raised by a probe becomes a ``ValueError`` naming the module that raised it.
"""

from __future__ import annotations

import sys
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from dense_lightning.equivalent.ops import OpRecord, describe_op

__all__ = [
    "LARGER_PROBES",
    "SPATIAL_LAYERS",
    "LayerTrace",
    "ModelTrace",
    "ModuleTrace",
    "flatten_outputs",
    "probe_sizes",
    "trace_model",
]

SPATIAL_LAYERS = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)
#: Probe sides tried when the default ones fail, e.g. for a decoder whose pyramid pools its
#: deepest map down further (smp's PAN needs at least 384 px).
LARGER_PROBES = (192, 384, 768)


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


Reduction = tuple[float, float]


@dataclass
class ModuleTrace:
    """The tensors a module takes and returns, per call, as reductions of their last two dims.

    Attributes:
        name: Qualified name.
        module: The module.
        calls: Per call, ``(inputs, outputs)``: for each tensor, its reduction along H and W,
            or ``None`` when a dim other than the last two changes with the input size (a
            layout the phase split cannot handle).
    """

    name: str
    module: nn.Module
    calls: list[tuple[list[Reduction | None], list[Reduction | None]]]


@dataclass
class ModelTrace:
    """Everything the conversion needs to know about a model."""

    layers: dict[str, LayerTrace]
    ops: list[OpRecord]
    output_reductions: list[tuple[float, float]]
    inconsistent: dict[str, str] = field(default_factory=dict)
    modules: dict[str, ModuleTrace] = field(default_factory=dict)
    probe: tuple[int, int] = (96, 224)
    in_chans: int = 3
    # Modules (not the model itself) that return one of the model's output tensors.
    output_modules: tuple[str, ...] = ()

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


Shapes = list[tuple[int, ...]]


@dataclass
class _Probe:
    layer_in: dict[str, tuple[int, ...]] = field(default_factory=dict)
    layer_out: dict[str, tuple[int, ...]] = field(default_factory=dict)
    repeated: dict[str, set[tuple[int, ...]]] = field(default_factory=dict)
    ops: list[OpRecord] = field(default_factory=list)
    outputs: list[tuple[int, ...]] = field(default_factory=list)
    calls: dict[str, list[tuple[Shapes, Shapes]]] = field(default_factory=dict)
    pending: dict[str, list[Shapes]] = field(default_factory=dict)
    failed_at: tuple[str, nn.Module] | None = None
    returned: dict[str, list[weakref.ref]] = field(default_factory=dict)
    output_modules: list[str] = field(default_factory=list)


def _shapes(value: Any) -> Shapes:
    return [tuple(t.shape) for t in flatten_outputs(value)]


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

        def pre(
            mod: nn.Module, args: tuple, kwargs: dict, name: str = name, is_leaf: bool = is_leaf
        ) -> None:
            stack.append((name, mod))
            probe.pending.setdefault(name, []).append(_shapes(args) + _shapes(kwargs))
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
            inputs = probe.pending[name].pop()
            if is_leaf:
                recorder.leaf_depth -= 1
            if sys.exc_info()[0] is not None:
                # An exception is unwinding (always_call): the innermost module sees it first.
                probe.failed_at = probe.failed_at or (name, mod)
                return
            if is_leaf:
                probe.layer_out[name] = tuple(flatten_outputs(out)[0].shape)
            probe.calls.setdefault(name, []).append((inputs, _shapes(out)))
            # Weak references: an id could be reused once an intermediate tensor is freed.
            refs = probe.returned.setdefault(name, [])
            refs.extend(weakref.ref(t) for t in flatten_outputs(out))

        yield module.register_forward_pre_hook(pre, with_kwargs=True)
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
    except Exception as error:
        where = "its forward"
        if probe.failed_at is not None and probe.failed_at[0]:
            where = f"{probe.failed_at[0]} ({type(probe.failed_at[1]).__name__})"
        raise ValueError(
            f"{type(model).__name__} could not be traced: {where} raised "
            f"{type(error).__name__} on a probe input of {size}x{size} px: "
            f"{str(error).strip().splitlines()[0] if str(error).strip() else ''}"
        ) from error
    finally:
        for handle in handles:
            handle.remove()
    probe.outputs = _shapes(out)
    final = flatten_outputs(out)
    probe.output_modules = [
        name
        for name, refs in probe.returned.items()
        if name and any(ref() is t for ref in refs for t in final)
    ]
    probe.returned.clear()
    return probe


def reduction(shape1: tuple[int, ...], shape2: tuple[int, ...], delta: int) -> tuple[float, float]:
    """Reduction per spatial axis (last two dims) from the two probes' shapes."""
    red = []
    for a, b in zip(shape1[-2:], shape2[-2:], strict=True):
        red.append(float("inf") if b == a else delta / (b - a))
    return red[0], red[1]


def _tensor_reduction(a: tuple[int, ...], b: tuple[int, ...], delta: int) -> Reduction | None:
    if len(a) != len(b) or len(a) < 3 or a[:-2] != b[:-2]:
        return None
    return reduction(a, b, delta)


def _cfg(model: nn.Module) -> dict[str, Any]:
    cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
    return cfg if isinstance(cfg, dict) else {}


def _in_chans(model: nn.Module) -> int:
    """Input channels: the model's own config, else the first convolution's.

    The config comes first: a space-to-depth stem's first conv reads more channels than the
    image has.
    """
    size = _cfg(model).get("input_size")
    if isinstance(size, (tuple, list)) and len(size) == 3:
        return int(size[0])
    if isinstance(getattr(model, "in_chans", None), int):
        return model.in_chans
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3  # only pools: any channel count works


def probe_sizes(model: nn.Module, probe_size: int | None = None) -> list[int]:
    """Smaller probe sides to try, in order: the given one, else 96, then the model's own size.

    Fixed-size models (attention with fixed position tables, size assertions) only accept
    their configured input size and sizes a multiple of their stride above it.
    """
    if probe_size is not None:
        return [probe_size]
    sizes = [96]
    size = _cfg(model).get("input_size")
    if isinstance(size, (tuple, list)) and len(size) == 3 and int(size[-1]) not in sizes:
        sizes.append(int(size[-1]))
    return sizes


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
    in_chans = in_chans or _in_chans(model)
    was_training = model.training
    model.eval()
    try:
        # A model that rejects the default probes (a fixed position table, a minimum size)
        # is probed at its configured size, and at a smaller step above it; one that needs
        # larger inputs (pyramid pools on its deepest map) at larger sizes.
        attempts = [(size, delta) for size in probe_sizes(model, probe_size)]
        attempts.append((attempts[-1][0], delta // 2))
        defaults = len(attempts)
        if probe_size is None:
            attempts += [(size, delta) for size in LARGER_PROBES]
        failure: ValueError | None = None
        for attempt, (size, delta) in enumerate(attempts):
            try:
                p1 = _run_probe(model, method, size, in_chans)
                p2 = _run_probe(model, method, size + delta, in_chans)
                break
            except ValueError as error:
                # The default probes' failure is the one to report if none fits.
                failure = error if attempt < defaults else failure
                if attempt == len(attempts) - 1:
                    raise failure from failure.__cause__
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
    if len(p1.outputs) != len(p2.outputs):
        raise ValueError(
            f"{type(model).__name__} returns {len(p1.outputs)} tensors at probe size {size} "
            f"and {len(p2.outputs)} at {size + delta}; its outputs cannot be traced"
        )
    outputs = [reduction(a, b, delta) for a, b in zip(p1.outputs, p2.outputs, strict=True)]
    return ModelTrace(
        layers, p1.ops, outputs, inconsistent, _module_traces(model, p1, p2, delta),
        (size, size + delta), in_chans, tuple(p1.output_modules),
    )  # fmt: skip


def _module_traces(model: nn.Module, p1: _Probe, p2: _Probe, delta: int) -> dict[str, ModuleTrace]:
    modules = dict(model.named_modules())
    traces = {}
    for name, calls1 in p1.calls.items():
        calls2 = p2.calls.get(name, [])
        if len(calls1) != len(calls2):
            continue  # called a size-dependent number of times: never a region
        calls = []
        for (in1, out1), (in2, out2) in zip(calls1, calls2, strict=True):
            if len(in1) != len(in2) or len(out1) != len(out2):
                break
            calls.append(
                (
                    [_tensor_reduction(a, b, delta) for a, b in zip(in1, in2, strict=True)],
                    [_tensor_reduction(a, b, delta) for a, b in zip(out1, out2, strict=True)],
                )
            )
        else:
            traces[name] = ModuleTrace(name, modules[name], calls)
    return traces
