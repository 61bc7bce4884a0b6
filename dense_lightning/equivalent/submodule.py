"""Dense encoders inside encoder-decoder models: convert one submodule, keep the rest.

An encoder-decoder (U-Net, FPN, DeepLab) upsamples its deepest features back, so its outputs
already sit at a fine stride (often 1) while its encoder runs at stride 32. Asking the whole
model for output stride 8 then means its encoder: ``to_dense(model, 8, submodule="encoder")``
converts that submodule alone (traced, converted and proven on its own outputs, which must take
the model's input image) and checks that the rest of the model runs on what it now produces.
The rest is not claimed equivalent to anything: a decoder fed dense features computes a
different (denser) function, as with smp's ``encoder_output_stride``.

segmentation_models_pytorch models go to :mod:`dense_lightning.integrations.smp`, which first
undoes smp's own (inexact) dilation and sets the decoder for the new encoder stride.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from dense_lightning.equivalent.info import get_dense_info
from dense_lightning.equivalent.trace import ModelTrace, flatten_outputs
from dense_lightning.errors import ConfigurationError

__all__ = ["PROBE_SIDES", "check_runs", "dense_submodule", "is_smp_model", "stride_hint"]

#: Input sides tried, in order, to find one a whole model accepts (multiples of 32).
PROBE_SIDES = (96, 192, 384, 768)


def is_smp_model(model: nn.Module) -> bool:
    """True for a segmentation_models_pytorch model (checked by module name: no import)."""
    return type(model).__module__.startswith("segmentation_models_pytorch.")


def stride_hint(model: nn.Module, trace: ModelTrace, output_stride: int) -> str | None:
    """Why ``output_stride`` is out of reach of an encoder-decoder, and the documented way.

    ``None`` unless the model's layers reach further than its outputs (it upsamples back).
    """
    deepest = max(
        (r for layer in trace.layers.values() for r in layer.out_reduction if r != float("inf")),
        default=0.0,
    )
    if output_stride <= trace.stride or deepest <= trace.stride or output_stride > deepest:
        return None
    if is_smp_model(model):
        how = (
            f"dense_lightning.integrations.smp.dense_encoder(model, {output_stride}) (or "
            f'to_dense(model, {output_stride}, submodule="encoder")), which replaces smp\'s '
            "encoder_output_stride with an exact dense encoder"
        )
    else:
        how = f'to_dense(model, {output_stride}, submodule="<encoder attribute>")'
    return (
        f"output_stride {output_stride} is not reachable: {type(model).__name__}'s outputs are "
        f"at stride {trace.stride} already (its layers reach stride {int(deepest)} and it "
        f"upsamples back: an encoder-decoder). To make its encoder dense, use {how}."
    )


def dense_submodule(
    model: nn.Module, output_stride: int, submodule: str, **kwargs: Any
) -> nn.Module:
    """``model`` with ``model.<submodule>`` dense at ``output_stride`` (see :func:`to_dense`).

    Args:
        model: The whole model.
        output_stride: Output stride of the submodule.
        submodule: Dotted name of the submodule; it must take the model's input image.
        **kwargs: ``strict``, ``inplace``, ``method``, ``probe_size`` as for ``to_dense``.

    Returns:
        The model (a copy unless ``inplace``); the submodule carries ``dense_info``.

    Raises:
        ConfigurationError: No such submodule, or the rest of the model fails on its outputs.
    """
    if is_smp_model(model):
        from dense_lightning.integrations.smp import dense_encoder

        if submodule != "encoder":
            raise ConfigurationError(
                f"only the encoder of a segmentation_models_pytorch model can be made dense, "
                f"not {submodule!r}; pass submodule='encoder'"
            )
        return dense_encoder(model, output_stride, **kwargs)
    _get(model, submodule)  # a clear error before anything is copied
    target = model if kwargs.pop("inplace", False) else copy.deepcopy(model)
    part = _convert_part(target.get_submodule(submodule), output_stride, **kwargs)
    _set_submodule(target, submodule, part)
    check_runs(target, submodule, _in_chans(part))
    return target


def _convert_part(part: nn.Module, output_stride: int, **kwargs: Any) -> nn.Module:
    """``part`` dense at ``output_stride``, in place; one dense at another stride is redone."""
    from dense_lightning.equivalent.convert import is_dense, to_dense, to_original

    info = get_dense_info(part)
    if info is not None and info.output_stride == output_stride:
        return part
    if is_dense(part):
        part = to_original(part, inplace=True)
    return to_dense(part, output_stride, inplace=True, **kwargs)


def _get(model: nn.Module, name: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        children = [n for n, _ in model.named_children()]
        raise ConfigurationError(
            f"{type(model).__name__} has no submodule {name!r}; its children are {children}"
        ) from None


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``name`` inside ``model``."""
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def _in_chans(part: nn.Module) -> int:
    for module in part.modules():
        if isinstance(module, nn.Conv2d):
            return module.in_channels
    return 3


def check_runs(model: nn.Module, submodule: str, in_chans: int) -> list[torch.Tensor]:
    """Run ``model`` on the first probe side it accepts; say clearly when its rest fails.

    Returns:
        The model's outputs on that probe.

    Raises:
        ConfigurationError: The rest of the model does not accept the dense submodule's
            outputs at any probe side.
    """
    was_training = model.training
    model.eval()
    errors = []
    try:
        for side in PROBE_SIDES:
            x = torch.zeros(1, in_chans, side, side)
            ref = next(iter(model.parameters()), None)
            if ref is not None:
                x = x.to(device=ref.device, dtype=ref.dtype)
            try:
                with torch.no_grad():
                    return flatten_outputs(model(x))
            except Exception as error:  # reported below: the first one
                errors.append(f"{side} px: {type(error).__name__}: {error}")
    finally:
        model.train(was_training)
    raise ConfigurationError(
        f"the rest of {type(model).__name__} does not accept the dense {submodule}'s outputs "
        f"(its levels deeper than the output stride now arrive at it, and a decoder that "
        f"resamples them by fixed factors expects the original strides): {errors[0]}"
    )
