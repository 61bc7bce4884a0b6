"""``to_dense`` and ``to_original``: the equivalent mapping and its inverse transfer.

Like timm's ``freeze_batch_norm_2d`` / ``unfreeze_batch_norm_2d`` pair: recursive, returns the
module, swaps a child only when it changes, and never touches a parameter or buffer.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from dense_lightning.equivalent.base import pair
from dense_lightning.equivalent.errors import Finding, NotEquivalentError
from dense_lightning.equivalent.head import (
    GlobalHeadPlan,
    attach_global_head,
    plan_global_head,
    remove_global_head,
)
from dense_lightning.equivalent.info import DenseInfo, get_dense_info
from dense_lightning.equivalent.lattice import AxisGeometry, LatticeGeometry
from dense_lightning.equivalent.layers import EAvgPool2d, EConv2d, EMaxPool2d, EquivalentLayer
from dense_lightning.equivalent.ops import OpRecord
from dense_lightning.equivalent.phase import PhaseRegion, remove_regions
from dense_lightning.equivalent.proof import prove
from dense_lightning.equivalent.regions import RegionPlan, plan_regions
from dense_lightning.equivalent.static_padding import (
    EZeroPadMaxPool2d,
    StaticPaddingError,
    static_padding,
)
from dense_lightning.equivalent.submodule import stride_hint
from dense_lightning.equivalent.trace import LayerTrace, ModelTrace, trace_model
from dense_lightning.errors import ConfigurationError

__all__ = [
    "DenseInfo",
    "check_output_stride",
    "get_dense_info",
    "is_dense",
    "model_stride",
    "to_dense",
    "to_original",
]


def check_output_stride(output_stride: object, model_stride: int | None = None) -> int:
    """Validate an output stride (a power of two dividing the model's stride).

    Raises:
        ValueError: Naming the problem and the allowed values.
    """
    if isinstance(output_stride, bool) or not isinstance(output_stride, int):
        raise ConfigurationError(
            f"output_stride must be an integer power of two, got {output_stride!r} "
            f"({type(output_stride).__name__})"
        )
    if output_stride < 1 or output_stride & (output_stride - 1):
        raise ConfigurationError(
            f"output_stride must be a power of two (1, 2, 4, 8...), got {output_stride}"
        )
    if model_stride is not None and (output_stride > model_stride or model_stride % output_stride):
        allowed = [2**i for i in range(model_stride.bit_length()) if model_stride % 2**i == 0]
        raise ConfigurationError(
            f"output_stride {output_stride} is not reachable: the model's stride is "
            f"{model_stride}; choose one of {allowed}"
        )
    return output_stride


def is_dense(model: nn.Module) -> bool:
    """True when ``model`` holds equivalent (dense) layers."""
    return get_dense_info(model) is not None or any(
        isinstance(m, EquivalentLayer) for m in model.modules()
    )


def model_stride(model: nn.Module, method: str = "forward", probe_size: int | None = None) -> int:
    """The total stride of ``model``'s outputs, found by tracing (dense models included)."""
    return trace_model(model, method, probe_size).stride


def _axis(module: nn.Module, layer: LayerTrace, i: int, output_stride: int) -> AxisGeometry | None:
    r_in, r_out = layer.in_reduction[i], layer.out_reduction[i]
    if r_in == float("inf"):
        return None  # works on a map of fixed size (e.g. after global pooling): not spatial
    kernel = pair(module.kernel_size)[i]
    stride = pair(module.stride if module.stride is not None else module.kernel_size)[i]
    dilation = pair(getattr(module, "dilation", 1))[i]
    d_in, d_out = min(r_in, output_stride), min(r_out, output_stride)
    steps = (r_in / d_in, r_out / d_out, d_out / d_in)
    if any(abs(v - round(v)) > 1e-6 for v in steps):
        raise _LayerProblem(
            f"its reduction {r_in:g} -> {r_out:g} does not fit the lattice of "
            f"output stride {output_stride}"
        )
    m, big_m, dense_stride = (round(v) for v in steps)
    return AxisGeometry(kernel, stride, dilation, _padding(module, i), m, big_m, dense_stride)


def _padding(module: nn.Module, i: int) -> int | tuple[int, int] | None:
    """Original padding along axis ``i``: symmetric, ``(lead, trail)`` or ``None`` (TF-same)."""
    try:
        fixed = static_padding(module)
    except StaticPaddingError as problem:
        raise _LayerProblem(str(problem)) from None
    if fixed is not None:
        return fixed[i]
    padding = module.padding
    if type(module).__name__.endswith("Same") or getattr(module, "same_pad", False):
        return None
    if padding == "same":
        return None  # torch's "same" (stride 1) equals TF-same: lead = total // 2
    if padding == "valid":
        return 0
    return pair(padding)[i]


class _LayerProblem(Exception):
    pass


_Replacements = dict[str, tuple[type[EquivalentLayer], LatticeGeometry]]


@dataclass(frozen=True)
class _Plan:
    replacements: _Replacements
    regions: list[RegionPlan]
    findings: list[Finding]
    head: GlobalHeadPlan | None = None


def _plan(trace: ModelTrace, output_stride: int) -> _Plan:
    """Layers that change, regions that run per phase, findings for what cannot be exact."""
    replacements: _Replacements = {}
    findings = [
        Finding(name, type(trace.layers[name].module).__name__, why)
        for name, why in trace.inconsistent.items()
    ]
    for name, layer in trace.layers.items():
        module = layer.module
        try:
            axes = [_axis(module, layer, i, output_stride) for i in (0, 1)]
            if None in axes:
                continue
            geometry = LatticeGeometry(axes[0], axes[1], bool(getattr(module, "ceil_mode", False)))
            if geometry.is_identity:
                continue
            _check_supported(module)
        except _LayerProblem as problem:
            findings.append(Finding(name, type(module).__name__, str(problem)))
            continue
        replacements[name] = (_dense_class(module), geometry)
    breaking: list[tuple[OpRecord, str]] = []
    for op in trace.ops:
        reason = op.breaks(output_stride)
        if reason is not None:
            breaking.append((op, reason))
    head, breaking = plan_global_head(trace, output_stride, breaking)
    if head is not None:
        # The head runs on the original network's views: its layers keep their geometry.
        replacements = {
            name: value
            for name, value in replacements.items()
            if not (name == head.module or name.startswith(head.module + "."))
        }
    regions, unfixed = plan_regions(trace, output_stride, breaking)
    return _Plan(replacements, regions, _unique(findings + unfixed), head)


def _dense_class(module: nn.Module) -> type[EquivalentLayer]:
    if isinstance(module, nn.Conv2d):
        return EConv2d
    if isinstance(module, nn.MaxPool2d):
        # EfficientNet-PyTorch's static-same pool pads with zeros, not -inf.
        return EZeroPadMaxPool2d if static_padding(module) is not None else EMaxPool2d
    return EAvgPool2d


def _check_supported(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d) and module.padding_mode != "zeros":
        raise _LayerProblem(f"padding_mode={module.padding_mode!r} cannot be given holes exactly")
    if isinstance(module, nn.MaxPool2d) and module.return_indices:
        raise _LayerProblem("return_indices=True: the indices would refer to the dense map")


def _unique(findings: list[Finding]) -> list[Finding]:
    seen, out = set(), []
    for finding in findings:
        key = (finding.module, finding.reason)
        if key not in seen:
            seen.add(key)
            out.append(finding)
    return out


def _swap(model: nn.Module, new_by_id: dict[int, nn.Module]) -> nn.Module:
    """Replace every reference to the modules in ``new_by_id`` (shared modules included)."""
    if id(model) in new_by_id:
        return new_by_id[id(model)]
    for parent in list(model.modules()):
        for key, child in parent._modules.items():
            if child is not None and id(child) in new_by_id:
                parent._modules[key] = new_by_id[id(child)]
    return model


def to_dense(
    model: nn.Module,
    output_stride: int,
    *,
    strict: bool = True,
    inplace: bool = False,
    method: str = "forward",
    probe_size: int | None = None,
    submodule: str | None = None,
) -> nn.Module:
    """Convert ``model`` into its dense equivalent with total stride ``output_stride``.

    Every strided conv or pool whose output would be finer than ``output_stride`` gets stride 1
    (or the stride that reaches ``output_stride``); every later spatial layer gets holes equal
    to the product of the strides removed before it. Sampled every
    ``original_stride / output_stride`` cells, the dense outputs equal the original outputs.

    Args:
        model: Any CNN (a timm model, ``features_only`` or not, or your own).
        output_stride: A power of two dividing the model's stride; 1 gives a per-pixel map.
        strict: Raise :class:`NotEquivalentError` for modules that cannot be made equivalent;
            with ``False`` convert anyway and mark ``dense_info.approximate``.
        inplace: Modify ``model`` itself (its layers are replaced; tensors are shared either
            way within the returned model). Otherwise ``model`` is left untouched.
        method: Forward method to trace, e.g. ``"forward_features"`` for a classifier trunk.
        probe_size: Side of the smaller probe input (default 96).
        submodule: Convert only this submodule (dotted name), e.g. ``"encoder"`` of an
            encoder-decoder whose outputs are upsampled back; it is traced and proven on its
            own outputs and must take the model's input. segmentation_models_pytorch models
            go through :func:`dense_lightning.integrations.smp.dense_encoder`.

    A classifier (one output of fixed size, e.g. a timm model with its head) runs its global
    pool and everything after it per phase (:mod:`~dense_lightning.equivalent.head`): its
    output ``[B, num_classes]`` becomes ``[B, num_classes, k, k]``, where ``out[..., i, j]`` is
    the classifier on the view starting at cell ``(i, j)`` of the dense map (the image shifted
    by ``(i, j) * output_stride`` pixels) and ``out[..., 0, 0]`` is the original's logits.

    Returns:
        The dense model, with ``dense_info`` set on it (on the submodule, with ``submodule``).
        A model whose outputs are at ``output_stride`` already is returned unchanged (a copy
        unless ``inplace``), with ``dense_info`` saying so.

    Raises:
        ValueError: Bad ``output_stride``, no spatial layer, or an already dense model.
        NotEquivalentError: In strict mode, naming every module that breaks equivalence.
    """
    check_output_stride(output_stride)
    if submodule is not None:
        from dense_lightning.equivalent.submodule import dense_submodule

        return dense_submodule(
            model, output_stride, submodule,
            strict=strict, inplace=inplace, method=method, probe_size=probe_size,
        )  # fmt: skip
    if is_dense(model):
        raise ConfigurationError("the model is already dense; call to_original() on it first")
    if not callable(getattr(model, method, None)):
        raise ConfigurationError(f"{type(model).__name__} has no method {method!r} to trace")
    trace = trace_model(model, method, probe_size)
    hint = stride_hint(model, trace, output_stride)
    if hint is not None:
        raise ConfigurationError(hint)
    check_output_stride(output_stride, trace.stride)
    if output_stride == trace.stride:
        # Outputs at that stride already (an encoder-decoder at stride 1 included): nothing
        # to convert, and converting the layers inside would change no output cell.
        target = model if inplace else copy.deepcopy(model)
        target.dense_info = DenseInfo(output_stride, trace.stride, False, method, max_rel_error=0.0)
        return target
    plan = _plan(trace, output_stride)
    if plan.findings and strict:
        raise NotEquivalentError(plan.findings, output_stride, type(model).__name__)
    reference = copy.deepcopy(model) if inplace else model
    target = model if inplace else copy.deepcopy(model)
    modules = dict(target.named_modules())
    new_by_id = {
        id(modules[name]): cls.from_module(modules[name], geometry)
        for name, (cls, geometry) in plan.replacements.items()
    }
    target = _swap(target, new_by_id)
    for region in plan.regions:
        module = target.get_submodule(region.module)
        reasons = region.reasons
        PhaseRegion(
            region.module, region.in_step, region.out_step, [module], True, "phase", reasons
        ).attach()
    if plan.head is not None:
        attach_global_head(target, plan.head)
    info = DenseInfo(
        output_stride, trace.stride, bool(plan.findings), method, tuple(plan.findings),
        tuple(plan.regions), global_head=plan.head,
    )  # fmt: skip
    target.dense_info = info
    target.dense_info = prove(reference, target, info, trace.probe[0], trace.in_chans, strict)
    return target


def to_original(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Inverse transfer: the original strided architecture holding ``model``'s weights.

    Its ``state_dict`` is the dense model's (same keys and tensors), so it loads into the
    original constructor, e.g. ``timm.create_model(name)``, with ``strict=True``.

    Args:
        model: A model returned by :func:`to_dense` (trained or not).
        inplace: Modify ``model`` itself instead of a copy.

    Returns:
        The original-stride model. A model that is not dense is returned as is (or copied).
    """
    target = model if inplace else copy.deepcopy(model)
    remove_regions(target, required=True)
    remove_global_head(target)
    new_by_id = {id(m): m.restore() for m in target.modules() if isinstance(m, EquivalentLayer)}
    target = _swap(target, new_by_id)
    for module in target.modules():  # a model whose submodule was converted holds it there
        module.__dict__.pop("dense_info", None)
    return target
