"""Which functional ops mix spatial positions, and when that breaks equivalence.

A dense tensor of lattice step ``S > 1`` holds ``S*S`` interleaved copies of the original
map (the phases). Local ops are fine on it: convolutions and pools are made equivalent by
:mod:`~dense_lightning.equivalent.layers`, elementwise ops never look at neighbours. Ops that
look at *all* positions (a mean over H and W, an adaptive pool, a softmax over space, group
norm statistics) or at positions by a fixed offset (interpolation, explicit padding, slicing)
see the extra phases and compute something else.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["OpRecord", "describe_op"]

_CONV = {"conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d"}
_POOL = {
    "max_pool1d", "max_pool2d", "max_pool3d", "max_pool2d_with_indices", "avg_pool1d",
    "avg_pool2d", "avg_pool3d", "lp_pool1d", "lp_pool2d", "fractional_max_pool2d",
}  # fmt: skip
_ADAPTIVE = {
    "adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool1d",
    "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices", "adaptive_max_pool3d",
}  # fmt: skip
_RESAMPLE = {
    "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "grid_sample",
    "pixel_shuffle", "pixel_unshuffle", "unfold", "fold", "roll", "flip",
}  # fmt: skip
_REDUCE = {
    "mean", "sum", "amax", "amin", "max", "min", "std", "var", "std_mean", "var_mean",
    "logsumexp", "norm", "prod", "nansum", "nanmean", "median", "argmax", "argmin",
    "linalg_vector_norm", "vector_norm", "linalg_norm", "all", "any", "aminmax",
}  # fmt: skip
_SCAN = {"cumsum", "cumprod", "cummax", "cummin", "logcumsumexp"}
_CONCAT = {"cat", "concat", "concatenate", "hstack", "vstack"}
_SPLIT = {"split", "chunk", "narrow", "tensor_split", "unbind", "split_with_sizes", "select"}
# Tensors built from sizes alone: a coordinate map of the input size is one.
_CREATE = {
    "arange", "linspace", "logspace", "zeros", "ones", "full", "empty", "rand", "randn",
    "meshgrid", "eye",
}  # fmt: skip
# Kinds whose op reads every position (or a position's rank among all): on phases each phase
# has its own statistics, so shifted phases differ from the original on shifted inputs.
GLOBAL_KINDS = frozenset({"reduce", "adaptive", "reshape", "scan", "create"})
_SOFTMAX = {"softmax", "log_softmax", "softmin"}
_GLOBAL_NORM = {"group_norm", "instance_norm", "local_response_norm"}
_RESHAPE = {"flatten", "view", "reshape"}


def _name(func: Any) -> str:
    return getattr(func, "__name__", str(func)).strip("_")


def _first_tensor(values: Any) -> torch.Tensor | None:
    if isinstance(values, torch.Tensor):
        return values
    if isinstance(values, (list, tuple)):
        for value in values:
            found = _first_tensor(value)
            if found is not None:
                return found
    return None


def _dims(value: Any, ndim: int) -> tuple[int, ...] | None:
    """Normalised dims of a reduction argument; ``None`` means all dims."""
    if value is None:
        return None
    if isinstance(value, int):
        value = (value,)
    return tuple(d % ndim for d in value)


def _arg(args: tuple, kwargs: dict, index: int, key: str) -> Any:
    return args[index] if len(args) > index else kwargs.get(key)


def _getitem_dims(index: Any, ndim: int) -> tuple[int, ...]:
    """Dims that an indexing expression does not take whole."""
    index = index if isinstance(index, tuple) else (index,)
    if any(i is Ellipsis for i in index):
        at = next(k for k, i in enumerate(index) if i is Ellipsis)
        real = sum(1 for i in index if i is not None and i is not Ellipsis)
        index = index[:at] + (slice(None),) * (ndim - real) + index[at + 1 :]
    partial, dim = [], 0
    for item in index:
        if item is None:
            continue
        if not (isinstance(item, slice) and item == slice(None)):
            partial.append(dim)
        dim += 1
    return tuple(partial)


def _classify(name: str, args: tuple, kwargs: dict, x: torch.Tensor) -> tuple[str, Any] | None:
    ndim = x.ndim
    if name in _CONV or name in _POOL:
        weight = args[1] if name in _CONV and len(args) > 1 else None
        stride = _arg(args, kwargs, 3, "stride") if name in _CONV else None
        pointwise = (
            isinstance(weight, torch.Tensor)
            and all(k == 1 for k in weight.shape[2:])
            and stride in (None, 1, (1, 1), [1, 1])
        )
        return None if pointwise else ("local", None)
    if name in _ADAPTIVE:
        return "adaptive", None
    if name in _RESAMPLE:
        return "resample", None
    if name == "pad":
        return "pad", None
    if name in _REDUCE:
        other = _arg(args, kwargs, 1, "other")
        if name in {"max", "min"} and isinstance(other, torch.Tensor):
            return None  # elementwise maximum
        dim = _arg(args, kwargs, 2, "dim") if name == "norm" else _arg(args, kwargs, 1, "dim")
        return "reduce", _dims(dim, ndim)
    if name in _SCAN:
        return "scan", _dims(_arg(args, kwargs, 1, "dim"), ndim)
    if name in _CONCAT:
        dim = _arg(args, kwargs, 1, "dim")
        return "concat", _dims(0 if dim is None else dim, ndim)
    if name in _SPLIT:
        default = 0 if name not in {"narrow", "select"} else None
        dim = _arg(args, kwargs, 2 if name in {"split", "chunk", "tensor_split"} else 1, "dim")
        dim = default if dim is None else dim
        return "index", _dims(dim, ndim) if isinstance(dim, int) else ()
    if name in _SOFTMAX:
        return "reduce", _dims(_arg(args, kwargs, 1, "dim"), ndim)
    if name in _GLOBAL_NORM:
        return "reduce", tuple(range(2, ndim))
    if name == "layer_norm":
        shape = _arg(args, kwargs, 1, "normalized_shape")
        return "reduce", tuple(range(ndim - len(shape), ndim))
    if name in _RESHAPE:
        return "reshape", None
    if name == "getitem":
        return "index", _getitem_dims(args[1], ndim) if len(args) > 1 else ()
    return None


@dataclass
class OpRecord:
    """One functional op seen while tracing, outside the layers that are converted."""

    module: str
    module_type: str
    op: str
    kind: str
    detail: Any
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    # Filled from the second probe: reduction of each input / output dim (inf: not spatial).
    in_reduction: tuple[float, ...] = field(default=())
    out_reduction: tuple[float, ...] = field(default=())

    def attach_second_probe(self, other: OpRecord, delta: int) -> None:
        """Derive per-dim reductions from the same op seen on the larger probe."""

        def red(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[float, ...]:
            if len(a) != len(b):
                return tuple(float("inf") for _ in a)
            return tuple(
                float("inf") if q == p else delta / (q - p) for p, q in zip(a, b, strict=True)
            )

        self.in_reduction = red(self.in_shape, other.in_shape)
        self.out_reduction = red(self.out_shape, other.out_shape)

    def steps(self, output_stride: int) -> tuple[int, int]:
        """Lattice steps of the op's input and output tensors at ``output_stride`` (1: none)."""

        def step(reds: tuple[float, ...]) -> int:
            finite = [r for r in reds if r != float("inf") and r > 0]
            return round(max((r / min(r, output_stride) for r in finite), default=1.0))

        return step(self.in_reduction), step(self.out_reduction)

    def breaks(self, output_stride: int) -> str | None:
        """Why this op is not equivalent at ``output_stride``, or ``None`` if it is."""
        reductions = self.out_reduction if self.kind == "create" else self.in_reduction
        spatial = [d for d, r in enumerate(reductions) if r != float("inf")]
        if not spatial:
            return None  # works on a map that no longer depends on the input size
        s_in, s_out = self.steps(output_stride)
        if max(s_in, s_out) <= 1:
            return None  # before the first removed stride nothing changes
        largest = max(reductions[d] for d in spatial)
        # A dim that grows faster than the input side (flattened positions) has reduction < 1.
        where = f"at stride {int(largest)}" if largest >= 1 else "on flattened positions"
        return self._reason(spatial, where, max(s_in, s_out))

    def _reason(self, spatial: list[int], where: str, step: int) -> str | None:
        op, kind = self.op, self.kind
        if kind == "local":
            return (
                f"calls {op} directly {where}, outside a Conv2d/MaxPool2d/AvgPool2d layer that "
                "could be given holes; wrap it in a supported layer"
            )
        if kind == "adaptive":
            return f"{op} pools to a fixed size {where}; dense maps pool over extra positions"
        if kind == "resample":
            return f"{op} resamples by a fixed factor {where}; dense maps have {step}x the cells"
        if kind == "pad":
            return f"pads explicitly {where}; the padding must scale with the lattice step"
        if kind == "reduce":
            dims = self.detail
            if dims is None or set(dims) & set(spatial):
                return (
                    f"{op} over spatial dims {where} pools globally; dense maps average over "
                    "extra positions"
                )
            return None
        if kind == "reshape":
            sizes = tuple(self.in_shape[d] for d in spatial)
            if tuple(self.out_shape[-len(sizes) :]) != sizes:
                return f"{op} merges spatial positions {where} (attention-like mixing)"
            return None
        if kind == "index" and set(self.detail) & set(spatial):
            return f"slices spatial positions {where}; offsets must scale with the lattice step"
        if kind == "concat" and set(self.detail) & set(spatial):
            return f"{op} joins maps along a spatial dim {where}; the joint moves with the step"
        if kind == "scan" and (self.detail is None or set(self.detail) & set(spatial)):
            return f"{op} accumulates along a spatial dim {where}; dense maps add extra positions"
        if kind == "create":
            return f"{op} builds a map from the input size {where} (a coordinate map)"
        return None


def describe_op(
    func: Any, args: tuple, kwargs: dict, out: Any, module: str, module_type: str
) -> OpRecord | None:
    """An :class:`OpRecord` for a call that may mix spatial positions, else ``None``."""
    name = _name(func)
    x = _first_tensor(args)
    y = _first_tensor(out)
    if name in _CREATE and y is not None and x is None:
        return OpRecord(module, module_type, name, "create", None, (), tuple(y.shape))
    if x is None or y is None or x.ndim < 3:
        return None
    kind = _classify(name, args, kwargs, x)
    if kind is None:
        return None
    return OpRecord(module, module_type, name, kind[0], kind[1], tuple(x.shape), tuple(y.shape))
